"""Exact limits: no window of the limiter's length ever holds more than the limits allow."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import httpx

from distillguard.engine.engine import Engine
from distillguard.gateway.ratelimit import (
    Limits,
    MemoryRateLimiter,
    Refusal,
    Scope,
    format_duration,
)

from .conftest import make_harness


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


def test_a_refused_request_consumes_nothing() -> None:
    clock = FakeClock()
    limiter = MemoryRateLimiter(clock)
    scope = (Scope("key:k", Limits(2, 100)),)
    assert not isinstance(limiter.admit(scope, 60), Refusal)
    refusal = limiter.admit(scope, 60)  # 120 tokens > 100
    assert isinstance(refusal, Refusal) and refusal.reason == "tokens"
    snapshot = limiter.snapshot(scope[0])
    assert snapshot.remaining_requests == 1 and snapshot.remaining_tokens == 40


def test_settlement_returns_unused_tokens() -> None:
    clock = FakeClock()
    limiter = MemoryRateLimiter(clock)
    scope = (Scope("key:k", Limits(10, 100)),)
    admission = limiter.admit(scope, 90)
    assert not isinstance(admission, Refusal)
    limiter.settle(admission, 30)
    assert limiter.snapshot(scope[0]).remaining_tokens == 70
    clock.now += 60.0
    assert limiter.snapshot(scope[0]).remaining_tokens == 100


def test_reset_durations_use_openai_format() -> None:
    assert format_duration(0.12) == "120ms"
    assert format_duration(1.0) == "1s"
    assert format_duration(360.0) == "6m0s"


def test_64_concurrent_http_clients_on_one_key_get_exactly_the_limit(
    tmp_path: Path, shared_engine: Engine
) -> None:
    harness = make_harness(tmp_path, shared_engine, rpm=20, tpm=1_000_000, concurrency=64)
    key = harness.keys["acme"]

    async def fire() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=harness.gateway.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as http:
            return list(
                await asyncio.gather(
                    *(
                        http.post(
                            "/v1/completions",
                            json={"model": harness.model, "prompt": "The", "max_tokens": 3},
                            headers={"authorization": f"Bearer {key}"},
                        )
                        for _ in range(64)
                    )
                )
            )

    responses = asyncio.run(fire())
    statuses = sorted(response.status_code for response in responses)
    assert statuses.count(200) == 20 and statuses.count(429) == 44
    refused = next(response for response in responses if response.status_code == 429)
    assert int(refused.headers["retry-after"]) >= 1
    assert int(refused.headers["retry-after-ms"]) >= 1
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"
    harness.flush()
    harness.audit.close()
