"""Per-account state, updated in O(1) per request, and the signals computed from it.

Fractions are shrunk toward a prior with the weight of `PRIOR_WEIGHT` requests, so that an
account's first few requests cannot make it look like anything: evidence has to accumulate.
The same signals are computed for a ring by pooling its members' counts (`pooled_signals`).
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from distillguard.monitor.events import MonitorEvent
from distillguard.monitor.text import EMBEDDING_DIM, PromptFeatures

__all__ = [
    "FEATURES",
    "AccountState",
    "Signal",
    "account_signals",
    "describe",
    "pooled_signals",
]

PRIOR_WEIGHT = 8.0
RECENT_PROMPTS = 16  # novelty = distance to the nearest of the last 16 prompts
TOPIC_WINDOW = 64  # topic coverage = distinct topic buckets among the last 64 prompts
TEMPLATE_CAPACITY = 4096  # template shingle counters kept per account (space-saving prune)
BAND_CAPACITY = 4096  # MinHash bands remembered per account
ACTIVITY_BUCKET = 3600.0  # seconds; timing synchrony across accounts is read at this grain
ACTIVITY_HORIZON = 3 * 86_400.0
LONG_OUTPUT = 1024  # max_tokens at or above this asks for a long completion
MIN_GAP = 0.5  # seconds; gaps are floored before taking logs


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
    Signal("output_ratio", 0.0, "outputs are {value:.1f}x the prompt length"),
    Signal("one_shot", 0.5, "{pct} of requests are one-shot (no conversation)"),
    Signal("timing_regularity", 0.3, "requests arrive at regular intervals ({value:.2f})"),
    Signal("round_the_clock", 0.3, "active around the clock ({pct} of hours)"),
)
FEATURE_INDEX = {signal.name: index for index, signal in enumerate(FEATURES)}


@dataclass
class AccountState:
    """Running counts for one account. Text is not kept: only hashes and one embedding ring."""

    account: str
    tenant: str
    requests: int = 0
    texts: int = 0  # prompts that fed the text signals (rejected requests do not: retries)
    first_time: float = math.inf
    last_time: float = -math.inf
    reasoning: int = 0
    logprobs: int = 0
    multiple_samples: int = 0
    maximal_max_tokens: int = 0
    long_outputs: int = 0
    one_shot: int = 0
    near_duplicates: int = 0
    novelty_sum: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    gap_count: int = 0
    gap_log_mean: float = 0.0
    gap_log_m2: float = 0.0
    hours: list[int] = field(default_factory=lambda: [0] * 24)
    recent_topics: deque[int] = field(default_factory=deque)
    topic_counts: dict[int, int] = field(default_factory=dict)
    templates: dict[int, int] = field(default_factory=dict)
    template_top: int = 0
    bands: OrderedDict[int, None] = field(default_factory=OrderedDict)
    recent: NDArray[np.float32] = field(
        default_factory=lambda: np.zeros((RECENT_PROMPTS, EMBEDDING_DIM), dtype=np.float32)
    )
    centroid: NDArray[np.float64] = field(default_factory=lambda: np.zeros(EMBEDDING_DIM))
    activity: deque[tuple[int, int]] = field(default_factory=deque)  # (bucket, count)

    def update(self, event: MonitorEvent, prompt: PromptFeatures) -> None:
        if self.requests:
            gap = max(event.time - self.last_time, MIN_GAP)
            self._add_gap(math.log(gap))
        self.requests += 1
        self.first_time = min(self.first_time, event.time)
        self.last_time = max(self.last_time, event.time)
        self.hours[int(event.time // 3600) % 24] += 1
        self.reasoning += prompt.reasoning
        self.logprobs += event.logprobs
        self.multiple_samples += event.n > 1
        self.maximal_max_tokens += (
            event.max_tokens is not None and event.max_tokens >= 0.9 * event.max_tokens_cap
        )
        # long relative to what the model allows: 1,024 tokens, or half the model's maximum
        long_output = min(LONG_OUTPUT, event.max_tokens_cap // 2)
        self.long_outputs += event.max_tokens is not None and event.max_tokens >= long_output
        self.one_shot += event.turns <= 1
        if event.status < 400:
            # a refused request produced no output, and its retry would count its prompt twice
            self.prompt_tokens += event.prompt_tokens
            self.completion_tokens += event.completion_tokens
            self._update_text(prompt)
        self._update_activity(event.time)

    def _add_gap(self, log_gap: float) -> None:
        # Welford's running mean and variance of log inter-arrival times
        self.gap_count += 1
        delta = log_gap - self.gap_log_mean
        self.gap_log_mean += delta / self.gap_count
        self.gap_log_m2 += delta * (log_gap - self.gap_log_mean)

    def _update_text(self, prompt: PromptFeatures) -> None:
        seen = min(self.texts, RECENT_PROMPTS)
        if seen:
            nearest = float(np.max(self.recent[:seen] @ prompt.embedding))
            self.novelty_sum += 1.0 - max(nearest, 0.0)
        else:
            self.novelty_sum += 1.0
        self.recent[self.texts % RECENT_PROMPTS] = prompt.embedding
        self.texts += 1
        self.centroid += prompt.embedding
        self.recent_topics.append(prompt.topic)
        self.topic_counts[prompt.topic] = self.topic_counts.get(prompt.topic, 0) + 1
        if len(self.recent_topics) > TOPIC_WINDOW:
            dropped = self.recent_topics.popleft()
            self.topic_counts[dropped] -= 1
            if not self.topic_counts[dropped]:
                del self.topic_counts[dropped]
        if any(band in self.bands for band in prompt.bands):
            self.near_duplicates += 1
        for band in prompt.bands:
            self.bands[band] = None
        while len(self.bands) > BAND_CAPACITY:
            self.bands.popitem(last=False)
        for shingle in prompt.template_shingles:
            count = self.templates.get(shingle, 0) + 1
            self.templates[shingle] = count
            self.template_top = max(self.template_top, count)
        if len(self.templates) > TEMPLATE_CAPACITY:
            # drop one-off shingles: a template's shingles recur, a prompt's own words do not
            self.templates = {s: c for s, c in self.templates.items() if c > 1}

    def _update_activity(self, time: float) -> None:
        bucket = int(time // ACTIVITY_BUCKET)
        if self.activity and self.activity[-1][0] == bucket:
            self.activity[-1] = (bucket, self.activity[-1][1] + 1)
        else:
            self.activity.append((bucket, 1))
        horizon = bucket - int(ACTIVITY_HORIZON // ACTIVITY_BUCKET)
        while self.activity and self.activity[0][0] < horizon:
            self.activity.popleft()

    @property
    def gap_log_std(self) -> float:
        return math.sqrt(self.gap_log_m2 / self.gap_count) if self.gap_count > 1 else 0.0

    @property
    def rate_per_hour(self) -> float:
        span_hours = max((self.last_time - self.first_time) / 3600.0, 1.0)
        return self.requests / span_hours

    def dominant_templates(self, share: float = 0.3) -> frozenset[int]:
        """Template shingles on at least `share` of this account's prompts."""
        floor = max(2, math.ceil(share * self.texts))
        return frozenset(s for s, c in self.templates.items() if c >= floor)


