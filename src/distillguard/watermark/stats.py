"""Exact tail probabilities that stay finite far below 1e-300, and family-wise corrections.

Each function returns ``(p_value, log10_p)``. The p-value comes from scipy's regularized
incomplete functions while it is representable; below 1e-280 the log10 is computed from the
tail series in log space (chunked log-sum-exp of the exact terms), so it stays finite and
accurate to well under 1% of the p-value down to 1e-1000 and beyond, where the float p-value
itself underflows to 0.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import special

__all__ = [
    "binomial_upper_tail",
    "bonferroni",
    "gamma_upper_tail",
    "holm",
]

_LN10 = math.log(10.0)
_REPRESENTABLE = 1e-280
_CHUNK = 4096
_NEGLIGIBLE = 60.0  # stop summing when a term is e**-60 below the largest one


def _logsumexp(values: np.ndarray) -> float:
    peak = float(np.max(values))
    return peak + math.log(float(np.sum(np.exp(values - peak))))


def binomial_upper_tail(successes: int, trials: int, probability: float) -> tuple[float, float]:
    """P(X >= successes) for X ~ Binomial(trials, probability).

    Exact: ``I_p(g, n - g + 1)``, the regularized incomplete beta (Fernandez et al. 2023, sec. 3),
    never the normal approximation, which is anti-conservative for small n.
    """
    if trials < 0 or not successes >= 0 or not 0.0 < probability < 1.0:
        raise ValueError("need trials >= 0, successes >= 0 and 0 < probability < 1")
    if successes == 0:
        return 1.0, 0.0
    if successes > trials:
        return 0.0, -math.inf
    p_value = float(special.betainc(successes, trials - successes + 1, probability))
    if p_value > _REPRESENTABLE:
        return p_value, math.log10(p_value)
    # Far tail: sum the binomial terms from k = successes upward in log space. Here the terms
    # fall geometrically, so a few chunks reach a negligible term.
    log_p = math.log(probability)
    log_q = math.log1p(-probability)
    log_n_fact = special.gammaln(trials + 1)
    partial_logs: list[float] = []
    peak = -math.inf
    start = successes
    while start <= trials:
        ks = np.arange(start, min(start + _CHUNK, trials + 1), dtype=np.float64)
        terms = (
            log_n_fact
            - special.gammaln(ks + 1)
            - special.gammaln(trials - ks + 1)
            + ks * log_p
            + (trials - ks) * log_q
        )
        partial_logs.append(_logsumexp(terms))
        peak = max(peak, float(np.max(terms)))
        if float(terms[-1]) < peak - _NEGLIGIBLE:
            break
        start += _CHUNK
    log_tail = _logsumexp(np.asarray(partial_logs))
    return math.exp(log_tail), log_tail / _LN10


def gamma_upper_tail(shape: int, value: float) -> tuple[float, float]:
    """P(S >= value) for S ~ Gamma(shape, 1) with integer shape (a sum of `shape` Exp(1)).

    Exact: the regularized upper incomplete gamma ``Q(n, x) = exp(-x) sum_{k<n} x**k / k!``.
    """
    if shape < 0 or value < 0.0 or not math.isfinite(value):
        raise ValueError("need shape >= 0 and a finite value >= 0")
    if shape == 0:
        return 1.0, 0.0
    p_value = float(special.gammaincc(shape, value))
    if p_value > _REPRESENTABLE:
        return p_value, math.log10(p_value)
    # Far tail (value far above shape): terms x**k / k! grow with k up to k = shape - 1, so sum
    # downward from the last term in log space.
    log_x = math.log(value)
    partial_logs: list[float] = []
    peak = -math.inf
    stop = shape  # exclusive upper end of the chunk
    while stop > 0:
        ks = np.arange(max(0, stop - _CHUNK), stop, dtype=np.float64)[::-1]
        terms = ks * log_x - special.gammaln(ks + 1) - value
        partial_logs.append(_logsumexp(terms))
        peak = max(peak, float(np.max(terms)))
        if float(terms[-1]) < peak - _NEGLIGIBLE:
            break
        stop -= _CHUNK
    log_tail = _logsumexp(np.asarray(partial_logs))
    return math.exp(log_tail), log_tail / _LN10


def bonferroni(log10_p: float, tests: int) -> tuple[float, float]:
    """Family-wise p-value of one of `tests` p-values: min(1, tests * p)."""
    if tests < 1:
        raise ValueError("tests must be >= 1")
    corrected = min(0.0, log10_p + math.log10(tests))
    return 10.0**corrected, corrected


def holm(log10_ps: list[float]) -> list[float]:
    """Holm-Bonferroni adjusted log10 p-values, in the input order (valid under any dependence)."""
    count = len(log10_ps)
    order = sorted(range(count), key=lambda index: log10_ps[index])
    adjusted = [0.0] * count
    running = -math.inf
    for rank, index in enumerate(order):
        candidate = min(0.0, log10_ps[index] + math.log10(count - rank))
        running = max(running, candidate)
        adjusted[index] = running
    return adjusted
