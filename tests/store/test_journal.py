"""The audit journal: private files, exact records, replay of dead processes' journals once.

Replay tests run on each store (SQLite, PostgreSQL when DISTILLGUARD_TEST_DATABASE_URL is set).
"""

from __future__ import annotations

import asyncio
import os
import stat
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from distillguard.store import Connection
from distillguard.store.audit import AuditLog
from distillguard.store.chain import verify_chain
from distillguard.store.journal import Journal, record_from_line, record_line
from distillguard.store.usage import UsageRecord, read_usage

KEY = b"k" * 32  # the journal's MAC key (derived from the master secret in `serve`)


def record(index: int) -> UsageRecord:
    return UsageRecord(
        request_id=f"req_j{index:04d}",
        created_at=f"2026-12-01T00:00:{index % 60:02d}Z",
        tenant="acme",
        key_id="k1",
        model="m",
        endpoint="chat.completions",
        status=200,
        outcome="ok",
        prompt_tokens=5 + index,
        completion_tokens=7,
        latency_ms=1.25,
        watermark_key_id=None,
        fingerprint="sha256:f",
        parameters={"n": 1, "temperature": 0.7, "stop": ["\n", "é"], "seed": None, "x": 1e-9},
        prompt_text=f"prompt {index} ünïcode \u2603",
        output_text=f'["output {index}", "second"]',
    )


def dead_process_journal(directory: Path, records: list[UsageRecord]) -> None:
    """A journal left behind: written, never committed, its lock released (the process died)."""
    journal = Journal(directory, key=KEY)
    for each in records:
        journal.write(each)
    journal.close()  # uncommitted segments stay, unlocked: what a killed process leaves


def test_journal_segments_are_private(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "journal", key=KEY)
    segment = journal.write(record(1))
    assert stat.S_IMODE(segment.path.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "journal").stat().st_mode) == 0o700
    journal.close()


def test_a_record_round_trips_through_its_journal_line_exactly() -> None:
    original = replace(record(3), output_text="a lone surrogate \ud83d survives too")
    line = record_line(original, KEY, "seg", 7)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    position, again = record_from_line(line, KEY, "seg")
    assert position == 7 and again == original
    assert type(again.parameters["temperature"]) is float
    assert again.parameters["stop"] == ["\n", "é"]


def test_a_segment_is_deleted_once_all_its_records_are_committed(tmp_path: Path) -> None:
    journal = Journal(tmp_path, key=KEY, segment_bytes=1)  # every write seals the previous segment
    segments = [journal.write(record(index)) for index in range(3)]
    assert len({segment.path for segment in segments}) == 3
    journal.committed(segments[:2])
    assert not segments[0].path.exists() and not segments[1].path.exists()
    assert segments[2].path.exists()  # the current one: still being written
    journal.committed(segments[2:])
    journal.close()
    assert list(tmp_path.glob("*.jsonl")) == []


def test_a_live_process_journal_is_not_replayed(tmp_path: Path) -> None:
    live = Journal(tmp_path, key=KEY)
    live.write(record(1))
    other = Journal(tmp_path, key=KEY)
    assert list(other.orphans()) == []  # its flock is held
    live.close()
    assert [len(orphan.records) for orphan in other.orphans()] == [1]


def test_replay_commits_a_dead_process_records_once_and_the_chain_verifies(
    tmp_path: Path, opener: Callable[[], Connection]
) -> None:
    records = [record(index) for index in range(12)]
    directory = tmp_path / "journal"
    already = AuditLog(opener)  # the dead process committed the first 4 before it died
    for each in records[:4]:
        already.append(each)
    assert already.flush()
    already.close()
    dead_process_journal(directory, records)

    for _ in range(2):  # the second start finds nothing left to replay
        log = AuditLog(opener, journal=Journal(directory, key=KEY), max_batch=5)
        assert log.flush()
        log.close()

    connection = opener()
    assert read_usage(connection) == records  # each once, in the journal's order
    chain = verify_chain(connection)
    assert chain.ok and chain.records == 12
    assert list(directory.glob("*.jsonl")) == []


def test_a_torn_last_line_is_skipped_and_the_segment_kept_aside(
    tmp_path: Path, opener: Callable[[], Connection]
) -> None:
    directory = tmp_path / "journal"
    dead_process_journal(directory, [record(1), record(2)])
    (segment,) = directory.glob("*.jsonl")
    with segment.open("ab") as file:
        file.write(
            record_line(record(3), KEY, segment.stem, 2)[:40]
        )  # a host crash cut the last write
    log = AuditLog(opener, journal=Journal(directory, key=KEY))
    assert log.flush()
    log.close()
    assert [each.request_id for each in read_usage(opener())] == ["req_j0001", "req_j0002"]
    assert list(directory.glob("*.torn")) == [segment.with_suffix(".torn")]


