"""Every tier change the monitor or an operator makes, kept in the store.

The rows are the record of when and why an account was watched, throttled or blocked (its
score, request count and reasons at that moment), and they let a restarted gateway put every
account back in the tier it had: a blocked harvester stays blocked across restarts.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from datetime import UTC, datetime

from distillguard.monitor.monitor import TierChange
from distillguard.store.base import Connection

__all__ = ["TierHistory"]


class TierHistory:
    """Appends tier changes (from the monitor's thread) and reads the latest tier per key."""

    def __init__(self, connect: Callable[[], Connection]) -> None:
        self._connect = connect
        self._local = threading.local()  # sqlite connections stay in the thread that made them

    def _connection(self) -> Connection:
        connection: Connection | None = getattr(self._local, "connection", None)
        if connection is None:
            connection = self._local.connection = self._connect()
        return connection

    def record(self, change: TierChange) -> None:
        connection = self._connection()
        with connection:
            connection.execute(
                "INSERT INTO tier_changes (changed_at, key_id, tenant, previous, tier, pinned, "
                "score, requests, reasons) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
                    change.account,
                    change.tenant,
                    change.previous,
                    change.tier,
                    int(change.pinned),
                    change.score,
                    change.requests,
                    json.dumps(list(change.reasons)),
                ),
            )

    def latest(self) -> dict[str, tuple[str, bool]]:
        """key id -> (its last tier, whether an operator pinned it)."""
        rows = self._connection().execute(
            "SELECT key_id, tier, pinned FROM tier_changes WHERE seq IN "
            "(SELECT MAX(seq) FROM tier_changes GROUP BY key_id)"
        )
        return {key_id: (tier, bool(pinned)) for key_id, tier, pinned in rows}

    def changes(self, key_id: str | None = None) -> list[dict[str, object]]:
        query = (
            "SELECT changed_at, key_id, tenant, previous, tier, pinned, score, requests, reasons "
            "FROM tier_changes"
        )
        arguments: tuple[str, ...] = ()
        if key_id is not None:
            query += " WHERE key_id = ?"
            arguments = (key_id,)
        names = (
            "changed_at",
            "key_id",
            "tenant",
            "previous",
            "tier",
            "pinned",
            "score",
            "requests",
            "reasons",
        )
        result = []
        for row in self._connection().execute(query + " ORDER BY seq", arguments):
            item = dict(zip(names, row, strict=True))
            item["pinned"] = bool(item["pinned"])
            item["reasons"] = json.loads(str(item["reasons"]))
            result.append(item)
        return result
