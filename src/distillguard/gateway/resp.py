"""A pipelining asyncio Redis connection, for the rate limiter's admissions.

redis-py's asyncio client takes a connection from a pool per command, so 200 requests
admitted at once open 200 connections and pay its per-command overhead 200 times. Here every
admission in flight shares one connection: commands are written back to back (the writes of
one event-loop turn leave in one send), replies come back in order and are matched to their
waiters first in, first out, parsed by hiredis. Under load one read returns many replies.

Errors: a Redis error reply raises `redis.ResponseError`; a lost connection or a reply that
does not come within `timeout` fails every command in flight with `redis.ConnectionError` or
`redis.TimeoutError`, and the next command reconnects. Plain TCP only (``redis://``);
`ratelimit_redis` falls back to redis-py's client for TLS and Unix sockets.
"""

from __future__ import annotations

import asyncio
import collections
from typing import Any
from urllib.parse import unquote, urlsplit

import hiredis
import redis

__all__ = ["PipelinedRedis"]


def _encode(arguments: tuple[Any, ...]) -> bytes:
    parts = [b"*%d\r\n" % len(arguments)]
    for argument in arguments:
        if isinstance(argument, bytes):
            data = argument
        elif isinstance(argument, str):
            data = argument.encode()
        elif isinstance(argument, int | float):
            data = repr(argument).encode()
        else:
            raise TypeError(f"cannot send {type(argument).__name__} to Redis")
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


class PipelinedRedis:
    """One connection per event loop, shared by every command in flight."""

    def __init__(self, url: str, *, timeout: float = 0.5) -> None:
        parts = urlsplit(url)
        if parts.scheme != "redis":
            raise ValueError("PipelinedRedis speaks plain redis:// only")
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port or 6379
        self._username = unquote(parts.username) if parts.username else None
        self._password = unquote(parts.password) if parts.password else None
        path = parts.path.strip("/")
        self._db = int(path) if path.isdigit() else 0
        self._timeout = timeout
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._waiters: collections.deque[asyncio.Future[Any]] = collections.deque()
        self._outgoing: list[bytes] = []
        self._connecting: asyncio.Lock | None = None
        self._reading: asyncio.Task[None] | None = None

    async def execute(self, *arguments: Any) -> Any:
        """Send one command; its reply (a `redis.ResponseError` reply is raised)."""
        if self._writer is None:
            await self._connect()
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[Any] = loop.create_future()
        self._waiters.append(waiter)
        if not self._outgoing:
            loop.call_soon(self._flush)  # one send for every command of this loop turn
        self._outgoing.append(_encode(arguments))
        try:
            async with asyncio.timeout(self._timeout):
                reply = await waiter
        except TimeoutError:
            self._fail(redis.TimeoutError(f"no reply from Redis within {self._timeout} s"))
            raise redis.TimeoutError(f"no reply from Redis within {self._timeout} s") from None
        if isinstance(reply, hiredis.ReplyError):
            raise redis.ResponseError(str(reply))
        return reply

    async def evalsha(self, sha: str, script: str, keys: list[str], args: list[Any]) -> Any:
        """Run a cached script, loading it first if Redis does not have it (NOSCRIPT)."""
        try:
            return await self.execute("EVALSHA", sha, len(keys), *keys, *args)
        except redis.ResponseError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
            return await self.execute("EVAL", script, len(keys), *keys, *args)

    async def aclose(self) -> None:
        writer = self._writer
        self._fail(redis.ConnectionError("connection closed"))
        if writer is not None:
            await writer.wait_closed()

    # -- internals ------------------------------------------------------------------------------

    async def _connect(self) -> None:
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        handshake: list[asyncio.Future[Any]] = []
        async with self._connecting:
            if self._writer is not None:
                return
            try:
                async with asyncio.timeout(self._timeout):
                    reader, writer = await asyncio.open_connection(self._host, self._port)
            except (OSError, TimeoutError) as exc:
                raise redis.ConnectionError(
                    f"cannot connect to Redis at {self._host}:{self._port}: {exc}"
                ) from None
            self._reader, self._writer = reader, writer
            loop = asyncio.get_running_loop()
            self._reading = loop.create_task(self._read(reader))
            # queued before any command that waited for the connection: they run after it
            commands: list[tuple[Any, ...]] = []
            if self._password is not None:
                commands.append(
                    ("AUTH", self._username, self._password)
                    if self._username
                    else ("AUTH", self._password)
                )
            if self._db:
                commands.append(("SELECT", self._db))
            for command in commands:
                waiter: asyncio.Future[Any] = loop.create_future()
                self._waiters.append(waiter)
                self._outgoing.append(_encode(command))
                handshake.append(waiter)
            self._flush()
        for waiter in handshake:
            async with asyncio.timeout(self._timeout):
                reply = await waiter
            if isinstance(reply, hiredis.ReplyError):
                self._fail(redis.ConnectionError(f"Redis refused the connection: {reply}"))
                raise redis.ConnectionError(f"Redis refused the connection: {reply}")

    def _flush(self) -> None:
        if self._writer is not None and self._outgoing:
            self._writer.write(b"".join(self._outgoing))
        self._outgoing.clear()

    async def _read(self, reader: asyncio.StreamReader) -> None:
        parser = hiredis.Reader()
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    raise redis.ConnectionError("Redis closed the connection")
                parser.feed(data)
                while (reply := parser.gets()) is not False:
                    waiter = self._waiters.popleft()
                    if not waiter.done():
                        waiter.set_result(reply)
        except (OSError, redis.ConnectionError, IndexError) as exc:
            error = (
                exc if isinstance(exc, redis.ConnectionError) else redis.ConnectionError(str(exc))
            )
            self._fail(error, reading=False)
        except asyncio.CancelledError:
            pass

    def _fail(self, error: Exception, *, reading: bool = True) -> None:
        """Drop the connection; every command in flight gets `error`."""
        writer, self._writer, self._reader = self._writer, None, None
        if writer is not None:
            writer.close()
        if reading and self._reading is not None:
            self._reading.cancel()
        self._reading = None
        self._outgoing.clear()
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(error)
