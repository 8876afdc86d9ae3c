"""Checkpoints that hold tensors and plain data only, so ``torch.load(weights_only=True)`` reads
them, written atomically so a crash mid-save leaves the previous file intact."""

from __future__ import annotations

import enum
import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

import torch

from recbole_flame.utils.errors import CheckpointError


def plain(value: Any) -> Any:
    """``value`` as data the weights-only unpickler accepts: enums and devices become strings,
    containers are walked, anything else unknown becomes its ``repr``."""
    if value is None or isinstance(value, torch.Tensor):
        return value
    # Exact builtin types: numpy.float64 subclasses float but pickles as a numpy global.
    for kind in (bool, int, float, str):
        if isinstance(value, kind):
            return kind(value)
    if isinstance(value, enum.Enum):
        return value.name
    if isinstance(value, torch.device):
        return str(value)
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [plain(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        try:
            return plain(value.item())
        except (TypeError, ValueError):
            pass
    return repr(value)


def plain_config(config: Any) -> dict[str, Any]:
    """A RecBole Config's final settings as plain data (for provenance, not for rebuilding)."""
    return plain(dict(config.final_config_dict))


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to a temporary file beside ``path``, then rename over it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it private; give it a normal file's mode
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """Read a checkpoint of this package with torch's safe (weights-only) unpickler."""
    state = read_torch_file(path, map_location)
    if not isinstance(state, dict) or "state_dict" not in state:
        raise CheckpointError(f"checkpoint '{path}' has no 'state_dict'; it is not a model file")
    return state


def read_torch_file(path: str | os.PathLike, map_location: Any = "cpu") -> Any:
    """Whatever a ``torch.save`` file holds, read with the safe (weights-only) unpickler."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint '{path}' does not exist; check the path")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"checkpoint '{path}' holds pickled Python objects, not only tensors and plain data "
            "(RecBole's own format?); it is not loaded for safety: re-create it with recbole_flame"
        ) from exc
    except (RuntimeError, EOFError, OSError) as exc:
        raise CheckpointError(f"checkpoint '{path}' cannot be read ({exc}); re-create it") from exc


def first_mismatch(model: torch.nn.Module, state_dict: dict[str, torch.Tensor]) -> str | None:
    """The first key that is missing, unexpected or of another shape, described; None if the
    state dict fits ``model`` exactly."""
    own = model.state_dict()
    for key, tensor in own.items():
        if key not in state_dict:
            return f"'{key}' is missing from the checkpoint"
        if tuple(state_dict[key].shape) != tuple(tensor.shape):
            return (
                f"'{key}' has shape {tuple(state_dict[key].shape)} in the checkpoint but "
                f"{tuple(tensor.shape)} in the model"
            )
    for key in state_dict:
        if key not in own:
            return f"'{key}' is in the checkpoint but not in the model"
    return None
