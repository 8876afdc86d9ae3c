"""A generated dataset in which time matters: the next item depends on the last time gap.

No dataset at hand has informative timestamps (ml-100k's ratings come in bursts: half its gaps
are 0 s), so whether a time-aware model uses time cannot be read off it. Here it can. Each user
interacts with a sequence of items; the gap before each interaction is drawn from one of
``buckets`` lengths (a minute, an hour, a day, a week; jittered), independently, and the item
after ``i`` is ``successor[b][i]``, where ``b`` is the bucket of the gap that led to ``i``
(with probability ``noise`` a uniformly random item instead). The items alone say the next item
is one of ``buckets`` candidates; the last gap says which. A model that ignores time can at best
spread its top-1 over the candidates (hit@1 <= (1 - noise) / buckets + noise / n_items); one that
reads the last gap can reach hit@1 ~ 1 - noise.

    python -m recbole_flame.data.planted_time --out benchmarks/data   # writes planted-time/
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

NAME = "planted-time"
GAPS = (60.0, 3600.0, 86400.0, 604800.0)  # a minute, an hour, a day, a week (seconds)


def generate(
    n_users: int = 2000,
    n_items: int = 200,
    length: tuple[int, int] = (20, 40),
    buckets: int = 4,
    noise: float = 0.1,
    seed: int = 0,
) -> list[tuple[int, int, float]]:
    """(user, item, timestamp) rows, users and items numbered from 1, time-ordered per user."""
    if not 1 <= buckets <= len(GAPS):
        raise ValueError(f"buckets must be from 1 to {len(GAPS)}, not {buckets}")
    rng = np.random.default_rng(seed)
    successor = np.stack([rng.permutation(n_items) for _ in range(buckets)])
    rows = []
    for user in range(1, n_users + 1):
        n = int(rng.integers(length[0], length[1] + 1))
        item = int(rng.integers(n_items))
        t = float(rng.uniform(1.5e9, 1.6e9))
        bucket = int(rng.integers(buckets))  # the gap that led to the first item (not observed)
        for _ in range(n):
            rows.append((user, item + 1, round(t, 1)))
            if rng.random() < noise:
                nxt = int(rng.integers(n_items))
            else:
                nxt = int(successor[bucket, item])
            bucket = int(rng.integers(buckets))  # the gap before the next item
            t += GAPS[bucket] * float(rng.uniform(0.5, 1.5))
            item = nxt
    return rows


def write(folder: str | Path, name: str = NAME, **kwargs) -> Path:
    """Write ``<folder>/<name>/<name>.inter`` (RecBole atomic format); returns the file."""
    target = Path(folder) / name
    target.mkdir(parents=True, exist_ok=True)
    path = target / f"{name}.inter"
    with open(path, "w", encoding="utf-8") as f:
        f.write("user_id:token\titem_id:token\ttimestamp:float\n")
        for user, item, t in generate(**kwargs):
            f.write(f"{user}\t{item}\t{t}\n")
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="benchmarks/data", help="the data_path to write into")
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--items", type=int, default=200)
    parser.add_argument("--buckets", type=int, default=4)
    parser.add_argument("--noise", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    path = write(
        args.out,
        n_users=args.users,
        n_items=args.items,
        buckets=args.buckets,
        noise=args.noise,
        seed=args.seed,
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
