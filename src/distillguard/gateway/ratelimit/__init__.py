"""Rate limits by requests and tokens over sliding windows: one interface, two backends.

Minute windows are exact; windows of an hour or more count per minute (bounded memory, at
most one minute's worth strict at the edge, never loose). `admitted(limiter, scopes, tokens)`
holds an admission for a block and settles it on every way out.

`limiter_from_url(None)` is the memory limiter (one process); ``redis://``, ``rediss://`` or
``unix://`` the Redis one that several replicas share.
"""

from __future__ import annotations

from distillguard.errors import ConfigError
from distillguard.gateway.ratelimit.base import (
    WINDOW,
    Admission,
    Limits,
    RateLimiter,
    Refusal,
    Scope,
    Snapshot,
    admitted,
    format_duration,
)
from distillguard.gateway.ratelimit.memory import MemoryRateLimiter

__all__ = [
    "WINDOW",
    "Admission",
    "Limits",
    "MemoryRateLimiter",
    "RateLimiter",
    "Refusal",
    "Scope",
    "Snapshot",
    "admitted",
    "format_duration",
    "limiter_from_url",
]


def limiter_from_url(url: str | None, *, fail_open: bool = False) -> RateLimiter:
    """The memory limiter (no URL: one process) or the Redis one (``redis://``, ``rediss://``,
    ``unix://``) that several replicas share."""
    if url is None:
        return MemoryRateLimiter()
    if url.split("://", 1)[0] not in ("redis", "rediss", "unix"):
        raise ConfigError(
            f"unsupported rate limiter URL {url.split('://', 1)[0]!r}: use redis://..."
        )
    from distillguard.gateway.ratelimit.redis import RedisRateLimiter

    limiter = RedisRateLimiter(url, fail_open=fail_open)
    limiter.ping()
    return limiter
