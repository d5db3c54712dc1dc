"""Signed checkpoints of the audit chain, kept in an anchor the database's owner cannot rewrite.

A checkpoint states the chain's head (sequence number, record hash), how many records it holds,
a digest of the key commitments recorded so far, and when; it is signed with an Ed25519 key
derived from the master secret, whose public key travels with it and is printed in every
report, so a third party can check a checkpoint without the master secret. Checkpoints are
appended, one JSON line each, to an anchor file the operator ships elsewhere (write-once
storage, another machine, a ticket): an insider who edits, truncates or back-fills the
database cannot make the anchored heads match again.

`verify_checkpoints` checks each checkpoint's signature and that the database still holds its
head at its sequence number, its record count and its commitments; records after the last
checkpoint are reported as not yet anchored.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from distillguard.errors import ConfigError
from distillguard.store.base import Connection

__all__ = [
    "ANCHOR_FILE",
    "Checkpoint",
    "CheckpointVerification",
    "append_anchor",
    "make_checkpoint",
    "public_key_hex",
    "read_anchor",
    "verify_checkpoints",
]

ANCHOR_FILE = "anchor/checkpoints.jsonl"  # under the data directory unless told otherwise
_COMMITMENT_ORDER = "ORDER BY created_at, tenant, key_version, fingerprint"


@dataclass(frozen=True)
class Checkpoint:
    seq: int  # the head record's sequence number (0: an empty chain)
    head_hash: str
    records: int
    commitments: int
    commitments_digest: str
    created_at: str
    public_key: str  # Ed25519, raw 32 bytes as hex
    signature: str = ""

    def payload(self) -> bytes:
        fields = asdict(self)
        fields.pop("signature")
        return json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()


def public_key_hex(seed: bytes) -> str:
    key = Ed25519PrivateKey.from_private_bytes(seed).public_key()
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw).hex()


def _commitments(connection: Connection, limit: int | None = None) -> tuple[int, str]:
    query = f"SELECT commitment FROM key_commitments {_COMMITMENT_ORDER}"  # noqa: S608
    rows = [row[0] for row in connection.execute(query).fetchall()]
    if limit is not None:
        rows = rows[:limit]
    digest = hashlib.sha256("\n".join(rows).encode()).hexdigest()
    return len(rows), digest


def make_checkpoint(connection: Connection, seed: bytes, now: datetime | None = None) -> Checkpoint:
    """A signed checkpoint of the chain's current head (read in one transaction)."""
    with connection:
        head = connection.execute(
            "SELECT seq, record_hash FROM audit ORDER BY seq DESC LIMIT 1"
        ).fetchone()
        records = int(connection.execute("SELECT COUNT(*) FROM audit").fetchone()[0])
        commitments, digest = _commitments(connection)
    stamp = (now or datetime.now(UTC)).isoformat(timespec="seconds").replace("+00:00", "Z")
    unsigned = Checkpoint(
        seq=int(head[0]) if head else 0,
        head_hash=str(head[1]) if head else "0" * 64,
        records=records,
        commitments=commitments,
        commitments_digest=digest,
        created_at=stamp,
        public_key=public_key_hex(seed),
    )
    signature = Ed25519PrivateKey.from_private_bytes(seed).sign(unsigned.payload()).hex()
    return Checkpoint(**(asdict(unsigned) | {"signature": signature}))


def append_anchor(path: Path, checkpoint: Checkpoint) -> None:
    """Append one line to the anchor file and make it durable (fsync) before returning."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    with os.fdopen(descriptor, "a", encoding="utf-8") as anchor:
        anchor.write(json.dumps(asdict(checkpoint), sort_keys=True) + "\n")
        anchor.flush()
        os.fsync(anchor.fileno())


def read_anchor(path: Path) -> list[Checkpoint]:
    if not path.is_file():
        return []
    checkpoints = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            checkpoints.append(Checkpoint(**json.loads(line)))
        except (ValueError, TypeError):
            raise ConfigError(f"{path}:{number}: not a checkpoint") from None
    return checkpoints


@dataclass(frozen=True)
class CheckpointVerification:
    ok: bool
    checked: int  # checkpoints whose signature and head were checked
    last: Checkpoint | None  # the newest checkpoint verified against
    unanchored: int  # records after it
    reason: str | None = None


def verify_checkpoints(
    connection: Connection, checkpoints: list[Checkpoint], public_key: str | None
) -> CheckpointVerification:
    """Check every checkpoint against its signature, `public_key` (ours, when known) and the
    database; the first failure is named."""
    total = int(connection.execute("SELECT COUNT(*) FROM audit").fetchone()[0])
    last: Checkpoint | None = None
    for index, checkpoint in enumerate(checkpoints):
        reason = _check_one(connection, checkpoint, public_key)
        if reason is not None:
            where = f"checkpoint {index + 1} (seq {checkpoint.seq}, {checkpoint.created_at})"
            return CheckpointVerification(False, index, last, 0, f"{where}: {reason}")
        last = checkpoint
    unanchored = total - last.records if last is not None else total
    return CheckpointVerification(True, len(checkpoints), last, unanchored)


def _check_one(
    connection: Connection, checkpoint: Checkpoint, public_key: str | None
) -> str | None:
    if public_key is not None and checkpoint.public_key != public_key:
        return "signed by another key than this master secret's"
    try:
        verifier = Ed25519PublicKey.from_public_bytes(bytes.fromhex(checkpoint.public_key))
        verifier.verify(bytes.fromhex(checkpoint.signature), checkpoint.payload())
    except (InvalidSignature, ValueError):
        return "its signature does not verify"
    if checkpoint.seq:
        row = connection.execute(
            "SELECT record_hash FROM audit WHERE seq = ?", (checkpoint.seq,)
        ).fetchone()
        if row is None:
            return "the database no longer holds its head record (records were deleted)"
        if row[0] != checkpoint.head_hash:
            return "the database's record at its head differs (the chain was rewritten)"
    count = int(
        connection.execute(
            "SELECT COUNT(*) FROM audit WHERE seq <= ?", (checkpoint.seq,)
        ).fetchone()[0]
    )
    if count != checkpoint.records:
        return f"it anchored {checkpoint.records} records, the database holds {count} up to it"
    commitments, digest = _commitments(connection, checkpoint.commitments)
    if commitments != checkpoint.commitments or digest != checkpoint.commitments_digest:
        return "the key commitments it anchored were changed or removed"
    return None
