"""The rate limiter's Redis backend: exact sliding-window limits shared by every replica.

The same rule as the memory backend (`gateway/ratelimit/memory.py`), kept in Redis so that several
gateway processes, on one machine or many, admit against one log. Each scope has three keys:

    dg:rl:{scope}:log   sorted set, admission id -> admission time (ms, Redis clock)
    dg:rl:{scope}:amt   hash, admission id -> tokens reserved (then used); field _total = sum
    dg:rl:{scope}:fly   sorted set, admission id -> start time, for requests still in flight

Admission, settlement and snapshots are each one Lua script, run atomically by Redis, reading
the time with Redis `TIME`: no replica's clock takes part, and no two decisions interleave.
The gateway awaits admission on one pipelining asyncio connection (`ratelimit/resp.py`; the event
loop serves other requests meanwhile) and queues each settlement on that same connection
without waiting for its reply; settlements made outside the event loop go to a background
thread that sends them in pipelined batches. The request path never waits for a settlement.
A late settlement only holds tokens a little longer: stricter, never looser. A replica
killed mid-request leaves its reservation to age out of the window and its in-flight entry
to expire after `lease` seconds.

When Redis cannot be reached the limiter fails closed (raises `LimiterUnavailable`, which the
gateway answers with 503) or, if so configured, open (admits, uncounted); either way it counts
the event (`unavailable`) and logs one line at most every 10 seconds.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import queue
import secrets
import threading
import time
from typing import Any

from distillguard.errors import ConfigError, LimiterUnavailable
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

# Shared by the scripts: drop the scope's entries older than the window (and their tokens),
# and in-flight entries older than the lease. Old ids are read in slices: unpack() of a long
# list would overflow Lua's stack.
_EVICT = """
local function evict(log_key, amt_key, fly_key, now, window, lease)
  local horizon = now - window
  while true do
    local old = redis.call('ZRANGEBYSCORE', log_key, '-inf', horizon, 'LIMIT', 0, 1000)
    if #old == 0 then break end
    local amounts = redis.call('HMGET', amt_key, unpack(old))
    local freed = 0
    for j = 1, #amounts do freed = freed + (tonumber(amounts[j]) or 0) end
    redis.call('ZREM', log_key, unpack(old))
    redis.call('HDEL', amt_key, unpack(old))
    redis.call('HINCRBY', amt_key, '_total', -freed)
  end
  redis.call('ZREMRANGEBYSCORE', fly_key, '-inf', now - lease)
end

local function clock()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
end

local function snapshot(log_key, amt_key, now, window)
  local count = redis.call('ZCARD', log_key)
  local total = tonumber(redis.call('HGET', amt_key, '_total') or '0')
  local reset = 0
  if count > 0 then
    local oldest = redis.call('ZRANGE', log_key, 0, 0, 'WITHSCORES')
    reset = tonumber(oldest[2]) + window - now
  end
  return {count, total, tostring(reset)}
end
"""

# KEYS: (log, amt, fly) per scope. ARGV: id, tokens, lease_ms, then per scope
# window_ms, requests_per_minute, tokens_per_minute, concurrency (-1: none).
# Returns {1, snapshot} or {0, reason, scope index, retry_ms, snapshot}; snapshot = the first
# scope's {requests in window, tokens in window, ms until the oldest leaves}.
_ADMIT = (
    _EVICT
    + """
