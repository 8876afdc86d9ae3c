"""The shared statistics (``recbole_flame.experiment.stats``) against values computed by hand:
mean and sample sd, their formatting, and paired t-tests whose p-values follow from the t
distribution's closed forms at 1 and 3 degrees of freedom."""

from __future__ import annotations

import math

import pytest

from recbole_flame.experiment.stats import (
    format_mean_sd,
    holm,
    mean_sd,
    mean_sd_text,
    paired_test,
)


def test_mean_and_sample_sd_of_one_two_three() -> None:
    # mean 2; squared deviations 1 + 0 + 1 = 2 over n - 1 = 2: sd 1
    assert mean_sd([1.0, 2.0, 3.0]) == (2.0, 1.0)
    assert mean_sd([0.25]) == (0.25, 0.0)
    with pytest.raises(ValueError):
        mean_sd([])


def test_formatting_shows_a_spread_only_over_several_values() -> None:
    assert mean_sd_text([1.0, 2.0, 3.0]) == "2.0000 ± 1.0000"
    assert mean_sd_text([0.12345]) == "0.1235"  # one value: no spread
    assert mean_sd_text([]) == "-"
    assert format_mean_sd(0.5, 0.25, 2) == "0.5000 ± 0.2500"
    assert format_mean_sd(0.5, 0.0, 1) == "0.5000"
    assert format_mean_sd(0.5, 0.0, 0) == "-"


def test_paired_t_on_two_pairs() -> None:
    """Differences 1 and 3: mean 2, sd sqrt(2), standard error sqrt(2)/sqrt(2) = 1, so t = 2 on
    1 degree of freedom (a Cauchy distribution): two-sided p = 1 - (2/pi) atan(2)."""
    test = paired_test([2.0, 5.0], [1.0, 2.0])
    assert test.diffs == (1.0, 3.0)
    assert test.mean_diff == 2.0 and math.isclose(test.sd_diff, math.sqrt(2))
    assert math.isclose(test.t, 2.0, rel_tol=1e-12)
    assert math.isclose(test.p, 1 - 2 / math.pi * math.atan(2.0), rel_tol=1e-9)


def test_paired_t_on_four_pairs() -> None:
    """Differences 1, 0, 2, 3: mean 1.5, squared deviations 0.25 + 2.25 + 0.25 + 2.25 = 5 over
    3, sd sqrt(5/3), t = 1.5 / (sd / 2). At 3 degrees of freedom, with u = t / sqrt(3), the
    two-sided p is 1 - (2/pi) (u / (1 + u^2) + atan(u))."""
    test = paired_test([1.0, 2.0, 4.0, 7.0], [0.0, 2.0, 2.0, 4.0])
    sd = math.sqrt(5 / 3)
    t = 1.5 / (sd / 2)
    u = t / math.sqrt(3)
    p = 1 - 2 / math.pi * (u / (1 + u * u) + math.atan(u))
    assert test.diffs == (1.0, 0.0, 2.0, 3.0)
    assert test.mean_diff == 1.5 and math.isclose(test.sd_diff, sd, rel_tol=1e-12)
    assert math.isclose(test.t, t, rel_tol=1e-12) and math.isclose(test.p, p, rel_tol=1e-9)
    assert test.difference_text() == (
        "mean diff +1.5000 (sd 1.2910, per seed +1.0000, +0.0000, +2.0000, +3.0000)"
    )
    assert test.test_text() == f"paired t = {t:.2f}, p = {p:.3f}" == "paired t = 2.32, p = 0.103"


def test_paired_test_needs_two_equal_length_samples() -> None:
    with pytest.raises(ValueError):
        paired_test([1.0], [2.0])
    with pytest.raises(ValueError):
        paired_test([1.0, 2.0], [1.0, 2.0, 3.0])


def test_holm_multiplies_the_sorted_p_values_by_m_down_to_1_and_keeps_their_order() -> None:
    # sorted 0.01, 0.03, 0.04 -> 3 * 0.01 = 0.03, 2 * 0.03 = 0.06, 1 * 0.04 = 0.04, raised to
    # 0.06 so that a larger raw p never gets a smaller adjusted one
    adjusted = holm([0.01, 0.04, 0.03])
    assert [round(p, 12) for p in adjusted] == [0.03, 0.06, 0.06]
    # capped at 1; one p-value is its own family
    assert holm([0.6, 0.7]) == [1.0, 1.0]
    assert holm([0.2]) == [0.2]


def test_holm_leaves_untested_pairs_out_of_the_family() -> None:
    # None and NaN (identical runs) are no test: the family is the two real p-values
    adjusted = holm([0.02, None, float("nan"), 0.5])
    assert adjusted[1] is None and adjusted[2] is None
    assert math.isclose(adjusted[0], 0.04) and math.isclose(adjusted[3], 0.5)
    assert holm([]) == []
