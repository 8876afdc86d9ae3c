"""Sequence packing's row layout computed where the batch is built, on the CPU.

A packed training step needs each sample's row and offset and the rows' count and width
(:class:`~recbole_flame.model.layers.packing.RowLayout`): shapes, hence numbers the host must
know. Read from the batch's lengths inside the step, they make a GPU step wait for its lengths
to come back before it can launch anything. :class:`PackingCollate` computes them in the data
loader instead, from the lengths the loader already holds on the CPU, and the batch carries them
(:class:`LaidOutInteraction`) through ``.to(device)`` into the model.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from recbole.data.interaction import Interaction

from recbole_flame.model.layers.packing import RowLayout, row_layout


class LaidOutInteraction(Interaction):
    """An :class:`Interaction` with its batch's packing ``layout``, kept across ``.to``."""

    layout: RowLayout | None = None

    @classmethod
    def wrap(cls, interaction: Interaction, layout: RowLayout | None) -> LaidOutInteraction:
        out = cls(interaction.interaction)
        out.layout = layout
        return out

    def to(self, device: Any, selected_field: Any = None) -> LaidOutInteraction:
        moved = super().to(device, selected_field)
        layout = self.layout.to(device) if self.layout is not None else None
        return LaidOutInteraction.wrap(moved, layout)


class PackingCollate:
    """A training loader's ``collate_fn`` followed by the batch's row layout (picklable, so it
    also runs in loader worker processes)."""

    def __init__(self, collate: Callable[[Any], Interaction], length_field: str) -> None:
        self.collate = collate
        self.length_field = length_field

    def __call__(self, index: Any) -> LaidOutInteraction:
        batch = self.collate(index)
        return LaidOutInteraction.wrap(batch, row_layout(batch[self.length_field]))


def lay_out_in_loader(train_data: Any, config: Any) -> None:
    """Make ``train_data`` (a RecBole training loader) hand out batches with their packing
    layout. torch's DataLoader reads ``collate_fn`` each time an epoch's iterator starts."""
    if not isinstance(train_data.collate_fn, PackingCollate):
        train_data.collate_fn = PackingCollate(
            train_data.collate_fn, config["ITEM_LIST_LENGTH_FIELD"]
        )
