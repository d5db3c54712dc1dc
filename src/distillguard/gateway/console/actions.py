"""What operators did, by name: a row in `operator_actions` and an event in the audit chain.

Both are written in one transaction, so an action is either in the chain or did not happen.
The event (`{"event": "operator", "operator", "action", "target", "detail", "at"}`) is linked
with the chain key like every usage record: an insider who edits the table cannot make the
chain agree. Actions: `set_tier` (detail: tier, previous, reason), `review` (a decision of the
review queue), `start_job` (an audit or a verification), `set_budget`, `sign_in`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from distillguard.store.base import Connection
from distillguard.store.chain import ChainKey, append_event

__all__ = ["Action", "ActionLog"]


@dataclass(frozen=True)
class Action:
    acted_at: str
    operator: str
    action: str
    target: str
    detail: dict[str, Any]
    event_id: str


class ActionLog:
    """Records operator actions into the audit chain (with `key`, the current chain key)."""

    def __init__(self, key: ChainKey | None) -> None:
        self._key = key

    def record(
        self,
        connection: Connection,
        operator: str,
        action: str,
        target: str,
        detail: dict[str, Any],
    ) -> Action:
        """Record it inside the caller's transaction (``with connection:``), so that the
        action's own writes and its record commit together, or neither does."""
        acted_at = datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
        event = {
            "event": "operator",
            "operator": operator,
            "action": action,
            "target": target,
            "detail": detail,
            "at": acted_at,
        }
        event_id = append_event(connection, event, self._key)
        connection.execute(
            "INSERT INTO operator_actions (acted_at, operator, action, target, detail, "
            "event_id) VALUES (?, ?, ?, ?, ?, ?)",
            (acted_at, operator, action, target, json.dumps(detail, sort_keys=True), event_id),
        )
        return Action(acted_at, operator, action, target, detail, event_id)

    @staticmethod
    def of(
        connection: Connection,
        *,
        target: str | None = None,
        action: str | None = None,
        limit: int = 100,
    ) -> list[Action]:
        """The newest actions first, of one target and/or kind."""
        clauses, arguments = [], []
        if target is not None:
            clauses.append("target = ?")
            arguments.append(target)
        if action is not None:
            clauses.append("action = ?")
            arguments.append(action)
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = connection.execute(
            "SELECT acted_at, operator, action, target, detail, event_id FROM operator_actions"  # noqa: S608
            f"{where} ORDER BY seq DESC LIMIT ?",
            [*arguments, limit],
        ).fetchall()
        return [Action(row[0], row[1], row[2], row[3], json.loads(row[4]), row[5]) for row in rows]
