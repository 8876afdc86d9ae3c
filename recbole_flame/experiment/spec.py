"""An experiment's spec (yaml): what it trains, where its results live, each run's config.

A spec names the dataset, the seeds, settings shared by every run (``base``) and the runs
(label -> model and its own settings), and optionally ``compare: [[A, B], ...]`` for paired
tests, ``extras: {column: dotted.path}``, entries of the run's result (model diagnostics such
as ``cetnet_diagnostics.test.fused.auc``) tabulated beside the metrics, and ``derived: {row:
{from: run, result: {key: dotted.path}}}``, a baseline measured inside a run (FLAME's frozen
stage-1 SASRec) as a row of its own that ``compare`` can pair with the run, and
``milestones: [0.05, ...]``: the first epoch each run's validation score reached each value, and
``time_to_accuracy: [[A, B], ...]``: A's wall time to B's best validation score over B's own
time to it, per seed (valid only where both ran on the same machine). ``report`` and
``test_metrics`` pick the metric columns and the paired tests' metrics; ``description`` heads
the summary; ``data_path`` is the dataset folder.

Relative paths (``data_path``, the results folder) are relative to the current directory.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml

from recbole_flame.experiment.output import shown
from recbole_flame.utils.errors import UserError


def slug(label: str) -> str:
    """A run label as a file-name part: runs of other characters than letters, digits and
    dots become one ``-`` (``"A b"`` -> ``"A-b"``)."""
    return re.sub(r"[^A-Za-z0-9.]+", "-", label).strip("-")


def load_spec(path: str | os.PathLike) -> dict[str, Any]:
    """The spec at ``path`` with its defaults filled: ``name`` (the file's stem, which names
    the results folder), ``path`` (as the resume command gives it: relative to the current
    directory where it lies inside it), seeds ``[2020]``, empty ``base``, ``compare`` and
    ``extras``. Raises :class:`UserError` (one line) for a missing or unreadable file, or one
    without a ``dataset`` and a mapping of ``runs``."""
    file = Path(path)
    if not file.is_file():
        raise UserError(f"no such spec file: {path} (the specs are benchmarks/experiments/*.yaml)")
    try:
        spec = yaml.safe_load(file.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        raise UserError(f"{path}{where}: not valid yaml ({getattr(exc, 'problem', exc)})") from exc
    runs = spec.get("runs") if isinstance(spec, dict) else None
    if not isinstance(runs, dict) or not runs or not spec.get("dataset"):
        raise UserError(
            f"{path}: not an experiment spec: it needs 'dataset: NAME' and 'runs: {{LABEL: "
            "{model: NAME, config: {...}}, ...}' (see benchmarks/README.md)"
        )
    for label, entry in runs.items():
        if not isinstance(entry, dict) or not entry.get("model"):
            raise UserError(f"{path}: run {label!r} names no model ('{label}: {{model: NAME}}')")
    spec.setdefault("name", file.stem)
    spec.setdefault("path", shown(file))
    spec.setdefault("seeds", [2020])
    spec.setdefault("base", {})
    spec.setdefault("compare", [])
    spec.setdefault("extras", {})
    return spec


def results_dir(spec: dict[str, Any]) -> Path:
    """Where a spec's results live by default: ``benchmarks/results/<spec name>/`` under the
    current directory (absolute, so the runs' configs name the same folder from anywhere)."""
    return Path.cwd() / "benchmarks" / "results" / spec["name"]


def dig(result: dict[str, Any], path: str) -> Any:
    """``result[a][b]...`` for ``path`` ``"a.b..."`` (an integer indexes a list), or None where
    an entry is missing."""
    value: Any = result
    for key in path.split("."):
        index = int(key) if key.lstrip("-").isdigit() else None
        if isinstance(value, list) and index is not None and -len(value) <= index < len(value):
            value = value[index]
        elif isinstance(value, dict) and key in value:
            value = value[key]
        else:
            return None
    return value


def result_file(out_dir: Path, label: str, seed: int) -> Path:
    """Where a run's result lives: ``<out_dir>/<label slug>-seed<k>.json``."""
    return out_dir / f"{slug(label)}-seed{seed}.json"


def parked_file(out_dir: Path, label: str, seed: int) -> Path:
    """Where a run's parked state lives: ``<out_dir>/parked/<label slug>-seed<k>.tar``."""
    return out_dir / "parked" / f"{slug(label)}-seed{seed}.tar"


def run_config(spec: dict, label: str, seed: int, out_dir: Path) -> tuple[dict[str, Any], Path]:
    """The config dict of one (run, seed) of ``spec`` and its checkpoint folder
    (``<out_dir>/ckpt/<label slug>-seed<k>``)."""
    entry = spec["runs"][label]
    ckpt = out_dir / "ckpt" / f"{slug(label)}-seed{seed}"
    config = {
        **spec["base"],
        **(entry.get("config") or {}),
        "seed": seed,
        "checkpoint_dir": str(ckpt),
        "show_progress": False,
    }
    # "$VAR" in a setting (e.g. the folder of downloaded weights) comes from the environment,
    # "{seed}" is the run's seed (e.g. another run's stage-1 cache of the same seed).
    config = {
        k: os.path.expandvars(v).replace("{seed}", str(seed)) if isinstance(v, str) else v
        for k, v in config.items()
    }
    if spec.get("data_path"):
        config["data_path"] = str(Path(spec["data_path"]).resolve())
    return config, ckpt
