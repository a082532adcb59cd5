"""The 95% intervals of routing advice against published figures and their edge cases."""

from __future__ import annotations

import math

import pytest

from app.services.intervals import (
    NONE,
    Estimate,
    ratio_interval,
    weighted_sum_interval,
    wilson_interval,
)


def test_the_ratio_interval_is_the_published_mover_r_wilson():
    # Fagerland, Lydersen & Laake, Statistical Analysis of Contingency Tables (2017), ch. 4:
    # 7/34 against 1/34 (Perondi et al., 2004): ratio 7.0, MOVER-R Wilson 1.1537 to 41.9763.
    found = ratio_interval(7, 34, 1, 34)
    assert found.value == pytest.approx(7.0)
    assert (round(found.low, 4), round(found.high, 4)) == (1.1537, 41.9763)


def test_the_ratio_interval_at_the_edges():
    assert ratio_interval(5, 10, 0, 10) is NONE  # the reference never passed: no ratio
    assert ratio_interval(0, 16, 15, 72).low == 0.0
    assert ratio_interval(30, 30, 30, 30).value == 1.0
    assert ratio_interval(30, 30, 30, 30).low < 1 < ratio_interval(30, 30, 30, 30).high
    assert ratio_interval(1, 1, 1, 1).low < 1 < ratio_interval(1, 1, 1, 1).high < math.inf


def test_a_weighted_sum_of_one_proportion_is_its_wilson_interval():
    alone = wilson_interval(970, 1000)
    assert weighted_sum_interval([(1.0, alone)]) == pytest.approx(alone)


def test_correlated_estimates_widen_a_sum_and_independent_ones_do_not_add_up():
    a, b = wilson_interval(80, 100), wilson_interval(90, 100)
    independent = weighted_sum_interval([(0.5, a), (0.5, b)])
    correlated = weighted_sum_interval([(0.5, a), (0.5, b)], {(0, 1): 0.9})
    assert independent.value == correlated.value == pytest.approx(0.85)
    half_width = (a.value - a.low) / 2, (b.value - b.low) / 2
    assert independent.value - independent.low == pytest.approx(math.hypot(*half_width))
    assert correlated.low < independent.low and correlated.high > independent.high
    assert weighted_sum_interval([(1.0, Estimate(None, None, None))]) is NONE
