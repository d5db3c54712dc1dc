"""Rate limits by requests and tokens per minute, exact over any 60-second window.

Each scope (an API key, a tenant) keeps a log of what it admitted in the last minute: one
timestamp per request, and (timestamp, tokens) per token reservation. A request is admitted
only if, for every scope it belongs to, the requests in the window plus one stay within the
requests-per-minute limit and the tokens in the window plus the reservation stay within the
tokens-per-minute limit. So no 60-second window ever holds more than the limits, whatever the
concurrency: admission is one synchronous step (no await inside), and the event loop runs one
at a time. Tokens are reserved at admission as prompt tokens + max_tokens x n (as OpenAI counts
them) and settled to the tokens actually used when the response ends; a concurrency cap per key
counts requests in flight. A refused request consumes nothing.

This is the memory backend, for one process; `RateLimiter` is the interface that the Redis
backend (`gateway/ratelimit_redis.py`) implements for several replicas; `limiter_from_url`
picks one. The `limits` library was evaluated and not used: its
strategies cannot refund a reservation (settlement) and a rejected fixed-window hit still counts.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from distillguard.errors import ConfigError, ServiceUnavailableError

__all__ = [
    "Admission",
    "LimiterUnavailable",
    "Limits",
    "MemoryRateLimiter",
    "RateLimiter",
    "Refusal",
    "Scope",
    "format_duration",
    "limiter_from_url",
]

WINDOW = 60.0


@dataclass(frozen=True)
class Limits:
    requests_per_minute: int
    tokens_per_minute: int
    concurrency: int | None = None


@dataclass(frozen=True)
class Scope:
    """A set of limits over a window: per key and per tenant each minute, per key each day."""

    name: str  # "key:<id>", "tenant:<id>", "day:<key id>"
    limits: Limits
    window: float = WINDOW


@dataclass(frozen=True)
class Snapshot:
    """What the response headers report for the key's own scope."""

    limit_requests: int
    remaining_requests: int
    reset_requests: float  # seconds until a request slot frees up
    limit_tokens: int
    remaining_tokens: int
    reset_tokens: float


@dataclass
class Admission:
    scopes: tuple[Scope, ...]
    tokens: int
    entries: list[list[float]]  # the token log entries, one per scope, settled later
    snapshot: Snapshot
    settled: bool = False
    token: str | None = None  # the shared backend's admission id


@dataclass(frozen=True)
class Refusal:
    reason: str  # "requests", "tokens", "concurrency"
    scope: str
    retry_after: float
    snapshot: Snapshot


class LimiterUnavailable(ServiceUnavailableError):
    """The shared limiter cannot decide (Redis is down) and is configured to fail closed."""


class RateLimiter(Protocol):
    """`admit` decides now; the gateway awaits `admit_async`, which lets a shared backend
    wait for its server without blocking the event loop. `settle` never blocks."""

    def admit(self, scopes: tuple[Scope, ...], tokens: int) -> Admission | Refusal: ...

    async def admit_async(self, scopes: tuple[Scope, ...], tokens: int) -> Admission | Refusal: ...

    def settle(self, admission: Admission, used_tokens: int) -> None: ...

    def snapshot(self, scope: Scope) -> Snapshot | None: ...


def limiter_from_url(url: str | None, *, fail_open: bool = False) -> RateLimiter:
    """The memory limiter (no URL: one process) or the Redis one (``redis://``, ``rediss://``,
    ``unix://``) that several replicas share."""
    if url is None:
        return MemoryRateLimiter()
    if url.split("://", 1)[0] not in ("redis", "rediss", "unix"):
        raise ConfigError(
            f"unsupported rate limiter URL {url.split('://', 1)[0]!r}: use redis://..."
        )
    from distillguard.gateway.ratelimit_redis import RedisRateLimiter

    limiter = RedisRateLimiter(url, fail_open=fail_open)
    limiter.ping()
    return limiter


@dataclass
class _Log:
    requests: deque[float] = field(default_factory=deque)
    tokens: deque[list[float]] = field(default_factory=deque)  # [timestamp, tokens]
    token_total: float = 0.0
    in_flight: int = 0


