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
    (
        "007_operator_console",
        """
        CREATE TABLE operators (
            name TEXT PRIMARY KEY,
            role TEXT NOT NULL,
            password_hash TEXT NOT NULL,
            created_at TEXT NOT NULL,
            disabled_at TEXT
        );
        CREATE TABLE operator_sessions (
            token_hash TEXT PRIMARY KEY,
            operator TEXT NOT NULL,
            csrf TEXT NOT NULL,
            created_at REAL NOT NULL,
            expires_at REAL NOT NULL,
            last_seen REAL NOT NULL
        );
        CREATE INDEX operator_sessions_operator ON operator_sessions (operator);
        CREATE TABLE login_failures (
            subject TEXT NOT NULL,
            failed_at REAL NOT NULL
        );
        CREATE INDEX login_failures_subject ON login_failures (subject, failed_at);
        CREATE TABLE operator_actions (
            seq INTEGER PRIMARY KEY,
            acted_at TEXT NOT NULL,
            operator TEXT NOT NULL,
            action TEXT NOT NULL,
            target TEXT NOT NULL,
            detail TEXT NOT NULL,
            event_id TEXT NOT NULL
        );
        CREATE INDEX operator_actions_target ON operator_actions (target, seq);
        CREATE TABLE console_jobs (
            job_id TEXT PRIMARY KEY,
            kind TEXT NOT NULL,
            created_at TEXT NOT NULL,
            started_by TEXT NOT NULL,
            options TEXT NOT NULL,
            status TEXT NOT NULL,
            progress REAL NOT NULL,
            stage TEXT NOT NULL,
            host TEXT NOT NULL,
            pid INTEGER,
            heartbeat REAL,
            finished_at TEXT,
            error TEXT,
            result TEXT
        );
        CREATE INDEX console_jobs_created ON console_jobs (created_at);
        CREATE TABLE evidence_reports (
            report_id TEXT PRIMARY KEY,
            job_id TEXT NOT NULL,
            created_at TEXT NOT NULL,
            suspect TEXT NOT NULL,
            summary TEXT NOT NULL,
            html TEXT NOT NULL,
            report_json TEXT NOT NULL
        );
        CREATE INDEX evidence_reports_created ON evidence_reports (created_at);
        CREATE TABLE tenant_budgets (
            tenant TEXT PRIMARY KEY,
            monthly_tokens INTEGER NOT NULL,
            updated_by TEXT NOT NULL,
            updated_at TEXT NOT NULL
        );
        CREATE TABLE usage_rollup_cursor (
            name TEXT PRIMARY KEY,
            seq INTEGER NOT NULL
        );
        INSERT INTO usage_rollup_cursor (name, seq) VALUES ('usage', 0);
        CREATE TABLE usage_hourly (
            key_id TEXT NOT NULL,
            hour TEXT NOT NULL,
            tenant TEXT NOT NULL,
            requests INTEGER NOT NULL,
            refused INTEGER NOT NULL,
            prompt_tokens INTEGER NOT NULL,
            completion_tokens INTEGER NOT NULL,
            PRIMARY KEY (key_id, hour)
        );
        CREATE INDEX usage_hourly_tenant ON usage_hourly (tenant, hour);
        CREATE INDEX usage_hourly_hour ON usage_hourly (hour);
        CREATE TABLE usage_minutes (
            minute TEXT PRIMARY KEY,
            requests INTEGER NOT NULL,
            refused INTEGER NOT NULL,
            prompt_tokens INTEGER NOT NULL,
            completion_tokens INTEGER NOT NULL
        );
        CREATE TABLE usage_totals (
            key_id TEXT PRIMARY KEY,
            tenant TEXT NOT NULL,
            requests INTEGER NOT NULL,
            refused INTEGER NOT NULL,
            prompt_tokens INTEGER NOT NULL,
            completion_tokens INTEGER NOT NULL,
            last_seen TEXT NOT NULL
        );
        CREATE TABLE risk_samples (
            key_id TEXT NOT NULL,
            sampled_at TEXT NOT NULL,
            score REAL NOT NULL,
            ring_score REAL,
            tier TEXT NOT NULL,
            requests INTEGER NOT NULL,
            contributions TEXT NOT NULL,
            PRIMARY KEY (key_id, sampled_at)
        );
        CREATE TABLE console_alerts (
            seq INTEGER PRIMARY KEY,
            raised_at TEXT NOT NULL,
            kind TEXT NOT NULL,
            subject TEXT NOT NULL,
            message TEXT NOT NULL,
            delivery TEXT NOT NULL
        );
        CREATE TABLE console_cursors (
            name TEXT PRIMARY KEY,
            value TEXT NOT NULL
        );
        CREATE INDEX usage_key_time ON usage (key_id, created_at);
        """,
    ),
    (
        "008_api_key_account_metadata",
        """
        ALTER TABLE api_keys ADD COLUMN org_token TEXT NOT NULL DEFAULT '';
        ALTER TABLE api_keys ADD COLUMN signup_program TEXT NOT NULL DEFAULT '';
        """,
    ),
]
