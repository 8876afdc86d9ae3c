"""Where the packaged yaml defaults are."""

from __future__ import annotations

from pathlib import Path

import recbole

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


def dataset_yaml_files(name: str) -> list[Path]:
    """The yaml files that configure dataset ``name``: this package's
    ``properties/dataset/<name>.yaml`` and RecBole's own (only ml-100k has one)."""
    candidates = (
        properties_dir() / "dataset" / f"{name}.yaml",
        Path(recbole.__file__).resolve().parent / "properties" / "dataset" / f"{name}.yaml",
    )
    return [path for path in candidates if path.is_file()]
