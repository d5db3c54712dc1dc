"""Alerts: a line in the log, a row the console lists, and a webhook POST, when an account
changes tier or a ring is found.

Tier changes are read from the store's history (`tier_changes`) after a cursor that moves by
compare-and-set, so that with several replicas each change is announced once. A ring is new
when most of its members were in no ring announced before (a ring that grows by a few
accounts is the same ring). The webhook gets one JSON object per alert:
``{"kind", "subject", "message", "at", "details"}``; a delivery that fails is recorded with
the alert, and not retried (the alert stays listed in the console).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx

from distillguard.monitor.monitor import RingReport
from distillguard.redact import redact
from distillguard.store.base import Connection

__all__ = ["Alert", "Alerts", "recent_alerts"]

log = logging.getLogger("distillguard.console")

_TIER_CURSOR = "alerts.tier_changes"
_RING_MEMBERS = "alerts.ring_members"
_BATCH = 500


@dataclass(frozen=True)
class Alert:
    raised_at: str
    kind: str  # "tier_change" or "ring"
    subject: str  # the account, or the ring's signature
    message: str
    delivery: str  # "log only", "delivered", or why delivery failed


def recent_alerts(connection: Connection, limit: int = 100) -> list[Alert]:
    rows = connection.execute(
        "SELECT raised_at, kind, subject, message, delivery FROM console_alerts "
        "ORDER BY seq DESC LIMIT ?",
        (limit,),
    ).fetchall()
    return [Alert(*(row[i] for i in range(5))) for row in rows]


def _cursor(connection: Connection, name: str, initial: str) -> str:
    connection.execute(
        "INSERT INTO console_cursors (name, value) VALUES (?, ?) ON CONFLICT (name) DO NOTHING",
        (name, initial),
    )
    return str(
        connection.execute("SELECT value FROM console_cursors WHERE name = ?", (name,)).fetchone()[
            0
        ]
    )


def _move(connection: Connection, name: str, old: str, new: str) -> bool:
    moved = connection.execute(
        "UPDATE console_cursors SET value = ? WHERE name = ? AND value = ?", (new, name, old)
    )
    return bool(moved.rowcount == 1)


class Alerts:
    """Finds what to announce and announces it (log, table, webhook)."""

    def __init__(self, webhook: str | None, timeout: float = 5.0) -> None:
        self.webhook = webhook
        self.timeout = timeout

    def tier_changes(self, connection: Connection) -> int:
        """Announce the tier changes recorded since the last look; how many."""
        head = connection.execute("SELECT MAX(seq) FROM tier_changes").fetchone()[0] or 0
        with connection:  # the first look starts from now: no flood of old changes
            start = _cursor(connection, _TIER_CURSOR, str(head))
        rows = connection.execute(
            "SELECT seq, changed_at, key_id, tenant, previous, tier, pinned, score, requests, "
            "reasons FROM tier_changes WHERE seq > ? ORDER BY seq LIMIT ?",
            (int(start), _BATCH),
        ).fetchall()
        if not rows:
            return 0
        with connection:
            if not _move(connection, _TIER_CURSOR, start, str(rows[-1][0])):
                return 0  # another replica announces these
        for row in rows:
            _, changed_at, key_id, tenant, previous, tier, pinned, score, requests, reasons = row
            why = "; ".join(json.loads(reasons)) or ("operator decision" if pinned else "")
            self.announce(
                connection,
                "tier_change",
                key_id,
                f"account {key_id} (tenant {tenant}): {previous} -> {tier}, score {score:.2f} "
                f"after {requests} requests" + (f": {why}" if why else ""),
                {
                    "account": key_id,
                    "tenant": tenant,
                    "previous": previous,
                    "tier": tier,
                    "pinned": bool(pinned),
                    "score": score,
                    "changed_at": changed_at,
                },
            )
        return len(rows)

    def rings(self, connection: Connection, rings: Sequence[RingReport]) -> int:
        """Announce rings most of whose members no announced ring held; how many."""
        with connection:
            stored = _cursor(connection, _RING_MEMBERS, "[]")
        announced = set(json.loads(stored))
        found = 0
        for ring in rings:
            fresh = [account for account in ring.accounts if account not in announced]
            if len(fresh) * 2 <= len(ring.accounts):
                continue
            announced.update(ring.accounts)
            signature = hashlib.sha256(",".join(sorted(ring.accounts)).encode()).hexdigest()[:12]
            shown = ", ".join(ring.accounts[:10]) + (" ..." if len(ring.accounts) > 10 else "")
            self.announce(
                connection,
                "ring",
                f"ring-{signature}",
                f"ring of {len(ring.accounts)} accounts found (score {ring.score:.2f}, "
                f"{ring.requests} requests): {shown}; " + "; ".join(ring.reasons[:3]),
                {"accounts": list(ring.accounts), "score": ring.score, "reasons": ring.reasons},
            )
            found += 1
        if found:
            with connection:
                if not _move(connection, _RING_MEMBERS, stored, json.dumps(sorted(announced))):
                    log.info("another replica announced rings at the same time")
        return found

    def announce(
        self,
        connection: Connection,
        kind: str,
        subject: str,
        message: str,
        details: dict[str, Any],
    ) -> Alert:
        raised_at = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
        log.warning("alert (%s): %s", kind, message)
        delivery = "log only" if self.webhook is None else self._deliver(
            {"kind": kind, "subject": subject, "message": message, "at": raised_at,
             "details": details}
        )  # fmt: skip
        with connection:
            connection.execute(
                "INSERT INTO console_alerts (raised_at, kind, subject, message, delivery) "
                "VALUES (?, ?, ?, ?, ?)",
                (raised_at, kind, subject, message, delivery),
            )
        return Alert(raised_at, kind, subject, message, delivery)

    def _deliver(self, payload: dict[str, Any]) -> str:
        if self.webhook is None:
            return "log only"
        try:
            response = httpx.post(self.webhook, json=payload, timeout=self.timeout)
        except httpx.HTTPError as exc:
            reason = redact(f"webhook failed: {type(exc).__name__}: {exc}")
            log.warning("%s", reason)
            return reason[:300]
        if response.status_code >= 300:
            log.warning("webhook answered %d", response.status_code)
            return f"webhook answered {response.status_code}"
        return "delivered"
