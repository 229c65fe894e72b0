"""Wilson intervals and exact McNemar: values checked against published/hand-computed numbers."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vlrl.stats import mcnemar_exact, wilson_interval


@pytest.mark.parametrize(
    ("k", "n", "lo", "hi"),
    [
        pytest.param(5, 100, 0.02154, 0.11175, id="case-study strict accuracy 5%"),
        pytest.param(0, 10, 0.0, 0.27753, id="zero successes: upper bound still informative"),
        pytest.param(10, 10, 0.72247, 1.0, id="all successes: mirror image of zero"),
        pytest.param(77, 100, 0.67846, 0.84157, id="case-study format compliance 77%"),
    ],
)
def test_wilson_known_values(k, n, lo, hi):
    got = wilson_interval(k, n)
    assert got == pytest.approx((lo, hi), abs=1e-4)


def test_wilson_empty_sample_is_uninformative():
    assert wilson_interval(0, 0) == (0.0, 1.0)


@pytest.mark.parametrize(("k", "n"), [(-1, 5), (6, 5), (0, -1)])
def test_wilson_rejects_impossible_counts(k, n):
    with pytest.raises(ValueError, match="successes"):
        wilson_interval(k, n)


@given(st.integers(0, 500).flatmap(lambda n: st.tuples(st.integers(0, n), st.just(n))))
def test_wilson_contains_the_estimate(kn):
    k, n = kn
    lo, hi = wilson_interval(k, n)
    assert 0.0 <= lo <= hi <= 1.0
    if n:
        assert lo - 1e-12 <= k / n <= hi + 1e-12


@pytest.mark.parametrize(
    ("b", "c", "p"),
    [
        pytest.param(0, 0, 1.0, id="no discordant pairs"),
        pytest.param(10, 1, 0.01172, id="2 * P[X<=1 | n=11] = 24/2048"),
        pytest.param(3, 3, 1.0, id="balanced: capped at 1"),
        pytest.param(6, 0, 0.03125, id="2 / 2**6"),
    ],
)
def test_mcnemar_exact_values(b, c, p):
    assert mcnemar_exact(b, c) == pytest.approx(p, abs=1e-5)


@given(st.integers(0, 60), st.integers(0, 60))
def test_mcnemar_is_symmetric_and_a_probability(b, c):
    p = mcnemar_exact(b, c)
    assert p == mcnemar_exact(c, b)
    assert 0.0 < p <= 1.0 and not math.isnan(p)


@pytest.mark.parametrize("n", [1, 7, 100, 1000])
def test_wilson_bounds_are_exact_at_the_extremes(n):
    # Rounding in the closed form gave 5.6e-17 instead of 0 at zero successes (found by hypothesis).
    assert wilson_interval(0, n)[0] == 0.0
    assert wilson_interval(n, n)[1] == 1.0
