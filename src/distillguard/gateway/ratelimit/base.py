"""The rate limiter's interface: limits, scopes, what an admission decides, and the block that
holds an admission until it is settled.

Each scope (an API key, a tenant) counts what it admitted in the last window. A request is
admitted only if, for every scope it belongs to, the requests in the window plus one stay
within the requests limit and the tokens in the window plus the reservation stay within the
tokens limit. Tokens are reserved at admission as prompt tokens + max_tokens x n (as OpenAI
counts them) and settled to the tokens actually used when the response ends; a concurrency cap
per key counts requests in flight. A refused request consumes nothing.

How a window counts:

- Windows under an hour (the per-minute limits) are exact sliding windows: one log entry per
  admission, so no 60 seconds ever hold more than the limits, whatever the concurrency. The
  log holds at most the limit's number of entries.
- Windows of an hour or more (the daily token budget) count per clock minute: one bucket of
  (requests, tokens) per minute, at most window / 60 + 1 of them, whatever the traffic. A bucket
  counts until its whole minute has left the window, so the window is read up to one minute
  long at its old edge: it may refuse up to one minute's worth of traffic early, and never
  admits more than the exact window would allow. Refusals read a few buckets, never a log.

`admitted` is the one way the gateway admits: an async context manager that settles the
admission on every way out of its block (an exception, a cancellation, a client gone).

Backends: `memory` (one process) and `redis` (several replicas); `limiter_from_url` in the
package picks one. The `limits` library was evaluated and not used: its strategies cannot
refund a reservation (settlement) and a rejected fixed-window hit still counts.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = [
    "BUCKET",
    "BUCKETED_FROM",
    "WINDOW",
    "Admission",
    "Limits",
    "RateLimiter",
    "Refusal",
    "Scope",
    "Snapshot",
    "admitted",
    "format_duration",
]

WINDOW = 60.0
BUCKET = 60.0  # seconds per bucket of a long window
BUCKETED_FROM = 3600.0  # windows this long or longer count per bucket, shorter ones exactly


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

    @property
    def bucketed(self) -> bool:
        """Counted per minute (bounded memory, at most a minute's worth strict at the edge)
        rather than exactly, one entry per admission."""
        return self.window >= BUCKETED_FROM


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
    entries: list[Any]  # the memory backend's log entries or buckets, one per scope
    snapshot: Snapshot
    settled: bool = False
    token: str | None = None  # the shared backend's admission id
    minute: int = 0  # the shared backend's clock minute at admission: its bucket


@dataclass(frozen=True)
class Refusal:
    reason: str  # "requests", "tokens", "concurrency"
    scope: str
    retry_after: float
    snapshot: Snapshot


class RateLimiter(Protocol):
    """`admit` decides now; the gateway admits through `admitted(limiter, ...)`, which awaits
    `admit_async` (a shared backend waits for its server without blocking the event loop) and
    settles on the way out. `settle` never blocks, and a second settlement does nothing."""

    def admit(self, scopes: tuple[Scope, ...], tokens: int) -> Admission | Refusal: ...

    async def admit_async(self, scopes: tuple[Scope, ...], tokens: int) -> Admission | Refusal: ...

    def settle(self, admission: Admission, used_tokens: int) -> None: ...

    def snapshot(self, scope: Scope) -> Snapshot | None: ...

    def last_snapshot(self, scope: Scope) -> Snapshot | None:
        """Without waiting on any server (error answers' headers): exact in memory, the last
        decision's view on a shared backend."""


@contextlib.asynccontextmanager
async def admitted(
    limiter: RateLimiter, scopes: tuple[Scope, ...], tokens: int
) -> AsyncIterator[Admission | Refusal]:
    """Admit `tokens` under `scopes` for the duration of the block, and settle on the way out.

    Inside, settle with the tokens actually used once they are known (`limiter.settle`). A
    block left unsettled (an exception, a cancellation, a client gone before the count) is
    charged its whole reservation: never less than the request may have used. While the block
    runs, a shared backend keeps renewing the admission's in-flight lease."""
    decision = await limiter.admit_async(scopes, tokens)
    try:
        yield decision
    finally:
        if isinstance(decision, Admission) and not decision.settled:
            limiter.settle(decision, decision.tokens)


def format_duration(seconds: float) -> str:
    """OpenAI's reset format: ``120ms``, ``1s``, ``6m0s``."""
    if seconds < 1.0:
        return f"{max(0, math.ceil(seconds * 1000))}ms"
    whole = math.ceil(seconds)
    minutes, rest = divmod(whole, 60)
    return f"{minutes}m{rest}s" if minutes else f"{rest}s"
