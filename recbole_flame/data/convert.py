"""Other people's data files as RecBole atomic files (``recbole-flame convert``).

Two sources:

* ``sequences``: one line per user, ``user item item ...`` in time order (the files of the
  SASRec, S3-Rec and FLAME repositories). They carry no times, so ``timestamp`` is the item's
  position in its user's line (0, 1, 2, ...), as in the amazon-beauty copy this package bundles.
* ``csv`` / ``tsv`` / ``parquet``: one interaction a row, as users export them. The user, item
  and time columns are found by their usual names (or named with ``user=``, ``item=``,
  ``time=``); dates become seconds since the epoch; every other column is kept, typed ``float``
  when all its values are numbers and ``token`` otherwise.

Either way the result is ``<data_path>/<dataset>/<dataset>.inter`` (tab-separated, typed header)
with an ``ORIGIN.md`` beside it saying where it came from and how it was made.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from recbole_flame.utils.errors import UserError
from recbole_flame.utils.files import atomic_write

SOURCES = ("sequences", "csv", "tsv", "parquet")
# The usual names of the three columns, first match wins (compared without case).
USER_NAMES = ("user_id", "user", "uid", "userid", "user_idx", "customer_id", "visitorid")
ITEM_NAMES = ("item_id", "item", "iid", "itemid", "movieid", "product_id", "business_id")
TIME_NAMES = ("timestamp", "time", "ts", "date", "datetime", "event_time", "created_at")
_SUFFIX_SOURCE = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".parquet": "parquet",
    ".pq": "parquet",
}


class ConvertError(UserError, ValueError):
    """An input file that cannot be converted; the message names the file and what to do."""


@dataclass
class Converted:
    """What ``convert`` wrote: the ``.inter`` file, its counts and the column mapping."""

    path: Path
    users: int
    interactions: int
    items: int
    columns: dict[str, str] = field(default_factory=dict)  # atomic field -> source column

    def summary(self) -> str:
        mapped = ", ".join(f"{src} -> {dst}" for dst, src in self.columns.items())
        return (
            f"wrote {self.path}: {self.users:,} users, {self.items:,} items, "
            f"{self.interactions:,} interactions ({mapped})"
        )


def source_of(path: Path, given: str | None) -> str:
    """The source format: ``given``, else from the file's suffix."""
    if given is not None:
        if given not in SOURCES:
            raise ConvertError(f"--from={given}: unknown source; one of {', '.join(SOURCES)}")
        return given
    guessed = _SUFFIX_SOURCE.get(path.suffix.lower())
    if guessed is None:
        raise ConvertError(
            f"{path}: cannot tell its format from the suffix '{path.suffix}'; say it with "
            f"--from ({', '.join(SOURCES)})"
        )
    return guessed


def convert(
    src: str | Path,
    dataset: str,
    data_path: str | Path,
    source: str | None = None,
    user: str | None = None,
    item: str | None = None,
    time: str | None = None,
) -> Converted:
    """Write ``<data_path>/<dataset>/<dataset>.inter`` from ``src``; see the module docstring."""
    src = Path(src)
    if not src.is_file():
        raise ConvertError(f"{src}: no such file")
    if not dataset or any(c in dataset for c in "/\\") or dataset.startswith("."):
        raise ConvertError(f"--dataset={dataset!r}: give a plain folder name, e.g. my-shop")
    kind = source_of(src, source)
    target = Path(data_path) / dataset / f"{dataset}.inter"
    if kind == "sequences":
        if user or item or time:
            raise ConvertError(
                "--user/--item/--time name columns of a table; a sequence file has none"
            )
        done = _from_sequences(src, target)
        how = (
            "one line per user, `user item item ...` in time order; `timestamp` is the item's "
            "position in its user's line (0, 1, 2, ...): it orders correctly but is not a time, "
            "so it says nothing about time intervals"
        )
    else:
        done = _from_table(src, target, kind, user, item, time)
        how = f"a {kind} table, one interaction a row; columns: " + ", ".join(
            f"`{s}` -> `{d}`" for d, s in done.columns.items()
        )
    _write_origin(src, done, how)
    return done


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_origin(src: Path, done: Converted, how: str) -> None:
    text = (
        f"# {done.path.stem} (written by `recbole-flame convert`)\n\n"
        f"| users | items | interactions |\n|---|---|---|\n"
        f"| {done.users:,} | {done.items:,} | {done.interactions:,} |\n\n"
        f"- Source: `{src.name}` ({src.stat().st_size:,} bytes, sha256 `{_sha256(src)}`).\n"
        f"- Read as {how}.\n"
        f"- `{done.path.name}`: sha256 `{_sha256(done.path)}`.\n"
    )
    atomic_write(done.path.parent / "ORIGIN.md", lambda out: out.write(text.encode("utf-8")))


