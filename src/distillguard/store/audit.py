"""The audit log's writer: usage rows and their chained records, with group commit.

Writes happen on a background thread with group commit: whatever is queued when a write
starts goes in one transaction. The gateway waits until its record is safe (`submit`) before
the response's last bytes leave, so a response a client received always has its rows, even
when the process is killed. With a journal (`store/journal.py`) a record is safe once it is
in the journal file (fsynced, when the journal fsyncs); the writer commits it afterwards, and
replays the journals that dead processes left. Without one, or while the database lags more
than `max_backlog` records behind, safe means committed. Several processes (replicas) append
to one chain: each write
takes the database's chain lock (`Connection.lock_chain`), reads the last hash and appends after
it, so `verify_chain` (`store/chain.py`) checks one sequence whatever the number of replicas.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import queue
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass

from distillguard.errors import AuditUnavailable
from distillguard.store.base import Connection
from distillguard.store.chain import GENESIS, ChainKey, link, record_json
from distillguard.store.journal import Journal, Orphan, Segment
from distillguard.store.usage import USAGE_COLUMNS, UsageRecord

__all__ = ["AuditLog"]

log = logging.getLogger("distillguard.audit")

_ROWS_PER_INSERT = 256  # 256 x 16 parameters: within SQLite's limit of 32,766
_IDS_PER_QUERY = 500


class AuditLog:
    """Background writer of usage rows and their chained audit records (group commit)."""

    def __init__(
        self,
        connect: Callable[[], Connection],
        *,
        flush_interval: float = 0.05,
        max_batch: int = 512,
        store_text: bool = True,
        journal: Journal | None = None,
        max_backlog: int = 10_000,
        replay_interval: float = 10.0,
        chain_key: ChainKey | None = None,
    ) -> None:
        self._connect = connect
        self._flush_interval = flush_interval  # how long a lone record may wait for company
        self._max_batch = max_batch
        self._store_text = store_text
        self._journal = journal
        self._max_backlog = max_backlog  # past it, answers wait for commits again
        self._replay_interval = replay_interval  # how often to look for dead processes' journals
        self._chain_key = chain_key  # None: unkeyed links (tests and simulations only)
        self._queue: queue.Queue[_Pending | None] = queue.Queue()
        self._written = threading.Condition()
        self._pending = 0
        self._failures = 0
        self._thread = threading.Thread(target=self._run, name="distillguard-audit", daemon=True)
        self._thread.start()

    def append(self, record: UsageRecord) -> None:
        """Queue a record (journaled first, when there is a journal); returns at once."""
        segment = None
        if self._journal is not None:
            try:
                segment = self._journal.write(record)
            except AuditUnavailable:
                log.exception("record %s not journaled; queued only", record.request_id)
        self._enqueue(_Pending(record, segment=segment))

    def submit(self, record: UsageRecord) -> asyncio.Future[None]:
        """Queue a record; the future (of the running event loop) resolves once it is safe:
        journaled (and fsynced, when the journal fsyncs), else committed. It fails with
        AuditUnavailable when the journal cannot take it (the record is still queued)."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        if self._journal is None:
            self._enqueue(_Pending(record, loop, done))
            return done
        try:
            segment = self._journal.write(record)
        except AuditUnavailable as error:
            self._enqueue(_Pending(record))
            done.set_exception(error)
            return done
        if self._pending >= self._max_backlog:
            # the database is far behind (or down): the journal must not grow without bound,
            # so this answer waits for its commit (the gateway bounds that wait)
            self._enqueue(_Pending(record, loop, done, segment))
            return done
        self._enqueue(_Pending(record, segment=segment))
        if self._journal.synced:
            self._journal.when_synced(loop, done)
        else:
            done.set_result(None)
        return done

    async def durable(self, record: UsageRecord) -> None:
        """Queue a record and wait (without blocking the event loop) until it is committed."""
        await self.submit(record)

    @property
    def write_failures(self) -> int:
        """Batches that could not be written (each was retried until it was)."""
        return self._failures

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything queued so far is written."""
        with self._written:
            return self._written.wait_for(lambda: self._pending == 0, timeout=timeout)

    def close(self) -> None:
        """Write what is queued, then close the journal (what is still uncommitted stays in
        it, for the next start to replay)."""
        self._queue.put(None)
        self._thread.join()
        if self._journal is not None:
            self._journal.close()

    def _enqueue(self, pending: _Pending) -> None:
        with self._written:
            self._pending += 1
        self._queue.put(pending)

    def _run(self) -> None:
        connection = self._open()
        self._replay(connection)
        next_replay = time.monotonic() + self._replay_interval
        stopping = False
        while not stopping:
            batch: list[_Pending] = []
            if time.monotonic() >= next_replay:  # a process may have died since: replay it
                self._replay(connection)
                next_replay = time.monotonic() + self._replay_interval
            try:
                item = self._queue.get(timeout=self._replay_interval)
            except queue.Empty:
                continue
            if item is None:
                stopping = True
            else:
                batch.append(item)
            # Group commit: take what is queued now; a record that waits for a durable answer
            # is written at once, a fire-and-forget one may wait `flush_interval` for company.
            wait = (
                0.0 if stopping or any(p.done is not None for p in batch) else self._flush_interval
            )
            while len(batch) < self._max_batch:
                try:
                    item = self._queue.get(timeout=wait) if wait else self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stopping = True
                    wait = 0.0
                    continue
                batch.append(item)
                if item.done is not None:
                    wait = 0.0
            if batch:
                self._write_retrying(connection, batch)
                _resolve(batch)
                if self._journal is not None:
                    self._journal.committed([p.segment for p in batch if p.segment is not None])
                with self._written:
                    self._pending -= len(batch)
                    self._written.notify_all()
        connection.close()

    def _open(self) -> Connection:
        """Connect, retrying while the database is unreachable (records wait in the queue)."""
        delay = 0.05
        while True:
            try:
                return self._connect()
            except Exception:
                self._failures += 1
                log.exception("audit log cannot open its database; retrying")
                time.sleep(delay)
                delay = min(delay * 2, 2.0)

    def _replay(self, connection: Connection) -> None:
        """Commit the records of journals that dead processes left, skipping those already
        in the database, in the chain's order of replay; then delete those journals."""
        if self._journal is None:
            return
        for orphan in self._journal.orphans():
            try:
                fresh = _unwritten(connection, orphan)
            except Exception:
                log.exception("cannot replay the audit journal %s; will retry", orphan.path)
                return
            for start in range(0, len(fresh), self._max_batch):
                chunk = [_Pending(record) for record in fresh[start : start + self._max_batch]]
                self._write_retrying(connection, chunk)
            orphan.remove()
            log.warning(
                "replayed %d records from the audit journal %s (%d were already committed, "
                "%d lines torn)",
                len(fresh),
                orphan.path.name,
                len(orphan.records) - len(fresh),
                orphan.torn_lines,
            )

    def _write_retrying(self, connection: Connection, batch: list[_Pending]) -> None:
        """Write the batch; on a database error, log it and retry (the answers wait)."""
        delay = 0.05
        while True:
            try:
                self._write(connection, [pending.record for pending in batch])
                return
            except Exception:
                self._failures += 1
                log.exception("audit write of %d records failed; retrying", len(batch))
                time.sleep(delay)
                delay = min(delay * 2, 2.0)

    def _write(self, connection: Connection, batch: list[UsageRecord]) -> None:
        """Insert a batch of usage rows and their chained audit records in one transaction,
        after the chain's last record (whichever process wrote it)."""
        usage_rows = []
        audited_records = []
        for record in batch:
            row = dict(vars(record))  # shallow: asdict deep-copies, which costs on the hot path
            row["parameters"] = json.dumps(record.parameters, sort_keys=True, separators=(",", ":"))
            if not self._store_text:
                row["prompt_text"] = row["output_text"] = ""
            audited_records.append((record.request_id, record_json(row)))
            row["prompt_text"] = zlib.compress(row["prompt_text"].encode())
            row["output_text"] = zlib.compress(row["output_text"].encode())
            usage_rows.append(tuple(row[name] for name in USAGE_COLUMNS))
        placeholders = ", ".join("?" for _ in USAGE_COLUMNS)
        with connection:
            connection.lock_chain()
            last = connection.execute(
                "SELECT record_hash FROM audit ORDER BY seq DESC LIMIT 1"
            ).fetchone()
            prev_hash = last[0] if last else GENESIS
            links = []
            for request_id, audited in audited_records:
                record_hash, tag = link(prev_hash, audited, self._chain_key)
                links.append((request_id, audited, prev_hash, record_hash, tag))
                prev_hash = record_hash
            # multi-row INSERTs: one statement per chunk of rows, far fewer round trips
            for start in range(0, len(usage_rows), _ROWS_PER_INSERT):
                rows = usage_rows[start : start + _ROWS_PER_INSERT]
                connection.execute(
                    f"INSERT INTO usage ({', '.join(USAGE_COLUMNS)}) VALUES "  # noqa: S608
                    + ", ".join(f"({placeholders})" for _ in rows),
                    [value for row in rows for value in row],
                )
                chained = links[start : start + _ROWS_PER_INSERT]
                connection.execute(
                    "INSERT INTO audit (request_id, record, prev_hash, record_hash, chain) VALUES "  # noqa: S608
                    + ", ".join("(?, ?, ?, ?, ?)" for _ in chained),
                    [value for link in chained for value in link],
                )


