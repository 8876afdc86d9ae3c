"""Batch helpers shared by the sequential models: padding trim, dense (all-position) targets and
position ids."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from recbole.data.interaction import Interaction

from recbole_flame.data.dense import DENSE_FIRST_STEP

TRAIN_MODES = ("prefix", "dense")
POSITION_ALIGNMENTS = ("start", "end")


def trim_batch(interaction: Interaction, length_field: str, list_suffix: str) -> Interaction:
    """``interaction`` with every list field cut to the batch's longest real sequence.

    RecBole right-pads to L; for a model whose output at a real step ignores later steps (causal
    attention or a scan) the padding columns are pure cost. Returns a new Interaction.
    """
    layout = getattr(interaction, "layout", None)
    # A layout from the data loader knows the longest on the host: no read of the device.
    longest = layout.width if layout is not None else int(interaction[length_field].max())
    fields = {}
    for name, value in interaction.interaction.items():
        if name.endswith(list_suffix) and value.dim() >= 2 and value.size(1) > longest:
            value = value[:, :longest]
        fields[name] = value
    if layout is not None:
        return type(interaction).wrap(Interaction(fields), layout)
    return Interaction(fields)


def first_trained_step(interaction: Interaction) -> torch.Tensor | None:
    """Per window, the first step that is trained (``dense_min_context``), or None: all."""
    return interaction[DENSE_FIRST_STEP] if DENSE_FIRST_STEP in interaction else None


def dense_step_mask(
    item_seq_len: torch.Tensor, length: int, first_step: torch.Tensor | None = None
) -> torch.Tensor:
    """B x ``length`` mask of the trained steps: real, and from ``first_step`` on if given."""
    steps = torch.arange(length, device=item_seq_len.device)
    mask = steps < item_seq_len.unsqueeze(1)
    if first_step is not None:
        mask &= steps >= first_step.unsqueeze(1)
    return mask


def dense_targets(
    item_seq: torch.Tensor,
    item_seq_len: torch.Tensor,
    pos_items: torch.Tensor,
    first_step: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The next item at every step of ``item_seq`` and the mask of trained steps (both B x l).

    Step t's target is item t+1 of the sequence; the last real step's is the row's own target.
    Steps before ``first_step`` (context whose targets an overlapping window trains) and padded
    steps are masked out, their target 0.
    """
    real = dense_step_mask(item_seq_len, item_seq.size(1), first_step)
    targets = F.pad(item_seq[:, 1:], (0, 1))
    last = (item_seq_len - 1).unsqueeze(1)
    targets = targets.scatter(1, last, pos_items.unsqueeze(1))
    return targets.masked_fill(~real, 0), real


def position_ids(
    item_seq_len: torch.Tensor, length: int, max_len: int, alignment: str
) -> torch.Tensor:
    """Position ids of the ``length`` steps of right-padded sequences (1 x l or B x l).

    ``start`` (RecBole): step t has position t, so a position means "index from the start".
    ``end`` (the FLAME and SASRec authors' left-padded layout): the last real item of every
    sequence sits at ``max_len - 1``, so a position means "distance from the end" while the
    batch itself stays right-padded. Padded steps get ``max_len - 1``; they are masked out.
    """
    steps = torch.arange(length, device=item_seq_len.device).unsqueeze(0)
    if alignment == "start":
        return steps
    ids = steps + (max_len - item_seq_len).unsqueeze(1)
    return ids.clamp(max=max_len - 1)
