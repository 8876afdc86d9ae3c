"""Dense training data: one row per user window instead of one row per prefix.

RecBole's sequential training set holds one row per target: the target item and the (at most
L) items before it. A strictly causal model computes every prefix's output in one pass over the
longest of them, so only some rows are needed: for each user, walking back from the last
training row, keep a row and skip the rows whose targets it already covers (the items of its
own context after the first). Row ``i`` of a user (target ``s[i+1]``, context length
``n_i = min(L, i)``) covers the targets of rows ``i - n_i + 1 .. i``; the next kept row is
``i - n_i``. Every target is covered exactly once, with at most L items of context; a user with
at most L + 1 training items keeps one row, whose context for each target is exactly the prefix
RecBole would have used.

``dense_min_context: C`` (default 1: the covering above) trades windows for context. A window
starting after the user's first item gives its step t only t items of context where RecBole's
prefix sample has L, so on data whose users are much longer than L the covering trains most
targets on a shorter context (ml-100k, L = 50: a mean of 23 items against prefix's 39). With
``C > 1`` such a window trains only its steps with at least C items of context (a loss mask,
``DENSE_FIRST_STEP``) and the next kept row moves back by ``L - C + 1`` instead of L, so windows
overlap and every target still counts once, with at least ``min(C, prefix context)`` items
before it; ``C = L`` is prefix training's contexts at one window per target.

``dense_windows: last`` keeps only each user's last window (its last training row: the L items
before its last training target, every step predicting the next item). That is the training
set of the CANet authors' code: one row per user per epoch, so older targets of users with more
than L + 1 training items are never trained on.
"""

from __future__ import annotations

import numpy as np
import torch
from recbole.data.dataloader import TrainDataLoader

DENSE_WINDOWS = ("all", "last")
# Interaction field of dense windows: the first step (0-based) that is trained; earlier steps are
# context only (their targets belong to an earlier, overlapping window). Absent: every step.
DENSE_FIRST_STEP = "dense_first_step"


def dense_window_rows(
    user_ids: np.ndarray, lengths: np.ndarray, max_len: int, last_only: bool = False
) -> np.ndarray:
    """Indices of the rows to keep, in their original order (the covering windows)."""
    return dense_windows(user_ids, lengths, max_len, last_only)[0]


def dense_windows(
    user_ids: np.ndarray,
    lengths: np.ndarray,
    max_len: int,
    last_only: bool = False,
    min_context: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the rows to keep, in their original order, and each kept row's first trained
    step.

    ``user_ids`` and ``lengths`` (``item_length``) are the training rows' columns; each user's
    rows must be in time order (RecBole's augmentation and leave-one-out split keep it), which
    shows as lengths 1, 2, ..., L, L, ... per user and is checked. ``last_only``: each user's
    last row alone, every step trained. ``min_context``: see the module docstring.
    """
    if not 1 <= min_context <= max_len:
        raise ValueError(f"min_context must be in 1..{max_len}, got {min_context}")
    order = np.argsort(user_ids, kind="stable")
    sorted_users = user_ids[order]
    starts = np.flatnonzero(np.r_[True, sorted_users[1:] != sorted_users[:-1]])
    ends = np.r_[starts[1:], len(order)]
    keep: list[int] = []
    first: list[int] = []
    for start, end in zip(starts, ends, strict=True):
        rows = order[start:end]
        expected = np.minimum(np.arange(1, len(rows) + 1), max_len)
        if not np.array_equal(lengths[rows], expected):
            raise ValueError(
                f"user {sorted_users[start]}'s training rows are not RecBole's prefix rows in "
                "time order (item_length 1, 2, ..., L); dense training needs them"
            )
        i = len(rows)  # 1-based position of the row being kept
        while i > 0:
            keep.append(rows[i - 1])
            # a window from the user's first item (every step's context exact), or the
            # authors' last window: every step trained
            if i <= max_len or last_only:
                first.append(0)
                i -= min(max_len, i)
            else:  # steps with >= min_context items before them; the rest is context
                first.append(min_context - 1)
                i -= max_len - min_context + 1
            if last_only:
                break
    keep_arr, first_arr = np.asarray(keep, dtype=np.int64), np.asarray(first, dtype=np.int64)
    order = np.argsort(keep_arr)
    return keep_arr[order], first_arr[order]


def dense_train_dataloader(config, train_data: TrainDataLoader) -> TrainDataLoader:
    """A training loader over the user windows of ``train_data``'s dataset, with its settings
    (``dense_windows``: ``all`` windows covering every target, or each user's ``last``;
    ``dense_min_context``)."""
    dataset = train_data._dataset
    inter = dataset.inter_feat
    min_context = config["dense_min_context"] or 1
    rows, first_step = dense_windows(
        inter[dataset.uid_field].numpy(),
        inter[config["ITEM_LIST_LENGTH_FIELD"]].numpy(),
        config["MAX_ITEM_LIST_LENGTH"],
        last_only=(config["dense_windows"] or "all") == "last",
        min_context=min_context,
    )
    windows = dataset.copy(inter[rows])
    if min_context > 1:  # only then can a window hold context-only steps
        windows.inter_feat[DENSE_FIRST_STEP] = torch.from_numpy(first_step)
    return type(train_data)(config, windows, train_data._sampler, shuffle=config["shuffle"])
