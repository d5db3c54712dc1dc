"""The audit chain: any change to a usage row, its text, or the order of records is caught."""

from __future__ import annotations

import sqlite3
import zlib
from pathlib import Path

import pytest

from distillguard.gateway.audit import AuditLog, UsageRecord, verify_chain
from distillguard.store import connect


def record(index: int) -> UsageRecord:
    return UsageRecord(
        request_id=f"req_{index:04d}",
        created_at=f"2026-11-30T00:00:{index:02d}Z",
        tenant="acme",
        key_id="k1",
        model="m",
        endpoint="completions",
        status=200,
        outcome="ok",
        prompt_tokens=5 + index,
        completion_tokens=7,
        latency_ms=1.5,
        watermark_key_id="wk_1",
        fingerprint="sha256:f",
        parameters={"n": 1},
        prompt_text=f"prompt {index}",
        output_text=f'["output {index}"]',
    )


@pytest.fixture
def database(tmp_path: Path) -> Path:
    log = AuditLog(lambda: connect(tmp_path), flush_interval=0.01, max_batch=3)
    for index in range(10):
        log.append(record(index))
    log.close()  # flushes everything queued
    return tmp_path


def test_an_untouched_chain_verifies(database: Path) -> None:
    result = verify_chain(connect(database))
    assert result.ok and result.records == 10


@pytest.mark.parametrize(
    ("statement", "reason"),
    [
        (
            "UPDATE usage SET completion_tokens = 70 WHERE request_id = 'req_0004'",
            "usage row was changed",
        ),
        ("UPDATE usage SET output_text = ? WHERE request_id = 'req_0004'", "usage row was changed"),
        ("DELETE FROM audit WHERE request_id = 'req_0004'", "chain is broken"),
        ("UPDATE audit SET seq = 100 WHERE request_id = 'req_0004'", "chain is broken"),
        ("DELETE FROM usage WHERE request_id = 'req_0004'", "usage row is missing"),
    ],
)
def test_tampering_is_caught_at_the_first_bad_record(
    database: Path, statement: str, reason: str
) -> None:
    with sqlite3.connect(database / "distillguard.db") as connection:
        if "?" in statement:
            connection.execute(statement, (zlib.compress(b'["forged"]'),))
        else:
            connection.execute(statement)
    result = verify_chain(connect(database))
    assert not result.ok
    assert reason in (result.reason or "")
    assert result.request_id in ("req_0004", "req_0005")


def test_swapping_two_records_is_caught(database: Path) -> None:
    with sqlite3.connect(database / "distillguard.db") as connection:
        connection.execute("UPDATE audit SET seq = -1 WHERE seq = 3")
        connection.execute("UPDATE audit SET seq = 3 WHERE seq = 4")
        connection.execute("UPDATE audit SET seq = 4 WHERE seq = -1")
    result = verify_chain(connect(database))
    assert not result.ok and result.first_bad_seq == 3


def test_writes_continue_the_chain_after_a_restart(database: Path) -> None:
    log = AuditLog(lambda: connect(database))
    log.append(record(10))
    log.close()
    result = verify_chain(connect(database))
    assert result.ok and result.records == 11


def test_purged_text_keeps_the_chain_verifiable_but_not_forgeable(database: Path) -> None:
    from distillguard.gateway.audit import purge_text

    connection = connect(database)
    assert purge_text(connection, "2026-11-30T00:00:05Z") == 5
    assert verify_chain(connection).ok
    with sqlite3.connect(database / "distillguard.db") as raw:
        raw.execute("UPDATE usage SET completion_tokens = 1 WHERE request_id = 'req_0002'")
    result = verify_chain(connect(database))
    assert not result.ok and result.request_id == "req_0002"
