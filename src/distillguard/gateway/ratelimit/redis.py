"""The rate limiter's Redis backend: the memory backend's windows, shared by every replica.

The same rules as the memory backend (`gateway/ratelimit/memory.py`), kept in Redis so that
several gateway processes, on one machine or many, admit against one count. The keys and the
Lua scripts that keep them are in `ratelimit/lua.py`; admission, settlement, lease renewal and
snapshots are each one script, run atomically by Redis, reading the time with Redis `TIME`: no
replica's clock takes part, and no two decisions interleave.

The gateway awaits admission on one pipelining asyncio connection (`ratelimit/resp.py`; the event
loop serves other requests meanwhile) and queues each settlement on that same connection
without waiting for its reply; settlements made outside the event loop go to a background
thread that sends them in pipelined batches. The request path never waits for a settlement.
A late settlement only holds tokens a little longer: stricter, never looser.

In-flight slots are leases (`lease`, 30 s): a background thread renews the lease of every
admission not yet settled every lease / 3, so a stream longer than the lease keeps its slot,
and a replica killed mid-request gives its slots back within `lease` seconds (its tokens stay
reserved until they leave the window). An admission dropped unsettled (a bug) stops being
renewed once it is garbage, and its slot comes back the same way.

When Redis cannot be reached the limiter fails closed (raises `LimiterUnavailable`, which the
gateway answers with 503) or, if so configured, open (admits, uncounted); either way it counts
the event (`unavailable`) and logs one line at most every 10 seconds.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import secrets
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

from distillguard.errors import ConfigError, LimiterUnavailable
from distillguard.gateway.ratelimit import lua
from distillguard.gateway.ratelimit.base import Admission, Refusal, Scope, Snapshot
from distillguard.gateway.ratelimit.resp import PipelinedRedis
from distillguard.store.base import describe

try:
    import redis
    import redis.asyncio
    from redis.backoff import NoBackoff
    from redis.retry import Retry
except ImportError as exc:  # pragma: no cover - redis ships with the gateway extra
    raise ConfigError("the Redis limiter needs redis: pip install 'distillguard[gateway]'") from exc

__all__ = ["RedisRateLimiter"]

log = logging.getLogger("distillguard.ratelimit")

_BATCH = 256  # scripts per pipelined round trip (settlements, renewals)
_SNAPSHOTS_KEPT = 100_000  # scopes whose last snapshot is kept (for error headers)


class RedisRateLimiter:
    """Sliding-window limits in Redis, shared by every gateway process that uses it.

    `clock` (seconds) is for tests only: decide on it instead of Redis's clock."""

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "dg:rl:",
        fail_open: bool = False,
        lease: float = 30.0,
        timeout: float = 0.5,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.url = url
        self.fail_open = fail_open
        self.lease = lease
        self.unavailable = 0  # decisions taken without Redis (refused or, open, admitted)
        self._prefix = prefix
        self._lease_ms = lease * 1000.0
        self._clock = clock
        self._client = redis.Redis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
        )
        self._admit = self._client.register_script(lua.ADMIT)
        self._settle = self._client.register_script(lua.SETTLE)
        self._renew = self._client.register_script(lua.RENEW)
        self._snapshot = self._client.register_script(lua.SNAPSHOT)
        self._timeout = timeout
        self._async: tuple[asyncio.AbstractEventLoop, Any] | None = None  # loop, its connection
        self._lock = threading.Lock()
        self._last_warning = 0.0
        # admissions not yet settled, by id: their leases are renewed while they live
        self._held: weakref.WeakValueDictionary[str, Admission] = weakref.WeakValueDictionary()
        self._last_snapshots: dict[str, Snapshot] = {}  # scope name -> last decision's view
        self._settlements: queue.SimpleQueue[tuple[list[str], list[Any]] | None] = (
            queue.SimpleQueue()
        )
        self._pending = 0
        self._settled = threading.Condition()
        self._stopping = threading.Event()
        self._threads = [
            threading.Thread(target=self._settle_loop, name="distillguard-settle", daemon=True),
            threading.Thread(target=self._renew_loop, name="distillguard-renew", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def ping(self) -> None:
        """Raise ConfigError if Redis does not answer (checked once at start)."""
        try:
            self._client.ping()
        except redis.RedisError as exc:
            raise ConfigError(f"cannot reach Redis at {describe(self.url)}: {exc}") from None

    def admit(self, scopes: tuple[Scope, ...], tokens: int) -> Admission | Refusal:
        """Decide now (blocking on Redis); the gateway uses `admit_async`."""
        admission_id, keys, arguments = self._admit_call(scopes, tokens)
        try:
            reply = self._admit(keys=keys, args=arguments)
        except redis.RedisError as exc:
            return self._without_redis(scopes, tokens, exc)
        return self._decision(scopes, tokens, admission_id, reply)

    async def admit_async(self, scopes: tuple[Scope, ...], tokens: int) -> Admission | Refusal:
        admission_id, keys, arguments = self._admit_call(scopes, tokens)
        try:
            reply = await self._async_admit(keys, arguments)
        except (redis.RedisError, OSError) as exc:
            return self._without_redis(scopes, tokens, exc)
        return self._decision(scopes, tokens, admission_id, reply)

    def _admit_call(
        self, scopes: tuple[Scope, ...], tokens: int
    ) -> tuple[str, list[str], list[Any]]:
        admission_id = secrets.token_hex(8)
        keys: list[str] = []
        arguments: list[Any] = [admission_id, int(tokens), self._lease_ms, self._now()]
        for scope in scopes:
            keys += self._keys(scope)
            limits = scope.limits
            concurrency = -1 if limits.concurrency is None else limits.concurrency
            arguments += [
                *_mode(scope),
                limits.requests_per_minute,
                limits.tokens_per_minute,
                concurrency,
            ]
        return admission_id, keys, arguments

    async def _async_admit(self, keys: list[str], arguments: list[Any]) -> Any:
        """The admission script on this event loop's connection (made on first use): one
        pipelined connection for plain redis://, redis-py's asyncio client otherwise."""
        loop = asyncio.get_running_loop()
        if self._async is None or self._async[0] is not loop:
            if self.url.startswith("redis://"):
                connection: Any = PipelinedRedis(self.url, timeout=self._timeout)
            else:
                connection = redis.asyncio.Redis.from_url(
                    self.url,
                    socket_timeout=self._timeout,
                    socket_connect_timeout=self._timeout,
                    retry=redis.asyncio.retry.Retry(NoBackoff(), 0),
                )
            self._async = (loop, connection)
        connection = self._async[1]
        if isinstance(connection, PipelinedRedis):
            return await connection.evalsha(lua.ADMIT_SHA, lua.ADMIT, keys, arguments)
        return await connection.evalsha(lua.ADMIT_SHA, len(keys), *keys, *arguments)

    def _decision(
        self, scopes: tuple[Scope, ...], tokens: int, admission_id: str, reply: list[Any]
    ) -> Admission | Refusal:
        if int(reply[0]) == 1:
            snapshot = _snapshot(scopes[0], reply[1])
            admission = Admission(
                scopes, tokens, [], snapshot, token=admission_id, minute=int(reply[2])
            )
            with self._lock:
                self._held[admission_id] = admission
            self._remember(scopes[0], snapshot)
            return admission
        reason = reply[1].decode() if isinstance(reply[1], bytes) else str(reply[1])
        scope = scopes[int(reply[2])]
        snapshot = _snapshot(scopes[0], reply[4])
        self._remember(scopes[0], snapshot)
        return Refusal(reason, scope.name, float(reply[3]) / 1000.0, snapshot)

    def _remember(self, scope: Scope, snapshot: Snapshot) -> None:
        last = self._last_snapshots
        if len(last) >= _SNAPSHOTS_KEPT and scope.name not in last:
            last.pop(next(iter(last)))
        last[scope.name] = snapshot

    def last_snapshot(self, scope: Scope) -> Snapshot | None:
        """The scope's snapshot as its last decision here saw it, without asking Redis: for
        error answers' headers, which must not wait on a server that may not answer."""
        return self._last_snapshots.get(scope.name)

    def settle(self, admission: Admission, used_tokens: int) -> None:
        if admission.settled:
            return
        admission.settled = True
        if admission.token is None:  # admitted while Redis was unavailable (fail open)
            return
        with self._lock:
            self._held.pop(admission.token, None)
        used = max(used_tokens, 0)  # over the reservation: the overage is charged
        keys: list[str] = []
        arguments: list[Any] = [admission.token, used, admission.tokens, admission.minute]
        for scope in admission.scopes:
            keys += self._keys(scope)
            arguments += _mode(scope)
        if self._send_on_loop(keys, arguments):
            return
        with self._settled:
            self._pending += 1
        self._settlements.put((keys, arguments))

    def _send_on_loop(self, keys: list[str], arguments: list[Any]) -> bool:
        """From the event loop that admits: queue the settlement on its pipelined connection
        (no thread, no waiting). False elsewhere: the background thread sends it."""
        if self._async is None or not isinstance(self._async[1], PipelinedRedis):
            return False
        try:
            if asyncio.get_running_loop() is not self._async[0]:
                return False
        except RuntimeError:
            return False
        return self._async[1].send_script(lua.SETTLE_SHA, lua.SETTLE, keys, arguments)

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every settlement handed over so far has reached Redis (or failed)."""
        with self._settled:
            return self._settled.wait_for(lambda: self._pending == 0, timeout=timeout)

    def _settle_loop(self) -> None:
        stopping = False
        while not stopping:
            item = self._settlements.get()
            batch = []
            while item is not None:
                batch.append(item)
                if len(batch) >= _BATCH:
                    break
                try:
                    item = self._settlements.get_nowait()
                except queue.Empty:
                    break
            else:
                stopping = True  # close() queued None: send what came before it, then stop
            if not batch:
                continue
            try:
                pipe = self._client.pipeline(transaction=False)
                for keys, arguments in batch:
                    self._settle(keys=keys, args=arguments, client=pipe)
                pipe.execute()
            except redis.RedisError as exc:
                # the reservations stay counted until they leave the window: stricter, not looser
                self._warn("settle", exc)
            with self._settled:
                self._pending -= len(batch)
                self._settled.notify_all()

    def renew(self) -> int:
        """Extend the in-flight lease of every admission not yet settled (the background
        thread calls this every lease / 3); how many it renewed."""
        with self._lock:
            held = [(token, admission.scopes) for token, admission in self._held.items()]
        for start in range(0, len(held), _BATCH):
            try:
                pipe = self._client.pipeline(transaction=False)
                for token, scopes in held[start : start + _BATCH]:
                    keys = [self._keys(scope)[-1] for scope in scopes]
                    arguments: list[Any] = [token, self._lease_ms, self._now()]
                    self._renew(keys=keys, args=arguments, client=pipe)
                pipe.execute()
            except redis.RedisError as exc:
                self._warn("renew", exc)  # the next round tries again, within the lease
                return 0
        return len(held)

    def _renew_loop(self) -> None:
        while not self._stopping.wait(self.lease / 3):
            self.renew()

    def snapshot(self, scope: Scope) -> Snapshot | None:
        """The scope's exact snapshot, read from Redis (blocking: not on the event loop)."""
        try:
            reply = self._snapshot(keys=self._keys(scope), args=[self._now(), *_mode(scope)])
        except redis.RedisError:
            return None
        return _snapshot(scope, reply)

    async def aclose(self) -> None:
        """Close the asyncio connections of the running loop (before that loop ends)."""
        if self._async is not None and self._async[0] is asyncio.get_running_loop():
            client = self._async[1]
            self._async = None
            await client.aclose()

    def close(self) -> None:
        """Send the pending settlements, stop renewing, and close the blocking connections."""
        self._stopping.set()
        self._settlements.put(None)
        for thread in self._threads:
            thread.join(timeout=10)
        self._client.close()

    # -- internals ------------------------------------------------------------------------------

    def _keys(self, scope: Scope) -> list[str]:
        """The scope's state keys, then its in-flight key (`ratelimit/lua.py`). {Braces}: a
        scope's keys hash to one Redis Cluster slot."""
        base = f"{self._prefix}{{{scope.name}}}"
        state = [base + ":min"] if scope.bucketed else [base + ":log", base + ":amt"]
        return [*state, base + ":fly"]

    def _now(self) -> float | str:
        """The time the scripts decide at: Redis's own ('') unless a test gave a clock."""
        return "" if self._clock is None else self._clock() * 1000.0

    def _without_redis(
        self, scopes: tuple[Scope, ...], tokens: int, error: Exception
    ) -> Admission | Refusal:
        with self._lock:
            self.unavailable += 1
        self._warn("admit", error)
        if not self.fail_open:
            raise LimiterUnavailable(f"the shared rate limiter (Redis) is unreachable: {error}")
        limits = scopes[0].limits
        snapshot = Snapshot(
            limits.requests_per_minute,
            limits.requests_per_minute,
            0.0,
            limits.tokens_per_minute,
            limits.tokens_per_minute,
            0.0,
        )
        return Admission(scopes, tokens, [], snapshot, token=None)

    def _warn(self, action: str, error: Exception) -> None:
        now = time.monotonic()
        with self._lock:
            if now - self._last_warning < 10.0:
                return
            self._last_warning = now
        mode = "open (admitting uncounted)" if self.fail_open else "closed (answering 503)"
        log.warning(
            "rate limiter: Redis unavailable during %s, failing %s: %s", action, mode, error
        )


def _mode(scope: Scope) -> list[Any]:
    """A scope's first script arguments: how its window counts ('m': per minute, 'e':
    exactly) and its length in ms."""
    return ["m" if scope.bucketed else "e", scope.window * 1000.0]


def _snapshot(scope: Scope, reply: list[Any]) -> Snapshot:
    count, total, reset_ms = int(reply[0]), int(reply[1]), float(reply[2])
    limits = scope.limits
    reset = max(0.0, reset_ms / 1000.0)
    return Snapshot(
        limit_requests=limits.requests_per_minute,
        remaining_requests=max(0, limits.requests_per_minute - count),
        reset_requests=reset,
        limit_tokens=limits.tokens_per_minute,
        remaining_tokens=max(0, limits.tokens_per_minute - total),
        reset_tokens=reset,
    )
