"""Events in the audit chain: operators' actions verify like purges, and are not counted as
purges (a summary that said "6 purge events" after six sign-ins misled its reader)."""

from __future__ import annotations

from collections.abc import Callable

from distillguard.store import Connection
from distillguard.store.chain import ChainKey, append_event, verify_chain
from distillguard.store.retention import purge_text

KEY = ChainKey(1, b"k" * 32)


def test_operator_events_verify_and_are_not_counted_as_purges(
    opener: Callable[[], Connection],
) -> None:
    connection = opener()
    with connection:
        append_event(connection, {"event": "operator", "action": "sign_in"}, KEY)
    purge_text(connection, "2026-01-01T00:00:00Z", KEY)
    result = verify_chain(connection, {1: KEY.material})
    assert result.ok and (result.records, result.events, result.purges) == (2, 2, 1)
