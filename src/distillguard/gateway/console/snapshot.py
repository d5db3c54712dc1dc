"""The accounts as the console shows them: the monitor's view joined with rolled-up usage.

Asking the monitor for every account scores each one again (about half a second for 10,000
accounts), far too slow for each page. The console reads a snapshot instead, taken on a worker
thread and kept for `max_age` seconds: a page served while it is older starts a new one and
is served from the old one meanwhile (only the very first page waits). Each page says how old
its data is. Sorted orders are computed once per snapshot, so a page is a slice.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from distillguard.monitor.monitor import AccountReport, RingReport
from distillguard.store.rollup import Totals

__all__ = ["SORTS", "TIER_ORDER", "AccountRow", "Snapshot", "SnapshotSource"]

log = logging.getLogger("distillguard.console")

TIER_ORDER = ("normal", "watch", "throttle", "block")
_RANK = {tier: rank for rank, tier in enumerate(TIER_ORDER)}


@dataclass(frozen=True)
class AccountRow:
    account: str
    tenant: str
    tier: str
    pinned: bool
    score: float | None  # None: the monitor has not seen it since it started
    ring: int | None
    ring_score: float | None
    reasons: tuple[str, ...]
    requests: int
    refused: int
    tokens: int
    last_seen: str  # ISO 8601, "" when no usage is rolled up yet

    @property
    def risk(self) -> float:
        return max(self.score or 0.0, self.ring_score or 0.0)


# name -> the key sorting rows in that column's natural order (ascending)
SORTS: dict[str, Callable[[AccountRow], object]] = {
    "risk": lambda row: (_RANK.get(row.tier, 0), row.risk),
    "account": lambda row: row.account,
    "tenant": lambda row: (row.tenant, row.account),
    "tier": lambda row: (_RANK.get(row.tier, 0), row.risk),
    "requests": lambda row: row.requests,
    "tokens": lambda row: row.tokens,
    "last_seen": lambda row: row.last_seen,
}


@dataclass
class Snapshot:
    rows: list[AccountRow]  # riskiest first
    rings: list[RingReport]
    taken_at: float  # time.time()
    by_account: dict[str, AccountRow] = field(init=False)
    _orders: dict[tuple[str, bool, str | None], list[AccountRow]] = field(
        init=False, default_factory=dict
    )
    _lock: threading.Lock = field(init=False, default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.by_account = {row.account: row for row in self.rows}

    @classmethod
    def build(
        cls,
        reports: Sequence[AccountReport],
        rings: Sequence[RingReport],
        totals: dict[str, Totals],
        taken_at: float,
    ) -> Snapshot:
        rows = [_row(report, totals.get(report.account)) for report in reports]
        seen = {report.account for report in reports}
        for key_id, total in totals.items():  # used, but not seen by the monitor since it started
            if key_id not in seen:
                rows.append(
                    AccountRow(
                        key_id, total.tenant, "normal", False, None, None, None, (),
                        total.requests, total.refused, total.tokens, total.last_seen,
                    )
                )  # fmt: skip
        rows.sort(key=lambda row: (-_RANK.get(row.tier, 0), -row.risk, row.account))
        return cls(rows, list(rings), taken_at)

    def tier_counts(self) -> dict[str, int]:
        counts = dict.fromkeys(TIER_ORDER, 0)
        for row in self.rows:
            counts[row.tier] = counts.get(row.tier, 0) + 1
        return counts

    def ordered(self, sort: str, descending: bool, tier: str | None) -> list[AccountRow]:
        """The rows in one tier (or all), sorted by a column of `SORTS`; computed once."""
        if sort not in SORTS:
            raise ValueError(f"unknown sort {sort!r}")
        key = (sort, descending, tier)
        with self._lock:
            found = self._orders.get(key)
            if found is None:
                rows = self.rows if tier is None else [r for r in self.rows if r.tier == tier]
                found = sorted(rows, key=SORTS[sort], reverse=descending)  # type: ignore[arg-type]
                self._orders[key] = found
        return found


def _row(report: AccountReport, total: Totals | None) -> AccountRow:
    return AccountRow(
        account=report.account,
        tenant=report.tenant or (total.tenant if total else ""),
        tier=report.tier,
        pinned=report.pinned,
        score=report.score,
        ring=report.ring,
        ring_score=report.ring_score,
        reasons=tuple(report.reasons),
        requests=total.requests if total else report.requests,
        refused=total.refused if total else 0,
        tokens=total.tokens if total else 0,
        last_seen=total.last_seen if total else "",
    )


class SnapshotSource:
    """Keeps a recent snapshot; `take` builds one (a slow call, off the event loop)."""

    def __init__(
        self,
        take: Callable[[], Snapshot],
        max_age: float = 10.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._take = take
        self.max_age = max_age
        self._clock = clock
        self._current: Snapshot | None = None
        self._refreshing = threading.Lock()
        self._closed = False

    def close(self) -> None:
        """No more background refreshes (the console is stopping)."""
        self._closed = True

    def put(self, snapshot: Snapshot) -> None:
        """A snapshot taken elsewhere (the console's periodic watch takes one anyway)."""
        self._current = snapshot

    def expire(self) -> None:
        """Make the next `refresh` take a new snapshot (after a change the page must show)."""
        current = self._current
        if current is not None:
            current.taken_at = -math.inf

    def refresh(self) -> Snapshot:
        """Take a snapshot now (waiting for one already being taken instead of taking two)."""
        with self._refreshing:
            current = self._current
            if current is not None and self._clock() - current.taken_at < self.max_age:
                return current
            self._current = self._take()
            return self._current

    def current(self) -> Snapshot | None:
        """The snapshot to serve now; a stale one starts a refresh in the background. None
        when none was ever taken (the caller then waits for `refresh`)."""
        current = self._current
        stale = current is not None and self._clock() - current.taken_at >= self.max_age
        if stale and not self._closed and not self._refreshing.locked():
            threading.Thread(target=self._refresh_quietly, daemon=True).start()
        return current

    def _refresh_quietly(self) -> None:
        try:
            self.refresh()
        except Exception:  # the page already has its (older) snapshot
            if not self._closed:
                log.exception("could not refresh the console's accounts snapshot")
