"""Uncertainty for every rate we report: Wilson intervals and the exact McNemar test.

Pure module: imports neither torch nor DVC (only the standard library).
"""

from __future__ import annotations

import math

#: Two-sided 95% normal quantile.
Z_95 = 1.959963984540054


def wilson_interval(successes: int, n: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (Wilson 1927; Brown, Cai & DasGupta 2001).

    Better than the normal approximation at small n and near 0 or 1, which is where our rates live
    (strict accuracy ~5%). With n = 0 there is no information: the interval is [0, 1].

    >>> lo, hi = wilson_interval(5, 100)
    >>> round(lo, 4), round(hi, 4)
    (0.0215, 0.1118)
    """
    if n < 0 or successes < 0 or successes > n:
        raise ValueError(f"wilson_interval: need 0 <= successes <= n, got successes={successes}, n={n}")
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # At 0 or n successes the bounds are exactly 0 or 1; the formula gives them only up to rounding.
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return low, high


def mcnemar_exact(improved: int, regressed: int) -> float:
    """Two-sided exact McNemar p-value for paired binary outcomes.

    ``improved`` = pairs wrong before and right after, ``regressed`` = right before and wrong after.
    Under H0 the discordant pairs split Binomial(b + c, 1/2); the p-value is
    ``min(1, 2 * P[X <= min(b, c)])`` (McNemar 1947, exact form). No discordant pairs -> 1.0.

    >>> mcnemar_exact(0, 0)
    1.0
    >>> round(mcnemar_exact(10, 1), 4)
    0.0117
    """
    if improved < 0 or regressed < 0:
        raise ValueError(f"mcnemar_exact: counts must be >= 0, got {improved}, {regressed}")
    n = improved + regressed
    if n == 0:
        return 1.0
    k = min(improved, regressed)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)
