"""The memory rate limiter: sliding windows for one process, exact under an hour, counted per
minute from an hour up (`ratelimit/base.py` says why and how close).

Admission is one synchronous step (no await inside), and the event loop runs one at a time,
so no window ever holds more than the limits, whatever the concurrency.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from distillguard.gateway.ratelimit.base import BUCKET, Admission, Refusal, Scope, Snapshot

__all__ = ["MemoryRateLimiter"]

Kind = Literal["requests", "tokens"]


class _Window(Protocol):
    """What one scope's window counts; `window` is the scope's length in seconds."""

    @property
    def requests(self) -> int: ...

    @property
    def tokens(self) -> float: ...

    def evict(self, now: float, window: float) -> None: ...

    def add(self, now: float, tokens: int) -> Any:
        """Count one admission; the handle `refund` takes back."""

    def refund(self, handle: Any, amount: float, now: float, window: float) -> None: ...

    def wait(self, kind: Kind, needed: float, now: float, window: float) -> float:
        """Seconds until `needed` requests or tokens have left the window."""

    def oldest_leaves(self, now: float, window: float) -> float: ...


@dataclass
class _ExactLog:
    """One entry per admission: exact, and as long as the limit allows (minute windows)."""

    stamps: deque[float] = field(default_factory=deque)
    entries: deque[list[float]] = field(default_factory=deque)  # [timestamp, tokens]
    tokens: float = 0.0

    @property
    def requests(self) -> int:
        return len(self.stamps)

    def evict(self, now: float, window: float) -> None:
        horizon = now - window
        while self.stamps and self.stamps[0] <= horizon:
            self.stamps.popleft()
        while self.entries and self.entries[0][0] <= horizon:
            self.tokens -= self.entries.popleft()[1]

    def add(self, now: float, tokens: int) -> list[float]:
        self.stamps.append(now)
        entry = [now, float(tokens)]
        self.entries.append(entry)
        self.tokens += tokens
        return entry

    def refund(self, handle: list[float], amount: float, now: float, window: float) -> None:
        # an entry younger than the window is still in the log (no O(n) search needed)
        if handle[0] > now - window:
            handle[1] -= amount
            self.tokens -= amount

    def wait(self, kind: Kind, needed: float, now: float, window: float) -> float:
        if kind == "requests":
            return self.oldest_leaves(now, window)
        freed = 0.0
        for stamp, amount in self.entries:
            freed += amount
            if freed >= needed:
                return stamp + window - now
        return window

    def oldest_leaves(self, now: float, window: float) -> float:
        return self.stamps[0] + window - now if self.stamps else 0.0


@dataclass(slots=True)
class _Bucket:
    minute: int  # floor(time / BUCKET)
    requests: int
    tokens: int


@dataclass
class _MinuteBuckets:
    """One bucket per clock minute (long windows): at most window / 60 + 1 of them.

    A bucket counts while any part of its minute is in the window, so the window is read up to
    one minute long at its old edge: stricter than exact by at most that minute's traffic."""

    buckets: deque[_Bucket] = field(default_factory=deque)
    requests: int = 0
    tokens: int = 0

    def evict(self, now: float, window: float) -> None:
        first_counted = math.floor((now - window) / BUCKET)  # the minute of the window's edge
        while self.buckets and self.buckets[0].minute < first_counted:
            gone = self.buckets.popleft()
            self.requests -= gone.requests
            self.tokens -= gone.tokens

    def add(self, now: float, tokens: int) -> _Bucket:
        minute = math.floor(now / BUCKET)
        if not self.buckets or self.buckets[-1].minute != minute:
            self.buckets.append(_Bucket(minute, 0, 0))
        bucket = self.buckets[-1]
        bucket.requests += 1
        bucket.tokens += tokens
        self.requests += 1
        self.tokens += tokens
        return bucket

    def refund(self, handle: _Bucket, amount: float, now: float, window: float) -> None:
        if handle.minute >= math.floor((now - window) / BUCKET):  # still counted
            handle.tokens -= round(amount)
            self.tokens -= round(amount)

    def wait(self, kind: Kind, needed: float, now: float, window: float) -> float:
        freed = 0.0
        for bucket in self.buckets:  # at most window / 60 + 1; usually the first suffices
            freed += bucket.requests if kind == "requests" else bucket.tokens
            if freed >= needed:
                return _leaves(bucket.minute, now, window)
        return window

    def oldest_leaves(self, now: float, window: float) -> float:
        return _leaves(self.buckets[0].minute, now, window) if self.buckets else 0.0


