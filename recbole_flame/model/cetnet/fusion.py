"""CETNet's fusion and losses: pure functions of the base models' logits (the formulas are in
the package docstring, :mod:`recbole_flame.model.cetnet`)."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from recbole_flame.utils.amp import full_precision

FUSION_SPACES = ("prob", "logit")


class Fused(NamedTuple):
    """The ensemble's output for a batch: ``prob`` [B], ``weights`` [K, B], and ``logit`` [B]
    when fusing in logit space (None in prob space, where no fused logit exists)."""

    prob: torch.Tensor
    weights: torch.Tensor
    logit: torch.Tensor | None


def binary_entropy(logits: torch.Tensor, eps: float) -> torch.Tensor:
    """Entropy in nats of ``Bernoulli(sigmoid(logits))``, p clamped to ``[eps, 1 - eps]`` so that
    a saturated model gets a finite entropy and a finite gradient."""
    # H is symmetric in p and 1 - p: work with the smaller one, sigmoid(-|z|), because float32
    # cannot hold 1 - eps for small eps (1 - 1e-7 rounds to 1 - 1.19e-7).
    q = torch.sigmoid(-logits.abs()).clamp(min=eps)
    return -(q * torch.log(q) + (1.0 - q) * torch.log1p(-q))


def fusion_weights(logits: torch.Tensor, tau: float, eps: float) -> torch.Tensor:
    """General softmax over models (dim 0) of the confidence ``-H_k / tau``; logits [K, B]."""
    return torch.softmax(-binary_entropy(logits, eps) / tau, dim=0)


def fuse(
    logits: torch.Tensor,
    tau: float,
    eps: float,
    space: str = "prob",
    detach_weights: bool = False,
) -> Fused:
    """Confidence-weighted fusion of the base models' logits [K, B]."""
    weights = fusion_weights(logits, tau, eps)
    if detach_weights:
        weights = weights.detach()
    if space == "prob":
        return Fused((weights * torch.sigmoid(logits)).sum(0), weights, None)
    if space == "logit":
        logit = (weights * logits).sum(0)
        return Fused(torch.sigmoid(logit), weights, logit)
    raise ValueError(f"fusion space must be one of {FUSION_SPACES}, not {space!r}")


def collaborative_losses(
    logits: torch.Tensor, label: torch.Tensor, fused: Fused, collab_weight: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(BCE(p, y), sum_k BCE(p_k, y), alpha * sum_k BCE(p_k, stopgrad(p)))``, batch means.

    Per-model terms use the logits (``BCE-with-logits``) to stay finite when a model saturates;
    the ensemble target is detached, so each model moves toward the ensemble, never the reverse.
    """
    if fused.logit is not None:
        fused_loss = F.binary_cross_entropy_with_logits(fused.logit, label)
    else:
        # CUDA autocast refuses binary_cross_entropy on probabilities (unsafe in half
        # precision); the fused probability's loss is taken in float32 outside it.
        with full_precision(fused.prob, label) as (prob, target):
            fused_loss = F.binary_cross_entropy(prob, target)
    expanded = label.expand_as(logits)
    base_loss = F.binary_cross_entropy_with_logits(logits, expanded, reduction="none").mean(1).sum()
    target = fused.prob.detach().expand_as(logits)
    collab = F.binary_cross_entropy_with_logits(logits, target, reduction="none").mean(1).sum()
    return fused_loss, base_loss, collab_weight * collab
