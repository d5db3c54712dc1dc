"""Commitments: a hash binding key material to a scheme and a creation time.

``commitment = sha256("distillguard/commitment/v1" || 0 || key || 0 || fingerprint || 0 ||
created_at)``. It reveals nothing about the key; disclosing the key later (to an expert or a
court) lets anyone recompute it, and the recorded timestamp shows the key predates a suspect.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass
from datetime import UTC, datetime

from distillguard.keys.derive import TenantKey
from distillguard.store.base import Connection
from distillguard.watermark.scheme import SchemeConfig

__all__ = [
    "KeyCommitment",
    "commit",
    "record_commitment",
    "recorded_commitments",
    "verify_commitment",
]


@dataclass(frozen=True)
class KeyCommitment:
    tenant: str
    key_version: int
    key_id: str
    fingerprint: str
    scheme: SchemeConfig
    created_at: str
    commitment: str


def _digest(material: bytes, fingerprint: str, created_at: str) -> str:
    payload = b"\0".join(
        [b"distillguard/commitment/v1", material, fingerprint.encode(), created_at.encode()]
    )
    return "sha256:" + hashlib.sha256(payload).hexdigest()


def commit(key: TenantKey, scheme: SchemeConfig, created_at: str | None = None) -> KeyCommitment:
    """A commitment to `key` under `scheme`, timestamped now (UTC, ISO 8601) unless given."""
    stamp = created_at or datetime.now(UTC).isoformat(timespec="microseconds").replace(
        "+00:00", "Z"
    )
    return KeyCommitment(
        tenant=key.tenant,
        key_version=key.version,
        key_id=key.key_id,
        fingerprint=scheme.fingerprint,
        scheme=scheme,
        created_at=stamp,
        commitment=_digest(key.material, scheme.fingerprint, stamp),
    )


def verify_commitment(key: TenantKey, recorded: KeyCommitment) -> bool:
    """Whether `key` is the key behind `recorded` (constant-time comparison)."""
    expected = _digest(key.material, recorded.fingerprint, recorded.created_at)
    return hmac.compare_digest(expected, recorded.commitment)


def record_commitment(
    connection: Connection, key: TenantKey, scheme: SchemeConfig
) -> KeyCommitment:
    """Record a commitment for (key, scheme) once; later calls return the first record."""
    existing = _find(connection, key, scheme.fingerprint)
    if existing is not None:
        return existing
    record = commit(key, scheme)
    with connection:
        connection.execute(
            "INSERT INTO key_commitments (tenant, key_version, key_id, fingerprint, "
            "scheme_json, created_at, commitment) VALUES (?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT DO NOTHING",
            (
                record.tenant,
                record.key_version,
                record.key_id,
                record.fingerprint,
                json.dumps(scheme.to_dict(), sort_keys=True),
                record.created_at,
                record.commitment,
            ),
        )
    # A concurrent writer may have won the race; the stored row is the truth.
    stored = _find(connection, key, scheme.fingerprint)
    if stored is None:  # pragma: no cover - the insert above guarantees a row
        raise RuntimeError("commitment was not recorded")
    return stored


def _find(connection: Connection, key: TenantKey, fingerprint: str) -> KeyCommitment | None:
    for item in recorded_commitments(connection, tenant=key.tenant):
        if item.key_version == key.version and item.fingerprint == fingerprint:
            return item
    return None


def recorded_commitments(
    connection: Connection, *, tenant: str | None = None
) -> list[KeyCommitment]:
    """Recorded commitments, oldest first, optionally for one tenant."""
    query = "SELECT * FROM key_commitments"
    parameters: tuple[str, ...] = ()
    if tenant is not None:
        query += " WHERE tenant = ?"
        parameters = (tenant,)
    rows = connection.execute(query + " ORDER BY created_at, tenant, key_version", parameters)
    return [
        KeyCommitment(
            tenant=row["tenant"],
            key_version=row["key_version"],
            key_id=row["key_id"],
            fingerprint=row["fingerprint"],
            scheme=SchemeConfig.from_dict(json.loads(row["scheme_json"])),
            created_at=row["created_at"],
            commitment=row["commitment"],
        )
        for row in rows
    ]
