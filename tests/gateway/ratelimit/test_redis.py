"""The Redis limiter: the memory limiter's exact rule, shared by every replica, on Redis's clock.

Runs against the Redis named by DISTILLGUARD_TEST_REDIS_URL (skips without it); every test
uses its own key prefix.
"""

from __future__ import annotations

import asyncio
import gc
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from distillguard.engine.engine import Engine
from distillguard.errors import LimiterUnavailable
from distillguard.gateway.app import Gateway
from distillguard.gateway.ratelimit import Admission, Limits, Refusal, Scope
from distillguard.store import connect
from distillguard.store.usage import read_usage

from ...conftest import redis_url
from ..conftest import make_harness
from .conftest import settled

pytest.importorskip("redis")

from distillguard.gateway.ratelimit.redis import RedisRateLimiter


def key_scope(rpm: int = 5, tpm: int = 1000, concurrency: int | None = None) -> Scope:
    return Scope("key:k1", Limits(rpm, tpm, concurrency))


def test_settlement_from_the_event_loop_rides_the_admission_connection(
    replicas: Callable[[], RedisRateLimiter],
) -> None:
    limiter = replicas()
    scopes = (key_scope(rpm=100, tpm=100, concurrency=1),)

    async def run() -> Admission | Refusal:
        first = await limiter.admit_async(scopes, 80)
        assert isinstance(first, Admission)
        limiter.settle(first, 20)  # queued, not awaited; the next command follows it in order
        second = await limiter.admit_async(scopes, 80)
        await limiter.aclose()
        return second

    second = asyncio.run(run())
    assert isinstance(second, Admission)  # 20 + 80 tokens fit, and the slot was freed
    assert second.snapshot.remaining_tokens == 0


