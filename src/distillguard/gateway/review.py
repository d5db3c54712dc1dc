"""The review queue: tiers the monitor may propose but only an operator may put in force.

With `[review] tiers = ["block"]` in the policy file, an account the monitor moves to block is
served as throttled (the highest tier below it that needs no review) until an operator
confirms the block in the console (a pinned tier, recorded with their name in the audit
chain). Rejecting it pins the tier the operator chooses instead. Pending accounts are those
whose monitor tier needs review and that no operator has decided since.

`ReviewedMonitor` wraps the monitor for the request path: `tier_of` is the monitor's tier,
held below the reviewed tiers unless the account's block was confirmed. Confirmations are read
from the store (the operators' `set_tier` actions) every `refresh` seconds by a daemon thread,
so a decision made on one replica holds on all; the confirming replica applies it at once.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Collection

from distillguard.gateway.policy import TIER_RANK
from distillguard.monitor.events import MonitorEvent, MonitorHook
from distillguard.monitor.monitor import AccountReport, RingReport
from distillguard.store.base import Connection

__all__ = ["ReviewedMonitor", "confirmed_tiers"]

log = logging.getLogger("distillguard.gateway")


def confirmed_tiers(connection: Connection) -> dict[str, str]:
    """Account -> the tier operators last set it to (their decisions, newest last)."""
    rows = connection.execute(
        "SELECT target, detail FROM operator_actions WHERE action = 'set_tier' ORDER BY seq"
    ).fetchall()
    return {row[0]: str(json.loads(row[1]).get("tier", "")) for row in rows}


class ReviewedMonitor:
    """A monitor whose tiers in `review` take effect only once an operator confirmed them."""

    def __init__(
        self,
        monitor: MonitorHook,
        review: Collection[str],
        connect: Callable[[], Connection] | None = None,
        refresh: float = 2.0,
    ) -> None:
        unknown = set(review) - set(TIER_RANK)
        if unknown:
            raise ValueError(f"unknown tiers to review: {sorted(unknown)}")
        self.monitor = monitor
        self.review = frozenset(review)
        lowest = min((TIER_RANK[tier] for tier in self.review), default=len(TIER_RANK))
        # what a pending account is served as: the highest tier that needs no review
        self._held = max(
            (tier for tier, rank in TIER_RANK.items() if rank < lowest), key=TIER_RANK.__getitem__
        )
        self._connect = connect
        self.refresh_seconds = refresh
        self._decided: dict[str, str] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- the request path ----------------------------------------------------------------------

    def observe(self, event: MonitorEvent) -> None:
        self.monitor.observe(event)

    def tier_of(self, account: str) -> str:
        tier = self.monitor.tier_of(account)
        if tier in self.review and self._decided.get(account) != tier:
            return self._held
        return tier

    @property
    def dropped(self) -> int:
        return int(getattr(self.monitor, "dropped", 0))

    # -- operators -----------------------------------------------------------------------------

    def pending(self, account: str, tier: str, pinned: bool) -> bool:
        """Whether an account (in `tier` as the monitor has it) waits for an operator."""
        return tier in self.review and not pinned and self._decided.get(account) != tier

    def set_tier(self, account: str, tier: str) -> None:
        self._decided[account] = tier
        self.monitor.set_tier(account, tier)  # type: ignore[attr-defined]

    def accounts(self) -> list[AccountReport]:
        return self.monitor.accounts()  # type: ignore[attr-defined, no-any-return]

    def rings(self) -> list[RingReport]:
        return self.monitor.rings()  # type: ignore[attr-defined, no-any-return]

    def __getattr__(self, name: str) -> object:  # model, signals, leading...: the monitor's
        if name == "monitor":  # not set yet: no recursion
            raise AttributeError(name)
        return getattr(self.monitor, name)

    # -- running -------------------------------------------------------------------------------

    def reload(self, connection: Connection) -> None:
        self._decided = confirmed_tiers(connection)

    def start(self) -> None:
        if self._connect is not None:
            connection = self._connect()
            self.reload(connection)
            self._thread = threading.Thread(
                target=self._run, args=(connection,), name="distillguard-review", daemon=True
            )
            self._thread.start()
        start = getattr(self.monitor, "start", None)
        if start is not None:
            start()

    def _run(self, connection: Connection) -> None:
        try:
            while not self._stop.wait(self.refresh_seconds):
                try:
                    self.reload(connection)
                except Exception as exc:  # the decisions in memory stay in force
                    log.warning("could not re-read the operators' tier decisions: %s", exc)
        finally:
            connection.close()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
        close = getattr(self.monitor, "close", None)
        if close is not None:
            close()
