"""RecBole's hyper-parameter file format, parsed literally (RecBole ``eval``s it).

One parameter per line, ``#`` starts a comment::

    learning_rate loguniform -8,0        # exp(uniform(-8, 0)): bounds in natural-log space
    tau uniform 0.1,2.0
    n_layers choice [1,2,3]
    base_models choice [[DCNV2, DeepFM], [DCNV2, DCNV2]]
    inner_size quniform 64,512,64
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recbole_flame.config.checks import check_value, show
from recbole_flame.config.configurator import parse_value
from recbole_flame.utils.errors import ConfigError, UserError

KINDS = ("choice", "uniform", "loguniform", "quniform")


class HyperFileError(UserError):
    """A hyper file that cannot be parsed; the message names the file and line."""


@dataclass(frozen=True)
class HyperParam:
    name: str
    kind: str
    values: tuple  # choice: the options; uniform/loguniform: (lo, hi); quniform: (lo, hi, q)

    def to_tune(self):
        """The Ray Tune search-space object for this parameter."""
        from ray import tune

        if self.kind == "choice":
            return tune.choice(list(self.values))
        if self.kind == "uniform":
            return tune.uniform(*self.values)
        if self.kind == "loguniform":
            lo, hi = self.values
            return tune.loguniform(math.exp(lo), math.exp(hi))
        if self.integral():
            # Tune's quniform draws floats (64.0), which integer keys such as inner_size refuse.
            return tune.qrandint(*(int(v) for v in self.values))
        lo, hi, q = self.values
        return tune.quniform(lo, hi, q)

    def integral(self) -> bool:
        """A quniform whose bounds and step are whole numbers: it draws integers."""
        return self.kind == "quniform" and all(float(v).is_integer() for v in self.values)

    def extremes(self) -> tuple:
        """Values the search can draw that bound the rest: every choice, or both ends."""
        if self.kind == "choice":
            return self.values
        lo, hi = self.values[:2]
        if self.kind == "loguniform":
            return (math.exp(lo), math.exp(hi))
        if self.integral():
            return (int(lo), int(hi))
        return (lo, hi)


def _numbers(text: str, count: int, where: str, kind: str) -> tuple[float, ...]:
    parts = [p.strip() for p in text.split(",")]
    shape = {2: "lo,hi", 3: "lo,hi,q"}[count]
    if len(parts) != count:
        raise HyperFileError(f"{where}: '{kind}' needs {shape}, got '{text}'")
    try:
        values = tuple(float(p) for p in parts)
    except ValueError as exc:
        raise HyperFileError(f"{where}: '{kind}' needs numbers {shape}, got '{text}'") from exc
    if not all(math.isfinite(v) for v in values):
        raise HyperFileError(f"{where}: '{kind}' needs finite numbers {shape}, got '{text}'")
    if not values[0] < values[1]:
        raise HyperFileError(f"{where}: '{kind}' needs lo < hi, got '{text}'")
    if count == 3 and values[2] <= 0:
        raise HyperFileError(f"{where}: 'quniform' needs a positive step q, got '{text}'")
    # Ray refuses (with a traceback, when the search starts) bounds that are not multiples of q.
    if count == 3 and not all(
        math.isclose(v / values[2], round(v / values[2])) for v in values[:2]
    ):
        raise HyperFileError(
            f"{where}: 'quniform' needs lo and hi that are multiples of q, got '{text}'"
        )
    return values


def parse_line(line: str, where: str) -> HyperParam | None:
    """One line of a hyper file (None for blank lines and comments)."""
    text = line.split("#", 1)[0].strip()
    if not text:
        return None
    fields = text.split(maxsplit=2)
    if len(fields) < 3:
        raise HyperFileError(f"{where}: expected 'name kind values', got '{text}'")
    name, kind, rest = fields
    if kind not in KINDS:
        raise HyperFileError(f"{where}: unknown kind '{kind}' (use one of {', '.join(KINDS)})")
    if kind == "choice":
        options = parse_value(rest)
        if not isinstance(options, (list, tuple)) or not options:
            raise HyperFileError(
                f"{where}: 'choice' needs a non-empty list [a, b, ...], got '{rest}'"
            )
        return HyperParam(name, kind, tuple(options))
    return HyperParam(name, kind, _numbers(rest, 3 if kind == "quniform" else 2, where, kind))


def parse_hyper_file(path: str | Path) -> list[HyperParam]:
    """All parameters of a hyper file; stops at the first malformed line with file:line."""
    path = Path(path)
    if not path.is_file():
        raise HyperFileError(f"hyper file '{path}' does not exist; check the path")
    params: list[HyperParam] = []
    seen: set[str] = set()
    try:
        content = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise HyperFileError(
            f"hyper file '{path}' is not a text file (not UTF-8); expected lines of "
            "'name kind values' such as 'learning_rate loguniform -8,0'"
        ) from exc
    except OSError as exc:
        raise HyperFileError(
            f"hyper file '{path}' cannot be read: {exc.strerror or type(exc).__name__}"
        ) from exc
    for number, line in enumerate(content.splitlines(), start=1):
        where = f"{path}:{number}"
        param = parse_line(line, where)
        if param is None:
            continue
        if param.name in seen:
            raise HyperFileError(f"{where}: '{param.name}' is defined twice")
        seen.add(param.name)
        params.append(param)
    if not params:
        raise HyperFileError(f"hyper file '{path}' defines no parameter")
    return params


def search_space(params: list[HyperParam]) -> dict[str, Any]:
    return {p.name: p.to_tune() for p in params}


def check_search_space(params: list[HyperParam], model: str, path: str | Path) -> None:
    """Stop with one line, before any trial starts, when the search can draw a value that the
    config checks refuse for ``model`` (each trial would otherwise fail on its own)."""
    from recbole_flame.utils.registry import get_model

    model_class = get_model(model)
    for param in params:
        for value in param.extremes():
            try:
                check_value(param.name, value, model_class)
            except ConfigError as exc:
                raise HyperFileError(
                    f"hyper file '{path}': {param.name} {param.kind} can draw {show(value)}, "
                    f"but {exc}"
                ) from exc
