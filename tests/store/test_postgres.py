"""The PostgreSQL connection survives its server going away (issue 16): a restart or a
terminated backend used to leave every later statement failing on the dead connection."""

from __future__ import annotations

import time
from pathlib import Path

import psycopg
import pytest
from tests.conftest import postgres_url

from distillguard.errors import ServiceUnavailableError
from distillguard.store import connect
from distillguard.store.postgres import PostgresConnection


def _terminate(connection: PostgresConnection) -> None:
    pid = connection.execute("SELECT pg_backend_pid()").fetchone()[0]
    with psycopg.connect(postgres_url(), autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))


def test_a_statement_after_the_backend_died_runs_on_a_new_connection(
    tmp_path: Path, fresh_postgres_url: str
) -> None:
    connection = connect(tmp_path, url=fresh_postgres_url)
    assert isinstance(connection, PostgresConnection)
    _terminate(connection)
    assert connection.execute("SELECT 41 + 1").fetchone()[0] == 42  # before: OperationalError
    _terminate(connection)
    with connection:  # a transaction after the loss reconnects first
        assert connection.execute("SELECT 1").fetchone()[0] == 1
    connection.close()


def test_while_the_server_is_away_statements_fail_fast_and_clearly(
    tmp_path: Path, fresh_postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    connection = connect(tmp_path, url=fresh_postgres_url)
    assert isinstance(connection, PostgresConnection)
    monkeypatch.setattr(connection, "_url", "postgresql://dg:s3cret@127.0.0.1:1/none")
    _terminate(connection)
    with pytest.raises(ServiceUnavailableError) as first:
        connection.execute("SELECT 1")
    assert "s3cret" not in str(first.value)
    started = time.monotonic()
    with pytest.raises(ServiceUnavailableError):  # within the backoff: no new attempt
        connection.execute("SELECT 1")
    assert time.monotonic() - started < 0.05
    monkeypatch.undo()
    time.sleep(0.25)  # past the backoff, the server is back
    assert connection.execute("SELECT 2").fetchone()[0] == 2
    connection.close()
