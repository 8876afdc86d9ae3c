"""What the micro-benchmarks under ``benchmarks/micro/`` time and count: one training step as
RecBole's trainer takes it, and the floating-point operations of a step. (Interleaved timing
itself is :mod:`recbole_flame.utils.timing`, which the package's own inference timing uses.)"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

#: The SASRec keys of a FLAME config: a SASRec built with them is FLAME's backbone, so a FLAME
#: step and a SASRec step are timed on the same network.
BACKBONE_KEYS = (
    "n_layers",
    "n_heads",
    "hidden_size",
    "inner_size",
    "hidden_dropout_prob",
    "attn_dropout_prob",
    "hidden_act",
    "layer_norm_eps",
    "initializer_range",
    "loss_type",
    "MAX_ITEM_LIST_LENGTH",
    "train_batch_size",
    "learning_rate",
    "position_alignment",
)


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, batch: Any) -> None:
    """One optimisation step as RecBole's trainer takes it (losses in a tuple are summed)."""
    model.train()
    optimizer.zero_grad()
    losses = model.calculate_loss(batch)
    loss = sum(losses) if isinstance(losses, tuple) else losses
    loss.backward()
    optimizer.step()


def count_flops(step: Callable[[Any], Any], batch: Any) -> int:
    """Floating-point operations of one call ``step(batch)`` (matrix products and attention,
    forward and backward, as ``torch.utils.flop_counter`` counts them): a cost that does not
    depend on the machine or its load."""
    with FlopCounterMode(display=False) as counter:
        step(batch)
    return counter.get_total_flops()
