"""Retention: dropping old prompt and output text, as an event in the audit chain."""

from __future__ import annotations

from datetime import UTC, datetime

from distillguard.store.base import Connection
from distillguard.store.chain import ChainKey, append_event

__all__ = ["purge_text"]


def purge_text(connection: Connection, before: str, key: ChainKey | None = None) -> int:
    """Drop the prompt and output text of usage rows created before `before` (ISO 8601).

    The rows, their token counts and their audit records stay, and a purge event joins the
    chain in the same transaction: `verify_chain` accepts missing text only where a purge
    covers it, and still checks everything else, the removed text's hashes included.
    """
    with connection:
        cursor = connection.execute(
            "UPDATE usage SET prompt_text = NULL, output_text = NULL "
            "WHERE created_at < ? AND prompt_text IS NOT NULL",
            (before,),
        )
        removed = int(cursor.rowcount)
        now = datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
        append_event(
            connection, {"event": "purge", "before": before, "rows": removed, "at": now}, key
        )
    return removed
