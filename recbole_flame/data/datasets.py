"""Where a run's atomic files come from, settled before RecBole reads any data.

In order: atomic files already at ``data_path``; the copy of amazon-beauty that ships inside this
package (written to ``data_path`` on first use); RecBole's download, for a name in RecBole's
dataset list. Anything else stops with one line. Also, before loading, whether the time column a
sequential model sorts by is there.
"""

from __future__ import annotations

import gzip
import os
import shutil
from pathlib import Path
from typing import Any

import recbole
import yaml
from recbole.utils import ModelType
from recbole.utils import url as recbole_url

from recbole_flame.data.convert import ITEM_NAMES, TIME_NAMES, USER_NAMES, find_column
from recbole_flame.utils.errors import ConfigError, DatasetNotFoundError
from recbole_flame.utils.files import atomic_write
from recbole_flame.utils.paths import dataset_yaml_files

BUNDLED_ROOT = Path(__file__).resolve().parent.parent / "datasets"
ATOMIC_SUFFIXES = ("inter", "user", "item", "kg", "link", "net")
_RECBOLE_URLS = Path(recbole.__file__).resolve().parent / "properties" / "dataset" / "url.yaml"
_ORIGIN_NOTE = "ORIGIN.md"

DISK, BUNDLED, DOWNLOAD = "disk", "bundled", "download"


def bundled_file(name: str) -> Path | None:
    """The gzip-compressed ``.inter`` file this package ships for dataset ``name``, if any."""
    path = BUNDLED_ROOT / name / f"{name}.inter.gz"
    return path if path.is_file() else None


def recbole_download_url(name: str) -> str | None:
    """The URL RecBole downloads dataset ``name`` from, or None if RecBole does not know it."""
    with open(_RECBOLE_URLS, encoding="utf-8") as f:
        urls = yaml.safe_load(f) or {}
    url = urls.get(name)
    return url if isinstance(url, str) else None


def on_disk(config: Any) -> bool:
    """Whether ``data_path`` (RecBole's: already ending in the dataset's name) holds the
    dataset's atomic files, or all of its benchmark files."""
    folder, name = Path(config["data_path"]), config["dataset"]
    if folder.is_dir() and any((folder / f"{name}.{s}").is_file() for s in ATOMIC_SUFFIXES):
        return True
    benchmark = config["benchmark_filename"]
    return bool(benchmark) and all((folder / f"{name}.{p}.inter").is_file() for p in benchmark)


def dataset_source(config: Any) -> str:
    """``disk``, ``bundled`` or ``download``; stops with one line for a dataset that is not on
    disk and that neither this package nor RecBole can supply. Reads nothing but file names."""
    if on_disk(config):
        return DISK
    name = config["dataset"]
    # The bundled copy is one .inter file: it cannot stand in for pre-split benchmark files.
    if bundled_file(name) is not None and not config["benchmark_filename"]:
        return BUNDLED
    if recbole_download_url(name) is not None and not config["benchmark_filename"]:
        return DOWNLOAD
    folder = Path(config["data_path"])
    convertible = convertible_files(folder, name)
    if convertible:
        # A table or sequence file where the atomic file should be: the user's own export,
        # which `convert` turns into the .inter file in one step.
        path, source = convertible[0]
        others = "".join(f", {p}" for p, _ in convertible[1:])
        command = convert_command(path, source, name, folder.parent)
        raise DatasetNotFoundError(
            f"dataset '{name}' not found: no atomic file {folder / (name + '.inter')}, but "
            f"{path} is there{f' (and {others[2:]})' if others else ''}; convert it first: "
            f"{command}"
        )
    raise DatasetNotFoundError(
        f"dataset '{name}' not found: no atomic files such as {folder / (name + '.inter')}; "
        f"set data_path (e.g. --data_path=DIR) to the folder that holds {name}/, or write them "
        f"from a CSV with {_program()} convert FILE --dataset={name} --data_path=DIR"
    )


# File suffixes `recbole-flame convert` reads, and the --from it needs for each.
_CONVERTIBLE = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".txt": "sequences",
}


def convertible_files(folder: Path, name: str) -> list[tuple[Path, str]]:
    """Files ``convert`` could turn into the dataset's atomic files, with their source kind:
    any table or ``.txt`` in the dataset's own folder, and ``<name>.<suffix>`` beside that
    folder (where an export is often saved). Sorted, the dataset's own name first."""
    found: list[Path] = []
    if folder.is_dir():
        found += [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in _CONVERTIBLE]
    found += [
        folder.parent / f"{name}{suffix}"
        for suffix in _CONVERTIBLE
        if (folder.parent / f"{name}{suffix}").is_file()
    ]
    found.sort(key=lambda p: (p.stem != name, str(p)))
    return [(p, _CONVERTIBLE[p.suffix.lower()]) for p in found]


