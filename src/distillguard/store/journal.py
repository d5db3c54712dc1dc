"""The audit journal: every usage record on local disk before its answer leaves.

Why: waiting for a database commit on every answer costs about a millisecond (issue 15). One
`write()` into the page cache costs microseconds and survives the process being killed
(kill -9, the OOM killer): the page belongs to the kernel. It does not survive a host crash
or a power cut unless it is fsynced: with `fsync_ms` > 0 a flusher thread fsyncs what was
written, at most once every `fsync_ms` milliseconds (group fsync: a lone write is fsynced at
once, writes during an fsync or its interval share the next), and `when_synced` tells the
waiting answers.

Layout: `<directory>/<pid>-<random>-<n>.jsonl`, mode 0600 (the records hold prompts and
outputs), one JSON object (a `UsageRecord`) per line, then a tab and the line's MAC: an
HMAC-SHA256, under a key derived from the master secret (`keys.derive.journal_key`), of the
segment's name, the line's position in it and the JSON. Replay refuses a line whose MAC does
not verify (a record forged or edited on the host's disk, or moved between segments or
positions): its segment is set aside as `.rejected` and nothing of it reaches the database.
Deleting a dead process's segment, or its last lines, is not detectable here: the chain covers
what was committed, the journal only what is waiting. A process holds an flock on each of its
segments for as long as it lives, so a segment that nobody holds belongs to a dead process:
`orphans` hands those over to be replayed into the database. A segment is sealed once it
passes `segment_bytes`, and deleted once every record in it is committed (`committed`).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import hmac
import json
import logging
import os
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from distillguard.errors import AuditUnavailable, JournalLineForged
from distillguard.store.usage import UsageRecord

__all__ = [
    "Journal",
    "Orphan",
    "Segment",
    "record_from_line",
    "record_line",
]

log = logging.getLogger("distillguard.audit")

_SUFFIX = ".jsonl"


_MAC_DOMAIN = b"distillguard/journal-line/v1\0"


def record_line(record: UsageRecord, key: bytes, segment: str, position: int) -> bytes:
    """Journal line `position` (0-based) of `segment` (its file's stem): the record's fields
    as JSON (ASCII, so any text round-trips), then, after tabs, the position and the MAC."""
    body = json.dumps(vars(record), separators=(",", ":")).encode()
    mac = _mac(key, segment, position, body)
    return b"%s\t%d\t%s\n" % (body, position, mac.encode())


def record_from_line(line: bytes, key: bytes, segment: str) -> tuple[int, UsageRecord]:
    """(position, record) of a journal line of `segment`. JournalLineForged when its MAC does not
    verify; ValueError or TypeError for a torn line (a write cut off by a crash) or a
    foreign one."""
    parts = line.rstrip(b"\n").rsplit(b"\t", 2)
    if len(parts) != 3 or not parts[1].isdigit():
        raise ValueError("a journal line ends with a tab, its position, a tab and its MAC")
    body, position, mac = parts[0], int(parts[1]), parts[2]
    fields = json.loads(body)
    if not isinstance(fields, dict):
        raise ValueError("a journal line must be a JSON object")
    if not hmac.compare_digest(mac, _mac(key, segment, position, body).encode()):
        raise JournalLineForged(f"line {position + 1} of {segment}: its MAC does not verify")
    return position, UsageRecord(**fields)


def _mac(key: bytes, segment: str, position: int, body: bytes) -> str:
    message = _MAC_DOMAIN + segment.encode() + b"\0" + str(position).encode() + b"\0" + body
    return hmac.new(key, message, hashlib.sha256).hexdigest()


@dataclass(eq=False)
class Segment:
    """One journal file of this process and how many of its records are in the database."""

    path: Path
    fd: int
    size: int = 0
    written: int = 0
    committed: int = 0
    sealed: bool = False  # no more writes: it is deleted once every record is committed

    @property
    def done(self) -> bool:
        return self.sealed and self.committed >= self.written


@dataclass(eq=False)
class Orphan:
    """A dead process's segment, locked by this one until `remove` or `release`."""

    path: Path
    fd: int
    records: list[UsageRecord] = field(default_factory=list)
    torn_lines: int = 0  # lines that do not parse: a write cut off by a host crash
    forged_lines: int = 0  # lines whose MAC does not verify: the segment is not replayed
    closed: bool = False

    def reject(self) -> None:
        """A line is forged: set the segment aside as `.rejected` (for an investigator),
        replaying none of it."""
        self.path.rename(self.path.with_suffix(".rejected"))
        self.release()

    def remove(self) -> None:
        """Every record is in the database: delete the file (kept aside if it had torn lines)."""
        if self.torn_lines:
            self.path.rename(self.path.with_suffix(".torn"))
        else:
            self.path.unlink()
        self.release()

    def release(self) -> None:
        """Unlock the segment; unless removed, a later replay takes it."""
        if not self.closed:
            self.closed = True
            os.close(self.fd)


class Journal:
    """Append-only segments of one process's usage records, with optional group fsync."""

    def __init__(
        self,
        directory: Path,
        *,
        key: bytes,
        fsync_ms: float = 0.0,
        segment_bytes: int = 4 << 20,
    ) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        directory.chmod(0o700)
        self.directory = directory
        self.fsync_ms = fsync_ms
        self._key = key
        self._segment_bytes = segment_bytes
        self._prefix = f"{os.getpid()}-{secrets.token_hex(4)}-"
        self._count = 0
        self._lock = threading.Lock()  # the segments' counters and the fsync bookkeeping
        self._sync_lock = threading.Lock()  # held while fsyncing: no segment closes under it
        self._segment: Segment | None = None
        self._sealed: list[Segment] = []
        self._dirty: set[Segment] = set()
        self._new_entries = False  # a segment was created: the directory needs an fsync too
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        self._closing = threading.Event()
        self._written = threading.Event()  # set by writes: the flusher has work
        self._flusher: threading.Thread | None = None
        if fsync_ms > 0:
            self._flusher = threading.Thread(
                target=self._flush_loop, name="distillguard-journal", daemon=True
            )
            self._flusher.start()

    @property
    def synced(self) -> bool:
        """Whether records are fsynced (and answers wait for it)."""
        return self._flusher is not None

    def write(self, record: UsageRecord) -> Segment:
        """Append the record (one write() into the page cache); its segment, for `committed`."""
        with self._lock:
            segment = self._segment
            if segment is None or segment.size >= self._segment_bytes:
                segment = self._rotate()
            line = record_line(record, self._key, segment.path.stem, segment.written)
            try:
                written = os.write(segment.fd, line)
            except OSError as exc:
                segment.sealed = True  # whatever reached the file, nothing is appended after it
                raise AuditUnavailable(f"cannot write the audit journal: {exc}") from None
            segment.size += written
            segment.written += 1  # a torn line keeps its position: the next one's MAC follows
            if written != len(line):  # disk full mid-line: replay skips the torn line
                segment.sealed = True
                raise AuditUnavailable("the audit journal's disk is full")
            if self._flusher is not None:
                self._dirty.add(segment)
                if not self._written.is_set():
                    self._written.set()
        return segment

    def when_synced(self, loop: asyncio.AbstractEventLoop, future: asyncio.Future[None]) -> None:
        """Resolve `future` (on `loop`) after the next fsync, which covers every earlier write."""
        with self._lock:
            self._waiters.append((loop, future))
        self._written.set()  # the round that covered the write may have started already

    def committed(self, segments: list[Segment]) -> None:
        """These records (one entry each) are in the database; delete finished segments."""
        with self._lock:
            for segment in segments:
                segment.committed += 1
            if not any(segment.done for segment in self._sealed):
                return
        with self._sync_lock, self._lock:  # the lock order of `_sync_once`
            finished = [segment for segment in self._sealed if segment.done]
            self._sealed = [segment for segment in self._sealed if not segment.done]
            for segment in finished:  # committed: the database holds them, fsynced or not
                self._dirty.discard(segment)
                segment.path.unlink(missing_ok=True)
                os.close(segment.fd)

    @property
    def key(self) -> bytes:
        """The MAC key of its lines (the dead-letter file's too)."""
        return self._key

    @property
    def name(self) -> str:
        """This process's journal name: `<pid>-<random>`."""
        return self._prefix.rstrip("-")

    def orphans(self) -> Iterator[Orphan]:
        """Segments of dead processes (nobody holds their lock), each locked while it is used."""
        for path in sorted(self.directory.glob("*" + _SUFFIX)):
            if path.name.startswith(self._prefix):
                continue
            orphan = _claim(path, self._key)
            if orphan is None:
                continue
            try:
                yield orphan
            finally:
                orphan.release()

    def close(self) -> None:
        """Stop the flusher (after a last fsync); delete the segments whose records are all
        committed, keep the rest for the next start's replay."""
        if self._flusher is not None:
            self._closing.set()
            self._written.set()
            self._flusher.join()
            self._sync_once()
        with self._lock:
            if self._segment is not None:
                self._segment.sealed = True
                self._sealed.append(self._segment)
                self._segment = None
        self.committed([])
        with self._lock:
            for segment in self._sealed:  # unfinished: unlocked, so the next start replays it
                os.close(segment.fd)
            self._sealed = []

    def _rotate(self) -> Segment:
        """Seal the current segment and open the next one (under `_lock`)."""
        if self._segment is not None:
            self._segment.sealed = True
            self._sealed.append(self._segment)
        self._count += 1
        name = f"{self._prefix}{self._count:06d}"
        # created under a name `orphans` ignores and locked before it gets its real name, so
        # no other process can take it for a dead one's
        staging = self.directory / f".{name}.tmp"
        try:
            fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
            os.fchmod(fd, 0o600)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            path = self.directory / (name + _SUFFIX)
            staging.rename(path)
        except OSError as exc:
            raise AuditUnavailable(f"cannot create an audit journal segment: {exc}") from None
        self._segment = Segment(path, fd)
        self._new_entries = True
        return self._segment

    def _flush_loop(self) -> None:
        interval = self.fsync_ms / 1000
        last = -interval
        while True:
            self._written.wait()
            if self._closing.is_set():
                return
            pause = last + interval - time.monotonic()
            if pause > 0:  # the last fsync was recent: let more writes join the next one
                self._closing.wait(pause)
            self._written.clear()  # a write after this point sets it again: the next round
            last = time.monotonic()
            self._sync_once()

    def _sync_once(self) -> None:
        """One group fsync: every segment written since the last one, then wake the waiters."""
        error: AuditUnavailable | None = None
        with self._sync_lock:  # no segment is closed (by `committed`) while it is fsynced
            with self._lock:
                dirty, self._dirty = self._dirty, set()
                waiters, self._waiters = self._waiters, []
                new_entries, self._new_entries = self._new_entries, False
            try:
                for segment in dirty:
                    os.fdatasync(segment.fd)
                if new_entries:
                    _fsync_directory(self.directory)
            except OSError as exc:
                log.exception("audit journal fsync failed")
                error = AuditUnavailable(f"cannot fsync the audit journal: {exc}")
        _wake(waiters, error)


def _claim(path: Path, key: bytes) -> Orphan | None:
    """Lock and read a segment nobody holds; None when a live process holds it (or it went)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if os.fstat(fd).st_ino != path.stat().st_ino:  # replayed and removed meanwhile
            raise FileNotFoundError(path)
    except (BlockingIOError, FileNotFoundError):
        os.close(fd)
        return None
    orphan = Orphan(path, fd)
    last = -1
    for line in path.read_bytes().split(b"\n"):  # "\n" only: JSON escapes it in strings
        if not line.strip(b" \0"):  # a host crash can leave a run of zeros
            continue
        try:
            position, record = record_from_line(line, key, path.stem)
        except JournalLineForged:
            orphan.forged_lines += 1
            continue
        except (ValueError, TypeError):
            orphan.torn_lines += 1
            continue
        if position <= last:  # a genuine line, copied or moved back: the order was edited
            orphan.forged_lines += 1
            continue
        last = position
        orphan.records.append(record)
    return orphan


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _wake(
    waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]],
    error: AuditUnavailable | None,
) -> None:
    """Resolve the waiters: one call per event loop, not one per record."""
    by_loop: dict[asyncio.AbstractEventLoop, list[asyncio.Future[None]]] = {}
    for loop, future in waiters:
        by_loop.setdefault(loop, []).append(future)
    for loop, futures in by_loop.items():
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody is waiting any more
            loop.call_soon_threadsafe(_settle, futures, error)


def _settle(futures: list[asyncio.Future[None]], error: AuditUnavailable | None) -> None:
    for future in futures:
        if future.done():  # the waiting request gave up or was cancelled
            continue
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(error)