local id, tokens, lease = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local now = clock()
local scopes = #KEYS / 3
for i = 0, scopes - 1 do
  local log_key, amt_key, fly_key = KEYS[3 * i + 1], KEYS[3 * i + 2], KEYS[3 * i + 3]
  local base = 4 + 4 * i
  local window, rpm = tonumber(ARGV[base]), tonumber(ARGV[base + 1])
  local tpm, concurrency = tonumber(ARGV[base + 2]), tonumber(ARGV[base + 3])
  evict(log_key, amt_key, fly_key, now, window, lease)
  local refusal = nil
  local retry = 0
  local count = redis.call('ZCARD', log_key)
  local total = tonumber(redis.call('HGET', amt_key, '_total') or '0')
  if concurrency >= 0 and redis.call('ZCARD', fly_key) >= concurrency then
    refusal, retry = 'concurrency', 1000
  elseif count + 1 > rpm then
    local oldest = redis.call('ZRANGE', log_key, 0, 0, 'WITHSCORES')
    refusal, retry = 'requests', tonumber(oldest[2]) + window - now
  elseif tokens > tpm then
    refusal, retry = 'tokens', window
  elseif total + tokens > tpm then
    -- wait until enough old reservations leave the window
    refusal, retry = 'tokens', window
    local needed = total + tokens - tpm
    local freed = 0
    local entries = redis.call('ZRANGE', log_key, 0, -1, 'WITHSCORES')
    for j = 1, #entries, 2 do
      freed = freed + (tonumber(redis.call('HGET', amt_key, entries[j])) or 0)
      if freed >= needed then
        retry = tonumber(entries[j + 1]) + window - now
        break
      end
    end
  end
  if refusal then
    local first = snapshot(KEYS[1], KEYS[2], now, tonumber(ARGV[4]))
    return {0, refusal, i, tostring(retry), first}
  end
end
for i = 0, scopes - 1 do
  local log_key, amt_key, fly_key = KEYS[3 * i + 1], KEYS[3 * i + 2], KEYS[3 * i + 3]
  local window = tonumber(ARGV[4 + 4 * i])
  redis.call('ZADD', log_key, now, id)
  redis.call('HSET', amt_key, id, tokens)
  redis.call('HINCRBY', amt_key, '_total', tokens)
  redis.call('ZADD', fly_key, now, id)
  local ttl = math.ceil(math.max(window, lease)) + 1000
  redis.call('PEXPIRE', log_key, ttl)
  redis.call('PEXPIRE', amt_key, ttl)
  redis.call('PEXPIRE', fly_key, ttl)
end
return {1, snapshot(KEYS[1], KEYS[2], now, tonumber(ARGV[4]))}
"""
)

# KEYS: (log, amt, fly) per scope. ARGV: id, used tokens. Replace the reservation by what was
# used (an entry already out of the window has nothing left to refund) and end in-flight.
_SETTLE = """
local id, used = ARGV[1], tonumber(ARGV[2])
for i = 0, #KEYS / 3 - 1 do
  local amt_key, fly_key = KEYS[3 * i + 2], KEYS[3 * i + 3]
  local reserved = tonumber(redis.call('HGET', amt_key, id) or '-1')
  if reserved > used then
    redis.call('HSET', amt_key, id, used)
    redis.call('HINCRBY', amt_key, '_total', used - reserved)
  end
  redis.call('ZREM', fly_key, id)
end
return 1
"""

# KEYS: one scope's (log, amt, fly). ARGV: window_ms, lease_ms.
_SNAPSHOT = (
    _EVICT
    + """
