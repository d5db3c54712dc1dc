"""Long windows count per minute: never looser than the exact window, at most one minute's
worth stricter, in bounded state. One suite over every backend, on a test clock."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from distillguard.gateway.ratelimit import (
    Admission,
    Limits,
    MemoryRateLimiter,
    RateLimiter,
    Refusal,
    Scope,
)
from distillguard.gateway.ratelimit.base import BUCKET

from .conftest import settled

HOUR = 3600.0
LIMITS = Limits(80, 20_000)  # requests and tokens an hour: both are reached by the traces


class FakeClock:
    def __init__(self, now: float = 1_000_003.7) -> None:  # off the minute on purpose
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass
class Attempt:
    time: float
    tokens: int
    decision: Admission | Refusal
    requests_exact: int  # admitted in the exact window (t - W, t], as charged then
    tokens_exact: int
    requests_longer: int  # the same over a window one minute longer, (t - W - 60, t]
    tokens_longer: int


def run_trace(limiter: RateLimiter, clock: FakeClock, scope: Scope, seed: int) -> list[Attempt]:
    """Bursty random traffic for three windows, mostly small requests; each admission settles
    a few seconds later to a random part of its reservation. Every attempt is recorded with
    the exact counts of what was admitted before it (the reference the limiter is held to)."""
    rng = random.Random(seed)
    admitted: list[list[float]] = []  # [time, tokens charged], in time order
    pending: list[tuple[float, Admission, list[float], int]] = []  # (settle at, ..., used)
    attempts = []
    end = clock.now + 3 * scope.window
    while clock.now < end:
        burst = rng.random() < 0.1
        clock.now += rng.expovariate(1 / 0.5 if burst else 1 / 8.0)
        for item in sorted(pending, key=lambda item: item[0]):
            if item[0] <= clock.now:
                pending.remove(item)
                _, admission, entry, used = item
                limiter.settle(admission, used)
                settled(limiter)
                entry[1] = used
        # now and then a large request: its refusal must look far back into the window
        large = rng.random() < 0.1
        tokens = (
            rng.randint(600, scope.limits.tokens_per_minute // 2) if large else rng.randint(20, 600)
        )
        counts = _counts(admitted, clock.now, scope.window)
        decision = limiter.admit((scope,), tokens)
        attempts.append(Attempt(clock.now, tokens, decision, *counts))
        if isinstance(decision, Admission):
            entry = [clock.now, float(tokens)]
            admitted.append(entry)
            used = rng.randint(0, tokens)
            pending.append((clock.now + rng.uniform(0.1, 40.0), decision, entry, used))
    return attempts


def _counts(admitted: list[list[float]], now: float, window: float) -> tuple[int, int, int, int]:
    exact = [tokens for stamp, tokens in admitted if stamp > now - window]
    longer = [tokens for stamp, tokens in admitted if stamp > now - window - BUCKET]
    return len(exact), round(sum(exact)), len(longer), round(sum(longer))


@pytest.mark.parametrize("seed", [1, 2])
def test_a_long_window_never_admits_what_the_exact_window_would_refuse(
    make_limiter: Callable[..., RateLimiter], seed: int
) -> None:
    clock = FakeClock()
    scope = Scope("day:k", LIMITS, window=HOUR)
    attempts = run_trace(make_limiter(clock=clock), clock, scope, seed)
    reasons = {a.decision.reason for a in attempts if isinstance(a.decision, Refusal)}
    assert reasons == {"requests", "tokens"}  # both limits were reached
    for attempt in attempts:
        over_requests = attempt.requests_exact + 1 > LIMITS.requests_per_minute
        over_tokens = attempt.tokens_exact + attempt.tokens > LIMITS.tokens_per_minute
        if over_requests or over_tokens:
            assert isinstance(attempt.decision, Refusal), attempt


@pytest.mark.parametrize("seed", [1, 2])
def test_a_long_window_refuses_at_most_one_minute_early(
    make_limiter: Callable[..., RateLimiter], seed: int
) -> None:
    """A refusal is one the exact rule would give over a window one minute longer."""
    clock = FakeClock()
    scope = Scope("day:k", LIMITS, window=HOUR)
    attempts = run_trace(make_limiter(clock=clock), clock, scope, seed)
    early = 0
    for attempt in attempts:
        decision = attempt.decision
        if not isinstance(decision, Refusal):
            continue
        if decision.reason == "requests":
            assert attempt.requests_longer + 1 > LIMITS.requests_per_minute, attempt
        else:
            assert attempt.tokens_longer + attempt.tokens > LIMITS.tokens_per_minute, attempt
        exact_refuses = (
            attempt.requests_exact + 1 > LIMITS.requests_per_minute
            or attempt.tokens_exact + attempt.tokens > LIMITS.tokens_per_minute
        )
        early += not exact_refuses
        # the wait it reports lies within the window and its edge minute
        assert 0.0 <= decision.retry_after <= scope.window + BUCKET
    assert early > 0  # the edge minute was actually exercised


def test_a_long_window_refusal_says_when_enough_leaves(
    make_limiter: Callable[..., RateLimiter],
) -> None:
    clock = FakeClock(6_000_000.0)  # on a minute boundary
    limiter = make_limiter(clock=clock)
    scope = Scope("day:k", Limits(10**9, 1_000), window=HOUR)
    assert isinstance(limiter.admit((scope,), 400), Admission)  # minute 0
    clock.now += 600.0
    assert isinstance(limiter.admit((scope,), 500), Admission)  # minute 10
    clock.now += 600.0
    refused = limiter.admit((scope,), 300)  # needs 200 to leave: the first minute's 400
    assert isinstance(refused, Refusal) and refused.reason == "tokens"
    # minute 0 leaves once all of it is out of the window: an hour and a minute after it began
    assert refused.retry_after == pytest.approx(HOUR + BUCKET - 1200.0)
    clock.now += refused.retry_after - 0.001
    assert isinstance(limiter.admit((scope,), 300), Refusal)
    clock.now += 0.002
    assert isinstance(limiter.admit((scope,), 300), Admission)


@pytest.mark.parametrize("seed", [3, 4])
def test_redis_decides_a_long_window_as_the_memory_backend_does(
    replicas: Callable[..., RateLimiter], seed: int
) -> None:
    """Same rule, two layouts (Redis also sums each hour, to read a day in a few fields): on
    the same trace, the same decisions and the same waits."""
    scope = Scope("day:k", Limits(150, 30_000), window=4 * HOUR)
    traces = []
    for make in (MemoryRateLimiter, replicas):
        clock = FakeClock()
        traces.append(run_trace(make(clock=clock), clock, scope, seed))
    memory, redis = traces
    assert len(memory) == len(redis)
    for on_memory, on_redis in zip(memory, redis, strict=True):
        assert type(on_memory.decision) is type(on_redis.decision), on_memory
        if isinstance(on_memory.decision, Refusal) and isinstance(on_redis.decision, Refusal):
            assert on_memory.decision.reason == on_redis.decision.reason
            assert on_memory.decision.retry_after == pytest.approx(
                on_redis.decision.retry_after, abs=1e-3
            )
    assert sum(isinstance(attempt.decision, Refusal) for attempt in memory) > 100
