"""The memory rate limiter: exact sliding windows for one process.

Admission is one synchronous step (no await inside), and the event loop runs one at a time,
so no window ever holds more than the limits, whatever the concurrency.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from distillguard.gateway.ratelimit.base import Admission, Refusal, Scope, Snapshot

__all__ = ["MemoryRateLimiter"]


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
