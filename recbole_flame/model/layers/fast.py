"""Cheaper equivalents of two element-wise pieces of RecBole's transformer, on CPU above all.

Dropout: PyTorch's CPU dropout draws its mask with ``bernoulli_``, slower than drawing uniforms
and comparing (the timings are in docs/performance.md, FLAME's step cost). The mask has the
same distribution either way (each element kept with probability 1 - p, kept ones scaled by
1 / (1 - p)); only the random stream differs. On other devices ``F.dropout`` is kept.

Activations: RecBole's FFN computes GELU as ``x * 0.5 * (1 + erf(x / sqrt(2)))`` and Swish as
``x * sigmoid(x)`` in separate tensor operations; ``F.gelu`` (the same erf form) and
``F.silu`` compute the same functions in one fused kernel, forward and backward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class FastDropout(nn.Dropout):
    """``nn.Dropout`` (no parameters, same state dict) with a uniform-threshold mask on CPU."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0 or x.device.type != "cpu":
            return F.dropout(x, self.p, self.training, self.inplace)
        if self.p == 1.0:
            return torch.zeros_like(x)
        keep = torch.rand_like(x) >= self.p
        return x * keep * (1.0 / (1.0 - self.p))


def use_fast_dropout(module: nn.Module) -> nn.Module:
    """Replace every plain ``nn.Dropout`` inside ``module`` by :class:`FastDropout`."""
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Dropout:
                setattr(parent, name, FastDropout(child.p, child.inplace))
    return module


_FUSED = {"gelu": F.gelu, "swish": F.silu}


def use_fused_activation(encoder: nn.Module, hidden_act: str) -> nn.Module:
    """Give every RecBole ``FeedForward`` in ``encoder`` the fused form of ``hidden_act``
    (GELU, Swish); other activations are already single PyTorch calls."""
    fused = _FUSED.get(hidden_act)
    if fused is not None:
        for module in encoder.modules():
            if hasattr(module, "intermediate_act_fn"):
                module.intermediate_act_fn = fused
    return encoder
