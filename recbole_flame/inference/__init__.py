"""Using a trained model: load it (:func:`load_model`), recommend with it (:func:`recommend`),
export it (:func:`export`). Imported lazily: the trainer imports :mod:`.record` on every
checkpoint it writes and must not pull in the rest."""

from __future__ import annotations

from typing import Any

__all__ = ["LoadedModel", "export", "load_model", "recommend"]

_WHERE = {
    "LoadedModel": "recbole_flame.inference.load",
    "load_model": "recbole_flame.inference.load",
    "recommend": "recbole_flame.inference.recommendation",
    "export": "recbole_flame.inference.exporting",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'recbole_flame.inference' has no attribute '{name}'")
