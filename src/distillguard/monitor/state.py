"""Per-account running state, updated in O(1) per request: counts, windows, the hashed
embeddings of recent prompts, the account's origin (identity tokens) and metadata.

Text is not kept: only hashes, the embeddings of the last 16 prompts, sums of prompt features
and bounded counters. Identity tokens are kept with the time each was last seen, and forgotten
`retention` seconds after that (`AccountState.forget_before`).
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from distillguard.monitor.events import MonitorEvent
from distillguard.monitor.text import (
    DISTRIBUTION_DIM,
    EMBEDDING_DIM,
    SIGNATURE_SIZE,
    PromptFeatures,
)

__all__ = ["ACTIVITY_BUCKET", "ACTIVITY_HORIZON", "AccountState", "TokenCounts"]

RECENT_PROMPTS = 16  # novelty = distance to the nearest of the last 16 prompts
TOPIC_WINDOW = 64  # topic coverage = distinct topic buckets among the last 64 prompts
TEMPLATE_CAPACITY = 4096  # template shingle counters kept per account (space-saving prune)
BAND_CAPACITY = 4096  # MinHash bands remembered per account
TOKEN_CAPACITY = 8  # identity tokens (addresses, networks, clients) remembered per account
ACTIVITY_BUCKET = 3600.0  # seconds; timing synchrony across accounts is read at this grain
ACTIVITY_HORIZON = 3 * 86_400.0
LONG_OUTPUT = 1024  # max_tokens at or above this asks for a long completion
MIN_GAP = 0.5  # seconds; gaps are floored before taking logs
CONVERSATION_GAP = 3600.0  # a later turn within this long continues the conversation


class TokenCounts:
    """The most used tokens of one kind (space-saving: when full, the least used goes), with
    when each was last seen."""

    __slots__ = ("capacity", "counts", "seen")

    def __init__(self, capacity: int = TOKEN_CAPACITY) -> None:
        self.capacity = capacity
        self.counts: dict[str, int] = {}
        self.seen: dict[str, float] = {}

    def add(self, token: str, time: float) -> bool:
        """Count one use; True when the token was not among those remembered."""
        count = self.counts.get(token)
        if count is None:
            if len(self.counts) >= self.capacity:
                least = min(self.counts, key=self.counts.__getitem__)
                del self.counts[least], self.seen[least]
            self.counts[token] = 1
            self.seen[token] = time
            return True
        self.counts[token] = count + 1
        self.seen[token] = time
        return False

    def top(self) -> tuple[str, float]:
        """The most used token and its share of the remembered uses; ("", 0) when none."""
        if not self.counts:
            return "", 0.0
        token = max(self.counts, key=self.counts.__getitem__)
        return token, self.counts[token] / sum(self.counts.values())

    def forget_before(self, time: float) -> None:
        for token in [t for t, seen in self.seen.items() if seen < time]:
            del self.counts[token], self.seen[token]


@dataclass
class AccountState:
    """Running counts for one account."""

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
    fresh_turns: int = 0  # multi-turn requests whose earlier turns the account never sent
    last_fresh: bool = False  # the latest request was one of them
    collection: int = 0  # requests the risk model's request model called collection
    last_turns: int = 0
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
    signature: NDArray[np.uint64] = field(
        default_factory=lambda: np.full(SIGNATURE_SIZE, np.iinfo(np.uint64).max, np.uint64)
    )
    recent: NDArray[np.float32] = field(
        default_factory=lambda: np.zeros((RECENT_PROMPTS, EMBEDDING_DIM), dtype=np.float32)
    )
    centroid: NDArray[np.float64] = field(default_factory=lambda: np.zeros(EMBEDDING_DIM))
    # sums of the prompts' random Fourier features, for the distribution (MMD) test
    distribution_sum: NDArray[np.float64] = field(
        default_factory=lambda: np.zeros(DISTRIBUTION_DIM)
    )
    distribution_square: float = 0.0  # sum of |phi|^2
    activity: deque[tuple[int, int]] = field(default_factory=deque)  # (bucket, count)
    # origin and account metadata
    new_networks: int = 0  # requests from a network not among those remembered
    networks: TokenCounts = field(default_factory=TokenCounts)
    addresses: TokenCounts = field(default_factory=TokenCounts)
    clients: TokenCounts = field(default_factory=TokenCounts)  # user agent + header order
    org: str = ""
    signup_program: str = ""
    created_at: float | None = None

    def update(self, event: MonitorEvent, prompt: PromptFeatures) -> None:
        if self.requests:
            gap = max(event.time - self.last_time, MIN_GAP)
            self._add_gap(math.log(gap))
        continues = (
            self.requests > 0
            and event.turns == self.last_turns + 1
            and event.time - self.last_time <= CONVERSATION_GAP
        )
        self.last_fresh = event.turns > 1 and not continues
        self.fresh_turns += self.last_fresh
        self.last_turns = event.turns
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
        self._update_origin(event)

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
        self.distribution_sum += prompt.distribution
        self.distribution_square += float(prompt.distribution @ prompt.distribution)
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
        np.minimum(self.signature, prompt.signature, out=self.signature)
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

    def _update_origin(self, event: MonitorEvent) -> None:
        if event.network and self.networks.add(event.network, event.time) and self.requests > 1:
            self.new_networks += 1
        if event.address:
            self.addresses.add(event.address, event.time)
        if event.agent or event.header_fingerprint:
            self.clients.add(f"{event.agent}/{event.header_fingerprint}", event.time)
        if event.org:
            self.org = event.org
        if event.signup_program:
            self.signup_program = event.signup_program
        if event.created_at is not None:
            self.created_at = event.created_at

    def forget_before(self, time: float) -> None:
        """Drop identity tokens last seen before `time` (the retention setting)."""
        for counts in (self.networks, self.addresses, self.clients):
            counts.forget_before(time)

    @property
    def gap_log_std(self) -> float:
        return math.sqrt(self.gap_log_m2 / self.gap_count) if self.gap_count > 1 else 0.0

    @property
    def rate_per_hour(self) -> float:
        span_hours = max((self.last_time - self.first_time) / 3600.0, 1.0)
        return self.requests / span_hours

    @property
    def distribution_mean(self) -> NDArray[np.float64]:
        """The kernel mean embedding of the account's prompts; zeros before any."""
        if not self.texts:
            return self.distribution_sum
        mean: NDArray[np.float64] = self.distribution_sum / self.texts
        return mean

    def dominant_templates(self, share: float = 0.3) -> frozenset[int]:
        """Template shingles on at least `share` of this account's prompts."""
        floor = max(2, math.ceil(share * self.texts))
        if self.template_top < floor:  # no shingle recurs that often: skip the scan
            return frozenset()
        return frozenset(s for s, c in self.templates.items() if c >= floor)
