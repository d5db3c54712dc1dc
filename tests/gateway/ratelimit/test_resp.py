"""The pipelining Redis connection: replies reach their own callers, errors reach them all."""

from __future__ import annotations

import asyncio
import secrets

import pytest

from ...conftest import redis_url

redis = pytest.importorskip("redis")

from distillguard.gateway.ratelimit.resp import PipelinedRedis  # noqa: E402


def test_concurrent_commands_each_get_their_own_reply() -> None:
    url = redis_url()
    prefix = f"dg:test:{secrets.token_hex(4)}:"

    async def run() -> list[bytes]:
        connection = PipelinedRedis(url)
        await asyncio.gather(
            *(connection.execute("SET", f"{prefix}{i}", f"value {i}") for i in range(500))
        )
        replies = await asyncio.gather(
            *(connection.execute("GET", f"{prefix}{i}") for i in range(500))
        )
        await connection.execute("DEL", *(f"{prefix}{i}" for i in range(500)))
        await connection.aclose()
        return list(replies)

    assert asyncio.run(run()) == [f"value {i}".encode() for i in range(500)]


def test_the_url_database_is_selected_before_any_command() -> None:
    url = redis_url()
    key = f"dg:test:{secrets.token_hex(4)}"
    base = url.rsplit("/", 1)[0]

    async def run() -> None:
        connection = PipelinedRedis(f"{base}/14")
        await asyncio.gather(connection.execute("SET", key, "x"), connection.execute("GET", key))
        await connection.aclose()

    asyncio.run(run())
    assert redis.Redis.from_url(f"{base}/14").get(key) == b"x"
    assert redis.Redis.from_url(f"{base}/0").get(key) is None
    redis.Redis.from_url(f"{base}/14").delete(key)


def test_an_error_reply_is_raised_to_its_caller_only() -> None:
    url = redis_url()

    async def run() -> tuple[object, object]:
        connection = PipelinedRedis(url)
        results = await asyncio.gather(
            connection.execute("NOSUCHCOMMAND"), connection.execute("PING"), return_exceptions=True
        )
        await connection.aclose()
        return results[0], results[1]

    error, pong = asyncio.run(run())
    assert isinstance(error, redis.ResponseError) and pong == b"PONG"


def test_an_unreachable_server_is_a_connection_error() -> None:
    async def run() -> None:
        await PipelinedRedis("redis://127.0.0.1:1/0", timeout=0.2).execute("PING")

    with pytest.raises(redis.ConnectionError):
        asyncio.run(run())
