"""Both stores apply the same named migrations once, in order, to the same schema."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from distillguard.errors import AuthenticationError, ConfigError
from distillguard.gateway.apikeys import KeyStore, create_api_key, list_api_keys, revoke_api_key
from distillguard.store import Connection, connect, describe
from distillguard.store.migrations import MIGRATIONS


def test_migrations_apply_once_in_order(tmp_path: Path, store_url: str | None) -> None:
    connection = connect(tmp_path, url=store_url)
    names = [row[0] for row in connection.execute("SELECT name FROM _migrations ORDER BY name")]
    assert names == [name for name, _ in MIGRATIONS]
    connection.close()
    again = connect(tmp_path, url=store_url)  # a second open applies nothing new
    assert [row[0] for row in again.execute("SELECT name FROM _migrations")] == names
    again.close()


def test_api_keys_round_trip(tmp_path: Path, store_url: str | None) -> None:
    connection = connect(tmp_path, url=store_url)
    secret, record = create_api_key(connection, "acme", rpm=10, tpm=1000, daily_tokens=5000)
    assert KeyStore(connection).authenticate(secret) == record
    assert [key.key_id for key in list_api_keys(connection)] == [record.key_id]
    revoke_api_key(connection, record.key_id)
    with pytest.raises(AuthenticationError):
        KeyStore(connection).authenticate(secret)
    connection.close()


def test_rows_read_by_index_and_by_name(tmp_path: Path, store_url: str | None) -> None:
    connection = connect(tmp_path, url=store_url)
    create_api_key(connection, "acme", rpm=10, tpm=1000)
    row = connection.execute("SELECT tenant, rpm FROM api_keys").fetchone()
    assert (row[0], row["rpm"], tuple(row)) == ("acme", 10, ("acme", 10))
    connection.close()


def test_a_failed_transaction_leaves_nothing(tmp_path: Path, store_url: str | None) -> None:
    connection = connect(tmp_path, url=store_url)
    with pytest.raises(RuntimeError), connection:
        connection.execute(
            "INSERT INTO tier_changes (changed_at, key_id, tenant, previous, tier, pinned, score, "
            "requests, reasons) VALUES ('t', 'k', 'a', 'normal', 'watch', 0, 0.5, 1, '[]')"
        )
        raise RuntimeError("rolled back")
    assert connection.execute("SELECT COUNT(*) FROM tier_changes").fetchone()[0] == 0
    connection.close()


def test_the_same_schema_on_both_stores(tmp_path: Path, fresh_postgres_url: str) -> None:
    sqlite = connect(tmp_path)
    tables = [
        row[0]
        for row in sqlite.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite%' "
            "AND name != '_migrations' ORDER BY name"
        )
    ]
    expected = {
        table: [row[1] for row in sqlite.execute(f"PRAGMA table_info({table})")] for table in tables
    }
    postgres = connect(tmp_path, url=fresh_postgres_url)
    found = {
        table: [
            row[0]
            for row in postgres.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_name = ? "
                "AND table_schema = current_schema() ORDER BY ordinal_position",
                (table,),
            )
        ]
        for table in tables
    }
    assert found == expected
    indexes = {
        row[0]
        for row in postgres.execute(
            "SELECT indexname FROM pg_indexes WHERE schemaname = current_schema()"
        )
    }
    sqlite.close()
    postgres.close()
    assert {"audit_request", "tier_changes_key", "usage_tenant_time"} <= indexes


def test_replicas_starting_together_migrate_once(tmp_path: Path, fresh_postgres_url: str) -> None:
    errors: list[BaseException] = []

    def start() -> None:
        try:
            connect(tmp_path, url=fresh_postgres_url).close()
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []


def test_an_unknown_url_scheme_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="postgresql://"):
        connect(tmp_path, url="mysql://localhost/db")


def test_a_password_never_reaches_a_description() -> None:
    assert "hunter2" not in describe("postgresql://dg:hunter2@db.internal:5432/prod")
    assert describe("postgresql://dg:hunter2@db.internal:5432/prod").startswith("postgresql://dg:")


def test_account_metadata_round_trips(tmp_path: Path, store_url: str | None) -> None:
    connection = connect(tmp_path, url=store_url)
    secret, record = create_api_key(
        connection, "acme", rpm=10, tpm=1000, org_token="5b0eb5687620f41d", signup_program="startup"
    )
    assert (record.org_token, record.signup_program) == ("5b0eb5687620f41d", "startup")
    assert KeyStore(connection).authenticate(secret) == record
    assert list_api_keys(connection) == [record]
    assert record.created_seconds is not None
    connection.close()


def test_an_existing_database_gains_the_account_metadata_columns(
    tmp_path: Path, store_url: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = [migration for migration in MIGRATIONS if migration[0] < "008"]
    backend = "sqlite" if store_url is None else "postgres"
    monkeypatch.setattr(f"distillguard.store.{backend}.MIGRATIONS", before)
    old = connect(tmp_path, url=store_url)
    secret, _ = create_legacy_key(old)
    old.close()
    monkeypatch.undo()
    migrated = connect(tmp_path, url=store_url)
    applied = [row[0] for row in migrated.execute("SELECT name FROM _migrations")]
    assert "008_api_key_account_metadata" in applied
    key = KeyStore(migrated).authenticate(secret)
    assert (key.tenant, key.org_token, key.signup_program) == ("acme", "", "")
    migrated.close()


def create_legacy_key(connection: Connection) -> tuple[str, str]:
    """A key as the gateway wrote them before keys had account metadata."""
    import hashlib

    salt, secret = b"s" * 16, "legacy-secret"
    with connection:
        connection.execute(
            "INSERT INTO api_keys (key_id, tenant, salt, secret_hash, rpm, tpm, daily_tokens, "
            "concurrency, tier, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                "0123456789ab",
                "acme",
                salt,
                hashlib.sha256(salt + secret.encode()).digest(),
                10,
                1000,
                None,
                8,
                "normal",
                "2026-01-01T00:00:00.000000Z",
            ),
        )
    return f"dg-0123456789ab-{secret}", "0123456789ab"
