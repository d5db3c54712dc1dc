"""Named, ordered schema migrations. Append only: a migration that has run never changes."""

from __future__ import annotations

__all__ = ["MIGRATIONS"]

MIGRATIONS: list[tuple[str, str]] = [
    (
        "001_key_commitments",
        """
        CREATE TABLE key_commitments (
            tenant TEXT NOT NULL,
            key_version INTEGER NOT NULL,
            key_id TEXT NOT NULL,
            fingerprint TEXT NOT NULL,
            scheme_json TEXT NOT NULL,
            created_at TEXT NOT NULL,
            commitment TEXT NOT NULL,
            PRIMARY KEY (tenant, key_version, fingerprint)
        );
        CREATE INDEX key_commitments_key_id ON key_commitments (key_id);
        """,
    ),
]
