"""SQLite store: one file in the data directory, migrated on open."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from distillguard.store.migrations import MIGRATIONS

__all__ = ["DATABASE_NAME", "connect", "migrate"]

DATABASE_NAME = "distillguard.db"


def connect(directory: Path, *, shared: bool = False) -> sqlite3.Connection:
    """Open (creating if needed) the database in `directory` and apply pending migrations.

    `shared` allows the connection to be used from a thread other than the one that opened it
    (the caller then makes sure only one thread uses it at a time).
    """
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    connection = sqlite3.connect(
        directory / DATABASE_NAME, check_same_thread=not shared, timeout=10.0
    )
    connection.row_factory = sqlite3.Row
    connection.execute("PRAGMA journal_mode=WAL")
    migrate(connection)
    return connection


def migrate(connection: sqlite3.Connection) -> list[str]:
    """Apply migrations not yet recorded, in order; return the names applied."""
    connection.execute(
        "CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied_at TEXT NOT NULL "
        "DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')))"
    )
    done = {row[0] for row in connection.execute("SELECT name FROM _migrations")}
    applied = []
    for name, sql in MIGRATIONS:
        if name in done:
            continue
        # One script so the schema change and its record commit together; names are constants.
        connection.executescript(
            f"BEGIN;\n{sql}\nINSERT INTO _migrations (name) VALUES ('{name}');\nCOMMIT;"
        )
        applied.append(name)
    return applied
