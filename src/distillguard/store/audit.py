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
import collections
import contextlib
import itertools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from distillguard.errors import AuditUnavailable
from distillguard.redact import redact
from distillguard.store.base import Connection
from distillguard.store.chain import ChainKey, append_records
from distillguard.store.deadletter import DeadLetter
from distillguard.store.journal import Journal, Orphan, Segment
from distillguard.store.usage import UsageRecord

__all__ = ["AuditLog"]

log = logging.getLogger("distillguard.audit")

_IDS_PER_QUERY = 500
_REFUSALS_BEFORE_ISOLATING = 3  # the database answers yet refuses a batch this often


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
        dead_letter: DeadLetter | None = None,
        close_grace: float = 5.0,
    ) -> None:
        self._connect = connect
        self._flush_interval = flush_interval  # how long a lone record may wait for company
        self._max_batch = max_batch
        self._store_text = store_text
        self._journal = journal
        self._max_backlog = max_backlog  # past it, answers wait for commits again
        self._replay_interval = replay_interval  # how often to look for dead processes' journals
        self._chain_key = chain_key  # None: unkeyed links (tests and simulations only)
        # records the database refuses while it works: by default beside the journal
        self._dead_letter = dead_letter or (DeadLetter.of(journal) if journal else None)
        self._close_grace = close_grace  # closing with the database away: retry this long
        self._close_deadline: float | None = None
        self._connection: Connection | None = None  # the writer thread's; reopened on errors
        # The request path appends to a deque and wakes nobody: a wakeup per record hands the
        # GIL to this thread once per request, which halved the gateway's throughput. The
        # writer looks every `flush_interval`; only a record whose answer waits for its
        # commit (no journal, or the database too far behind) wakes it at once.
        self._incoming: collections.deque[_Pending] = collections.deque()
        self._wake = threading.Event()
        self._closing = False
        self._enqueued = itertools.count(1)  # next() is atomic: no lock on the request path
        self._last_enqueued = 0
        self._written_count = 0  # records written (or given up on), by the writer thread only
        self._written = threading.Condition()
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
        if self.backlog >= self._max_backlog:
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
    def backlog(self) -> int:
        """Records queued and not yet written."""
        return self._last_enqueued - self._written_count

    @property
    def write_failures(self) -> int:
        """Batches that could not be written (each was retried until it was)."""
        return self._failures

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything queued so far is written."""
        target = self._last_enqueued
        self._wake.set()
        with self._written:
            return self._written.wait_for(lambda: self._written_count >= target, timeout=timeout)

    def close(self) -> None:
        """Write what is queued, then close the journal (what is still uncommitted stays in
        it, for the next start to replay)."""
        self._closing = True
        self._wake.set()
        self._thread.join()
        if self._journal is not None:
            self._journal.close()

    def _enqueue(self, pending: _Pending) -> None:
        self._incoming.append(pending)
        self._last_enqueued = next(self._enqueued)  # after the append: `flush` then covers it
        if pending.done is not None and not self._wake.is_set():
            self._wake.set()  # an answer waits for this commit: write it now

    def _run(self) -> None:
        next_replay = time.monotonic()
        while True:
            if time.monotonic() >= next_replay:  # a process may have died since: replay it
                self._replay()
                next_replay = time.monotonic() + self._replay_interval
            # Group commit: whatever came during the last `flush_interval` (or until a record
            # that an answer waits for woke us) goes in one transaction per `max_batch`.
            self._wake.wait(self._flush_interval)
            self._wake.clear()
            stopping = self._closing
            while self._incoming:
                batch = _take(self._incoming, self._max_batch)
                try:
                    self._write_retrying(batch)
                except AuditUnavailable:  # closing, the database away: the journal keeps them
                    batch += _take(self._incoming, len(self._incoming))
                    _resolve(batch, AuditUnavailable("the audit log closed before a commit"))
                    self._count_written(batch)
                    break
                _resolve(batch)
                if self._journal is not None:
                    self._journal.committed([p.segment for p in batch if p.segment is not None])
                self._count_written(batch)
            if stopping:
                break
        self._drop_connection()

    def _count_written(self, batch: list[_Pending]) -> None:
        with self._written:
            self._written_count += len(batch)
            self._written.notify_all()

    def _connection_now(self) -> Connection:
        """The open connection, or a new one: retried with backoff while the database is
        unreachable (records wait in memory and in the journal)."""
        delay = 0.05
        while self._connection is None:
            try:
                self._connection = self._connect()
            except Exception as exc:
                self._failures += 1
                self._give_up_if_closing()
                log.warning("audit log cannot reach its database (%s); retrying", _reason(exc))
                time.sleep(delay)
                delay = min(delay * 2, 2.0)
        return self._connection

    def _drop_connection(self) -> None:
        """Close the connection after a failure (or at the end): the next use reconnects."""
        connection, self._connection = self._connection, None
        if connection is not None:
            with contextlib.suppress(Exception):
                connection.close()

    def _give_up_if_closing(self) -> None:
        """While closing, stop retrying when the journal holds what is left (the next start
        replays it); without a journal, retrying is the only way not to lose records."""
        if self._closing and self._journal is not None and not self._close_deadline_ahead():
            raise AuditUnavailable("closing with the database unreachable")

    def _close_deadline_ahead(self) -> bool:
        if self._close_deadline is None:
            self._close_deadline = time.monotonic() + self._close_grace
        return time.monotonic() < self._close_deadline

    def _replay(self) -> None:
        """Commit the records of journals that dead processes left, skipping those already
        in the database, in the chain's order of replay; then delete those journals."""
        if self._journal is None:
            return
        for orphan in self._journal.orphans():
            if orphan.forged_lines:
                orphan.reject()
                log.error(
                    "the audit journal %s has %d lines whose MAC does not verify (forged or "
                    "edited on disk): none of it was replayed; it is kept as %s",
                    orphan.path.name,
                    orphan.forged_lines,
                    orphan.path.with_suffix(".rejected").name,
                )
                continue
            try:
                fresh = _unwritten(self._connection_now(), orphan)
                for start in range(0, len(fresh), self._max_batch):
                    chunk = [_Pending(record) for record in fresh[start : start + self._max_batch]]
                    self._write_retrying(chunk)
            except AuditUnavailable:  # closing
                return
            except Exception as exc:
                self._drop_connection()
                log.warning(
                    "cannot replay the audit journal %s (%s); will retry",
                    orphan.path.name,
                    _reason(exc),
                )
                return
            orphan.remove()
            log.warning(
                "replayed %d records from the audit journal %s (%d were already committed, "
                "%d lines torn)",
                len(fresh),
                orphan.path.name,
                len(orphan.records) - len(fresh),
                orphan.torn_lines,
            )

    def _write_retrying(self, batch: list[_Pending]) -> None:
        """Write the batch, reconnecting with backoff on errors (the answers that wait for a
        commit wait; the others are safe in the journal). When the database answers but keeps
        refusing the batch, the records it refuses go to the dead-letter file instead
        (`_isolate`): one bad record must not wedge the log."""
        delay = 0.05
        refused = 0
        while True:
            try:
                self._write(self._connection_now(), [pending.record for pending in batch])
                return
            except AuditUnavailable:  # closing
                raise
            except Exception as exc:
                self._failures += 1
                self._drop_connection()
                if self._database_answers():
                    # a commit whose acknowledgement was lost with the connection: what it
                    # wrote is there, and must not be written twice (nor dead-lettered)
                    batch = self._not_yet_written(batch)
                    if not batch:
                        return
                    refused += 1
                    if refused >= _REFUSALS_BEFORE_ISOLATING and self._dead_letter is not None:
                        self._isolate(batch, exc, self._dead_letter)
                        return
                log.warning(
                    "audit write of %d records failed (%s); retrying", len(batch), _reason(exc)
                )
                self._give_up_if_closing()
                time.sleep(delay)
                delay = min(delay * 2, 2.0)

    def _not_yet_written(self, batch: list[_Pending]) -> list[_Pending]:
        """The batch's records whose request id is not in the database (all of them when
        that cannot be read now); the rest are resolved as written."""
        try:
            present = _present(self._connection_now(), [p.record.request_id for p in batch])
        except Exception:
            self._drop_connection()
            return batch
        written = [pending for pending in batch if pending.record.request_id in present]
        if written:
            log.warning("%d records were committed before the connection was lost", len(written))
        return [pending for pending in batch if pending.record.request_id not in present]

    def _database_answers(self) -> bool:
        """Whether the database is reachable and working (a fresh connection runs a query)."""
        try:
            self._connection_now_once().execute("SELECT 1").fetchone()
            return True
        except Exception:
            self._drop_connection()
            return False

    def _connection_now_once(self) -> Connection:
        if self._connection is None:
            self._connection = self._connect()
        return self._connection

    def _isolate(self, batch: list[_Pending], error: Exception, dead_letter: DeadLetter) -> None:
        """Write what the database takes, halving the batch; a single record it refuses goes
        to the dead-letter file (`audit replay` retries it later), never dropped."""
        if len(batch) == 1:
            dead_letter.write([batch[0].record])
            log.error(
                "the database refuses record %s (%s): kept in the dead-letter file %s",
                batch[0].record.request_id,
                _reason(error),
                dead_letter.path.name,
            )
            return
        middle = len(batch) // 2
        for half in (batch[:middle], batch[middle:]):
            try:
                self._write(self._connection_now(), [pending.record for pending in half])
            except Exception as exc:
                self._drop_connection()
                if self._database_answers():
                    self._isolate(half, exc, dead_letter)
                else:  # the database went away meanwhile: back to plain retrying
                    self._write_retrying(half)

    def _write(self, connection: Connection, batch: list[UsageRecord]) -> None:
        append_records(connection, batch, self._chain_key, store_text=self._store_text)


