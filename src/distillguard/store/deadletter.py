"""The dead-letter file: records the database refused while it was working.

A record the database refuses for what it holds (a constraint, a value its types cannot
store, such as U+0000 in PostgreSQL's TEXT) must neither wedge the audit writer nor be lost.
The writer (`store/audit.py`) isolates it and appends it here, fsynced, before its journal
segment may go: `<journal>/dead-letter/<process>.jsonl`, mode 0600, lines MACed as the
journal's (`store/journal.py`). `distillguard audit replay` retries them (`replay`): what the
database now takes is appended to the chain, what it still refuses stays, with its reason.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from distillguard.errors import JournalLineForged
from distillguard.redact import redact
from distillguard.store.base import Connection
from distillguard.store.chain import ChainKey, append_records
from distillguard.store.journal import Journal, record_from_line, record_line
from distillguard.store.usage import UsageRecord

__all__ = ["DEAD_LETTER", "DeadLetter", "DeadLetterReplay", "replay"]

DEAD_LETTER = "dead-letter"  # the journal's subdirectory
_SUFFIX = ".jsonl"


class DeadLetter:
    """Records the database refused while it worked (a constraint, a value it cannot store):
    `<journal>/dead-letter/<process>.jsonl`, lines MACed as the journal's, fsynced before
    their journal segment may go. `distillguard audit replay` retries them."""

    def __init__(self, directory: Path, name: str, key: bytes) -> None:
        self.directory = directory
        self.path = directory / (name + _SUFFIX)
        self._key = key
        self._lines = 0

    def write(self, records: list[UsageRecord]) -> None:
        """Append the records durably (fsynced: their journal segment is deleted next)."""
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            for record in records:
                os.write(fd, record_line(record, self._key, self.path.stem, self._lines))
                self._lines += 1
            os.fsync(fd)
        finally:
            os.close(fd)

    @staticmethod
    def read(path: Path, key: bytes) -> tuple[list[UsageRecord], int]:
        """(records, refused lines) of a dead-letter file: lines whose MAC does not verify,
        or that do not parse, are refused (and counted), never returned."""
        records: list[UsageRecord] = []
        refused = 0
        for line in path.read_bytes().split(b"\n"):
            if not line.strip():
                continue
            try:
                records.append(record_from_line(line, key, path.stem)[1])
            except (JournalLineForged, ValueError, TypeError):
                refused += 1
        return records, refused

    @classmethod
    def of(cls, journal: Journal) -> DeadLetter:
        """The dead-letter file of the process that writes `journal`."""
        return cls(journal.directory / DEAD_LETTER, journal.name, journal.key)


@dataclass
class DeadLetterReplay:
    """What `replay` did: records appended, already present, and still refused (with why)."""

    files: int = 0
    replayed: int = 0
    already: int = 0
    forged_lines: int = 0
    refused: list[tuple[str, str]] = field(default_factory=list)  # (request id, reason)


def replay(
    journal_directory: Path, key: bytes, connection: Connection, chain_key: ChainKey | None
) -> DeadLetterReplay:
    """Append every dead-lettered record the database now takes (one transaction each, in
    order, skipping request ids already present); keep the rest in their files."""
    result = DeadLetterReplay()
    for path in sorted((journal_directory / DEAD_LETTER).glob("*" + _SUFFIX)):
        result.files += 1
        records, forged = DeadLetter.read(path, key)
        result.forged_lines += forged
        kept: list[UsageRecord] = []
        for record in records:
            present = connection.execute(
                "SELECT 1 FROM usage WHERE request_id = ?", (record.request_id,)
            ).fetchone()
            if present:
                result.already += 1
                continue
            try:
                append_records(connection, [record], chain_key)
            except Exception as exc:  # the database still refuses it: it stays
                result.refused.append((record.request_id, redact(f"{type(exc).__name__}: {exc}")))
                kept.append(record)
                continue
            result.replayed += 1
        if forged:
            continue  # never rewrite a file with forged lines: an investigator reads it
        if kept:  # rewritten whole, under the same name (the MACs bind it), then swapped in
            staging = path.with_suffix(".tmp")
            lines = b"".join(
                record_line(record, key, path.stem, position)
                for position, record in enumerate(kept)
            )
            staging.write_bytes(lines)
            staging.chmod(0o600)
            os.replace(staging, path)
        else:
            path.unlink()
    return result
