"""A model built without a dataset: what RecBole's model constructors read from one."""

from __future__ import annotations

from collections.abc import Iterable


class DatasetStub:
    """Stands in for a RecBole dataset where only a model's shape is wanted (a checkpoint's
    network checked before the data loads, synthetic benchmarks, tests): ``num(field)`` is the
    item count for every field, as the sequential models ask it of their item field only, and
    ``field2type`` names the loaded fields when ``fields`` is given (TiM4Rec checks its time
    list there; None skips that check)."""

    def __init__(self, n_items: int, fields: Iterable[str] | None = None) -> None:
        self.n_items = n_items
        self.field2type = None if fields is None else dict.fromkeys(fields)

    def num(self, field: str) -> int:
        return self.n_items