def _program() -> str:
    from recbole_flame.cli import program_name

    return "recbole-flame" if program_name() == "recbole-flame" else "python run_recbole_flame.py"


def convert_command(path: Path, source: str, name: str, data_path: Path) -> str:
    """The ``convert`` command that writes ``data_path/name/name.inter`` from ``path``."""
    hint = " (if it holds one line per user: user item item ...)" if source == "sequences" else ""
    return (
        f"{_program()} convert --from={source} {path} --dataset={name} "
        f"--data_path={data_path}{hint}"
    )


def provide_dataset(config: Any) -> str:
    """Make the dataset's atomic files available at ``data_path``: the files there, the bundled
    copy (written there now) or RecBole's download. Returns a line for the log saying which copy
    is used. Call it before the logger is set up, so a failed download prints one line only."""
    name, folder = config["dataset"], Path(config["data_path"])
    source = dataset_source(config)
    if source == BUNDLED:
        materialise_bundled(name, folder)
        used = (
            f"no atomic files at data_path, so wrote the copy bundled with recbole_flame "
            f"({bundled_file(name)}) to {folder} (origin: {folder / _ORIGIN_NOTE})"
        )
    elif source == DOWNLOAD:
        url = download(config)
        check_time_field(config)  # the header could not be read before the download
        used = f"downloaded RecBole's copy from {url} to {folder}"
    else:
        used = f"atomic files at {folder}{_origin_of(folder / _ORIGIN_NOTE)}"
    if config["load_col"] is None and not dataset_yaml_files(name):
        used += "; it has no yaml of its own, so every column is loaded (load_col: ~)"
    return f"dataset {name}: {used}"


def _origin_of(note: Path) -> str:
    """What the ``ORIGIN.md`` beside atomic files says made them, for the log: the bundled
    copy, or ``recbole-flame convert`` (which writes one too), or nothing without a note."""
    if not note.is_file():
        return ""
    with open(note, encoding="utf-8", errors="replace") as f:
        title = f.readline()
    if "recbole-flame convert" in title:
        return ", written by recbole-flame convert (origin: ORIGIN.md beside them)"
    return ", recbole_flame's bundled copy"


def materialise_bundled(name: str, folder: Path) -> Path:
    """Decompress the bundled ``<name>.inter.gz`` into ``folder`` (with its origin note beside
    it). The file is written under a temporary name and renamed, so a concurrent run (a Ray
    trial) never reads half of it. Returns the ``.inter`` file's path."""
    source = bundled_file(name)
    if source is None:
        raise DatasetNotFoundError(f"recbole_flame bundles no dataset '{name}'")
    target = folder / f"{name}.inter"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        # The note first: a run that finds the .inter file also finds where it came from.
        note = source.parent / _ORIGIN_NOTE
        if note.is_file():
            shutil.copyfile(note, folder / _ORIGIN_NOTE)
        with gzip.open(source, "rb") as src:
            atomic_write(target, lambda out: shutil.copyfileobj(src, out, 1 << 20))
    except OSError as exc:
        raise DatasetNotFoundError(
            f"dataset '{name}': cannot write recbole_flame's bundled copy to data_path {folder} "
            f"({exc.strerror or exc}); set --data_path=DIR to a writable folder"
        ) from exc
    return target


