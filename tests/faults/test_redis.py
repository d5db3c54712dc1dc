"""Redis killed, frozen, or slow to be read under load: admissions answer 503 in OpenAI's
format while it is away, none waits past the bound, and 200s come back within 10 s of it."""

from __future__ import annotations

import asyncio
import time

import pytest

from .conftest import (
    BOUND_S,
    Fault,
    LiveGateway,
    Load,
    Servers,
    by_kind,
    hung,
    outage,
    recovery_seconds,
)

RECOVERY_S = 10.0


@pytest.mark.slow
def test_admissions_answer_503_while_redis_is_down_and_recover_within_10_s(
    gateway: LiveGateway, servers: Servers
) -> None:
    with Load(gateway.url, gateway.key, clients=8) as load:
        time.sleep(1.0)
        away = outage(servers.redis, Fault.KILL, 2.0)
        deadline = away.back + RECOVERY_S
        while recovery_seconds(list(load.answers), away.back) is None:
            if time.monotonic() > deadline:
                break
            time.sleep(0.1)
        answers = load.stop()

    while_down = [a for a in answers if away.went_away <= a.sent and a.done < away.returning]
    assert while_down
    assert by_kind(while_down) == {"503 limiter_unavailable": len(while_down)}
    stuck = hung(answers, BOUND_S)
    assert not stuck, f"{len(stuck)} waited past {BOUND_S} s for a byte: {by_kind(stuck)}"
    recovery = recovery_seconds(answers, away.back)
    assert recovery is not None
    assert recovery <= RECOVERY_S


@pytest.mark.slow
def test_a_frozen_redis_answers_503_within_the_bound(
    gateway: LiveGateway, servers: Servers
) -> None:
    with Load(gateway.url, gateway.key, clients=8) as load:
        time.sleep(1.0)
        outage(servers.redis, Fault.FREEZE, 4.0)
        time.sleep(1.0)
        answers = load.stop()

    stuck = hung(answers, BOUND_S)
    assert not stuck, f"{len(stuck)} waited past {BOUND_S} s for a byte: {by_kind(stuck)}"


def test_an_admission_redis_answered_survives_a_stall_of_the_event_loop(
    servers: Servers,
) -> None:
    uvloop = pytest.importorskip("uvloop")
    from distillguard.gateway.ratelimit import Admission, Limits, Scope
    from distillguard.gateway.ratelimit.redis import RedisRateLimiter

    scopes = (Scope("key:stalled", Limits(10**6, 10**9)),)

    async def admit_across_a_stall() -> object:
        limiter = RedisRateLimiter(servers.redis.url, prefix="dg:faults:stall:")
        try:
            warm = await limiter.admit_async(scopes, 10)  # connected, scripts loaded
            limiter.settle(warm, 10)
            admission = asyncio.ensure_future(limiter.admit_async(scopes, 10))
            for _ in range(3):  # the command is written to Redis
                await asyncio.sleep(0)
            time.sleep(0.7)  # the loop stalls; Redis answers meanwhile
            return await admission
        finally:
            await limiter.aclose()
            limiter.close()

    assert isinstance(uvloop.run(admit_across_a_stall()), Admission)
