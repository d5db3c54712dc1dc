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

A checkpoint may also carry an RFC 3161 timestamp token over its signed bytes
(`store/timestamp.py`): not part of what it signs, since the TSA stamps those bytes. Verifying
checks each token's imprint, and with the TSA's certificates its signature; a checkpoint
without one (no TSA configured, or the TSA failed when it was written) is still a checkpoint.

The commitments digest is ``sha256:`` and the SHA-256 of every commitment row (all columns,
canonical JSON, one per line) in creation order, so back-dating or editing a row is caught;
checkpoints written before it hold a bare hex digest of the commitment column alone, and are
checked that way.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from distillguard.errors import AuditChainError, ConfigError
from distillguard.store.base import Connection
from distillguard.store.timestamp import Timestamp, TsaTrust, check_timestamp

__all__ = [
    "ANCHOR_FILE",
    "Checkpoint",
    "CheckpointVerification",
    "append_anchor",
    "make_checkpoint",
    "public_key_hex",
    "read_anchor",
    "verify_checkpoints",
    "with_timestamp",
]

ANCHOR_FILE = "anchor/checkpoints.jsonl"  # under the data directory unless told otherwise
_COMMITMENT_COLUMNS = (
    "tenant", "key_version", "key_id", "fingerprint", "scheme_json", "created_at", "commitment"
)  # fmt: skip
_COMMITMENT_ORDER = "ORDER BY created_at, tenant, key_version, fingerprint"
_DIGEST_TAG = "sha256:"


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
    timestamp_token: str = ""  # RFC 3161 TimeStampToken over sha256(payload), DER, base64

    def payload(self) -> bytes:
        """The signed bytes (and the bytes a TSA timestamps)."""
        fields = asdict(self)
        fields.pop("signature")
        fields.pop("timestamp_token")
        return json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()


def public_key_hex(seed: bytes) -> str:
    key = Ed25519PrivateKey.from_private_bytes(seed).public_key()
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw).hex()


def _commitments(
    connection: Connection, limit: int | None = None, *, legacy: bool = False
) -> tuple[int, str]:
    """(how many, digest) of the commitment rows, the first `limit` of them when given;
    `legacy`: the digest of checkpoints from before it covered every column."""
    columns = ", ".join(_COMMITMENT_COLUMNS)
    query = f"SELECT {columns} FROM key_commitments {_COMMITMENT_ORDER}"  # noqa: S608
    rows = connection.execute(query).fetchall()[:limit]
    if legacy:
        lines = [str(row[-1]) for row in rows]
        return len(rows), hashlib.sha256("\n".join(lines).encode()).hexdigest()
    lines = [
        json.dumps(dict(zip(_COMMITMENT_COLUMNS, row, strict=True)), sort_keys=True) for row in rows
    ]
    return len(rows), _DIGEST_TAG + hashlib.sha256("\n".join(lines).encode()).hexdigest()


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


def with_timestamp(checkpoint: Checkpoint, stamp: Timestamp) -> Checkpoint:
    """`checkpoint` carrying `stamp`'s token (what it signed is unchanged)."""
    return replace(checkpoint, timestamp_token=stamp.token)


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
    timestamped: int = 0  # checked checkpoints with a TSA token whose imprint is theirs
    last_timestamped: Checkpoint | None = None  # the newest of them
    last_timestamp: Timestamp | None = None  # and what its token says


def verify_checkpoints(
    connection: Connection,
    checkpoints: list[Checkpoint],
    public_key: str | None,
    tsa_trust: TsaTrust | None = None,
) -> CheckpointVerification:
    """Check every checkpoint against its signature, `public_key` (ours, when known) and the
    database, and its timestamp token if it has one (signed as `tsa_trust` requires, when
    given); the first failure is named."""
    total = int(connection.execute("SELECT COUNT(*) FROM audit").fetchone()[0])
    last: Checkpoint | None = None
    stamped: list[tuple[Checkpoint, Timestamp]] = []
    for index, checkpoint in enumerate(checkpoints):
        reason = _check_one(connection, checkpoint, public_key)
        if reason is None and checkpoint.timestamp_token:
            try:
                stamp = check_timestamp(checkpoint.timestamp_token, checkpoint.payload(), tsa_trust)
                stamped.append((checkpoint, stamp))
            except AuditChainError as exc:
                reason = f"its timestamp token {exc}"
        if reason is not None:
            where = f"checkpoint {index + 1} (seq {checkpoint.seq}, {checkpoint.created_at})"
            return CheckpointVerification(False, index, last, 0, f"{where}: {reason}")
        last = checkpoint
    unanchored = total - last.records if last is not None else total
    last_timestamped, last_timestamp = stamped[-1] if stamped else (None, None)
    return CheckpointVerification(
        True,
        len(checkpoints),
        last,
        unanchored,
        timestamped=len(stamped),
        last_timestamped=last_timestamped,
        last_timestamp=last_timestamp,
    )


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
    legacy = not checkpoint.commitments_digest.startswith(_DIGEST_TAG)
    commitments, digest = _commitments(connection, checkpoint.commitments, legacy=legacy)
    if commitments != checkpoint.commitments or digest != checkpoint.commitments_digest:
        return "the key commitments it anchored were changed or removed"
    return None
