"""The audit writer against a failing database: it reconnects, it isolates what the database
refuses into the dead-letter file, and it never hangs a shutdown while the journal holds the
rest (issue 16)."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from tests.store.test_journal import KEY, record

from distillguard.store import Connection, connect
from distillguard.store.audit import AuditLog
from distillguard.store.chain import verify_chain
from distillguard.store.deadletter import DEAD_LETTER, DeadLetter, replay
from distillguard.store.journal import Journal
from distillguard.store.usage import read_usage


class _Refusing:
    """A connection that refuses (as a constraint would) any statement carrying `poison`."""

    def __init__(self, inner: Connection, poison: str) -> None:
        self._inner = inner
        self._poison = poison

    def execute(self, sql: str, parameters: Any = (), /) -> Any:
        if any(isinstance(value, str) and self._poison in value for value in parameters):
            raise ValueError("value refused by a constraint")
        return self._inner.execute(sql, parameters)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def __enter__(self) -> _Refusing:
        self._inner.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._inner.__exit__(*exc)


def test_a_record_the_database_refuses_goes_to_the_dead_letter_file_and_the_rest_lands(
    tmp_path: Path, opener: Callable[[], Connection]
) -> None:
    records = [record(index) for index in range(7)]
    records[4] = replace(records[4], model="poison-model")
    journal = Journal(tmp_path / "journal", key=KEY)
    log = AuditLog(lambda: _Refusing(opener(), "poison"), journal=journal)  # type: ignore[arg-type,return-value]
    for each in records:
        log.append(each)
    assert log.flush(timeout=30)  # before: retried the same batch forever
    log.close()
    committed = read_usage(opener())
    assert sorted(each.request_id for each in committed) == sorted(
        each.request_id for index, each in enumerate(records) if index != 4
    )
    assert verify_chain(opener()).ok
    (dead,) = (tmp_path / "journal" / DEAD_LETTER).glob("*.jsonl")
    assert DeadLetter.read(dead, KEY) == ([records[4]], 0)
    assert list((tmp_path / "journal").glob("*.jsonl")) == []  # nothing left to replay


def test_the_writer_reconnects_after_its_connection_dies(
    tmp_path: Path, opener: Callable[[], Connection]
) -> None:
    opened: list[Connection] = []

    def tracking() -> Connection:
        opened.append(opener())
        return opened[-1]

    log = AuditLog(tracking, journal=Journal(tmp_path / "journal", key=KEY), flush_interval=0.01)
    log.append(record(1))
    assert log.flush()
    opened[0].close()  # the server went away under it (a restart, a failover)
    log.append(record(2))
    assert log.flush(timeout=10)  # before: retried on the dead connection forever
    log.close()
    assert [each.request_id for each in read_usage(opener())] == ["req_j0001", "req_j0002"]


def test_closing_with_the_database_away_leaves_the_records_to_the_journal(
    tmp_path: Path, opener: Callable[[], Connection]
) -> None:
    reachable = True

    def flaky() -> Connection:
        if not reachable:
            raise OSError("database unreachable")
        return opener()

    directory = tmp_path / "journal"
    log = AuditLog(flaky, journal=Journal(directory, key=KEY), close_grace=0.5)
    assert log.flush()
    reachable = False
    log._drop_connection()  # the next write must reconnect, and cannot
    log.append(record(1))
    started = time.monotonic()
    log.close()
    assert time.monotonic() - started < 5  # before: close() never returned
    assert len(list(directory.glob("*.jsonl"))) == 1
    reachable = True
    again = AuditLog(flaky, journal=Journal(directory, key=KEY))
    assert again.flush()
    again.close()
    assert [each.request_id for each in read_usage(opener())] == ["req_j0001"]


def test_postgres_refusing_a_nul_byte_does_not_wedge_the_log(
    tmp_path: Path, fresh_postgres_url: str
) -> None:
    """A client's `model` can hold U+0000, which PostgreSQL's TEXT refuses: before, that one
    batch was retried forever and every later record with it."""
    journal = Journal(tmp_path / "journal", key=KEY)
    log = AuditLog(lambda: connect(tmp_path, url=fresh_postgres_url), journal=journal)
    poisoned = replace(record(2), model="m\x00" + secrets.token_hex(2))
    for each in (record(1), poisoned, record(3)):
        log.append(each)
    assert log.flush(timeout=30)
    log.close()
    connection = connect(tmp_path, url=fresh_postgres_url)
    assert [each.request_id for each in read_usage(connection)] == ["req_j0001", "req_j0003"]
    (dead,) = (tmp_path / "journal" / DEAD_LETTER).glob("*.jsonl")
    assert DeadLetter.read(dead, KEY)[0] == [poisoned]
    connection.close()


def test_audit_replay_appends_what_the_database_now_takes_and_keeps_the_rest(
    tmp_path: Path, opener: Callable[[], Connection]
) -> None:
    directory = tmp_path / "journal"
    dead = DeadLetter(directory / DEAD_LETTER, "dead", KEY)
    taken, still_refused, present = record(1), replace(record(2), model="poison-2"), record(3)
    dead.write([taken, still_refused, present])
    log = AuditLog(opener)
    log.append(present)
    assert log.flush()
    log.close()
    connection = _Refusing(opener(), "poison")
    result = replay(directory, KEY, connection, None)  # type: ignore[arg-type]
    assert (result.replayed, result.already, result.forged_lines) == (1, 1, 0)
    assert [request_id for request_id, _ in result.refused] == ["req_j0002"]
    assert DeadLetter.read(dead.path, KEY) == ([still_refused], 0)  # kept, MACs still valid
    assert verify_chain(opener()).ok
    assert replay(directory, KEY, opener(), None).replayed == 1  # once the database takes it
    assert not dead.path.exists()


def test_audit_replay_never_takes_a_forged_dead_letter_line(
    tmp_path: Path, opener: Callable[[], Connection]
) -> None:
    directory = tmp_path / "journal"
    dead = DeadLetter(directory / DEAD_LETTER, "dead", KEY)
    dead.write([record(1)])
    dead.path.write_bytes(dead.path.read_bytes().replace(b"acme", b"evil"))
    result = replay(directory, KEY, opener(), None)
    assert (result.replayed, result.forged_lines) == (0, 1)
    assert read_usage(opener()) == [] and dead.path.exists()
