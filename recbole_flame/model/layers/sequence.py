"""Batch helpers shared by the sequential models: padding trim, dense (all-position) targets and
position ids."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from recbole.data.interaction import Interaction

TRAIN_MODES = ("prefix", "dense")
POSITION_ALIGNMENTS = ("start", "end")


def trim_batch(interaction: Interaction, length_field: str, list_suffix: str) -> Interaction:
    """``interaction`` with every list field cut to the batch's longest real sequence.

    RecBole right-pads to L; for a model whose output at a real step ignores later steps (causal
    attention or a scan) the padding columns are pure cost. Returns a new Interaction.
    """
    longest = int(interaction[length_field].max())
    fields = {}
    for name, value in interaction.interaction.items():
        if name.endswith(list_suffix) and value.dim() >= 2 and value.size(1) > longest:
            value = value[:, :longest]
        fields[name] = value
    return Interaction(fields)


def dense_targets(
    item_seq: torch.Tensor, item_seq_len: torch.Tensor, pos_items: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The next item at every step of ``item_seq`` and the mask of real steps (both B x l).

    Step t's target is item t+1 of the sequence; the last real step's is the row's own target.
    """
    steps = torch.arange(item_seq.size(1), device=item_seq.device)
    real = steps < item_seq_len.unsqueeze(1)
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
