"""How one gateway behaves: limits beyond each key's own, tiers, body size, text, admin."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from distillguard.errors import ConfigError
from distillguard.gateway.origin import TrustedProxies
from distillguard.gateway.policy import DEFAULT_TIERS, TIER_RANK, Tier
from distillguard.gateway.ratelimit import WINDOW, Limits

__all__ = ["GatewaySettings"]


@dataclass(frozen=True)
class GatewaySettings:
    """Everything but the gateway's collaborators (backend, keys, audit log, limiter, monitor).

    `tenant_limits` apply to all of a tenant's keys together; `tiers` say what each tier
    allows; `store_text` keeps prompts and outputs in the usage log; `minute` is the rate
    window (tests shorten it); `admin_token` turns the admin API on; `durable_audit` makes
    every answer wait until its usage record is safe (in the audit journal, or committed: a
    killed replica then loses no answered request; the traffic simulator, which has no
    process to lose, turns it off), and `audit_wait` bounds that wait in seconds: past it the
    answer is a 503 `audit_unavailable` (the record stays queued and journaled).
    `monthly_budget` gives a tenant's monthly token budget, or None (`gateway/budgets.py`).
    `trusted_proxies` are the proxies whose forwarding header names the client's address
    (`gateway/origin.py`); none by default: the socket's peer is the client.

    `tiers` names every tier and no other: a key's tier that had no entry would otherwise be
    served with no limits at all.
    """

    tenant_limits: Limits | None = None
    tiers: Mapping[str, Tier] = field(default_factory=lambda: dict(DEFAULT_TIERS))
    max_body_bytes: int = 1 << 20
    store_text: bool = True
    minute: float = WINDOW
    admin_token: str | None = None
    durable_audit: bool = True
    audit_wait: float = 1.0
    clock: Callable[[], float] = time.time
    monthly_budget: Callable[[str], int | None] | None = None
    trusted_proxies: TrustedProxies = field(default_factory=TrustedProxies)

    def __post_init__(self) -> None:
        if set(self.tiers) != set(TIER_RANK):
            raise ConfigError(
                f"the gateway's tiers must be exactly {', '.join(TIER_RANK)}; "
                f"got {', '.join(sorted(self.tiers)) or 'none'}"
            )
