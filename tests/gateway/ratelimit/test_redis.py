"""The Redis limiter: the memory limiter's exact rule, shared by every replica, on Redis's clock.

Runs against the Redis named by DISTILLGUARD_TEST_REDIS_URL (skips without it); every test
uses its own key prefix.
"""

from __future__ import annotations

import asyncio
import threading
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

from ..conftest import make_harness

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
