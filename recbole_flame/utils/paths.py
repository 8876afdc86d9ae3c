"""Where the packaged yaml defaults are."""

from __future__ import annotations

from pathlib import Path

import recbole
import yaml

_PKG = Path(__file__).resolve().parent.parent


def properties_dir() -> Path:
    """``recbole_flame/properties``: the yaml defaults (``model/``, ``dataset/``, ``profile/``),
    in the source tree and the wheel alike."""
    return _PKG / "properties"


def profile_file(name: str) -> Path:
    """``properties/profile/<name>.yaml``: ``evaluation`` (how this package's ranking models
    are scored) or ``comparison`` (the training settings every model of a comparison shares)."""
    return properties_dir() / "profile" / f"{name}.yaml"


def profile(name: str) -> dict:
    """The key: value pairs of a profile (see :func:`profile_file`)."""
    with open(profile_file(name), encoding="utf-8") as f:
        return yaml.safe_load(f) or {}


def _hyper_dir() -> Path:
    return _PKG / "hyper"


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
