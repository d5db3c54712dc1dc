"""Limiters for the suite that runs over every backend (memory, Redis)."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from distillguard.gateway.ratelimit import MemoryRateLimiter, RateLimiter

from ...conftest import redis_url


@pytest.fixture(params=["memory", "redis"])
def make_limiter(request: pytest.FixtureRequest) -> Iterator[Callable[..., RateLimiter]]:
    """Makes a limiter of the backend under test (Redis cases skip without a test Redis);
    `clock=` (seconds) makes it decide on that clock."""
    if request.param == "memory":
        yield MemoryRateLimiter
    else:
        yield from _redis_limiters()


def settled(limiter: RateLimiter) -> None:
    """Wait until settlements made so far have reached the backend (Redis sends them later)."""
    flush = getattr(limiter, "flush", None)
    if flush is not None:
        assert flush()


@pytest.fixture
def replicas() -> Iterator[Callable[[], Any]]:
    """Makes Redis limiters that share one prefix, as several gateway processes would."""
    yield from _redis_limiters()


def _redis_limiters() -> Iterator[Callable[[], Any]]:
    """A maker of Redis limiters on one fresh key prefix; their keys are deleted afterwards."""
    url = redis_url()
    from distillguard.gateway.ratelimit.redis import RedisRateLimiter

    prefix = f"dg:test:{secrets.token_hex(4)}:"
    made: list[RedisRateLimiter] = []

    def make(clock: Callable[[], float] | None = None, lease: float = 30.0) -> RedisRateLimiter:
        made.append(RedisRateLimiter(url, prefix=prefix, clock=clock, lease=lease))
        return made[-1]

    yield make
    _clean(made, prefix)


def _clean(made: list[Any], prefix: str) -> None:
    client = made[0]._client if made else None
    if client is not None:
        for key in client.scan_iter(match=prefix + "*"):
            client.delete(key)
    for limiter in made:
        limiter.close()
