"""The audit chain: any change to a usage row, its text, or the order of records is caught.

Every test runs on each store (SQLite, PostgreSQL when DISTILLGUARD_TEST_DATABASE_URL is set).
"""

from __future__ import annotations

import asyncio
import threading
import zlib
from collections.abc import Callable

import pytest

from distillguard.store import Connection
from distillguard.store.audit import AuditLog
from distillguard.store.chain import verify_chain
from distillguard.store.usage import UsageRecord, read_usage


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
def database(opener: Callable[[], Connection]) -> Callable[[], Connection]:
    log = AuditLog(opener, flush_interval=0.01, max_batch=3)
    for index in range(10):
        log.append(record(index))
    log.close()  # flushes everything queued
    return opener


def tamper(opener: Callable[[], Connection], *statements: str) -> None:
    connection = opener()
    with connection:
        for statement in statements:
            if "?" in statement:
                connection.execute(statement, (zlib.compress(b'["forged"]'),))
            else:
                connection.execute(statement)


def test_an_untouched_chain_verifies(database: Callable[[], Connection]) -> None:
    result = verify_chain(database())
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
    database: Callable[[], Connection], statement: str, reason: str
) -> None:
    tamper(database, statement)
    result = verify_chain(database())
    assert not result.ok
    assert reason in (result.reason or "")
    assert result.request_id in ("req_0004", "req_0005")


def test_swapping_two_records_is_caught(database: Callable[[], Connection]) -> None:
    tamper(
        database,
        "UPDATE audit SET seq = -1 WHERE seq = 3",
        "UPDATE audit SET seq = 3 WHERE seq = 4",
        "UPDATE audit SET seq = 4 WHERE seq = -1",
    )
    result = verify_chain(database())
    assert not result.ok and result.first_bad_seq == 3


def test_writes_continue_the_chain_after_a_restart(database: Callable[[], Connection]) -> None:
    log = AuditLog(database)
    log.append(record(10))
    log.close()
    result = verify_chain(database())
    assert result.ok and result.records == 11


def test_purged_text_keeps_the_chain_verifiable_but_not_forgeable(
    database: Callable[[], Connection],
) -> None:
    from distillguard.store.retention import purge_text

    connection = database()
    assert purge_text(connection, "2026-11-30T00:00:05Z") == 5
    assert verify_chain(connection).ok
    tamper(database, "UPDATE usage SET completion_tokens = 1 WHERE request_id = 'req_0002'")
    result = verify_chain(database())
    assert not result.ok and result.request_id == "req_0002"


def test_replicas_writing_at_once_extend_one_chain(opener: Callable[[], Connection]) -> None:
    """Four writers (as four gateway processes would) interleave into one verifiable chain."""
    logs = [AuditLog(opener, flush_interval=0.001, max_batch=4) for _ in range(4)]

    def write(replica: int) -> None:
        for index in range(25):
            logs[replica].append(record(replica * 100 + index))

    threads = [threading.Thread(target=write, args=(replica,)) for replica in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for log in logs:
        log.close()
    connection = opener()
    result = verify_chain(connection)
    assert result.ok and result.records == 100
    written = [row.request_id for row in read_usage(connection)]
    assert sorted(written) == sorted(f"req_{r * 100 + i:04d}" for r in range(4) for i in range(25))


def test_a_durable_append_returns_only_once_the_row_is_committed(
    opener: Callable[[], Connection],
) -> None:
    log = AuditLog(opener, flush_interval=5.0)  # a lone append would wait 5 s for company
    reader = opener()

    async def append() -> int:
        await asyncio.wait_for(log.durable(record(1)), timeout=2.0)
        return len(read_usage(reader))

    assert asyncio.run(append()) == 1
    log.close()