class MemoryRateLimiter:
    """Exact sliding-window limits in this process's memory. `clock` is injectable for tests."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._logs: dict[str, _Log] = {}

    def admit(self, scopes: tuple[Scope, ...], tokens: int) -> Admission | Refusal:
        now = self._clock()
        logs = [self._log(scope, now) for scope in scopes]
        for scope, log in zip(scopes, logs, strict=True):
            refusal = self._check(scope, log, tokens, now)
            if refusal is not None:
                return Refusal(
                    refusal[0], scope.name, refusal[1], self._snapshot(scopes[0], logs[0], now)
                )
        entries = []
        for log in logs:
            log.requests.append(now)
            entry = [now, float(tokens)]
            log.tokens.append(entry)
            log.token_total += tokens
            log.in_flight += 1
            entries.append(entry)
        return Admission(scopes, tokens, entries, self._snapshot(scopes[0], logs[0], now))

    async def admit_async(self, scopes: tuple[Scope, ...], tokens: int) -> Admission | Refusal:
        return self.admit(scopes, tokens)  # no await inside: one synchronous step

    def settle(self, admission: Admission, used_tokens: int) -> None:
        """Replace the reservation by what was used (never more than reserved), end in-flight."""
        if admission.settled:
            return
        admission.settled = True
        used = min(max(used_tokens, 0), admission.tokens)
        horizon = self._clock()
        for scope, entry in zip(admission.scopes, admission.entries, strict=True):
            log = self._logs[scope.name]
            refund = entry[1] - used
            # an entry younger than the window is still in the log (no O(n) search needed)
            if refund > 0 and entry[0] > horizon - scope.window:
                entry[1] = used
                log.token_total -= refund
            log.in_flight -= 1

    def snapshot(self, scope: Scope) -> Snapshot:
        now = self._clock()
        return self._snapshot(scope, self._log(scope, now), now)

    # -- internals ----------------------------------------------------------------------

    def _log(self, scope: Scope, now: float) -> _Log:
        log = self._logs.get(scope.name)
        if log is None:
            log = self._logs[scope.name] = _Log()
        horizon = now - scope.window
        while log.requests and log.requests[0] <= horizon:
            log.requests.popleft()
        while log.tokens and log.tokens[0][0] <= horizon:
            log.token_total -= log.tokens.popleft()[1]
        return log

    @staticmethod
    def _check(scope: Scope, log: _Log, tokens: int, now: float) -> tuple[str, float] | None:
        limits = scope.limits
        if limits.concurrency is not None and log.in_flight >= limits.concurrency:
            return "concurrency", 1.0
        if len(log.requests) + 1 > limits.requests_per_minute:
            return "requests", log.requests[0] + scope.window - now
        if tokens > limits.tokens_per_minute:
            return "tokens", scope.window  # can never fit; the caller reports it as too large
        if log.token_total + tokens > limits.tokens_per_minute:
            # wait until enough old reservations leave the window
            needed = log.token_total + tokens - limits.tokens_per_minute
            freed = 0.0
            for stamp, amount in log.tokens:
                freed += amount
                if freed >= needed:
                    return "tokens", stamp + scope.window - now
            return "tokens", scope.window
        return None

    @staticmethod
    def _snapshot(scope: Scope, log: _Log, now: float) -> Snapshot:
        limits = scope.limits
        reset_requests = (log.requests[0] + scope.window - now) if log.requests else 0.0
        reset_tokens = (log.tokens[0][0] + scope.window - now) if log.tokens else 0.0
        return Snapshot(
            limit_requests=limits.requests_per_minute,
            remaining_requests=max(0, limits.requests_per_minute - len(log.requests)),
            reset_requests=max(0.0, reset_requests),
            limit_tokens=limits.tokens_per_minute,
            remaining_tokens=max(0, int(limits.tokens_per_minute - log.token_total)),
            reset_tokens=max(0.0, reset_tokens),
        )


def format_duration(seconds: float) -> str:
    """OpenAI's reset format: ``120ms``, ``1s``, ``6m0s``."""
    if seconds < 1.0:
        return f"{max(0, math.ceil(seconds * 1000))}ms"
    whole = math.ceil(seconds)
    minutes, rest = divmod(whole, 60)
    return f"{minutes}m{rest}s" if minutes else f"{rest}s"
