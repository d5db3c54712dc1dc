"""The rate limiter's rules, one suite over every backend (memory; Redis when there is one)."""

from __future__ import annotations

import time
from collections.abc import Callable

from distillguard.gateway.ratelimit import Admission, Limits, RateLimiter, Refusal, Scope

from .conftest import settled


def key_scope(rpm: int = 5, tpm: int = 1000, concurrency: int | None = None) -> Scope:
    return Scope("key:k1", Limits(rpm, tpm, concurrency))


def test_a_refused_request_consumes_nothing(make_limiter: Callable[[], RateLimiter]) -> None:
    limiter = make_limiter()
    scopes = (key_scope(rpm=100, tpm=100), Scope("tenant:t", Limits(1, 10_000)))
    assert isinstance(limiter.admit(scopes, 50), Admission)
    refused = limiter.admit(scopes, 20)  # the tenant's one request is used
    assert isinstance(refused, Refusal) and refused.scope == "tenant:t"
    too_many_tokens = limiter.admit(scopes[:1], 60)  # 110 tokens > 100
    assert isinstance(too_many_tokens, Refusal) and too_many_tokens.reason == "tokens"
    snapshot = limiter.snapshot(scopes[0])
    assert snapshot is not None
    assert (snapshot.remaining_requests, snapshot.remaining_tokens) == (99, 50)


def test_settlement_returns_unused_tokens(make_limiter: Callable[[], RateLimiter]) -> None:
    limiter = make_limiter()
    scopes = (key_scope(rpm=100, tpm=100),)
    first = limiter.admit(scopes, 60)
    assert isinstance(first, Admission) and first.snapshot.remaining_tokens == 40
    refused = limiter.admit(scopes, 60)
    assert isinstance(refused, Refusal) and refused.reason == "tokens"
    limiter.settle(first, 10)
    settled(limiter)
    assert isinstance(limiter.admit(scopes, 60), Admission)
    snapshot = limiter.snapshot(scopes[0])
    assert snapshot is not None and snapshot.remaining_tokens == 30


def test_concurrency_counts_requests_in_flight(make_limiter: Callable[[], RateLimiter]) -> None:
    limiter = make_limiter()
    scopes = (key_scope(rpm=100, tpm=10_000, concurrency=2),)
    held = [limiter.admit(scopes, 1) for _ in range(2)]
    refused = limiter.admit(scopes, 1)
    assert isinstance(refused, Refusal) and refused.reason == "concurrency"
    first = held[0]
    assert isinstance(first, Admission)
    limiter.settle(first, 1)
    settled(limiter)
    assert isinstance(limiter.admit(scopes, 1), Admission)


def test_the_window_slides(make_limiter: Callable[[], RateLimiter]) -> None:
    limiter = make_limiter()
    scopes = (Scope("key:k1", Limits(2, 1000), window=0.3),)
    assert all(isinstance(limiter.admit(scopes, 1), Admission) for _ in range(2))
    refused = limiter.admit(scopes, 1)
    assert isinstance(refused, Refusal) and refused.reason == "requests"
    assert 0.0 < refused.retry_after <= 0.3
    time.sleep(0.35)
    assert isinstance(limiter.admit(scopes, 1), Admission)


def test_limiters_sharing_a_backend_admit_the_limit_once(
    make_limiter: Callable[[], RateLimiter],
) -> None:
    first, second = make_limiter(), make_limiter()
    if first is not second and type(first).__name__ == "MemoryRateLimiter":
        first = second  # a memory limiter is shared within one process: the same instance
    scopes = (key_scope(rpm=5),)
    decisions = [(first if i % 2 else second).admit(scopes, 1) for i in range(6)]
    assert [isinstance(d, Admission) for d in decisions] == [True] * 5 + [False]
    refusal = decisions[-1]
    assert isinstance(refusal, Refusal) and refusal.reason == "requests"
    assert 55.0 < refusal.retry_after <= 60.0
    assert refusal.snapshot.remaining_requests == 0
