"""Helpers shared by the benchmark scripts: interleaved timing, medians, Markdown tables."""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch


def timed(fn: Callable[[], Any]) -> float:
    """Wall seconds of one call."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def interleaved_samples(
    fns: dict[str, Callable[[int], Any]], n: int, warmup: int = 2
) -> dict[str, list[float]]:
    """Seconds of each of ``n`` calls of each function, calling them in turn (a, b, a, b, ...)
    so that load on a shared machine hits all of them alike. ``fn(i)`` gets the repetition
    index. Sample i of every function comes from the same round, so ratios can be paired."""
    for i in range(warmup):
        for fn in fns.values():
            fn(i)
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for i in range(n):
        for name, fn in fns.items():
            samples[name].append(timed(lambda fn=fn, i=i: fn(i)))
    return samples


def interleaved_medians(
    fns: dict[str, Callable[[int], Any]], n: int, warmup: int = 2
) -> dict[str, float]:
    """Median seconds per call of each function, timed by :func:`interleaved_samples`."""
    samples = interleaved_samples(fns, n, warmup)
    return {name: statistics.median(vals) for name, vals in samples.items()}


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, batch) -> None:
    """One optimisation step as RecBole's trainer takes it (losses in a tuple are summed)."""
    model.train()
    optimizer.zero_grad()
    losses = model.calculate_loss(batch)
    loss = sum(losses) if isinstance(losses, tuple) else losses
    loss.backward()
    optimizer.step()


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        return str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def write_json(path: str | Path, payload: dict[str, Any]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=str))
