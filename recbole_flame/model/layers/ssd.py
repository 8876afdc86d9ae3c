"""Structured state space duality (SSD, the Mamba2 layer) in pure PyTorch, with optional kernels.

The recurrence, per head (state ``h_t`` of shape P x N)::

    h_t = exp(dt_t * A) h_{t-1} + dt_t * x_t B_t^T        y_t = h_t C_t + D x_t

:func:`ssd_chunked` computes it exactly (up to rounding) with the chunked algorithm of the
Mamba2 paper (Dao & Gu 2024, "SSD minimal"): quadratic attention-like work inside each chunk of
``chunk_size`` steps, a linear recurrence over the chunk states between them. It runs on any
device; :func:`ssd` sends CUDA tensors to mamba-ssm's fused Triton kernel when it is installed.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import sys
import types
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from recbole_flame.utils.errors import ConfigError

SSD_BACKENDS = ("auto", "torch", "kernel")


# --- the chunked algorithm ----------------------------------------------------------------
def segsum(x: torch.Tensor) -> torch.Tensor:
    """``out[..., i, j] = x[..., j+1] + ... + x[..., i]`` for ``j <= i`` and ``-inf`` above the
    diagonal, so ``exp(out)`` is the lower-triangular decay matrix.

    A difference of running sums, as mamba-ssm's kernel computes it; the entries above the
    diagonal (positive, possibly large) are masked before any ``exp``, so nothing overflows and
    no gradient flows through them."""
    t = x.size(-1)
    cs = x.cumsum(dim=-1)
    lower = torch.ones(t, t, dtype=torch.bool, device=x.device).tril()
    return (cs.unsqueeze(-1) - cs.unsqueeze(-2)).masked_fill(~lower, -torch.inf)


def ssd_chunked(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    chunk_size: int,
    D: torch.Tensor | None = None,
    initial_states: torch.Tensor | None = None,
    return_final_states: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """The SSD scan, chunk by chunk, for any sequence length.

    Shapes as mamba-ssm's: ``x`` (b, l, h, p); ``dt`` (b, l, h), already positive (softplus
    applied); ``A`` (h,), negative; ``B`` and ``C`` (b, l, g, n) with ``g`` groups shared by
    ``h / g`` heads each; ``D`` (h,); ``initial_states`` (b, h, p, n). Returns ``y`` (b, l, h, p)
    and, if asked, the state after the last step (b, h, p, n).
    """
    b, length, h, p = x.shape
    g, n = B.shape[-2:]
    if h % g:
        raise ValueError(f"{h} heads cannot share {g} groups of B and C")

    # Pad to whole chunks. dt = 0 makes a step the identity (decay exp(0) = 1, no input), so
    # the padded steps change neither the outputs before them nor the final state.
    pad = -length % chunk_size
    if pad:
        x, B, C = (F.pad(t, (0, 0, 0, 0, 0, pad)) for t in (x, B, C))
        dt = F.pad(dt, (0, 0, 0, pad))
    n_chunks = (length + pad) // chunk_size

    def chunked(t: torch.Tensor) -> torch.Tensor:  # (b, c*q, ...) -> (b, c, q, ...)
        return t.reshape(b, n_chunks, chunk_size, *t.shape[2:])

    # Heads are split as (g, r): the r heads of group g read B[g], C[g], which are never copied.
    r = h // g
    xdt = chunked(x * dt.unsqueeze(-1)).unflatten(3, (g, r))  # dt_t x_t, (b, c, q, g, r, p)
    a = chunked(dt * A).unflatten(3, (g, r)).permute(0, 3, 4, 1, 2)  # log-decays (b, g, r, c, q)
    a_cum = a.cumsum(dim=-1)
    B, C = chunked(B), chunked(C)  # (b, c, q, g, n)

    # 1. Within each chunk: y_i = sum_{j<=i} (C_i . B_j) exp(a_{j+1} + ... + a_i) xdt_j.
    cb = torch.einsum("bcign,bcjgn->bgcij", C, B).unsqueeze(2)  # (b, g, 1, c, q, q)
    y = torch.einsum("bgrcij,bcjgrp->bcigrp", cb * torch.exp(segsum(a)), xdt)

    # 2. Each chunk's own contribution to the state at its end.
    to_end = torch.exp(a_cum[..., -1:] - a_cum).permute(0, 3, 4, 1, 2)  # (b, c, q, g, r)
    states = torch.einsum("bcjgn,bcjgrp->bcgrpn", B, xdt * to_end.unsqueeze(-1))

    # 3. The state entering each chunk: a recurrence over chunks, written as one more segsum.
    if initial_states is None:
        initial_states = x.new_zeros(b, h, p, n)
    initial_states = initial_states.unflatten(1, (g, r)).unsqueeze(1)
    states = torch.cat([initial_states, states], dim=1)  # (b, c+1, g, r, p, n)
    chunk_decay = torch.exp(segsum(F.pad(a_cum[..., -1], (1, 0))))  # (b, g, r, c+1, c+1)
    states = torch.einsum("bgrzc,bcgrpn->bzgrpn", chunk_decay, states)
    entering, final_state = states[:, :-1], states[:, -1].flatten(1, 2)

    # 4. What the entering state adds to each step, decayed from the chunk start to it.
    from_start = torch.exp(a_cum).permute(0, 3, 4, 1, 2).unsqueeze(-1)  # (b, c, q, g, r, 1)
    y = y + torch.einsum("bcign,bcgrpn->bcigrp", C, entering) * from_start

    y = y.reshape(b, n_chunks * chunk_size, h, p)[:, :length]
    if D is not None:
        y = y + x[:, :length] * D[:, None]
    return (y, final_state) if return_final_states else y


# --- the kernel, when it is there ---------------------------------------------------------
def _import_skipping_package_init(package: str, module: str):
    """``package.module`` imported without running ``package/__init__.py``. mamba-ssm's
    ``__init__`` imports its compiled CUDA extensions (selective scan, causal conv1d), which the
    SSD Triton kernel does not use: a build without them (``MAMBA_SKIP_CUDA_BUILD``) or a
    mismatched one would otherwise hide a kernel that works."""
    if package not in sys.modules:
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise ImportError(f"no package {package}")
        shell = types.ModuleType(package)
        shell.__path__ = list(spec.submodule_search_locations)
        shell.__spec__ = spec
        sys.modules[package] = shell
    return importlib.import_module(f"{package}.{module}")


@functools.cache
def _kernel() -> Callable | None:
    """mamba-ssm's fused SSD, or None. Imported once: without CUDA the import fails in ways
    other than ImportError (missing shared libraries, Triton errors), so catch them all."""
    try:
        combined = _import_skipping_package_init("mamba_ssm", "ops.triton.ssd_combined")
        return combined.mamba_chunk_scan_combined
    except Exception:
        return None


def kernel_available() -> bool:
    """True when mamba-ssm imports and CUDA is there."""
    return torch.cuda.is_available() and _kernel() is not None


def backend_in_use(backend: str, cuda: bool) -> str:
    """Which SSD runs for ``ssd_backend`` on this device, in words (for the run's log)."""
    if backend == "kernel" or (backend == "auto" and cuda and _kernel() is not None):
        return "mamba-ssm's Triton kernel (float32 dots in TF32 unless TRITON_F32_DEFAULT=ieee)"
    if backend == "auto":
        why = "not on CUDA" if not cuda else "mamba-ssm's SSD kernel does not import"
        return f"the PyTorch SSD ({why})"
    return "the PyTorch SSD"


def check_backend(backend: str, cuda: bool) -> None:
    """Stop on an unknown ``ssd_backend``, or ``kernel`` where it cannot run."""
    if backend not in SSD_BACKENDS:
        raise ConfigError(f"ssd_backend must be one of {', '.join(SSD_BACKENDS)}, not '{backend}'")
    if backend == "kernel" and not (cuda and kernel_available()):
        raise ConfigError(
            "ssd_backend: kernel needs mamba-ssm and a CUDA device, and "
            f"{'mamba-ssm does not import' if _kernel() is None else 'the model is not on CUDA'}; "
            "set ssd_backend: torch (or auto) to use the pure-PyTorch SSD"
        )


def ssd(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    chunk_size: int,
    D: torch.Tensor | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """:func:`ssd_chunked`, or mamba-ssm's kernel when ``backend`` allows it and ``x`` is on
    CUDA (``auto``), or always (``kernel``; a ConfigError where it cannot run)."""
    check_backend(backend, x.is_cuda)
    if backend == "kernel" or (backend == "auto" and x.is_cuda and _kernel() is not None):
        # dt is already softplus'ed, so the kernel gets no dt_bias and no dt_softplus.
        return _kernel()(
            x.contiguous(), dt.contiguous(), A, B.contiguous(), C.contiguous(), chunk_size, D=D
        )
    return ssd_chunked(x, dt, A, B, C, chunk_size, D=D)


# --- the pieces around the scan -----------------------------------------------------------
def causal_conv1d(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """Depthwise convolution over the last axis that sees only the current and earlier steps.

    ``x`` (batch, channels, length); ``weight`` (channels, 1, k)."""
    k = weight.size(-1)
    return F.conv1d(F.pad(x, (k - 1, 0)), weight, bias, groups=weight.size(0))


class CausalConv1d(nn.Conv1d):
    """A depthwise ``nn.Conv1d`` (so initialisers that look for Conv1d find it) that is causal
    and keeps the length: ``(batch, channels, length) -> same``."""

    def __init__(self, channels: int, kernel_size: int, bias: bool = True) -> None:
        super().__init__(channels, channels, kernel_size, groups=channels, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return causal_conv1d(x, self.weight, self.bias)


class GatedRMSNorm(nn.Module):
    """``RMSNorm(y * silu(z)) * weight`` over the last axis (Mamba2's gate before the norm)."""

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        v = y * F.silu(z)
        return v * torch.rsqrt(v.pow(2).mean(dim=-1, keepdim=True) + self.eps) * self.weight
