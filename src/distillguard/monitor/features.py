"""The signals computed from an account's state (`monitor.state`), and from the fleet's.

Fractions are shrunk toward a prior with the weight of `PRIOR_WEIGHT` requests, so that an
account's first few requests cannot make it look like anything: evidence has to accumulate.
The same signals are computed for a ring by pooling its members' counts (`pooled_signals`).

`distribution_shift` is a two-sample test of the account's prompts against the fleet's: the
unbiased estimate of the squared maximum mean discrepancy (MMD, Gretton et al., JMLR 2012)
under a Gaussian kernel, read through random Fourier features (`monitor.text`), so that an
account's sample is a running sum and the test costs O(DISTRIBUTION_DIM) per request.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from distillguard.monitor.state import AccountState

__all__ = [
    "FEATURES",
    "Fleet",
    "Signal",
    "account_signals",
    "describe",
    "mmd_squared",
    "pooled_signals",
]

PRIOR_WEIGHT = 8.0


@dataclass(frozen=True)
class Signal:
    name: str
    prior: float  # the value a fraction is shrunk toward; what an ordinary account shows
    label: str  # how a reason reads, formatted with the value


# The signals, in the order of the risk model's weights.
FEATURES: tuple[Signal, ...] = (
    Signal("rate_vs_fleet", 0.0, "sends {value:.1f}x the fleet's median request rate"),
    Signal("novelty", 0.5, "each prompt is far from the account's earlier ones ({value:.2f})"),
    Signal("topic_coverage", 0.3, "{pct} of recent prompts are on topics of their own"),
    Signal("near_duplicates", 0.05, "{pct} of prompts are near-duplicates of earlier ones"),
    Signal("template_reuse", 0.1, "{pct} of prompts share one template"),
    Signal("reasoning", 0.05, "{pct} of prompts ask for step-by-step reasoning"),
    Signal("logprobs", 0.02, "{pct} of requests ask for logprobs"),
    Signal("multiple_samples", 0.02, "{pct} of requests ask for n > 1 samples"),
    Signal("maximal_max_tokens", 0.05, "{pct} of requests ask for the maximum max_tokens"),
    Signal(
        "long_outputs",
        0.2,
        "{pct} of requests ask for long outputs (1,024 tokens or half the maximum)",
    ),
    Signal("output_tokens", 7.0, "outputs average {value:.0f} tokens"),
    Signal("one_shot", 0.5, "{pct} of requests are one-shot (no conversation)"),
    Signal("timing_regularity", 0.3, "requests arrive at regular intervals ({value:.2f})"),
    Signal("round_the_clock", 0.3, "active around the clock ({pct} of hours)"),
    Signal(
        "distribution_shift",
        0.0,
        "its prompts are unlike the fleet's (MMD^2 {value:.3f} against the benign fleet)",
    ),
    Signal(
        "fresh_turns",
        0.05,
        "{pct} of requests carry earlier turns the account never sent (made-up conversations)",
    ),
    Signal(
        "collection_share",
        0.02,
        "{pct} of requests look like collection on their own (one-shot, long, unusual prompts)",
    ),
    Signal(
        "network_churn",
        0.05,
        "{pct} of requests come from a network it had not used lately (rotating proxies)",
    ),
)
FEATURE_INDEX = {signal.name: index for index, signal in enumerate(FEATURES)}


@dataclass(frozen=True)
class Fleet:
    """What the signals compare an account with: the fleet's median request rate, the kernel
    mean embedding of the benign fleet's prompts and their mean embedding (None until the fleet
    has them)."""

    rate: float = 1.0  # requests per hour
    reference: NDArray[np.float64] | None = None  # (DISTRIBUTION_DIM,)
    centroid: NDArray[np.float64] | None = None  # (EMBEDDING_DIM,)


def mmd_squared(
    total: NDArray[np.float64], square: float, count: int, reference: NDArray[np.float64] | None
) -> float:
    """Unbiased MMD^2 between a sample, given as the sum of its features `total`, the sum of
    their squared norms and its size, and a reference mean embedding (Gretton et al. 2012,
    eq. 3, with the reference taken as the population): the within-sample term leaves out
    each prompt's similarity to itself, so an account drawn from the reference scores 0 in
    expectation whatever its size. 0 below two prompts or without a reference."""
    if reference is None or count < 2:
        return 0.0
    within = (float(total @ total) - square) / (count * (count - 1))
    return within - 2.0 * float(total @ reference) / count + float(reference @ reference)


def _mean_output(completion_tokens: float, served: int) -> float:
    """Completion tokens per served request, shrunk toward the prior's 128. Not the ratio to
    the prompt's length: that follows the prompt set (long persona prompts, short questions),
    and a model fitted on one set misread the other's honest users."""
    prior: float = 2.0 ** FEATURES[FEATURE_INDEX["output_tokens"]].prior
    return (completion_tokens + PRIOR_WEIGHT * prior) / (served + PRIOR_WEIGHT)


def _shrunk(count: float, total: float, prior: float) -> float:
    return (count + PRIOR_WEIGHT * prior) / (total + PRIOR_WEIGHT)