@dataclass
class _Pending:
    record: UsageRecord
    loop: asyncio.AbstractEventLoop | None = None
    done: asyncio.Future[None] | None = None  # resolved on commit
    segment: Segment | None = None  # the journal segment holding the record


def _unwritten(connection: Connection, orphan: Orphan) -> list[UsageRecord]:
    """The orphan's records whose request id is not in the database yet (replay is
    idempotent: the dead process may have committed some, a replay may have been cut off)."""
    records = list({record.request_id: record for record in orphan.records}.values())
    present: set[str] = set()
    for start in range(0, len(records), _IDS_PER_QUERY):
        ids = [record.request_id for record in records[start : start + _IDS_PER_QUERY]]
        placeholders = ", ".join("?" for _ in ids)
        cursor = connection.execute(
            f"SELECT request_id FROM usage WHERE request_id IN ({placeholders})",  # noqa: S608
            ids,
        )
        present.update(row[0] for row in cursor.fetchall())
    return [record for record in records if record.request_id not in present]


def _resolve(batch: list[_Pending]) -> None:
    """Wake the waiters of a committed batch: one call per event loop, not one per record."""
    by_loop: dict[asyncio.AbstractEventLoop, list[asyncio.Future[None]]] = {}
    for pending in batch:
        if pending.loop is not None and pending.done is not None:
            by_loop.setdefault(pending.loop, []).append(pending.done)
    for loop, futures in by_loop.items():
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody is waiting any more
            loop.call_soon_threadsafe(_set_done, futures)


def _set_done(futures: list[asyncio.Future[None]]) -> None:
    for future in futures:
        if not future.done():  # the waiting request may have been cancelled
            future.set_result(None)
