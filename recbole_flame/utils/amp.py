"""Mixed precision as this package's trainer runs it (``enable_amp``, ``amp_dtype``).

RecBole's trainer autocasts to the device's default low precision (float16 on CUDA, bfloat16 on
the CPU), builds a new GradScaler every epoch, only on CUDA and only with ``enable_scaler``, and
clips the scaled gradients. Here: one dtype chosen by ``amp_dtype`` (bfloat16 where the device
has it), one GradScaler per run for float16 (its loss scale carries over epochs and resumes),
``unscale_`` before clipping, and the numerically fragile parts (the losses' reductions and
log-softmax, FLAME's alignment, CANet's guide) in float32 through :func:`full_precision`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

AMP_DTYPES = ("bfloat16", "float16")


def bf16_supported(device: torch.device) -> bool:
    """Whether ``device`` runs bfloat16 autocast natively (every CPU; CUDA from compute
    capability 8.0, Ampere)."""
    if device.type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    return True


def autocast_dtype(config: Any, device: torch.device) -> torch.dtype:
    """The dtype ``enable_amp`` autocasts to: ``amp_dtype``, or bfloat16 where the device has
    it and float16 elsewhere."""
    given = config["amp_dtype"] if "amp_dtype" in config else None
    if given is None:
        return torch.bfloat16 if bf16_supported(device) else torch.float16
    return getattr(torch, str(given))


def uses_scaler(config: Any, device: torch.device) -> bool:
    """A GradScaler runs with float16 autocast (whose gradients underflow without one) and never
    otherwise: bfloat16 has float32's exponent range."""
    return bool(config["enable_amp"]) and autocast_dtype(config, device) == torch.float16


def make_scaler(config: Any, device: torch.device) -> torch.amp.GradScaler:
    """The run's GradScaler (disabled, a pass-through, unless :func:`uses_scaler`)."""
    return torch.amp.GradScaler(device.type, enabled=uses_scaler(config, device))


def autocast(config: Any, device: torch.device) -> contextlib.AbstractContextManager:
    """The training step's autocast region (a no-op context when ``enable_amp`` is off)."""
    return torch.autocast(
        device_type=device.type,
        dtype=autocast_dtype(config, device),
        enabled=bool(config["enable_amp"]),
    )


@contextlib.contextmanager
def full_precision(*tensors: torch.Tensor) -> Iterator[list[torch.Tensor]]:
    """Autocast off for the block, on the device of ``tensors``, which are handed back as
    float32: a loss reduction, a log-sum-exp or a clamp near zero that half precision would
    round away or overflow."""
    device = tensors[0].device.type if tensors else "cpu"
    cast = [t.float() if t.is_floating_point() else t for t in tensors]
    if not torch.amp.is_autocast_available(device):  # e.g. meta: no autocast to turn off
        yield cast
        return
    with torch.autocast(device_type=device, enabled=False):
        yield cast