def test_no_over_admission_when_replicas_race(replicas: Callable[[], RedisRateLimiter]) -> None:
    """Four limiters on eight threads try 400 admissions against 37 requests and 3,700 tokens."""
    limiters = [replicas() for _ in range(4)]
    scopes = (key_scope(rpm=37, tpm=3_700),)
    admitted: list[int] = []
    lock = threading.Lock()

    def hammer(index: int) -> None:
        limiter = limiters[index % 4]
        for _ in range(50):
            decision = limiter.admit(scopes, 100)
            if isinstance(decision, Admission):
                with lock:
                    admitted.append(decision.tokens)

    threads = [threading.Thread(target=hammer, args=(index,)) for index in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(admitted) == 37 and sum(admitted) == 3_700


def test_a_request_held_past_its_lease_keeps_its_slot(
    replicas: Callable[..., RedisRateLimiter],
) -> None:
    """A stream longer than the lease: the holder renews it every lease / 3."""
    holder, other = replicas(lease=0.6), replicas(lease=0.6)
    scopes = (key_scope(rpm=100, tpm=10_000, concurrency=1),)
    held = holder.admit(scopes, 1)
    assert isinstance(held, Admission)
    time.sleep(1.5)  # two and a half leases
    refused = other.admit(scopes, 1)
    assert isinstance(refused, Refusal) and refused.reason == "concurrency"
    holder.settle(held, 1)
    settled(holder)
    assert isinstance(other.admit(scopes, 1), Admission)


_HOLDER = """
import sys, time
from distillguard.gateway.ratelimit import Limits, Scope
from distillguard.gateway.ratelimit.redis import RedisRateLimiter

limiter = RedisRateLimiter(sys.argv[1], prefix=sys.argv[2], lease=float(sys.argv[3]))
held = limiter.admit((Scope("key:k1", Limits(100, 10_000, 1)),), 1)
print(type(held).__name__, flush=True)
time.sleep(120)
"""


def test_a_killed_holders_slot_comes_back_within_its_lease(
    replicas: Callable[..., RedisRateLimiter],
) -> None:
    """Another process holds the key's one slot (renewing it past its lease); killed with
    SIGKILL, it settles nothing, and the slot comes back within the lease."""
    other = replicas(lease=1.5)
    scopes = (key_scope(rpm=100, tpm=10_000, concurrency=1),)
    arguments = [redis_url(), other._prefix, "1.5"]
    command = [sys.executable, "-c", _HOLDER, *arguments]
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as holder:
        try:
            assert holder.stdout is not None and holder.stdout.readline().strip() == "Admission"
            time.sleep(2.0)  # past its lease: renewed, so still held
            refused = other.admit(scopes, 1)
            assert isinstance(refused, Refusal) and refused.reason == "concurrency"
        finally:
            holder.kill()
            holder.wait()
    killed = time.monotonic()
    while isinstance(decision := other.admit(scopes, 1), Refusal):
        assert time.monotonic() - killed < 3.0, "the dead holder's slot did not come back"
        time.sleep(0.02)
    assert isinstance(decision, Admission)
    assert time.monotonic() - killed <= 1.5 + 0.15


def test_an_admission_dropped_unsettled_stops_holding_its_slot(
    replicas: Callable[..., RedisRateLimiter],
) -> None:
    limiter = replicas(lease=0.6)
    scopes = (key_scope(rpm=100, tpm=10_000, concurrency=1),)
    assert isinstance(limiter.admit(scopes, 1), Admission)  # dropped at once, a bug's way
    gc.collect()
    time.sleep(0.9)
    assert isinstance(limiter.admit(scopes, 1), Admission)


def test_a_daily_window_keeps_bounded_state_in_redis(
    replicas: Callable[..., RedisRateLimiter],
) -> None:
    """A day and a half of traffic: the daily scope keeps one hash of at most a field per
    minute of the window, not one entry per request, and nothing stays in flight."""
    clock = _Clock()
    limiter = replicas(clock=clock)
    day = Scope("day:k1", Limits(10**12, 10**12), window=86_400.0)
    scopes = (key_scope(rpm=10_000, tpm=10**9), day)
    for _ in range(int(1.5 * 1440 * 3)):  # three requests a minute
        clock.now += 20.0
        decision = limiter.admit(scopes, 100)
        assert isinstance(decision, Admission)
        limiter.settle(decision, 60)
    settled(limiter)
    client = limiter._client
    keys = sorted(key.decode() for key in client.scan_iter(match=limiter._prefix + "*"))
    base = limiter._prefix
    assert keys == [f"{base}{{day:k1}}:min", f"{base}{{key:k1}}:amt", f"{base}{{key:k1}}:log"]
    # a field per minute and per hour of the window, then _r _t _first _last
    assert client.hlen(f"{base}{{day:k1}}:min") <= 1441 + 26 + 4
    assert client.zcard(f"{base}{{key:k1}}:log") == 3  # the last minute's requests
    snapshot = limiter.snapshot(day)
    assert snapshot is not None
    assert 1440 * 3 <= 10**12 - snapshot.remaining_requests <= 1441 * 3
    assert (10**12 - snapshot.remaining_tokens) == 60 * (10**12 - snapshot.remaining_requests)


class _Clock:
    def __init__(self) -> None:
        self.now = 2_000_000.0

    def __call__(self) -> float:
        return self.now


def test_an_unreachable_redis_fails_closed_by_default() -> None:
    limiter = RedisRateLimiter("redis://127.0.0.1:1/0", timeout=0.2)
    with pytest.raises(LimiterUnavailable, match="unreachable"):
        limiter.admit((key_scope(),), 1)
    assert limiter.unavailable == 1
    limiter.close()


def test_an_unreachable_redis_can_fail_open() -> None:
    limiter = RedisRateLimiter("redis://127.0.0.1:1/0", timeout=0.2, fail_open=True)
    decision = limiter.admit((key_scope(),), 1)
    assert isinstance(decision, Admission) and decision.token is None
    limiter.settle(decision, 1)  # nothing to settle, no error
    assert limiter.unavailable == 1
    limiter.close()


def _fire(gateway: Gateway, key: str, model: str, count: int) -> list[httpx.Response]:
    async def fire() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=gateway.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as http:
            responses = list(
                await asyncio.gather(
                    *(
                        http.post(
                            "/v1/completions",
                            json={"model": model, "prompt": "The", "max_tokens": 3},
                            headers={"authorization": f"Bearer {key}"},
                        )
                        for _ in range(count)
                    )
                )
            )
        if isinstance(gateway.limiter, RedisRateLimiter):
            await gateway.limiter.aclose()  # as the gateway's lifespan does at shutdown
        return responses

    return asyncio.run(fire())


def test_two_gateways_on_one_redis_admit_the_limit_once(
    tmp_path: Path, shared_engine: Engine, replicas: Callable[[], RedisRateLimiter]
) -> None:
    """Two gateway instances on one store and one Redis: 30 requests each, 20 admitted in all."""
    first = make_harness(tmp_path, shared_engine, rpm=20)
    second = make_harness(tmp_path / "second", shared_engine, rpm=20)
    second.gateway.keys = first.gateway.keys  # the same key table, as replicas share one
    first.gateway.limiter, second.gateway.limiter = replicas(), replicas()
    key = first.keys["acme"]
    responses = _fire(first.gateway, key, first.model, 30)
    responses += _fire(second.gateway, key, first.model, 30)
    statuses = [response.status_code for response in responses]
    assert statuses.count(200) == 20 and statuses.count(429) == 40
    ok = next(response for response in responses if response.status_code == 200)
    assert ok.headers["x-ratelimit-limit-requests"] == "20"
    for harness in (first, second):
        harness.audit.close()


def test_the_gateway_answers_503_when_redis_is_down(tmp_path: Path, shared_engine: Engine) -> None:
    harness = make_harness(tmp_path, shared_engine)
    harness.gateway.limiter = RedisRateLimiter("redis://127.0.0.1:1/0", timeout=0.2)
    (response,) = _fire(harness.gateway, harness.keys["acme"], harness.model, 1)
    assert response.status_code == 503
    error = response.json()["error"]
    assert error["code"] == "limiter_unavailable" and error["type"] == "server_error"
    metrics = asyncio.run(_get(harness.gateway.app, "/metrics"))
    assert "distillguard_limiter_unavailable_total 1" in metrics
    harness.flush()
    rows = read_usage(connect(tmp_path))
    assert [(row.status, row.outcome) for row in rows] == [(503, "rejected")]
    harness.audit.close()


async def _get(app: object, path: str) -> str:
    transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as http:
        return (await http.get(path)).text
