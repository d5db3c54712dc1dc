"""The audit chain: each usage row's audited record, and each audit event, linked to the one
before by a keyed hash.

    record      = canonical JSON of the usage row, with SHA-256 of the prompt and output text
                  (or, for an event such as a purge, the event's canonical JSON)
    record_hash = HMAC-SHA256(chain key, "dg-chain-v2" || prev_hash || record)     (hmac-N)
                  SHA-256(prev_hash || record)                                      (sha256)
    prev_hash of the first record: 64 zeros

The chain key is derived from the master secret (`keys.derive.chain_key_material`), version N
in the tag `hmac-N`; the tag is stored with each record, so chains written before the key
(`sha256`, recomputable by anyone with the database) or under an older key version still
verify. A keyed record cannot be recomputed without the master secret, and an unkeyed one
after a keyed one is refused.

`verify_chain` checks every record against its usage row and every link, that every usage row
has its record, and that text is only ever missing where a purge event covers it (a purge is
itself a record in the chain). One exception, counted apart: chains written before purge
events existed purged text without a trace, so an unkeyed record in the legacy part of the
chain (before any keyed record and any event) may have its texts blank; a keyed record never.
What it cannot see alone, the newest records deleted, the signed checkpoints in the anchor
catch (`store/checkpoint.py`).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from distillguard.store.base import Connection
from distillguard.store.usage import USAGE_COLUMNS, UsageRecord

__all__ = [
    "GENESIS",
    "UNKEYED",
    "ChainKey",
    "ChainVerification",
    "append_event",
    "append_records",
    "audited",
    "link",
    "record_json",
    "verify_chain",
]

GENESIS = "0" * 64
UNKEYED = "sha256"
EVENT_PREFIX = "event:"
_DOMAIN = b"dg-chain-v2"
_ROWS_PER_INSERT = 256  # 256 x 16 parameters: within SQLite's limit of 32,766


@dataclass(frozen=True)
class ChainKey:
    """A chain key (from the master secret) and its version; `material` never in repr."""

    version: int
    material: bytes = field(repr=False)

    @property
    def tag(self) -> str:
        return f"hmac-{self.version}"


def record_json(row: dict[str, Any]) -> str:
    """The audited form of a usage row: everything, with the texts as their hashes."""
    return _canonical(audited(row))


def audited(row: dict[str, Any]) -> dict[str, Any]:
    audited = {
        name: row[name] for name in USAGE_COLUMNS if name not in ("prompt_text", "output_text")
    }
    audited["latency_ms"] = round(float(audited["latency_ms"]), 3)
    audited["prompt_sha256"] = hashlib.sha256(row["prompt_text"].encode()).hexdigest()
    audited["output_sha256"] = hashlib.sha256(row["output_text"].encode()).hexdigest()
    return audited


def _canonical(value: dict[str, Any]) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def link(prev_hash: str, record: str, key: ChainKey | None = None) -> tuple[str, str]:
    """(record_hash, tag) of `record` after `prev_hash`: keyed with `key`, else unkeyed."""
    if key is None:
        return hashlib.sha256(prev_hash.encode() + record.encode()).hexdigest(), UNKEYED
    message = _DOMAIN + prev_hash.encode() + record.encode()
    return hmac.new(key.material, message, hashlib.sha256).hexdigest(), key.tag


def append_records(
    connection: Connection,
    records: list[UsageRecord],
    key: ChainKey | None,
    *,
    store_text: bool = True,
) -> None:
    """Insert usage rows and their chained audit records in one transaction, after the
    chain's last record (whichever process wrote it). Without `store_text` the texts are
    stored, and audited, as empty."""
    usage_rows = []
    audited_records = []
    for record in records:
        row = dict(vars(record))  # shallow: asdict deep-copies, which costs on the hot path
        row["parameters"] = json.dumps(record.parameters, sort_keys=True, separators=(",", ":"))
        if not store_text:
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
        for request_id, audited_record in audited_records:
            record_hash, tag = link(prev_hash, audited_record, key)
            links.append((request_id, audited_record, prev_hash, record_hash, tag))
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


def append_event(connection: Connection, event: dict[str, Any], key: ChainKey | None) -> str:
    """Append an audit event (inside the caller's transaction, under the chain lock); its id."""
    connection.lock_chain()
    last = connection.execute("SELECT record_hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
    prev_hash = last[0] if last else GENESIS
    record = _canonical(event)
    record_hash, tag = link(prev_hash, record, key)
    event_id = f"{EVENT_PREFIX}{event['event']}:{secrets.token_hex(8)}"
    connection.execute(
        "INSERT INTO audit (request_id, record, prev_hash, record_hash, chain) "
        "VALUES (?, ?, ?, ?, ?)",
        (event_id, record, prev_hash, record_hash, tag),
    )
    return event_id


@dataclass(frozen=True)
class ChainVerification:
    ok: bool
    records: int
    first_bad_seq: int | None = None
    request_id: str | None = None
    reason: str | None = None
    keyed: int = 0  # records linked with a chain key
    unkeyed: int = 0  # records anyone with the database could recompute
    purges: int = 0
    head_seq: int = 0
    head_hash: str = GENESIS
    legacy_purged: int = 0  # legacy records whose text was purged before purge events existed
    events: int = 0  # audit events of any kind: purges, operators' actions


def verify_chain(
    connection: Connection, keys: Mapping[int, bytes] | None = None
) -> ChainVerification:
    """Check the whole chain; `keys` maps chain key versions to their material (needed for
    keyed records: without them a keyed chain cannot be checked and verification fails)."""
    rows = connection.execute(
        "SELECT seq, request_id, record, prev_hash, record_hash, chain FROM audit ORDER BY seq"
    ).fetchall()
    purged_before = _purge_horizon(rows)
    prev_hash, count, keyed, unkeyed, purges, last_seq, legacy_purged = GENESIS, 0, 0, 0, 0, 0, 0
    events = 0
    for seq, request_id, record, stored_prev, record_hash, tag in rows:
        count += 1
        if request_id.startswith(EVENT_PREFIX):
            events += 1
            purges += request_id.startswith(EVENT_PREFIX + "purge")
            reason = None
        else:
            row = _usage_row(connection, request_id)
            legacy = tag == UNKEYED and not keyed and not events
            reason = _check_usage(row, record, purged_before, legacy)
            if reason is None and row is not None and _blanked_unannounced(row, purged_before):
                legacy_purged += 1
        if reason is None and stored_prev != prev_hash:
            reason = "the chain is broken before it (records removed or reordered)"
        if reason is None and tag == UNKEYED and keyed:
            reason = "an unkeyed record after keyed ones (the chain was recomputed)"
        if reason is None:
            expected, reason = _expected_hash(prev_hash, record, tag, keys)
            if reason is None and expected != record_hash:
                reason = "its hash does not match its record"
        if reason is not None:
            return ChainVerification(False, count, seq, request_id, reason)
        keyed, unkeyed = keyed + (tag != UNKEYED), unkeyed + (tag == UNKEYED)
        prev_hash, last_seq = record_hash, seq
    orphan = connection.execute(
        "SELECT request_id FROM usage WHERE request_id NOT IN (SELECT request_id FROM audit) "
        "LIMIT 1"
    ).fetchone()
    if orphan is not None:
        reason = "a usage row has no audit record (written outside the log)"
        return ChainVerification(False, count, None, orphan[0], reason, keyed, unkeyed, purges)
    return ChainVerification(
        True, count, None, None, None, keyed, unkeyed, purges, last_seq, prev_hash, legacy_purged,
        events,
    )  # fmt: skip


def _expected_hash(
    prev_hash: str, record: str, tag: str, keys: Mapping[int, bytes] | None
) -> tuple[str, str | None]:
    """(the record's expected hash, None), or ("", why it cannot be checked)."""
    if tag == UNKEYED:
        return link(prev_hash, record)[0], None
    if not tag.startswith("hmac-") or not tag[5:].isdigit():
        return "", f"unknown chain tag {tag!r}"
    version = int(tag[5:])
    if keys is None or version not in keys:
        return "", f"chain key version {version} is needed to check it (the master secret)"
    return link(prev_hash, record, ChainKey(version, keys[version]))[0], None


def _purge_horizon(rows: Iterable[Any]) -> str:
    """The latest `before` of the purge events in the chain ("" when there are none)."""
    horizon = ""
    for _, request_id, record, *_ in rows:
        if request_id.startswith(EVENT_PREFIX + "purge"):
            horizon = max(horizon, str(json.loads(record).get("before", "")))
    return horizon


def _usage_row(connection: Connection, request_id: str) -> dict[str, Any] | None:
    usage = connection.execute(
        f"SELECT {', '.join(USAGE_COLUMNS)} FROM usage WHERE request_id = ?",  # noqa: S608
        (request_id,),
    ).fetchone()
    return None if usage is None else dict(zip(USAGE_COLUMNS, usage, strict=True))


def _blanked_unannounced(row: dict[str, Any], purged_before: str) -> bool:
    """Whether the row's text is gone where no purge event covers it."""
    return row["prompt_text"] is None and not row["created_at"] < purged_before


def _check_usage(
    row: dict[str, Any] | None, record: str, purged_before: str, legacy: bool
) -> str | None:
    """Why the usage row does not match its record, or None; `legacy`: the record is in the
    legacy part of the chain, where text was purged without an event."""
    if row is None:
        return "its usage row is missing"
    blank_prompt, blank_output = row["prompt_text"] is None, row["output_text"] is None
    if blank_prompt != blank_output:
        return "one of its texts was blanked (a purge removes both)"
    # Text removed by a purge (NULL) cannot be checked, but the record keeps its hashes: text
    # can be purged, never altered, and only where a purge event in the chain covers it.
    if _blanked_unannounced(row, purged_before) and not legacy:
        return "its text was blanked outside any purge"
    row = dict(row)  # the caller still reads the stored row
    row["prompt_text"] = "" if blank_prompt else zlib.decompress(row["prompt_text"]).decode()
    row["output_text"] = "" if blank_output else zlib.decompress(row["output_text"]).decode()
    expected = audited(row)
    if blank_prompt:
        stored = json.loads(record)
        expected["prompt_sha256"] = stored.get("prompt_sha256")
        expected["output_sha256"] = stored.get("output_sha256")
    if _canonical(expected) != record:
        return "its usage row was changed"
    return None