local now = clock()
evict(KEYS[1], KEYS[2], KEYS[3], now, tonumber(ARGV[1]), tonumber(ARGV[2]))
return snapshot(KEYS[1], KEYS[2], now, tonumber(ARGV[1]))
"""
)


_ADMIT_SHA = hashlib.sha1(_ADMIT.encode()).hexdigest()  # noqa: S324 - Redis names scripts by SHA-1
_SETTLE_SHA = hashlib.sha1(_SETTLE.encode()).hexdigest()  # noqa: S324


class RedisRateLimiter:
    """Exact sliding-window limits in Redis, shared by every gateway process that uses it."""

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "dg:rl:",
        fail_open: bool = False,
        lease: float = 600.0,
        timeout: float = 0.5,
    ) -> None:
        self.url = url
        self.fail_open = fail_open
        self.unavailable = 0  # decisions taken without Redis (refused or, open, admitted)
        self._prefix = prefix
        self._lease_ms = lease * 1000.0
        self._client = redis.Redis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
        )
        self._admit = self._client.register_script(_ADMIT)
        self._settle = self._client.register_script(_SETTLE)
        self._snapshot = self._client.register_script(_SNAPSHOT)
        self._timeout = timeout
        self._async: tuple[asyncio.AbstractEventLoop, Any] | None = None  # loop, its connection
        self._lock = threading.Lock()
        self._last_warning = 0.0
        self._settlements: queue.SimpleQueue[tuple[list[str], list[Any]] | None] = (
            queue.SimpleQueue()
        )
        self._pending = 0
        self._settled = threading.Condition()
        self._settler = threading.Thread(
            target=self._settle_loop, name="distillguard-settle", daemon=True
        )
        self._settler.start()

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
        return _decision(scopes, tokens, admission_id, reply)

    async def admit_async(self, scopes: tuple[Scope, ...], tokens: int) -> Admission | Refusal:
        admission_id, keys, arguments = self._admit_call(scopes, tokens)
        try:
            reply = await self._async_admit(keys, arguments)
        except (redis.RedisError, OSError) as exc:
            return self._without_redis(scopes, tokens, exc)
        return _decision(scopes, tokens, admission_id, reply)

    def _admit_call(
        self, scopes: tuple[Scope, ...], tokens: int
    ) -> tuple[str, list[str], list[Any]]:
        admission_id = secrets.token_hex(8)
        keys: list[str] = []
        arguments: list[Any] = [admission_id, int(tokens), self._lease_ms]
        for scope in scopes:
            keys += self._keys(scope)
            limits = scope.limits
            concurrency = -1 if limits.concurrency is None else limits.concurrency
            arguments += [
                scope.window * 1000.0,
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
            return await connection.evalsha(_ADMIT_SHA, _ADMIT, keys, arguments)
        return await connection.evalsha(_ADMIT_SHA, len(keys), *keys, *arguments)

    def settle(self, admission: Admission, used_tokens: int) -> None:
        if admission.settled:
            return
        admission.settled = True
        if admission.token is None:  # admitted while Redis was unavailable (fail open)
            return
        used = min(max(used_tokens, 0), admission.tokens)
        keys = [key for scope in admission.scopes for key in self._keys(scope)]
        if self._send_on_loop(keys, [admission.token, used]):
            return
        with self._settled:
            self._pending += 1
        self._settlements.put((keys, [admission.token, used]))

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
        return self._async[1].send_script(_SETTLE_SHA, _SETTLE, keys, arguments)

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
                if len(batch) >= 256:
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

    def snapshot(self, scope: Scope) -> Snapshot | None:
        try:
            reply = self._snapshot(
                keys=self._keys(scope), args=[scope.window * 1000.0, self._lease_ms]
            )
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
        """Send the pending settlements and close the blocking connections."""
        self._settlements.put(None)
        self._settler.join(timeout=10)
        self._client.close()

    # -- internals ------------------------------------------------------------------------------

    def _keys(self, scope: Scope) -> list[str]:
        # {braces}: a scope's three keys hash to one Redis Cluster slot
        base = f"{self._prefix}{{{scope.name}}}"
        return [base + ":log", base + ":amt", base + ":fly"]

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


def _decision(
    scopes: tuple[Scope, ...], tokens: int, admission_id: str, reply: list[Any]
) -> Admission | Refusal:
    if int(reply[0]) == 1:
        return Admission(scopes, tokens, [], _snapshot(scopes[0], reply[1]), token=admission_id)
    reason = reply[1].decode() if isinstance(reply[1], bytes) else str(reply[1])
    scope = scopes[int(reply[2])]
    return Refusal(reason, scope.name, float(reply[3]) / 1000.0, _snapshot(scopes[0], reply[4]))


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
