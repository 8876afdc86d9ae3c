"""Mean ± sd and paired t-tests: the one place the experiment summaries
(:mod:`recbole_flame.experiment.summary`) and the model comparison
(:mod:`recbole_flame.experiment.compare`) compute and format them, so both report a spread or a
paired difference the same way.

The sd is the sample standard deviation (n - 1); a paired test is scipy's ``ttest_rel`` on the
same seeds of two runs, so the t is the mean difference over its standard error.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass


def mean_sd(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation of ``values`` (sd 0.0 for a single value). The mean
    is :func:`statistics.fmean`, the float mean the comparison's JSON has always held."""
    if not values:
        raise ValueError("mean_sd of no values")
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def format_mean_sd(mean: float, sd: float, n: int) -> str:
    """``"m ± s"`` at 4 decimals over several values, ``"m"`` for one (no spread to show),
    ``"-"`` for none."""
    if n == 0:
        return "-"
    if n == 1:
        return f"{mean:.4f}"
    return f"{mean:.4f} ± {sd:.4f}"


def mean_sd_text(values: Sequence[float]) -> str:
    """:func:`format_mean_sd` of ``values``: ``"-"`` when there are none."""
    if not values:
        return "-"
    return format_mean_sd(*mean_sd(values), len(values))


@dataclass(frozen=True)
class PairedTest:
    """A paired t-test of two runs over the same seeds: the per-seed differences a - b, their
    mean and sample sd, the t statistic and the two-sided p-value (NaN where every difference
    is equal, e.g. identical runs)."""

    diffs: tuple[float, ...]
    mean_diff: float
    sd_diff: float
    t: float
    p: float

    def difference_text(self) -> str:
        """``mean diff +0.0012 (sd 0.0008, per seed +0.0010, +0.0005, +0.0021)``."""
        per_seed = ", ".join(f"{d:+.4f}" for d in self.diffs)
        return f"mean diff {self.mean_diff:+.4f} (sd {self.sd_diff:.4f}, per seed {per_seed})"

    def test_text(self) -> str:
        """``paired t = 2.31, p = 0.104``."""
        return f"paired t = {self.t:.2f}, p = {self.p:.3f}"


def paired_test(a: Sequence[float], b: Sequence[float]) -> PairedTest:
    """:class:`PairedTest` of ``a`` against ``b`` (equal lengths, at least 2 pairs: a t-test
    needs a spread of the differences)."""
    from scipy import stats

    if len(a) != len(b) or len(a) < 2:
        raise ValueError(
            f"a paired test needs two equal-length samples of >= 2, got {len(a)}, {len(b)}"
        )
    result = stats.ttest_rel(a, b)
    diffs = tuple(x - y for x, y in zip(a, b, strict=True))
    mean, sd = mean_sd(diffs)
    return PairedTest(diffs, mean, sd, float(result.statistic), float(result.pvalue))


def holm(pvalues: Sequence[float | None]) -> list[float | None]:
    """Holm's step-down correction of a family of p-values, in their given order.

    With the m tested p-values sorted ascending, the i-th (1-based) becomes
    ``min(1, (m - i + 1) * p)``, raised where needed so the adjusted values keep the order of
    the raw ones. It controls the chance of any false positive in the family, as Bonferroni
    does, at less cost in power. ``None`` and NaN (no test, e.g. identical runs) are not part
    of the family and stay ``None``.
    """
    tested = sorted((p, i) for i, p in enumerate(pvalues) if p is not None and p == p)
    adjusted: list[float | None] = [None] * len(pvalues)
    m, running = len(tested), 0.0
    for rank, (p, i) in enumerate(tested):
        running = max(running, min(1.0, (m - rank) * p))
        adjusted[i] = running
    return adjusted
