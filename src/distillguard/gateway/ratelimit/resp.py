"""A pipelining asyncio Redis connection, for the rate limiter's admissions.

redis-py's asyncio client takes a connection from a pool per command, so 200 requests
admitted at once open 200 connections and pay its per-command overhead 200 times. Here every
admission in flight shares one connection: commands are written back to back (the writes of
one event-loop turn leave in one send), replies come back in order and are matched to their
waiters first in, first out, parsed by hiredis. Under load one read returns many replies.

Errors: a Redis error reply raises `redis.ResponseError`; a lost connection or a reply that
does not come within `timeout` fails every command in flight with `redis.ConnectionError` or
`redis.TimeoutError`, and the next command reconnects. Plain TCP only (``redis://``);
`ratelimit.redis` falls back to redis-py's client for TLS and Unix sockets.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import hiredis
import redis

__all__ = ["PipelinedRedis"]

log = logging.getLogger("distillguard.ratelimit")


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
        # a future per command awaited; a `_Sent` per command sent without waiting
        self._waiters: collections.deque[asyncio.Future[Any] | _Sent] = collections.deque()
        self._outgoing: list[bytes] = []
        self._connecting: asyncio.Lock | None = None
        self._reading: asyncio.Task[None] | None = None

    async def execute(self, *arguments: Any) -> Any:
        """Send one command; its reply (a `redis.ResponseError` reply is raised)."""
        if self._writer is None:
            await self._connect()
        waiter: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self._queue(_encode(arguments))
        try:
            reply = await asyncio.wait_for(asyncio.shield(waiter), self._timeout)
        except TimeoutError:
            # After the event loop itself stalled (a GC pause, a starved CPU), the timer can
            # fire before the reply that already arrived is read: let the reader run first.
            for _ in range(3):
                await asyncio.sleep(0)
            if not waiter.done():
                self._fail(redis.TimeoutError(f"no reply from Redis within {self._timeout} s"))
                raise redis.TimeoutError(f"no reply from Redis within {self._timeout} s") from None
            reply = waiter.result()
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

    def send_script(self, sha: str, script: str, keys: list[str], args: list[Any]) -> bool:
        """Run a script without waiting for its reply (same order as every other command);
        False when there is no connection to send it on. A NOSCRIPT reply re-sends it as EVAL;
        another error reply is logged."""
        if self._writer is None:
            return False
        self._waiters.append(_Sent(script, keys, args))
        self._queue(_encode(("EVALSHA", sha, len(keys), *keys, *args)))
        return True

    async def aclose(self) -> None:
        """Send what is queued (settlements sent without waiting), then close."""
        self._flush()
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

    def _queue(self, command: bytes) -> None:
        if not self._outgoing:
            asyncio.get_running_loop().call_soon(self._flush)  # one send per loop turn
        self._outgoing.append(command)

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
                    if isinstance(waiter, _Sent):
                        self._sent_reply(waiter, reply)
                    elif not waiter.done():
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
            if isinstance(waiter, _Sent):
                log.warning("a script sent to Redis was lost with the connection: %s", error)
            elif not waiter.done():
                waiter.set_exception(error)

    def _sent_reply(self, sent: _Sent, reply: Any) -> None:
        if not isinstance(reply, hiredis.ReplyError):
            return
        if str(reply).startswith("NOSCRIPT") and not sent.retried:
            sent.retried = True
            self._waiters.append(sent)
            self._queue(_encode(("EVAL", sent.script, len(sent.keys), *sent.keys, *sent.args)))
            return
        log.warning("a script sent to Redis failed: %s", reply)


@dataclass
class _Sent:
    """A command whose reply nobody awaits (kept to re-send it if the script was missing)."""

    script: str
    keys: list[str]
    args: list[Any]
    retried: bool = False
