"""The audit chain: each usage row's audited record, linked by hash to the one before.

    record      = canonical JSON of the usage row, with SHA-256 of the prompt and output text
    record_hash = SHA-256(prev_hash || record)        (prev_hash of the first record: 64 zeros)

Changing any row (its text, a token count) or the order of rows breaks the chain at that
record; `verify_chain` names the first bad one.
"""

from __future__ import annotations

import hashlib
import json
import zlib
from dataclasses import dataclass
from typing import Any

from distillguard.store.base import Connection
from distillguard.store.usage import USAGE_COLUMNS

__all__ = ["GENESIS", "ChainVerification", "audited", "link", "record_json", "verify_chain"]

GENESIS = "0" * 64


def record_json(row: dict[str, Any]) -> str:
    """The audited form of a usage row: everything, with the texts as their hashes."""
    return json.dumps(audited(row), sort_keys=True, separators=(",", ":"))


def audited(row: dict[str, Any]) -> dict[str, Any]:
    audited = {
        name: row[name] for name in USAGE_COLUMNS if name not in ("prompt_text", "output_text")
    }
    audited["latency_ms"] = round(float(audited["latency_ms"]), 3)
    audited["prompt_sha256"] = hashlib.sha256(row["prompt_text"].encode()).hexdigest()
    audited["output_sha256"] = hashlib.sha256(row["output_text"].encode()).hexdigest()
    return audited


def link(prev_hash: str, record: str) -> str:
    return hashlib.sha256(prev_hash.encode() + record.encode()).hexdigest()


@dataclass(frozen=True)
class ChainVerification:
    ok: bool
    records: int
    first_bad_seq: int | None = None
    request_id: str | None = None
    reason: str | None = None


def verify_chain(connection: Connection) -> ChainVerification:
    """Recompute every record from its usage row and every hash from the previous one."""
    prev_hash = GENESIS
    count = 0
    audit_rows = connection.execute(
        "SELECT seq, request_id, record, prev_hash, record_hash FROM audit ORDER BY seq"
    )
    for seq, request_id, record, stored_prev, record_hash in audit_rows:
        count += 1
        usage = connection.execute(
            f"SELECT {', '.join(USAGE_COLUMNS)} FROM usage WHERE request_id = ?",  # noqa: S608
            (request_id,),
        ).fetchone()
        if usage is None:
            return ChainVerification(False, count, seq, request_id, "its usage row is missing")
        row = dict(zip(USAGE_COLUMNS, usage, strict=True))
        # Text removed by the retention policy (NULL) cannot be checked, but the record keeps its
        # hash: text can be purged, never altered.
        purged = row["prompt_text"] is None
        row["prompt_text"] = "" if purged else zlib.decompress(row["prompt_text"]).decode()
        row["output_text"] = "" if purged else zlib.decompress(row["output_text"]).decode()
        expected = audited(row)
        if purged:
            stored = json.loads(record)
            expected["prompt_sha256"] = stored.get("prompt_sha256")
            expected["output_sha256"] = stored.get("output_sha256")
        if json.dumps(expected, sort_keys=True, separators=(",", ":")) != record:
            return ChainVerification(False, count, seq, request_id, "its usage row was changed")
        if stored_prev != prev_hash:
            return ChainVerification(
                False,
                count,
                seq,
                request_id,
                "the chain is broken before it (rows removed or reordered)",
            )
        if link(prev_hash, record) != record_hash:
            return ChainVerification(
                False, count, seq, request_id, "its hash does not match its record"
            )
        prev_hash = record_hash
    return ChainVerification(True, count)
