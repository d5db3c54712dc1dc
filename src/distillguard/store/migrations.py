"""Named, ordered schema migrations. Append only: a migration that has run never changes.

Written in SQLite's dialect; `store/postgres.py` translates the few type names that differ
(BLOB, REAL, INTEGER and the `seq INTEGER PRIMARY KEY` row id), so both backends have the same
tables, columns and indexes.
"""

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
    (
        "002_api_keys",
        """
        CREATE TABLE api_keys (
            key_id TEXT PRIMARY KEY,
            tenant TEXT NOT NULL,
            salt BLOB NOT NULL,
            secret_hash BLOB NOT NULL,
            rpm INTEGER NOT NULL,
            tpm INTEGER NOT NULL,
            daily_tokens INTEGER,
            concurrency INTEGER NOT NULL,
            tier TEXT NOT NULL DEFAULT 'normal',
            created_at TEXT NOT NULL,
            revoked_at TEXT
        );
        CREATE INDEX api_keys_tenant ON api_keys (tenant);
        """,
    ),
    (
        "003_usage_and_audit",
        """
        CREATE TABLE usage (
            request_id TEXT PRIMARY KEY,
            created_at TEXT NOT NULL,
            tenant TEXT NOT NULL,
            key_id TEXT NOT NULL,
            model TEXT NOT NULL,
            endpoint TEXT NOT NULL,
            status INTEGER NOT NULL,
            outcome TEXT NOT NULL,
            prompt_tokens INTEGER NOT NULL,
            completion_tokens INTEGER NOT NULL,
            latency_ms REAL NOT NULL,
            watermark_key_id TEXT,
            fingerprint TEXT,
            parameters TEXT NOT NULL,
            prompt_text BLOB,
            output_text BLOB
        );
        CREATE INDEX usage_tenant_time ON usage (tenant, created_at);
        CREATE TABLE audit (
            seq INTEGER PRIMARY KEY,
            request_id TEXT NOT NULL,
            record TEXT NOT NULL,
            prev_hash TEXT NOT NULL,
            record_hash TEXT NOT NULL
        );
        """,
    ),
    (
        "004_monitor_tier_changes",
        """
        CREATE TABLE tier_changes (
            seq INTEGER PRIMARY KEY,
            changed_at TEXT NOT NULL,
            key_id TEXT NOT NULL,
            tenant TEXT NOT NULL,
            previous TEXT NOT NULL,
            tier TEXT NOT NULL,
            pinned INTEGER NOT NULL,
            score REAL NOT NULL,
            requests INTEGER NOT NULL,
            reasons TEXT NOT NULL
        );
        CREATE INDEX tier_changes_key ON tier_changes (key_id, seq);
        """,
    ),
    (
        "005_audit_request_index",
        """
        CREATE INDEX audit_request ON audit (request_id);
        """,
    ),
    (
        "006_audit_chain_keys",
        """
        ALTER TABLE audit ADD COLUMN chain TEXT NOT NULL DEFAULT 'sha256';
        """,
    ),
]
