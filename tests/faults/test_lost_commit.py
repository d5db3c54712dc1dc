"""PostgreSQL dies between committing a batch of usage rows and acknowledging it: the audit
writer sees the connection lost, though the rows are in. Its retry must not treat them as
records the database refuses."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.store.test_journal import KEY, record

from distillguard.store import Connection, connect
from distillguard.store.audit import AuditLog
from distillguard.store.deadletter import DEAD_LETTER
from distillguard.store.journal import Journal
from distillguard.store.usage import read_usage

from .conftest import Servers


class _AcknowledgementLost:
    """A connection whose first commit succeeds and then reports the connection lost, as a
    client sees a server killed right after it committed."""

    lost = False  # shared: one acknowledgement is lost in all

    def __init__(self, inner: Connection) -> None:
        self._inner = inner

    def __enter__(self) -> _AcknowledgementLost:
        self._inner.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._inner.__exit__(*exc)
        if exc[0] is None and not _AcknowledgementLost.lost:
            _AcknowledgementLost.lost = True
            import psycopg

            raise psycopg.OperationalError("server closed the connection unexpectedly")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


@pytest.fixture
def fresh_schema(servers: Servers) -> Iterator[str]:
    import psycopg

    schema = "dg_faults_" + secrets.token_hex(4)
    with psycopg.connect(servers.postgres.url, autocommit=True) as admin:
        admin.execute(f"CREATE SCHEMA {schema}")
    yield f"{servers.postgres.url}?options=-csearch_path%3D{schema}"
    with psycopg.connect(servers.postgres.url, autocommit=True) as admin:
        admin.execute(f"DROP SCHEMA {schema} CASCADE")


def test_a_batch_committed_before_the_connection_died_is_not_dead_lettered(
    tmp_path: Path, fresh_schema: str
) -> None:
    opened: list[Connection] = []

    def open_store() -> Connection:
        opened.append(connect(tmp_path, url=fresh_schema))
        return _AcknowledgementLost(opened[-1])  # type: ignore[return-value]

    _AcknowledgementLost.lost = False
    journal = Journal(tmp_path / "journal", key=KEY)
    log = AuditLog(open_store, journal=journal)
    records = [record(index) for index in range(8)]
    try:
        for each in records:
            log.append(each)
        assert log.flush(timeout=30)
    finally:
        log.close()
    committed = read_usage(opened[-1])
    for connection in opened:
        connection.close()

    assert _AcknowledgementLost.lost
    assert sorted(row.request_id for row in committed) == [each.request_id for each in records]
    assert not list((tmp_path / "journal" / DEAD_LETTER).glob("*.jsonl"))
