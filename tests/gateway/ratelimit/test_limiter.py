"""The rate limiter's rules, one suite over every backend (memory; Redis when there is one)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

import pytest

from distillguard.gateway.ratelimit import (
    Admission,
    Limits,
    RateLimiter,
    Refusal,
    Scope,
    admitted,
)

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


def test_usage_over_the_reservation_is_charged(make_limiter: Callable[[], RateLimiter]) -> None:
    """An upstream's prompt can tokenize worse than its estimate (one token per 4 bytes):
    settling charges what was used, not only up to the reservation (before: capped at it)."""
    limiter = make_limiter()
    scopes = (key_scope(rpm=100, tpm=100), Scope("day:k1", Limits(10**12, 1000), window=86_400))
    first = limiter.admit(scopes, 20)
    assert isinstance(first, Admission)
    limiter.settle(first, 70)
    settled(limiter)
    for scope, limit in zip(scopes, (100, 1000), strict=True):
        snapshot = limiter.snapshot(scope)
        assert snapshot is not None and snapshot.remaining_tokens == limit - 70
    refused = limiter.admit(scopes[:1], 40)
    assert isinstance(refused, Refusal) and refused.reason == "tokens"


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


async def _close(limiter: RateLimiter) -> None:
    aclose = getattr(limiter, "aclose", None)  # a shared limiter's connection on this loop
    if aclose is not None:
        await aclose()


def test_a_block_that_fails_after_admission_still_settles(
    make_limiter: Callable[[], RateLimiter],
) -> None:
    """An exception after admission (an upstream's `"prompt_tokens": null` hitting `int(None)`)
    must not keep the slot; the failed block is charged its whole reservation."""
    limiter = make_limiter()
    scopes = (key_scope(rpm=100, tpm=1000, concurrency=1),)

    async def run() -> None:
        for _ in range(2):
            with pytest.raises(TypeError):
                async with admitted(limiter, scopes, 300) as decision:
                    assert isinstance(decision, Admission)
                    int(None)  # type: ignore[arg-type]
        async with admitted(limiter, scopes, 300) as again:
            assert isinstance(again, Admission)  # the slot came back each time
            limiter.settle(again, 100)
        await _close(limiter)

    asyncio.run(run())
    settled(limiter)
    snapshot = limiter.snapshot(scopes[0])
    assert snapshot is not None and snapshot.remaining_tokens == 1000 - 300 - 300 - 100


def test_a_cancelled_block_still_settles(make_limiter: Callable[[], RateLimiter]) -> None:
    """A client that disconnects cancels the task holding the admission: the slot comes back."""
    limiter = make_limiter()
    scopes = (key_scope(rpm=100, tpm=1000, concurrency=1),)

    async def run() -> Admission | Refusal:
        entered = asyncio.Event()

        async def hold() -> None:
            async with admitted(limiter, scopes, 10):
                entered.set()
                await asyncio.sleep(3600)

        task = asyncio.create_task(hold())
        await entered.wait()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        async with admitted(limiter, scopes, 10) as decision:
            pass
        await _close(limiter)
        return decision

    assert isinstance(asyncio.run(run()), Admission)


def test_a_refusal_needs_no_settling(make_limiter: Callable[[], RateLimiter]) -> None:
    limiter = make_limiter()
    scopes = (key_scope(rpm=1, tpm=1000),)

    async def run() -> list[Admission | Refusal]:
        decisions = []
        for _ in range(2):
            async with admitted(limiter, scopes, 10) as decision:
                decisions.append(decision)
        await _close(limiter)
        return decisions

    first, second = asyncio.run(run())
    assert isinstance(first, Admission) and first.settled
    assert isinstance(second, Refusal) and second.reason == "requests"
