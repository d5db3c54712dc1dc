"""Exact tails against arbitrary-precision references, down to 1e-1000 and below."""

from __future__ import annotations

import math

import mpmath
import pytest

from distillguard.watermark import stats

mpmath.mp.dps = 60
TOLERANCE = math.log10(1.01)  # within 1% of the p-value


def reference_binomial_log10(successes: int, trials: int, probability: float) -> float:
    # P(X >= g) summed term by term at 60 digits until the terms stop mattering.
    p = mpmath.mpf(probability)
    q = 1 - p
    term = mpmath.binomial(trials, successes) * p**successes * q ** (trials - successes)
    tail = mpmath.mpf(0)
    for k in range(successes, trials + 1):
        tail += term
        if term < tail * mpmath.mpf(10) ** -40:
            break
        term = term * (trials - k) / (k + 1) * p / q
    return float(mpmath.log10(tail))


def reference_gamma_log10(shape: int, value: float) -> float:
    tail = mpmath.gammainc(shape, mpmath.mpf(value), mpmath.inf, regularized=True)
    return float(mpmath.log10(tail))


@pytest.mark.parametrize(
    ("successes", "trials"),
    [
        (1, 1),
        (5, 10),
        (60, 200),
        (80, 200),
        (150, 200),
        (200, 200),
        (900, 2000),
        (2000, 2000),
        (4000, 5000),
        (30000, 50000),
        (260_000, 1_000_000),
        (3000, 3000),
    ],
)
def test_binomial_tail_matches_arbitrary_precision(successes: int, trials: int) -> None:
    gamma = 0.25
    p_value, log10_p = stats.binomial_upper_tail(successes, trials, gamma)
    expected = reference_binomial_log10(successes, trials, gamma)
    assert math.isfinite(log10_p)
    assert abs(log10_p - expected) < TOLERANCE
    if expected > -300:
        assert p_value == pytest.approx(10**expected, rel=0.01)


def test_binomial_tail_stays_finite_below_1e_1000() -> None:
    p_value, log10_p = stats.binomial_upper_tail(2000, 2000, 0.25)  # 0.25**2000 = 1e-1204
    assert p_value == 0.0  # not representable as a float
    assert log10_p == pytest.approx(2000 * math.log10(0.25), abs=TOLERANCE)
    _, deep = stats.binomial_upper_tail(1950, 2000, 0.25)
    assert deep < -1000
    assert abs(deep - reference_binomial_log10(1950, 2000, 0.25)) < TOLERANCE


@pytest.mark.parametrize(
    ("shape", "value"),
    [
        (1, 0.5),
        (10, 10.0),
        (200, 230.0),
        (200, 400.0),
        (200, 900.0),
        (200, 2500.0),
        (2000, 6000.0),
        (100_000, 101_000.0),
        (5, 2400.0),
    ],
)
def test_gamma_tail_matches_arbitrary_precision(shape: int, value: float) -> None:
    _, log10_p = stats.gamma_upper_tail(shape, value)
    assert math.isfinite(log10_p)
    assert abs(log10_p - reference_gamma_log10(shape, value)) < TOLERANCE


def test_gamma_tail_stays_finite_below_1e_1000() -> None:
    _, log10_p = stats.gamma_upper_tail(200, 3200.0)
    assert log10_p < -1000
    assert abs(log10_p - reference_gamma_log10(200, 3200.0)) < TOLERANCE


def test_normal_approximation_would_be_anti_conservative_where_exact_is_not() -> None:
    # REFERENCES: at gamma 0.25 and z >= 4, 25 tokens: exact FPR 2.1e-4 vs nominal 3.2e-5.
    from scipy.stats import binom

    trials, gamma = 25, 0.25
    threshold = next(
        g
        for g in range(trials + 1)
        if (g - gamma * trials) / math.sqrt(trials * gamma * (1 - gamma)) >= 4
    )
    exact_size = binom.sf(threshold - 1, trials, gamma)
    assert exact_size > 1e-4  # the z-test's nominal 3.2e-5 is wrong by ~7x
    p_value, _ = stats.binomial_upper_tail(threshold, trials, gamma)
    assert p_value == pytest.approx(exact_size, rel=1e-9)


def test_holm_adjustment_is_monotone_and_bonferroni_for_the_best() -> None:
    log10_ps = [-3.0, -10.0, -1.0, -10.0]
    adjusted = stats.holm(log10_ps)
    assert adjusted[1] == pytest.approx(-10.0 + math.log10(4))
    assert adjusted[3] == pytest.approx(-10.0 + math.log10(4))  # max with the previous rank
    assert adjusted[0] == pytest.approx(-3.0 + math.log10(2))
    assert adjusted[2] == pytest.approx(-1.0)  # last rank: multiplied by 1
    assert stats.holm([-0.1, -0.2])[0] == 0.0  # capped at p = 1
    assert stats.bonferroni(-10.0, 1000)[1] == pytest.approx(-7.0)


def test_invalid_arguments_raise() -> None:
    with pytest.raises(ValueError):
        stats.binomial_upper_tail(1, 10, 1.5)
    with pytest.raises(ValueError):
        stats.gamma_upper_tail(3, -1.0)
