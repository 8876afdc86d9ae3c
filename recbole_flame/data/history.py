"""``history_limit``: keep each user's last N interactions before the split.

The FLAME authors' code keeps each user's last L + 3 items (53 for L = 50) before it takes the
last two as validation and test targets, so a long history never reaches training. It is a data
setting, not a model key: models compared side by side must see the same interactions.
"""

from __future__ import annotations

from recbole.data.dataset import Dataset


def apply_history_limit(dataset: Dataset, limit: int) -> int:
    """Drop all but each user's last ``limit`` interactions (in time order) from ``dataset``'s
    interactions, in place, after RecBole's filtering and id remapping (so the item vocabulary is
    unchanged, as in the authors' code). Returns the number of rows dropped.

    Must run before ``data_preparation`` (while ``inter_feat`` is still a DataFrame)."""
    inter = dataset.inter_feat
    by = [dataset.uid_field] + ([dataset.time_field] if dataset.time_field in inter else [])
    # A stable sort keeps the file's order among equal timestamps, as RecBole's own sort does.
    ordered = inter.sort_values(by=by, kind="stable")
    from_end = ordered.groupby(dataset.uid_field, sort=False).cumcount(ascending=False)
    kept = ordered[from_end.to_numpy() < limit].sort_index()
    dropped = len(inter) - len(kept)
    dataset.inter_feat = kept.reset_index(drop=True)
    return dropped
