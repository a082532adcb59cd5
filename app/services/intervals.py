"""95% intervals, defined once: of a mean, of a proportion (Wilson), of a ratio of two
independent proportions (MOVER-R with Wilson limits) and of a weighted sum of proportions
(MOVER, with the correlation of estimates from the same cases).

MOVER, the method of variance estimates recovery (Zou & Donner 2008; Donner & Zou 2012),
builds the interval of a function of several estimates from each estimate's own interval, so
that the Wilson interval's good behaviour near 0 and 1 and for small counts carries over.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

Z95 = 1.959964


@dataclass(frozen=True)
class Estimate:
    value: float | None
    low: float | None
    high: float | None


NONE = Estimate(None, None, None)


def mean_interval(mean: float | None, sd: float | None, n: int) -> Estimate:
    """Normal approximation: mean ± 1.96 · sd / √n."""
    if mean is None or n == 0:
        return NONE
    if sd is None or n < 2:
        return Estimate(mean, None, None)
    half = Z95 * sd / math.sqrt(n)
    return Estimate(mean, mean - half, mean + half)


def sample_sd(total: float, sum_of_squares: float, n: int) -> float | None:
    """The sample standard deviation of n values from their sum and sum of squares; None
    below two values. (Rounding can make the variance a hair below 0 when the values are
    all equal: it is 0 then.)"""
    if n < 2:
        return None
    return math.sqrt(max(0.0, (sum_of_squares - total * total / n) / (n - 1)))


def wilson_interval(successes: int, n: int) -> Estimate:
    """The Wilson score interval of a proportion (sound near 0 and 1, and for small n)."""
    if n == 0:
        return NONE
    p = successes / n
    z2 = Z95 * Z95
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = Z95 * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return Estimate(p, max(0.0, centre - half), min(1.0, centre + half))


def ratio_interval(successes: int, n: int, reference_successes: int, reference_n: int) -> Estimate:
    """The ratio of two independent proportions, p / p_ref, with the MOVER-R Wilson interval
    (Donner & Zou 2012; recommended by Fagerland, Lydersen & Laake 2015). None when the
    reference has no success (the ratio is undefined)."""
    if n == 0 or reference_n == 0 or reference_successes == 0:
        return NONE
    p1, (l1, u1) = successes / n, _limits(wilson_interval(successes, n))
    p2, (l2, u2) = (
        reference_successes / reference_n,
        _limits(wilson_interval(reference_successes, reference_n)),
    )
    product = p1 * p2
    low_root = product * product - l1 * u2 * (2 * p1 - l1) * (2 * p2 - u2)
    high_root = product * product - u1 * l2 * (2 * p1 - u1) * (2 * p2 - l2)
    low = (product - math.sqrt(max(0.0, low_root))) / (u2 * (2 * p2 - u2))
    # The reference passed at least once: 0 < l2 <= p2, so this divisor is positive.
    high = (product + math.sqrt(max(0.0, high_root))) / (l2 * (2 * p2 - l2))
    return Estimate(p1 / p2, max(0.0, low), high)


def _limits(estimate: Estimate) -> tuple[float, float]:
    return estimate.low, estimate.high


def weighted_sum_interval(
    terms: Sequence[tuple[float, Estimate]],
    correlations: Mapping[tuple[int, int], float] | None = None,
) -> Estimate:
    """Σ wᵢ · pᵢ for non-negative weights wᵢ and proportions pᵢ with their intervals, by
    MOVER: low = Σ wᵢpᵢ − √(Σᵢⱼ ρᵢⱼ wᵢwⱼ (pᵢ − lᵢ)(pⱼ − lⱼ)), high alike with (uᵢ − pᵢ).
    `correlations[(i, j)]` (i < j) is the correlation of the estimates i and j (0 when left
    out: independent); the sum is clipped to [0, 1]."""
    correlations = correlations or {}
    if any(e.value is None or e.low is None for _, e in terms):
        return NONE
    value = sum(w * e.value for w, e in terms)

    def spread(distance) -> float:
        total = 0.0
        for i, (wi, ei) in enumerate(terms):
            for j, (wj, ej) in enumerate(terms):
                rho = 1.0 if i == j else correlations.get((min(i, j), max(i, j)), 0.0)
                total += rho * wi * wj * distance(ei) * distance(ej)
        return math.sqrt(max(0.0, total))

    low = value - spread(lambda e: e.value - e.low)
    high = value + spread(lambda e: e.high - e.value)
    return Estimate(value, max(0.0, low), min(1.0, high))