def _shrunk(count: float, total: float, prior: float) -> float:
    return (count + PRIOR_WEIGHT * prior) / (total + PRIOR_WEIGHT)


def _signal_values(
    requests: int,
    texts: int,
    topics: tuple[int, int],
    counts: dict[str, float],
    rate_ratio: float,
    output_ratio: float,
    gap_log_std: float,
    hours: Sequence[int],
    span_days: float,
) -> NDArray[np.float64]:
    values = np.zeros(len(FEATURES))
    for name in (
        "reasoning",
        "logprobs",
        "multiple_samples",
        "maximal_max_tokens",
        "long_outputs",
        "one_shot",
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
    values[FEATURE_INDEX["output_ratio"]] = min(max(math.log2(output_ratio), -6.0), 8.0)
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
    return values


def account_signals(state: AccountState, fleet_rate: float) -> NDArray[np.float64]:
    """The signal vector of one account; `fleet_rate` is the fleet's median requests/hour."""
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
    }
    return _signal_values(
        state.requests,
        state.texts,
        (len(state.topic_counts), len(state.recent_topics)),
        counts,
        state.rate_per_hour / max(fleet_rate, 1e-9),
        (state.completion_tokens + 1) / (state.prompt_tokens + 1),
        state.gap_log_std,
        state.hours,
        (state.last_time - state.first_time) / 86_400.0,
    )


def pooled_signals(members: Sequence[AccountState], fleet_rate: float) -> NDArray[np.float64]:
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
    }
    # the ring's topic coverage: its members' own windows, weighted by their size
    distinct = sum(len(m.topic_counts) for m in members)
    window = sum(len(m.recent_topics) for m in members)
    mean_rate = sum(m.rate_per_hour for m in members) / len(members)
    prompt_tokens = sum(m.prompt_tokens for m in members)
    completion_tokens = sum(m.completion_tokens for m in members)
    weights = [max(m.gap_count, 1) for m in members]
    gap_std = sum(w * m.gap_log_std for w, m in zip(weights, members, strict=True)) / sum(weights)
    span = (max(m.last_time for m in members) - min(m.first_time for m in members)) / 86_400.0
    return _signal_values(
        requests,
        sum(m.texts for m in members),
        (distinct, window),
        counts,
        mean_rate / max(fleet_rate, 1e-9),
        (completion_tokens + 1) / (prompt_tokens + 1),
        gap_std,
        hours,
        span,
    )


def describe(name: str, value: float) -> str:
    """A signal's value in words."""
    signal = FEATURES[FEATURE_INDEX[name]]
    if name in ("rate_vs_fleet", "output_ratio"):
        value = 2.0**value
    return signal.label.format(value=value, pct=f"{value:.0%}")
