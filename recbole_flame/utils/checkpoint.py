"""Checkpoints that hold tensors and plain data only, so ``torch.load(weights_only=True)`` reads
them, written atomically so a crash mid-save leaves the previous file intact."""

from __future__ import annotations

import enum
import os
import pickle
import warnings
from pathlib import Path
from typing import Any

import torch

from recbole_flame.utils.errors import CheckpointError
from recbole_flame.utils.files import atomic_write


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
    atomic_write(path, lambda f: torch.save(obj, f))


EXPECTED = "a checkpoint saved by recbole_flame (torch .pth with a 'state_dict')"


def _first_line(exc: BaseException, limit: int = 120) -> str:
    lines = str(exc).strip().splitlines()
    text = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _unpickler_reason(exc: pickle.UnpicklingError) -> str:
    """The line of torch's long weights-only message that says what failed."""
    text = str(exc)
    marker = "WeightsUnpickler error:"
    if marker in text:
        rest = [ln.strip() for ln in text.split(marker, 1)[1].splitlines() if ln.strip()]
        if rest:
            return rest[0][:120]
    return _first_line(exc)


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """Read a checkpoint of this package with torch's safe (weights-only) unpickler; a file that
    is missing or not such a checkpoint raises CheckpointError with one line naming it."""
    state = read_torch_file(path, map_location)
    if not isinstance(state, dict) or "state_dict" not in state:
        raise CheckpointError(
            f"checkpoint '{path}' has no 'state_dict'; it is not a model file (expected {EXPECTED})"
        )
    weights = state["state_dict"]
    if not isinstance(weights, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in weights.items()
    ):
        raise CheckpointError(
            f"checkpoint '{path}' has a 'state_dict' that is not a mapping of parameter names "
            f"to tensors (expected {EXPECTED})"
        )
    return state


def read_torch_file(path: str | os.PathLike, map_location: Any = "cpu") -> Any:
    """Whatever a ``torch.save`` file holds, read with the safe (weights-only) unpickler; a
    file torch cannot read that way raises CheckpointError with one line naming it."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint '{path}' does not exist; check the path")
    try:
        with warnings.catch_warnings():
            # e.g. "Detected pickle protocol 4": noise before the one-line error below.
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        if "Unsupported global" not in str(exc):
            # Not a class the weights-only reader refused but bytes it cannot parse: random
            # data, a plain pickle ("Unsupported operand"), "invalid load key", ...
            raise CheckpointError(
                f"checkpoint '{path}' is not {EXPECTED}: torch cannot read it "
                f"({_unpickler_reason(exc)})"
            ) from exc
        raise CheckpointError(
            f"checkpoint '{path}' holds pickled Python objects, not only tensors and plain data "
            "(RecBole's own format?); it is not loaded for safety: re-create it with recbole_flame"
        ) from exc
    except OSError as exc:
        raise CheckpointError(f"checkpoint '{path}' cannot be read ({_first_line(exc)})") from exc
    # torch's readers fail on a file that is not a checkpoint (text, truncated, another
    # format) with whatever their parser hits first: IndexError, RuntimeError, EOFError,
    # zipfile or struct errors, KeyError... Any of them means the same to the user.
    except Exception as exc:
        raise CheckpointError(
            f"checkpoint '{path}' is not {EXPECTED}: torch cannot read it ({_first_line(exc)})"
        ) from exc


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