def _reason(error: BaseException) -> str:
    """An error's class and first line, without any URL or secret it might quote."""
    text = str(error).splitlines()[0] if str(error) else ""
    return redact(f"{type(error).__name__}: {text}" if text else type(error).__name__)


@dataclass
class _Pending:
    record: UsageRecord
    loop: asyncio.AbstractEventLoop | None = None
    done: asyncio.Future[None] | None = None  # resolved on commit
    segment: Segment | None = None  # the journal segment holding the record


def _take(incoming: collections.deque[_Pending], most: int) -> list[_Pending]:
    """Up to `most` records from the left of the deque (appended to on other threads)."""
    batch: list[_Pending] = []
    while incoming and len(batch) < most:
        batch.append(incoming.popleft())
    return batch


def _unwritten(connection: Connection, orphan: Orphan) -> list[UsageRecord]:
    """The orphan's records whose request id is not in the database yet (replay is
    idempotent: the dead process may have committed some, a replay may have been cut off)."""
    records = list({record.request_id: record for record in orphan.records}.values())
    present = _present(connection, [record.request_id for record in records])
    return [record for record in records if record.request_id not in present]


def _present(connection: Connection, request_ids: list[str]) -> set[str]:
    """Which of these request ids have their usage row."""
    present: set[str] = set()
    for start in range(0, len(request_ids), _IDS_PER_QUERY):
        ids = request_ids[start : start + _IDS_PER_QUERY]
        placeholders = ", ".join("?" for _ in ids)
        cursor = connection.execute(
            f"SELECT request_id FROM usage WHERE request_id IN ({placeholders})",  # noqa: S608
            ids,
        )
        present.update(row[0] for row in cursor.fetchall())
    return present


def _resolve(batch: list[_Pending], error: AuditUnavailable | None = None) -> None:
    """Wake the waiters of a committed batch (or fail them with `error`): one call per event
    loop, not one per record."""
    by_loop: dict[asyncio.AbstractEventLoop, list[asyncio.Future[None]]] = {}
    for pending in batch:
        if pending.loop is not None and pending.done is not None:
            by_loop.setdefault(pending.loop, []).append(pending.done)
    for loop, futures in by_loop.items():
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody is waiting any more
            loop.call_soon_threadsafe(_set_done, futures, error)


def _set_done(futures: list[asyncio.Future[None]], error: AuditUnavailable | None) -> None:
    for future in futures:
        if future.done():  # the waiting request may have been cancelled
            continue
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(error)
