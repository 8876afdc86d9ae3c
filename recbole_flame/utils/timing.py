"""Interleaved timing: the package's inference-time measurement and the benchmark scripts share it."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterable
from typing import Any

import torch


def synchronize() -> None:
    """Wait for the GPU's queued work: CUDA kernels launch asynchronously, so a clock read
    without this measures the launches, not the work. Nothing to wait for on the CPU."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def timed(fn: Callable[[], Any]) -> float:
    """Wall seconds of one call, the GPU's work included."""
    synchronize()
    start = time.perf_counter()
    fn()
    synchronize()
    return time.perf_counter() - start


def interleaved_over(
    fns: dict[str, Callable[[Any], Any]], items: Iterable[Any], warmup: Iterable[Any] = ()
) -> dict[str, list[float]]:
    """Seconds of each function's call on each item, the functions called in turn on an item
    before the next (a, b, a, b, ...) so that load on a shared machine hits all of them alike;
    first one untimed call of each on every ``warmup`` item. Sample i of every function comes
    from the same round, so ratios can be paired."""
    for item in warmup:
        for fn in fns.values():
            fn(item)
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for item in items:
        for name, fn in fns.items():
            samples[name].append(timed(lambda fn=fn, item=item: fn(item)))
    return samples


def interleaved_samples(
    fns: dict[str, Callable[[int], Any]], n: int, warmup: int = 2
) -> dict[str, list[float]]:
    """:func:`interleaved_over` ``n`` rounds after ``warmup`` ones: ``fn(i)`` gets the round's
    index (warm-up rounds count from 0 too)."""
    return interleaved_over(fns, range(n), range(warmup))


def interleaved_medians(
    fns: dict[str, Callable[[int], Any]], n: int, warmup: int = 2
) -> dict[str, float]:
    """Median seconds per call of each function, timed by :func:`interleaved_samples`."""
    samples = interleaved_samples(fns, n, warmup)
    return {name: statistics.median(vals) for name, vals in samples.items()}