def _write_lines(target: Path, lines: Callable[[], Iterable[str]]) -> None:
    def write(out) -> None:
        text = io.TextIOWrapper(out, encoding="utf-8", newline="\n")
        text.writelines(lines())
        text.flush()
        text.detach()

    atomic_write(target, write)


def _from_sequences(src: Path, target: Path) -> Converted:
    rows: list[tuple[str, list[str]]] = []
    seen: set[str] = set()
    # utf-8-sig: a byte-order mark would otherwise make the first user id unreadable
    with open(src, encoding="utf-8-sig", errors="replace") as f:
        for number, line in enumerate(f, 1):
            ids = line.split()
            if not ids:
                continue
            bad = next((t for t in ids if not t.isdigit()), None)
            if len(ids) < 2 or bad is not None:
                why = f"'{bad}' is not an id" if bad is not None else "a user with no item"
                raise ConvertError(
                    f"{src} line {number}: {why}; each line must be `user item item ...` "
                    f"(non-negative integer ids separated by spaces): {line.strip()[:60]!r}"
                )
            if ids[0] in seen:
                raise ConvertError(
                    f"{src} line {number}: user {ids[0]} already had a line; a sequence file has "
                    "one line per user"
                )
            seen.add(ids[0])
            rows.append((ids[0], ids[1:]))
    if not rows:
        raise ConvertError(f"{src}: no sequences in it (empty file?)")

    def lines() -> Iterable[str]:
        yield "user_id:token\titem_id:token\ttimestamp:float\n"
        for user, items in rows:
            for position, item in enumerate(items):
                yield f"{user}\t{item}\t{position}\n"

    _write_lines(target, lines)
    items = {i for _, seq in rows for i in seq}
    columns = {"user_id": "line's first id", "item_id": "the ids after it", "timestamp": "position"}
    return Converted(target, len(rows), sum(len(s) for _, s in rows), len(items), columns)


def find_column(
    columns: list[str], given: str | None, usual: tuple[str, ...], role: str, flag: str
) -> str | None:
    """The column for ``role``: ``given`` (which must exist), else the first usual name present
    (case-insensitive), else None."""
    if given is not None:
        if given not in columns:
            raise ConvertError(f"{flag}={given}: no such column; the file has {', '.join(columns)}")
        return given
    lower = {c.lower(): c for c in columns}
    return next((lower[n] for n in usual if n in lower), None)


def _read_table(src: Path, kind: str):
    import pandas as pd

    try:
        if kind == "parquet":
            return pd.read_parquet(src)
        # utf-8-sig: a spreadsheet's export often starts with a byte-order mark, which would
        # otherwise become part of the first column's name ("\ufeffuser" is no user column).
        return pd.read_csv(
            src,
            sep="," if kind == "csv" else "\t",
            dtype=str,
            keep_default_na=False,
            encoding="utf-8-sig",
        )
    except ImportError as exc:  # parquet without pyarrow/fastparquet
        raise ConvertError(
            f"{src}: pandas cannot read {kind} here ({exc}); write it as CSV"
        ) from exc
    except (ValueError, OSError) as exc:
        reason = " ".join(str(exc).split())
        raise ConvertError(f"{src}: not a readable {kind} file ({reason})") from exc


def _as_seconds(values, name: str, src: Path):
    """A time column as float seconds: numbers as they are, dates parsed to seconds since the
    epoch (UTC)."""
    import pandas as pd

    empty = values.isna() | (values.astype(str).str.strip() == "")
    if empty.any():
        row = int(empty.to_numpy().nonzero()[0][0])
        raise ConvertError(f"{src}: time column '{name}' is empty at row {row + 2}")
    # A parquet datetime column is not a number of seconds: to_numeric would give nanoseconds.
    dated = pd.api.types.is_datetime64_any_dtype(values)
    numbers = None if dated else pd.to_numeric(values, errors="coerce")
    if numbers is not None and numbers.notna().all():
        return numbers.astype(float)
    try:
        parsed = values.dt.tz_localize("UTC") if dated and values.dt.tz is None else values
        if not dated:
            parsed = pd.to_datetime(values, utc=True, format="mixed")
    except (ValueError, TypeError) as exc:
        reason = " ".join(str(exc).split())[:80]
        raise ConvertError(
            f"{src}: time column '{name}' holds values that are neither numbers nor dates "
            f"({reason}); name another column with --time=COL"
        ) from exc
    if parsed.isna().any():
        row = int(parsed.isna().to_numpy().nonzero()[0][0])
        raise ConvertError(
            f"{src}: time column '{name}' has an empty or unreadable value at row {row + 2}"
        )
    return (parsed - pd.Timestamp(0, tz="UTC")).dt.total_seconds()


