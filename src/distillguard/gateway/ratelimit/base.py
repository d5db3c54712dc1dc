"""The rate limiter's interface: limits, scopes, and what an admission decides.

Each scope (an API key, a tenant) keeps a log of what it admitted in the last window: one
timestamp per request, and (timestamp, tokens) per token reservation. A request is admitted
only if, for every scope it belongs to, the requests in the window plus one stay within the
requests-per-minute limit and the tokens in the window plus the reservation stay within the
tokens-per-minute limit. So no 60-second window ever holds more than the limits, whatever the
concurrency. Tokens are reserved at admission as prompt tokens + max_tokens x n (as OpenAI counts
them) and settled to the tokens actually used when the response ends; a concurrency cap per key
counts requests in flight. A refused request consumes nothing.

Backends: `memory` (one process) and `redis` (several replicas); `limiter_from_url` in the
package picks one. The `limits` library was evaluated and not used: its strategies cannot
refund a reservation (settlement) and a rejected fixed-window hit still counts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

__all__ = [
    "WINDOW",
    "Admission",
    "Limits",
    "RateLimiter",
    "Refusal",
    "Scope",
    "Snapshot",
    "format_duration",
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


class RateLimiter(Protocol):
    """`admit` decides now; the gateway awaits `admit_async`, which lets a shared backend
    wait for its server without blocking the event loop. `settle` never blocks."""

    def admit(self, scopes: tuple[Scope, ...], tokens: int) -> Admission | Refusal: ...

    async def admit_async(self, scopes: tuple[Scope, ...], tokens: int) -> Admission | Refusal: ...

    def settle(self, admission: Admission, used_tokens: int) -> None: ...

    def snapshot(self, scope: Scope) -> Snapshot | None: ...


def format_duration(seconds: float) -> str:
    """OpenAI's reset format: ``120ms``, ``1s``, ``6m0s``."""
    if seconds < 1.0:
        return f"{max(0, math.ceil(seconds * 1000))}ms"
    whole = math.ceil(seconds)
    minutes, rest = divmod(whole, 60)
    return f"{minutes}m{rest}s" if minutes else f"{rest}s"