def download(config: Any) -> str:
    """RecBole's download of a dataset in its list, into ``data_path``: same URL list and the
    same helpers (``recbole.utils.url``) as ``Dataset._download``, which RecBole 1.2.1 cannot
    finish outside distributed training (it calls ``torch.distributed.barrier()``; RecBole issue
    #1989). Any failure (offline, a declined prompt, a bad archive) stops with one line naming
    the dataset, the reason and ``data_path``; a folder this call created is removed again.
    Returns the URL."""
    name, folder = config["dataset"], str(config["data_path"])
    url = recbole_download_url(name)
    created = not os.path.exists(folder)
    try:
        if not recbole_url.decide_download(url):
            raise RuntimeError("download declined")
        recbole_url.makedirs(folder)
        path = recbole_url.download_url(url, folder)
        recbole_url.extract_zip(path, folder)
        os.unlink(path)
        basename = os.path.splitext(os.path.basename(path))[0]
        recbole_url.rename_atomic_files(folder, basename, name)
        if not os.path.isfile(os.path.join(folder, f"{name}.inter")):
            raise RuntimeError(f"the archive holds no {name}.inter")
    # A download fails in many ways (DNS, HTTP, a broken zip, input() without a terminal); each
    # becomes one line with its reason, never a traceback.
    except Exception as exc:
        if created:
            shutil.rmtree(folder, ignore_errors=True)
        reason = " ".join(f"{type(exc).__name__}: {exc}".split())
        raise DatasetNotFoundError(
            f"dataset '{name}' is not at data_path {folder} and RecBole's download from {url} "
            f"failed ({reason}); connect to the internet, or put its atomic files in that folder "
            f"(--data_path=DIR for DIR/{name}/)"
        ) from exc
    return url


def needs_time_field(config: Any) -> bool:
    """Whether RecBole will sort the interactions by ``TIME_FIELD``: a sequential model's
    dataset sorts each user's interactions by it (``SequentialDataset.data_augmentation``), and
    ``eval_args`` order ``TO`` sorts by it before splitting. Pre-split benchmark files do
    neither."""
    if config["benchmark_filename"]:
        return False
    order = (config["eval_args"] or {}).get("order")
    return config["MODEL_TYPE"] == ModelType.SEQUENTIAL or order == "TO"


def inter_header(config: Any) -> tuple[Path, list[str]] | None:
    """The ``.inter`` file that will be loaded and its field names (header line, types
    dropped), or None before a download."""
    name = config["dataset"]
    path = Path(config["data_path"]) / f"{name}.inter"
    sep, encoding = config["field_separator"], config["encoding"]
    if path.is_file():
        with open(path, encoding=encoding) as f:
            head = f.readline()
    elif dataset_source(config) == BUNDLED:
        path = bundled_file(name)
        with gzip.open(path, "rt", encoding=encoding) as f:
            head = f.readline()
    else:
        return None
    return path, [field.split(":")[0] for field in head.rstrip("\r\n").split(sep)]


ATOMIC_TYPES = ("token", "token_seq", "float", "float_seq")


def check_headers(config: Any) -> None:
    """Stop with one line when an atomic file's header is not RecBole's ``name:type`` fields
    joined by ``field_separator`` (RecBole itself would stop deep in loading with "not enough
    values to unpack", or report the wrong column missing)."""
    folder = Path(config["data_path"])
    sep = config["field_separator"]
    for suffix in ("inter", "user", "item"):
        path = folder / f"{config['dataset']}.{suffix}"
        if not path.is_file():
            continue
        with open(path, encoding=config["encoding"], errors="replace") as f:
            head = f.readline().rstrip("\r\n")
        fields = head.split(sep)
        if len(fields) == 1:
            other = next((c for c in (",", "\t", ";", "|", " ") if c != sep and c in head), None)
            if other is not None:
                raise ConfigError(
                    f"{path}'s header has no field_separator {sep!r} but is split by "
                    f"{other!r}; set field_separator: {other!r} (--field_separator='{other}') or "
                    "write the file tab-separated"
                )
        for field in fields:
            kind = field.partition(":")[2]
            if kind not in ATOMIC_TYPES:
                got = f"type '{kind}'" if kind else "no type"
                raise ConfigError(
                    f"{path}'s header field '{field}' has {got}: RecBole's atomic files name "
                    f"each column name:type with type one of {', '.join(ATOMIC_TYPES)} (e.g. "
                    f"user_id:token{sep}item_id:token{sep}timestamp:float); fix the header line"
                )


