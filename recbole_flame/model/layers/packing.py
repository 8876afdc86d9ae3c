"""Sequence packing: several prefix samples side by side in one row, exactly.

RecBole's prefix batches are right-padded to the batch's longest sample, and most samples are
short (amazon-beauty: 8.4 real items a sample on average, L = 50), so most of an encoder pass is
padding. :func:`pack_sequences` lays the same samples out as rows of ``width`` positions, several
samples a row, with

* each sample's own position ids (``start``: 0 .. n-1; ``end``: L-n .. L-1, the authors' layout),
* a block-diagonal causal mask: a position sees the earlier positions of its own sample and
  nothing else (padding positions see nothing; their outputs are never read),
* each sample's output read back at its own last item, in the batch's order.

Every position-wise piece of a transformer (embeddings, LayerNorm, FFN, dropout) is unchanged by
the layout, and attention over a row gives each sample the same weights as attention over its own
padded row: keys of other samples carry the same additive -10000 as padding keys do, which is 0
after the softmax in float32. So outputs, losses and gradients equal the unpacked ones up to float
rounding (tested). The batch keeps its samples and their order; only the rows change.

Rows are filled first-fit in order of decreasing length (a sample of length ``width`` has a row to
itself), which uses close to the fewest rows: sum of lengths / width, rounded up.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from recbole_flame.model.layers.sequence import position_ids


@dataclass
class PackedBatch:
    """A batch of right-padded sequences laid out several to a row (see the module docstring).

    ``items``, ``positions`` and ``segments`` are R x W (``segments`` holds each position's
    sample index in the original batch, -1 on padding); ``rows`` and ``last`` (both B) locate each
    sample's last item, in the original batch order."""

    items: torch.Tensor
    positions: torch.Tensor
    segments: torch.Tensor
    rows: torch.Tensor
    last: torch.Tensor

    def attention_mask(self) -> torch.Tensor:
        """RecBole's additive mask (0 kept, -10000 masked), R x 1 x W x W: block-diagonal and
        causal within each sample."""
        seg = self.segments
        steps = torch.arange(seg.size(1), device=seg.device)
        causal = steps.unsqueeze(1) >= steps.unsqueeze(0)  # query i sees key j <= i
        keep = (seg.unsqueeze(2) == seg.unsqueeze(1)) & causal & (seg >= 0).unsqueeze(1)
        return torch.where(keep, 0.0, -10000.0).unsqueeze(1)

    def gather(self, hidden: torch.Tensor) -> torch.Tensor:
        """Each sample's output at its last item (B x d) from the packed outputs (R x W x d)."""
        return hidden[self.rows, self.last]


def assign_rows(lengths: list[int], width: int) -> tuple[list[int], list[int], int]:
    """First-fit decreasing: each sample's row and offset in it, and the number of rows."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    free: list[int] = []  # room left in each row
    rows, offsets = [0] * len(lengths), [0] * len(lengths)
    for i in order:
        n = lengths[i]
        r = next((r for r, room in enumerate(free) if room >= n), len(free))
        if r == len(free):
            free.append(width)
        rows[i], offsets[i] = r, width - free[r]
        free[r] -= n
    return rows, offsets, len(free)


@dataclass(frozen=True)
class RowLayout:
    """Where each sample of a batch sits when packed: its row and its offset in it (both B),
    the number of rows, their width and the real positions in all. Computed from the lengths on
    the host, where the data loader builds the batch (``recbole_flame.data.packed``), so a
    training step on a GPU never waits to read the lengths back."""

    rows: torch.Tensor
    offsets: torch.Tensor
    n_rows: int
    width: int
    total: int

    def to(self, device: torch.device | str) -> RowLayout:
        return RowLayout(
            self.rows.to(device, non_blocking=True),
            self.offsets.to(device, non_blocking=True),
            self.n_rows,
            self.width,
            self.total,
        )


def layout_of(interaction: object) -> RowLayout | None:
    """The packing layout a batch carries, if its data loader computed one
    (``recbole_flame.data.packed``)."""
    return getattr(interaction, "layout", None)


def row_layout(item_seq_len: torch.Tensor, width: int | None = None) -> RowLayout:
    """The :class:`RowLayout` of a batch with real lengths ``item_seq_len`` (each >= 1), in rows
    of ``width`` positions (default: the longest sample). Reads the lengths on the host."""
    lengths = item_seq_len.tolist()
    if min(lengths) < 1:
        raise ValueError("sequence packing needs every sequence to hold at least one item")
    width = width or max(lengths)
    rows, offsets, n_rows = assign_rows(lengths, width)
    return RowLayout(torch.tensor(rows), torch.tensor(offsets), n_rows, width, sum(lengths))


def pack_sequences(
    item_seq: torch.Tensor,
    item_seq_len: torch.Tensor,
    max_len: int,
    alignment: str,
    width: int | None = None,
    layout: RowLayout | None = None,
) -> PackedBatch:
    """Pack right-padded ``item_seq`` (B x l, real lengths ``item_seq_len``, each >= 1) into rows
    of ``width`` positions (default: the longest sample). Position ids follow ``alignment``
    (``start`` or ``end``) for a model of ``max_len`` positions. ``layout``: the batch's rows as
    the data loader computed them (then nothing here reads a device value); default: computed
    here from the lengths."""
    device = item_seq.device
    if layout is None:
        layout = row_layout(item_seq_len, width)
    layout = layout.to(device)
    rows_t, offsets_t, n_rows, width = layout.rows, layout.offsets, layout.n_rows, layout.width
    n = item_seq.size(0)
    # One entry per real position: its sample, its step t within the sample.
    sample = torch.repeat_interleave(
        torch.arange(n, device=device), item_seq_len, output_size=layout.total
    )
    start = torch.cumsum(item_seq_len, 0) - item_seq_len
    step = torch.arange(layout.total, device=device) - start[sample]
    dest = rows_t[sample] * width + offsets_t[sample] + step
    flat = n_rows * width
    items = item_seq.new_zeros(flat)
    items[dest] = item_seq[sample, step]
    segments = torch.full((flat,), -1, dtype=torch.long, device=device)
    segments[dest] = sample
    # A sample's position ids are those it has unpacked, at its own steps.
    own = position_ids(item_seq_len, item_seq.size(1), max_len, alignment)
    own = own.expand(n, -1)
    positions = torch.full((flat,), max_len - 1, dtype=torch.long, device=device)
    positions[dest] = own[sample, step]
    return PackedBatch(
        items=items.view(n_rows, width),
        positions=positions.view(n_rows, width),
        segments=segments.view(n_rows, width),
        rows=rows_t,
        last=offsets_t + item_seq_len - 1,
    )
