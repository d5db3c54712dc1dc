"""The console's background work: snapshots of the accounts, risk over time, and alerts.

Every `watch_seconds` (and whenever a page finds the snapshot stale) the rollup of usage is
brought up to date and a snapshot of the accounts taken (`snapshot.py`). Then, where this
process runs the monitor itself (one process, or the leading replica; the others read the
leader's published view, which has no signals), it records the risk of the accounts whose
risk moved (`risk_samples`: score, tier and each signal's contribution to the logit) and
announces tier changes and new rings (`alerts.py`). A sample is written when the score moved
by `SAMPLE_STEP` or the tier changed, or an hour passed with new requests, so a quiet fleet
costs no rows. Samples older than `SAMPLES_KEPT_DAYS` are dropped.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import numpy as np

from distillguard.gateway.console.alerts import Alerts
from distillguard.gateway.console.snapshot import AccountRow, Snapshot
from distillguard.monitor.features import FEATURES
from distillguard.monitor.model import RiskModel
from distillguard.monitor.monitor import Monitor
from distillguard.store.base import Connection
from distillguard.store.rollup import refresh_rollup, totals_for

if TYPE_CHECKING:
    from distillguard.gateway.console.console import Console

__all__ = ["SAMPLES_KEPT_DAYS", "SAMPLE_STEP", "Watch", "admin_monitor", "local_monitor"]

log = logging.getLogger("distillguard.console")

SAMPLE_STEP = 0.02  # a score that moved this much is sampled again
SAMPLE_QUIET = 3600.0  # seconds after which an account with new requests is sampled anyway
SAMPLES_KEPT_DAYS = 30
SNAPSHOT_ROLLUP = 50_000  # audit records a snapshot rolls up at most (the rest: the watch's)


def admin_monitor(hook: object | None) -> Any:
    """The monitor when it answers the admin API's questions (accounts, rings, set_tier)."""
    if hook is None:
        return None
    if all(callable(getattr(hook, name, None)) for name in ("accounts", "rings", "set_tier")):
        return hook
    return None


def local_monitor(hook: object | None) -> Monitor | None:
    """The `Monitor` running in this process (through any wrappers), while it leads."""
    current = hook
    for _ in range(5):
        if current is None or getattr(current, "leading", True) is False:
            return None
        if isinstance(current, Monitor):
            return current
        current = getattr(current, "monitor", None)
    return None


def contributions(model: RiskModel, signals: Any) -> dict[str, float]:
    """Each signal's push on the logit against an ordinary account (the reasons' measure)."""
    weights = np.asarray(model.weights)
    priors = np.asarray([signal.prior for signal in FEATURES])
    pushes = weights * (np.asarray(signals) - priors) / np.asarray(model.scales)
    return {
        signal.name: round(float(push), 3)
        for signal, push in zip(FEATURES, pushes, strict=True)
        if abs(push) >= 0.01
    }


class Watch:
    """Takes snapshots (for pages) and, on a daemon thread, samples risk and raises alerts."""

    def __init__(self, console: Console, connect: Callable[[], Connection]) -> None:
        self.console = console
        self._connect = connect
        self._connection: Connection | None = None
        self._lock = threading.Lock()
        self.alerts = Alerts(console.config.webhook)
        self._sampled: dict[str, tuple[float, str, float, int]] = {}  # score, tier, when, requests
        self._last_prune = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _call(self, work: Callable[[Connection], Any]) -> Any:
        with self._lock:
            if self._stop.is_set():
                raise RuntimeError("the console is closed")
            if self._connection is None:
                self._connection = self._connect()
            return work(self._connection)

    def take_snapshot(self) -> Snapshot:
        """Roll usage up, then read the monitor and the totals (slow with many accounts)."""
        taken_at = self.console.clock()
        monitor = admin_monitor(self.console.monitor())
        reports = monitor.accounts() if monitor is not None else []
        rings = monitor.rings() if monitor is not None else []

        def totals(connection: Connection) -> Any:
            # a bounded part of any backlog: the watch's rounds roll up the rest
            refresh_rollup(connection, SNAPSHOT_ROLLUP, most_batches=1)
            return totals_for(connection)

        return Snapshot.build(reports, rings, self._call(totals), taken_at)

    def step(self) -> None:
        """One round: the whole rollup, a fresh snapshot; risk samples and alerts where the
        monitor runs here."""
        self._call(refresh_rollup)
        self.console.snapshots.expire()
        snapshot = self.console.snapshots.refresh()
        local = local_monitor(self.console.monitor())
        if local is None:
            return
        model = self.console.risk_model() or local.model
        rows = [row for row in snapshot.rows if row.score is not None and self._due(row)]
        samples = []
        for row in rows:
            try:
                signals = local.signals(row.account)
            except KeyError:  # seen in the snapshot, forgotten since
                continue
            samples.append((row, contributions(model, signals)))
        self._call(lambda connection: self._record(connection, samples, snapshot))

    def _due(self, row: AccountRow) -> bool:
        last = self._sampled.get(row.account)
        if last is None:
            return True
        score, tier, when, requests = last
        moved = abs((row.score or 0.0) - score) >= SAMPLE_STEP or row.tier != tier
        quiet = self.console.clock() - when >= SAMPLE_QUIET
        quiet_but_active = quiet and row.requests != requests
        return moved or quiet_but_active

    def _record(
        self,
        connection: Connection,
        samples: list[tuple[AccountRow, dict[str, float]]],
        snapshot: Snapshot,
    ) -> None:
        clock = self.console.clock()
        now = datetime.fromtimestamp(clock, UTC)
        minute = now.strftime("%Y-%m-%dT%H:%M")
        with connection:
            for row, pushes in samples:
                connection.execute(
                    "INSERT INTO risk_samples (key_id, sampled_at, score, ring_score, tier, "
                    "requests, contributions) VALUES (?, ?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT (key_id, sampled_at) DO NOTHING",
                    (
                        row.account, minute, row.score, row.ring_score, row.tier, row.requests,
                        json.dumps(pushes, sort_keys=True),
                    ),
                )  # fmt: skip
                self._sampled[row.account] = (row.score or 0.0, row.tier, clock, row.requests)
            if clock - self._last_prune > 3600:
                cutoff = (now - timedelta(days=SAMPLES_KEPT_DAYS)).strftime("%Y-%m-%dT%H:%M")
                connection.execute("DELETE FROM risk_samples WHERE sampled_at < ?", (cutoff,))
                self._last_prune = clock
        self.alerts.tier_changes(connection)
        self.alerts.rings(connection, snapshot.rings)

    # -- running -------------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name="distillguard-console", daemon=True
            )
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.console.config.watch_seconds):
            try:
                self.step()
            except Exception:  # the next round may succeed; the pages still work
                log.exception("the console's watch round failed")

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10.0)
            self._thread = None
        with self._lock:
            if self._connection is not None:
                self._connection.close()
                self._connection = None
