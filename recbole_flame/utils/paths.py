"""Where the packaged yaml defaults are."""

from __future__ import annotations

from pathlib import Path

import recbole
import yaml

_PKG = Path(__file__).resolve().parent.parent


def properties_dir() -> Path:
    """The ``properties/`` folder: the top-level one in a source checkout (editable install),
    else the copy the wheel ships as ``recbole_flame/properties``."""
    for candidate in (_PKG.parent / "properties", _PKG / "properties"):
        if (candidate / "model").is_dir() or (candidate / "dataset").is_dir():
            return candidate
    raise FileNotFoundError(
        f"recbole_flame's properties/ folder is missing (looked in {_PKG.parent} and {_PKG}); "
        "reinstall the package"
    )


def profile_file(name: str) -> Path:
    """``properties/profile/<name>.yaml``: ``evaluation`` (how this package's ranking models
    are scored) or ``comparison`` (the training settings every model of a comparison shares)."""
    return properties_dir() / "profile" / f"{name}.yaml"


def profile(name: str) -> dict:
    """The key: value pairs of a profile (see :func:`profile_file`)."""
    with open(profile_file(name), encoding="utf-8") as f:
        return yaml.safe_load(f) or {}


def _hyper_dir() -> Path:
    # the top-level hyper/ in a source checkout, recbole_flame/hyper in a wheel
    return _PKG.parent / "hyper" if (_PKG.parent / "hyper").is_dir() else _PKG / "hyper"


def shipped_hyper_names() -> list[str]:
    return sorted(path.stem for path in _hyper_dir().glob("*.hyper"))


def hyper_file(name: str) -> Path | None:
    """A hyper file shipped with the package, by model name (``SASRec`` or ``SASRec.hyper``,
    any case), or None."""
    wanted = name.removesuffix(".hyper").lower()
    for path in sorted(_hyper_dir().glob("*.hyper")):
        if path.stem.lower() == wanted:
            return path
    return None


def dataset_yaml_files(name: str) -> list[Path]:
    """The yaml files that configure dataset ``name``: this package's
    ``properties/dataset/<name>.yaml`` and RecBole's own (only ml-100k has one)."""
    candidates = (
        properties_dir() / "dataset" / f"{name}.yaml",
        Path(recbole.__file__).resolve().parent / "properties" / "dataset" / f"{name}.yaml",
    )
    return [path for path in candidates if path.is_file()]