def _signal_values(
    requests: int,
    texts: int,
    topics: tuple[int, int],
    counts: dict[str, float],
    rate_ratio: float,
    output_tokens: float,
    gap_log_std: float,
    hours: Sequence[int],
    span_days: float,
    shift: float,
) -> NDArray[np.float64]:
    values = np.zeros(len(FEATURES))
    for name in (
        "reasoning",
        "logprobs",
        "multiple_samples",
        "maximal_max_tokens",
        "long_outputs",
        "one_shot",
        "fresh_turns",
        "collection_share",
        "network_churn",
    ):
        values[FEATURE_INDEX[name]] = _shrunk(
            counts[name], requests, FEATURES[FEATURE_INDEX[name]].prior
        )
    for name in ("near_duplicates", "template_reuse", "novelty"):
        values[FEATURE_INDEX[name]] = _shrunk(
            counts[name], texts, FEATURES[FEATURE_INDEX[name]].prior
        )
    distinct, window = topics
    values[FEATURE_INDEX["topic_coverage"]] = _shrunk(
        distinct, window, FEATURES[FEATURE_INDEX["topic_coverage"]].prior
    )
    values[FEATURE_INDEX["rate_vs_fleet"]] = min(max(math.log2(max(rate_ratio, 1e-6)), -6.0), 10.0)
    values[FEATURE_INDEX["output_tokens"]] = min(max(math.log2(max(output_tokens, 1.0)), 0.0), 14.0)
    # shrink regularity toward the prior too: few gaps say little
    regularity = 1.0 / (1.0 + gap_log_std)
    gaps = max(requests - 1, 0)
    values[FEATURE_INDEX["timing_regularity"]] = _shrunk(
        regularity * gaps, gaps, FEATURES[FEATURE_INDEX["timing_regularity"]].prior
    )
    total = sum(hours)
    if total:
        shares = np.asarray(hours, dtype=np.float64) / total
        shares = shares[shares > 0]
        entropy = float(-(shares * np.log(shares)).sum() / math.log(24))
    else:
        entropy = 0.0
    values[FEATURE_INDEX["round_the_clock"]] = entropy * min(1.0, span_days)
    # shrunk like a fraction: a few prompts' discrepancy is mostly noise
    values[FEATURE_INDEX["distribution_shift"]] = shift * texts / (texts + PRIOR_WEIGHT)
    return values


def account_signals(state: AccountState, fleet: Fleet) -> NDArray[np.float64]:
    """The signal vector of one account, against the fleet."""
    counts = {
        "near_duplicates": state.near_duplicates,
        "template_reuse": state.template_top,
        "reasoning": state.reasoning,
        "logprobs": state.logprobs,
        "multiple_samples": state.multiple_samples,
        "maximal_max_tokens": state.maximal_max_tokens,
        "long_outputs": state.long_outputs,
        "one_shot": state.one_shot,
        "novelty": state.novelty_sum,
        "fresh_turns": state.fresh_turns,
        "collection_share": state.collection,
        "network_churn": state.new_networks,
    }
    return _signal_values(
        state.requests,
        state.texts,
        (len(state.topic_counts), len(state.recent_topics)),
        counts,
        state.rate_per_hour / max(fleet.rate, 1e-9),
        _mean_output(state.completion_tokens, state.texts),
        state.gap_log_std,
        state.hours,
        (state.last_time - state.first_time) / 86_400.0,
        mmd_squared(
            state.distribution_sum, state.distribution_square, state.texts, fleet.reference
        ),
    )


def pooled_signals(members: Sequence[AccountState], fleet: Fleet) -> NDArray[np.float64]:
    """Signals of a ring, as if its members were one account: counts summed, templates shared
    across members counted together, rate taken as the members' mean."""
    requests = sum(m.requests for m in members)
    shared: dict[int, int] = {}
    for member in members:
        for shingle in member.dominant_templates():
            shared[shingle] = shared.get(shingle, 0) + member.templates[shingle]
    hours = [sum(m.hours[h] for m in members) for h in range(24)]
    counts = {
        "near_duplicates": sum(m.near_duplicates for m in members),
        "template_reuse": max(shared.values(), default=0),
        "reasoning": sum(m.reasoning for m in members),
        "logprobs": sum(m.logprobs for m in members),
        "multiple_samples": sum(m.multiple_samples for m in members),
        "maximal_max_tokens": sum(m.maximal_max_tokens for m in members),
        "long_outputs": sum(m.long_outputs for m in members),
        "one_shot": sum(m.one_shot for m in members),
        "novelty": sum(m.novelty_sum for m in members),
        "fresh_turns": sum(m.fresh_turns for m in members),
        "collection_share": sum(m.collection for m in members),
        "network_churn": sum(m.new_networks for m in members),
    }
    # the ring's topic coverage: its members' own windows, weighted by their size
    distinct = sum(len(m.topic_counts) for m in members)
    window = sum(len(m.recent_topics) for m in members)
    mean_rate = sum(m.rate_per_hour for m in members) / len(members)
    completion_tokens = sum(m.completion_tokens for m in members)
    weights = [max(m.gap_count, 1) for m in members]
    gap_std = sum(w * m.gap_log_std for w, m in zip(weights, members, strict=True)) / sum(weights)
    span = (max(m.last_time for m in members) - min(m.first_time for m in members)) / 86_400.0
    texts = sum(m.texts for m in members)
    # the ring's prompts as one sample: sums add
    total = np.sum([m.distribution_sum for m in members], axis=0)
    square = sum(m.distribution_square for m in members)
    return _signal_values(
        requests,
        texts,
        (distinct, window),
        counts,
        mean_rate / max(fleet.rate, 1e-9),
        _mean_output(completion_tokens, sum(m.texts for m in members)),
        gap_std,
        hours,
        span,
        mmd_squared(total, square, texts, fleet.reference),
    )


def describe(name: str, value: float) -> str:
    """A signal's value in words."""
    signal = FEATURES[FEATURE_INDEX[name]]
    if name in ("rate_vs_fleet", "output_tokens"):
        value = 2.0**value
    return signal.label.format(value=value, pct=f"{value:.0%}")