def test_an_answer_does_not_wait_for_an_unreachable_database(
    tmp_path: Path, opener: Callable[[], Connection]
) -> None:
    reachable = False

    def flaky() -> Connection:
        if not reachable:
            raise OSError("database unreachable")
        return opener()

    log = AuditLog(flaky, journal=Journal(tmp_path / "journal", key=KEY))

    async def submit() -> bool:
        future = log.submit(record(1))
        await asyncio.sleep(0)
        return future.done() and future.exception() is None

    assert asyncio.run(submit())  # safe in the journal at once
    reachable = True
    assert log.flush()
    log.close()
    assert read_usage(opener()) == [record(1)]


def test_past_the_backlog_an_answer_waits_for_its_commit(
    tmp_path: Path, opener: Callable[[], Connection]
) -> None:
    reachable = False

    def flaky() -> Connection:
        if not reachable:
            raise OSError("database unreachable")
        return opener()

    log = AuditLog(flaky, journal=Journal(tmp_path / "journal", key=KEY), max_backlog=1)

    async def submit_two() -> tuple[bool, bool]:
        first = log.submit(record(1))
        second = log.submit(replace(record(2), outcome="ok"))
        await asyncio.sleep(0.2)
        return first.done(), second.done()

    assert asyncio.run(submit_two()) == (True, False)
    reachable = True
    assert log.flush()
    log.close()
    assert len(read_usage(opener())) == 2


def test_with_group_fsync_an_answer_waits_for_the_fsync_of_its_record(
    tmp_path: Path, opener: Callable[[], Connection], monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[int] = []
    real_fdatasync = os.fdatasync

    def counting(fd: int) -> None:
        synced.append(fd)
        real_fdatasync(fd)

    monkeypatch.setattr(os, "fdatasync", counting)
    log = AuditLog(opener, journal=Journal(tmp_path / "journal", key=KEY, fsync_ms=5))

    async def submit() -> tuple[bool, bool]:
        futures = [log.submit(record(index)) for index in range(3)]
        before = futures[0].done()
        await asyncio.wait_for(asyncio.gather(*futures), timeout=5)
        return before, bool(synced)

    assert asyncio.run(submit()) == (False, True)
    assert log.flush()
    log.close()
    assert len(read_usage(opener())) == 3


def _forge(segment: Path, edit: Callable[[list[bytes]], list[bytes]]) -> None:
    lines = segment.read_bytes().split(b"\n")[:-1]
    segment.write_bytes(b"".join(line + b"\n" for line in edit(lines)))


def _edited_output(lines: list[bytes]) -> list[bytes]:
    """An insider rewrites a waiting record's output in place, keeping the old MAC."""
    return [lines[0].replace(b"output 1", b"output X"), *lines[1:]]


def _recomputed_without_key(lines: list[bytes]) -> list[bytes]:
    """An insider forges a whole line, MAC computed under a key of their own."""
    forged = replace(record(9), tenant="victim")
    return [*lines, record_line(forged, b"not the key" * 3, "x", len(lines)).rstrip(b"\n")]


def _moved_between_positions(lines: list[bytes]) -> list[bytes]:
    """Genuine lines, duplicated out of order: each MAC verifies, the order does not."""
    return [*lines, lines[0]]


@pytest.mark.parametrize(
    "edit", [_edited_output, _recomputed_without_key, _moved_between_positions]
)
def test_a_forged_journal_is_refused_at_replay_and_kept_aside(
    tmp_path: Path, opener: Callable[[], Connection], edit: Callable[[list[bytes]], list[bytes]]
) -> None:
    directory = tmp_path / "journal"
    dead_process_journal(directory, [record(1), record(2)])
    (segment,) = directory.glob("*.jsonl")
    _forge(segment, edit)
    log = AuditLog(opener, journal=Journal(directory, key=KEY))
    assert log.flush()
    log.close()
    assert read_usage(opener()) == []  # nothing of a tampered segment reaches the database
    assert list(directory.glob("*.rejected")) == [segment.with_suffix(".rejected")]


def test_a_journal_under_another_key_is_refused(
    tmp_path: Path, opener: Callable[[], Connection]
) -> None:
    directory = tmp_path / "journal"
    dead_process_journal(directory, [record(1)])
    log = AuditLog(opener, journal=Journal(directory, key=b"another master secret's key"))
    assert log.flush()
    log.close()
    assert read_usage(opener()) == []
    assert len(list(directory.glob("*.rejected"))) == 1