def _leaves(minute: int, now: float, window: float) -> float:
    """Seconds until a bucket's whole minute has left the window."""
    return (minute + 1) * BUCKET + window - now


@dataclass
class _Log:
    window: _Window
    in_flight: int = 0


class MemoryRateLimiter:
    """Sliding-window limits in this process's memory. `clock` is injectable for tests."""

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
            entries.append(log.window.add(now, tokens))
            log.in_flight += 1
        return Admission(scopes, tokens, entries, self._snapshot(scopes[0], logs[0], now))

    async def admit_async(self, scopes: tuple[Scope, ...], tokens: int) -> Admission | Refusal:
        return self.admit(scopes, tokens)  # no await inside: one synchronous step

    def settle(self, admission: Admission, used_tokens: int) -> None:
        """Replace the reservation by what was used, end in-flight. More than reserved (an
        upstream's prompt that tokenizes worse than its estimate) is charged too: the overage
        counts in the window like any other tokens."""
        if admission.settled:
            return
        admission.settled = True
        used = max(used_tokens, 0)
        now = self._clock()
        for scope, entry in zip(admission.scopes, admission.entries, strict=True):
            log = self._logs[scope.name]
            refund = admission.tokens - used  # negative: the overage, charged
            if refund != 0:
                log.window.refund(entry, refund, now, scope.window)
            log.in_flight -= 1

    def snapshot(self, scope: Scope) -> Snapshot:
        now = self._clock()
        return self._snapshot(scope, self._log(scope, now), now)

    def last_snapshot(self, scope: Scope) -> Snapshot:
        """In memory, the exact snapshot costs no wait."""
        return self.snapshot(scope)

    # -- internals ----------------------------------------------------------------------

    def _log(self, scope: Scope, now: float) -> _Log:
        log = self._logs.get(scope.name)
        if log is None:
            window: _Window = _MinuteBuckets() if scope.bucketed else _ExactLog()
            log = self._logs[scope.name] = _Log(window)
        log.window.evict(now, scope.window)
        return log

    @staticmethod
    def _check(scope: Scope, log: _Log, tokens: int, now: float) -> tuple[str, float] | None:
        limits, window = scope.limits, log.window
        if limits.concurrency is not None and log.in_flight >= limits.concurrency:
            return "concurrency", 1.0
        if window.requests + 1 > limits.requests_per_minute:
            surplus = window.requests + 1 - limits.requests_per_minute
            return "requests", window.wait("requests", surplus, now, scope.window)
        if tokens > limits.tokens_per_minute:
            return "tokens", scope.window  # can never fit; the caller reports it as too large
        if window.tokens + tokens > limits.tokens_per_minute:
            # wait until enough old reservations leave the window
            needed = window.tokens + tokens - limits.tokens_per_minute
            return "tokens", window.wait("tokens", needed, now, scope.window)
        return None

    @staticmethod
    def _snapshot(scope: Scope, log: _Log, now: float) -> Snapshot:
        limits, window = scope.limits, log.window
        reset = max(0.0, window.oldest_leaves(now, scope.window))
        return Snapshot(
            limit_requests=limits.requests_per_minute,
            remaining_requests=max(0, limits.requests_per_minute - window.requests),
            reset_requests=reset,
            limit_tokens=limits.tokens_per_minute,
            remaining_tokens=max(0, int(limits.tokens_per_minute - window.tokens)),
            reset_tokens=reset,
        )