def _number_text(value: float) -> str:
    """A float column's value as the atomic file holds it: whole numbers without a decimal
    point (a time of 1609459200123 ms stays exact, where a fixed number of significant digits
    would round it and tie neighbouring events), others as Python's shortest exact repr, and
    a missing value as an empty field."""
    value = float(value)
    if value != value:
        return ""
    if value.is_integer() and abs(value) < 2**53:
        return str(int(value))
    return repr(value)


def _as_tokens(values):
    """Ids and other tokens as text: numbers a parquet file stores as floats (1.0) become the
    id they stand for (1), so the same id reads the same from a CSV and from parquet."""
    import pandas as pd

    if pd.api.types.is_float_dtype(values):
        return values.map(lambda v: "" if v != v else _number_text(v))
    return values.astype(str).str.strip()


def _from_table(src: Path, target: Path, kind: str, user, item, time) -> Converted:
    import pandas as pd

    frame = _read_table(src, kind)
    columns = [str(c) for c in frame.columns]
    frame.columns = columns
    found = {
        "user_id": find_column(columns, user, USER_NAMES, "user", "--user"),
        "item_id": find_column(columns, item, ITEM_NAMES, "item", "--item"),
        "timestamp": find_column(columns, time, TIME_NAMES, "time", "--time"),
    }
    for role, flag in (("user_id", "--user"), ("item_id", "--item")):
        if found[role] is None:
            usual = ", ".join(USER_NAMES if role == "user_id" else ITEM_NAMES)
            raise ConvertError(
                f"{src}: no {role.split('_')[0]} column among {', '.join(columns)} (looked for "
                f"{usual}); name it with {flag}=COL"
            )
    if len(set(v for v in found.values() if v)) < sum(1 for v in found.values() if v):
        raise ConvertError(
            f"{src}: one column named for two roles ({found}); name each with --user/--item/--time"
        )
    if frame.empty:
        raise ConvertError(f"{src}: no rows")
    out = pd.DataFrame()
    header = []
    mapping: dict[str, str] = {}
    for role in ("user_id", "item_id"):
        values = _as_tokens(frame[found[role]])
        if (values == "").any():
            row = int((values == "").to_numpy().nonzero()[0][0])
            raise ConvertError(f"{src}: column '{found[role]}' is empty at row {row + 2}")
        out[role] = values
        header.append(f"{role}:token")
        mapping[role] = found[role]
    if found["timestamp"] is not None:
        out["timestamp"] = _as_seconds(frame[found["timestamp"]], found["timestamp"], src)
        header.append("timestamp:float")
        mapping["timestamp"] = found["timestamp"]
    taken = {"user_id", "item_id", "timestamp"}
    for column in columns:
        if column in found.values():
            continue
        name = "".join(c if c.isalnum() or c == "_" else "_" for c in column) or "column"
        while name in taken:
            name += "_"
        taken.add(name)
        values = frame[column]
        given = values.notna() & (values.astype(str) != "")
        numbers = pd.to_numeric(values.where(given, None), errors="coerce")
        if pd.api.types.is_datetime64_any_dtype(values):  # parquet dates: seconds, as the time
            dates = values.dt.tz_localize("UTC") if values.dt.tz is None else values
            seconds = (dates - pd.Timestamp(0, tz="UTC")).dt.total_seconds()
            out[name] = seconds.map(_number_text)
            header.append(f"{name}:float")
        elif not pd.api.types.is_bool_dtype(values) and numbers.notna().sum() == given.sum():
            out[name] = numbers.map(_number_text)
            header.append(f"{name}:float")
        else:
            out[name] = _as_tokens(values.where(given, ""))
            header.append(f"{name}:token")
        mapping[name] = column
    if "timestamp" in out:
        out["timestamp"] = out["timestamp"].map(_number_text)
    # A tab or a line break inside a value would split a row of the atomic file.
    for name in out.columns:
        out[name] = out[name].str.replace(r"[\t\r\n]", " ", regex=True)

    def write(f) -> None:
        f.write(("\t".join(header) + "\n").encode("utf-8"))
        out.to_csv(f, sep="\t", header=False, index=False)

    atomic_write(target, write)
    done = Converted(target, out["user_id"].nunique(), len(out), out["item_id"].nunique(), mapping)
    return done
