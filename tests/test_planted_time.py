"""The planted-time dataset holds the signal it promises: the next item is decided by the
current item and the last gap's bucket, so a lookup on (item, bucket) predicts it about
1 - noise of the time, and a lookup on the item alone about (1 - noise) / buckets."""

from __future__ import annotations

from collections import Counter, defaultdict

import pandas as pd

from recbole_flame.data.planted_time import GAPS, generate, write


def _bucket(gap: float) -> int:
    # jitter is x0.5-1.5 and the lengths are 60x or more apart: the nearest on a log scale
    return min(range(len(GAPS)), key=lambda b: abs(gap / GAPS[b] - 1.0))


def _top1_accuracy(rows, with_gap: bool, buckets: int) -> float:
    by_user = defaultdict(list)
    for user, item, t in rows:
        by_user[user].append((t, item))
    pairs = []
    for events in by_user.values():
        events.sort()
        for (t0, _), (t1, item), (_, nxt) in zip(events, events[1:], events[2:], strict=False):
            key = (item, _bucket(t1 - t0)) if with_gap else (item,)
            pairs.append((key, nxt))
    half = len(pairs) // 2  # fit on one half, score the other
    table = defaultdict(Counter)
    for key, nxt in pairs[:half]:
        table[key][nxt] += 1
    hits = [table[key].most_common(1)[0][0] == nxt for key, nxt in pairs[half:] if table[key]]
    return sum(hits) / len(hits)


def test_the_last_gap_decides_the_next_item():
    rows = generate(n_users=800, n_items=50, buckets=4, noise=0.1, seed=3)
    with_gap = _top1_accuracy(rows, with_gap=True, buckets=4)
    items_only = _top1_accuracy(rows, with_gap=False, buckets=4)
    assert with_gap > 0.85  # 1 - noise, less the few keys seen too rarely in the first half
    assert items_only < 0.35  # about 0.9 / 4 + the noise share


def test_written_file_is_recbole_atomic_and_time_ordered(tmp_path):
    path = write(tmp_path, n_users=20, n_items=10, seed=1)
    frame = pd.read_csv(path, sep="\t")
    assert list(frame.columns) == ["user_id:token", "item_id:token", "timestamp:float"]
    assert (
        frame.groupby("user_id:token")["timestamp:float"]
        .apply(lambda t: t.is_monotonic_increasing)
        .all()
    )
    assert frame["item_id:token"].between(1, 10).all()