def check_id_fields(config: Any) -> None:
    """Stop with one line, before any data is loaded, when an atomic file lacks the user or
    item column RecBole will read (``USER_ID_FIELD``, ``ITEM_ID_FIELD``; RecBole itself stops
    with a pandas ``KeyError``). The line names the columns the file has and the keys to set,
    guessed from their usual names, and the time column too where a sequential model needs one
    that is also named otherwise, so one fix covers all three."""
    header = inter_header(config)
    if header is None:
        return
    path, columns = header
    wanted = [("USER_ID_FIELD", USER_NAMES), ("ITEM_ID_FIELD", ITEM_NAMES)]
    missing = [(k, u) for k, u in wanted if config[k] is not None and config[k] not in columns]
    if not missing:
        for suffix, key in (("user", "USER_ID_FIELD"), ("item", "ITEM_ID_FIELD")):
            _check_side_file(config, suffix, key)
        return
    time_field = config["TIME_FIELD"]
    if needs_time_field(config) and time_field and time_field not in columns:
        missing.append(("TIME_FIELD", TIME_NAMES))
    named, unknown = [], []
    for key, usual in missing:
        guess = find_column(columns, None, usual, key, key)
        (named if guess is not None else unknown).append((key, guess))
    names = [f"'{config[key]}' ({key})" for key, _ in missing]
    lacks = (
        f"column {names[0]}"
        if len(names) == 1
        else f"columns {', '.join(names[:-1])} or {names[-1]}"
    )
    fix = []
    if named:
        fix.append("set " + " ".join(f"--{key}={guess}" for key, guess in named))
    if unknown:
        fix.append(
            "set " + " and ".join(key for key, _ in unknown) + " to the file's column(s) for them"
        )
    raise ConfigError(
        f"{path} has no {lacks}; its columns are {', '.join(columns)}: "
        f"{' and '.join(fix)} (or the same keys in a yaml file)"
    )


def _check_side_file(config: Any, suffix: str, key: str) -> None:
    """A ``.user`` or ``.item`` file must hold the id column that joins it to the ``.inter``
    file."""
    path = Path(config["data_path"]) / f"{config['dataset']}.{suffix}"
    field = config[key]
    if field is None or not path.is_file():
        return
    with open(path, encoding=config["encoding"], errors="replace") as f:
        head = f.readline().rstrip("\r\n")
    columns = [c.split(":")[0] for c in head.split(config["field_separator"])]
    if field not in columns:
        raise ConfigError(
            f"{path} has no column '{field}' ({key}), which joins it to the .inter file; its "
            f"columns are {', '.join(columns)}: name that column '{field}' in its header"
        )


def check_time_field(config: Any) -> None:
    """Stop with one line, before any data is loaded, when the model needs a time column
    (``needs_time_field``) that will not be loaded: ``TIME_FIELD`` unset (RecBole's sequential
    dataset then stops with "time_field isn't set", so that is no way round it), left out by
    ``load_col`` or ``unload_col``, or not a column of the ``.inter`` file."""
    if not needs_time_field(config):
        return
    model, field = config["model"], config["TIME_FIELD"]
    if config["MODEL_TYPE"] == ModelType.SEQUENTIAL:
        why = (
            f"{model} is a sequential model: RecBole orders each user's interactions by TIME_FIELD"
        )
    else:
        why = f"eval_args order TO sorts the interactions by TIME_FIELD before {model} splits them"
    if config["time_aware"]:  # TiM4Rec's time path reads the gaps between timestamps
        stand_in = (
            "add one with real timestamps (TiM4Rec's time-aware part reads the gaps between "
            "them; positions would make every gap 1, and time_aware: False is its time-blind "
            "variant)"
        )
    else:
        stand_in = "add one (each interaction's position in its user's sequence will do)"
    fix = (
        f"{stand_in}, set TIME_FIELD to its name and, if you set load_col, list it in load_col's "
        "inter list"
    )
    if not field:
        raise ConfigError(
            f"{why}, which is not set; set TIME_FIELD to the .inter file's time column (if it has "
            f"none, {stand_in}) and, if you set load_col, list it in load_col's inter list"
        )
    load_col, unload_col = config["load_col"], config["unload_col"]
    if load_col is not None:
        inter = load_col.get("inter") if isinstance(load_col, dict) else None
        if inter != "*" and field not in (inter or ()):
            raise ConfigError(
                f"{why} ('{field}'), but load_col's inter list {inter} leaves it out; add it "
                f"(e.g. load_col: {{inter: [user_id, item_id, {field}]}}) or set load_col: ~ "
                "to load every column"
            )
    if isinstance(unload_col, dict) and field in (unload_col.get("inter") or ()):
        raise ConfigError(f"{why} ('{field}'), but unload_col's inter list drops it; keep it")
    header = inter_header(config)
    if header is not None and field not in header[1]:
        path, columns = header
        guess = find_column(columns, None, TIME_NAMES, "time", "TIME_FIELD")
        if guess is not None:  # a column with a usual time name: say the one setting needed
            fix = f"its column '{guess}' looks like the time: set --TIME_FIELD={guess}"
        raise ConfigError(
            f"{why} ('{field}'), but {path} has no such column (it has {', '.join(columns)}); {fix}"
        )
