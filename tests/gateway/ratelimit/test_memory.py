"""The memory limiter: no window of its length ever holds more than the limits allow."""

from __future__ import annotations

import random

import pytest

from distillguard.errors import ConfigError
from distillguard.gateway.ratelimit import (
    Limits,
    MemoryRateLimiter,
    Refusal,
    Scope,
    format_duration,
    limiter_from_url,
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_no_sliding_window_exceeds_the_limits_under_64_concurrent_clients() -> None:
    clock = FakeClock()
    limiter = MemoryRateLimiter(clock)
    limits = Limits(requests_per_minute=50, tokens_per_minute=20_000, concurrency=16)
    scopes = (Scope("key:k", limits), Scope("tenant:t", Limits(80, 30_000)))
    rng = random.Random(7)
    admitted: list[tuple[float, int]] = []  # (time, tokens actually charged after settlement)
    in_flight: list[tuple[float, object, int]] = []
    for _ in range(20_000):  # 64 clients firing at random, each holding a request a few seconds
        clock.now += rng.expovariate(64 / 3.0)
        for finished in [item for item in in_flight if item[0] <= clock.now]:
            in_flight.remove(finished)
            _, admission, used = finished
            limiter.settle(admission, used)  # type: ignore[arg-type]
        reserved = rng.randint(50, 1500)
        decision = limiter.admit(scopes, reserved)
        if isinstance(decision, Refusal):
            assert decision.retry_after >= 0
            continue
        used = rng.randint(1, reserved)
        admitted.append((clock.now, used))
        in_flight.append((clock.now + rng.uniform(0.5, 8.0), decision, used))
        assert len(in_flight) <= 16
    assert len(admitted) > 500  # the limits were actually exercised
    times = [stamp for stamp, _ in admitted]
    for index, start in enumerate(times):  # every window [t, t + 60) that starts at an admission
        end = start + 60.0
        window = [tokens for stamp, tokens in admitted[index:] if stamp < end]
        assert len(window) <= 50
    # tokens: reservations count until settled, so the charged amounts never exceed the limit
    for index, start in enumerate(times):
        window_tokens = sum(tokens for stamp, tokens in admitted[index:] if stamp < start + 60.0)
        assert window_tokens <= 20_000


def test_a_daily_window_holds_at_most_a_bucket_per_minute_whatever_the_traffic() -> None:
    """Three days at 10,000 requests a minute would be 43 million log entries; the daily
    window keeps one bucket per minute of the window, and the minute window its own minute."""
    clock = FakeClock()
    limiter = MemoryRateLimiter(clock)
    key = Scope("key:k", Limits(10**6, 10**12))
    day = Scope("day:k", Limits(10**12, 10**12), window=86_400.0)
    for _ in range(3 * 1440):
        for _ in range(5):  # five a minute for three days, then 10,000 in the last minute
            clock.now += 12.0
            decision = limiter.admit((key, day), 100)
            assert not isinstance(decision, Refusal)
            limiter.settle(decision, 40)
    for _ in range(10_000):
        clock.now += 0.006
        decision = limiter.admit((key, day), 100)
        assert not isinstance(decision, Refusal)
        limiter.settle(decision, 40)
    buckets = limiter._logs["day:k"].window.buckets  # type: ignore[attr-defined]
    assert len(buckets) <= 1441
    snapshot = limiter.snapshot(day)
    assert 1440 * 5 + 10_000 - 10 <= 10**12 - snapshot.remaining_requests <= 1441 * 5 + 10_000
    assert 10**12 - snapshot.remaining_tokens == 40 * (10**12 - snapshot.remaining_requests)


def test_reset_durations_use_openai_format() -> None:
    assert format_duration(0.12) == "120ms"
    assert format_duration(1.0) == "1s"
    assert format_duration(360.0) == "6m0s"


def test_limiter_urls_pick_the_backend() -> None:
    assert isinstance(limiter_from_url(None), MemoryRateLimiter)
    with pytest.raises(ConfigError, match="redis://"):
        limiter_from_url("memcached://localhost")
    with pytest.raises(ConfigError, match="cannot reach Redis"):
        limiter_from_url("redis://127.0.0.1:1/0")
