"""Which limits a request falls under, and refusing cheaply what is sure to be refused.

A request is admitted against its key's scope (limits scaled by the key's tier), its tenant's
scope when tenant limits are set, its key's daily token budget, and its tenant's monthly token
budget when one is set (`gateway/budgets.py`). A monthly budget is a calendar month in UTC: its
scope is named for the month (`month:<tenant>:2026-05`), so a new month starts from nothing,
and its window is the month's length, so everything admitted since the month began counts.

Refusing costs the client nothing, so it must cost the server little too: `RecentRefusals`
remembers refusals on the request count, and until they expire answers the key's next requests
with the same 429 before the body is read, rendered or tokenized. That is exact, not an
estimate: a request-count window frees a slot only as time passes (settling returns tokens,
never requests), so nothing can be admitted on that scope before the refusal's retry time, on
this replica or any other. Token and concurrency refusals are not remembered: a smaller
request, or a finished one, may fit sooner.
"""

from __future__ import annotations

import calendar
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime

from distillguard.errors import ApiError
from distillguard.gateway.apikeys import ApiKey
from distillguard.gateway.policy import Tier
from distillguard.gateway.ratelimit import Limits, Refusal, Scope, format_duration
from distillguard.gateway.settings import GatewaySettings

__all__ = ["DAY", "RecentRefusals", "month_scope", "refusal_error", "scopes_for"]

DAY = 86_400.0
_UNLIMITED = 10**12  # the requests "limit" of a token budget


def scopes_for(key: ApiKey, tier: Tier, settings: GatewaySettings) -> tuple[Scope, ...]:
    """The scopes a request of `key` (in `tier`) is admitted under; the key's own first.
    The settings' `monthly_budget` is read on the request path: it answers from memory."""
    factor = tier.rate_factor
    if factor == 1.0:
        limits = Limits(key.rpm, key.tpm, key.concurrency)
    else:
        limits = Limits(
            max(1, int(key.rpm * factor)), max(1, int(key.tpm * factor)), key.concurrency
        )
    scopes = [Scope(f"key:{key.key_id}", limits, settings.minute)]
    if settings.tenant_limits is not None:
        scopes.append(Scope(f"tenant:{key.tenant}", settings.tenant_limits, settings.minute))
    if key.daily_tokens is not None:
        scopes.append(Scope(f"day:{key.key_id}", Limits(_UNLIMITED, key.daily_tokens), window=DAY))
    monthly = settings.monthly_budget
    budget = monthly(key.tenant) if monthly is not None else None
    if budget is not None:
        scopes.append(month_scope(key.tenant, budget, time.time()))
    return tuple(scopes)


def month_scope(tenant: str, tokens: int, now: float) -> Scope:
    """The scope of `tenant`'s monthly token budget in the UTC month of `now`."""
    moment = datetime.fromtimestamp(now, UTC)
    days = calendar.monthrange(moment.year, moment.month)[1]
    return Scope(f"month:{tenant}:{moment:%Y-%m}", Limits(_UNLIMITED, tokens), window=days * DAY)


def refusal_error(refusal: Refusal) -> ApiError:
    """The 429 of a refusal, in words."""
    if refusal.reason == "concurrency":
        message = "Too many requests in flight for this key; retry when one finishes"
    elif refusal.scope.startswith("month:"):  # the budget renews when the month does
        tenant, month = refusal.scope[len("month:") :].rsplit(":", 1)
        message = (
            f"The monthly token budget of tenant {tenant} for {month} is spent (or this "
            "request's reservation does not fit in what is left); it renews with the next month"
        )
    else:
        retry = max(refusal.retry_after, 0.001)
        message = (
            f"Rate limit reached for {refusal.scope} on {refusal.reason}; "
            f"retry in {format_duration(retry)}"
        )
    return ApiError(429, message, kind=refusal.reason, code="rate_limit_exceeded")


class RecentRefusals:
    """Request-count refusals, per scope and its limits, until their retry time."""

    def __init__(
        self, clock: Callable[[], float] = time.monotonic, max_scopes: int = 100_000
    ) -> None:
        self._clock = clock
        self._max_scopes = max_scopes
        self._until: dict[tuple[Scope, ...], tuple[float, Refusal]] = {}

    def remember(self, scopes: tuple[Scope, ...], refusal: Refusal) -> None:
        if refusal.reason != "requests" or refusal.retry_after <= 0:
            return
        if len(self._until) >= self._max_scopes:
            self._prune()
        self._until[scopes] = (self._clock() + refusal.retry_after, refusal)

    def check(self, scopes: tuple[Scope, ...]) -> Refusal | None:
        """The remembered refusal of these scopes (same names and limits), while it holds."""
        entry = self._until.get(scopes)
        if entry is None:
            return None
        until, refusal = entry
        left = until - self._clock()
        if left <= 0:
            del self._until[scopes]
            return None
        return replace(refusal, retry_after=left)

    def _prune(self) -> None:
        now = self._clock()
        for scopes in [s for s, (until, _) in self._until.items() if until <= now]:
            del self._until[scopes]
        while len(self._until) >= self._max_scopes:  # all live: drop the oldest remembered
            del self._until[next(iter(self._until))]
