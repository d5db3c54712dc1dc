"""SQLite store: one file in the data directory, migrated on open."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from distillguard.store.migrations import MIGRATIONS

__all__ = ["DATABASE_NAME", "SqliteConnection", "connect", "migrate"]

DATABASE_NAME = "distillguard.db"


class SqliteConnection(sqlite3.Connection):
    """sqlite3's connection, with the store's chain lock."""

    # a file on this machine: a read never waits on a server (and a connection opened without
    # `shared` must stay on its thread), so callers need not move reads off the event loop
    local = True

    def lock_chain(self) -> None:
        """BEGIN IMMEDIATE: the database's one write lock, across processes, held to commit."""
        if not self.in_transaction:
            self.execute("BEGIN IMMEDIATE")


def connect(directory: Path, *, shared: bool = False) -> SqliteConnection:
    """Open (creating if needed) the database in `directory` and apply pending migrations.

    `shared` allows the connection to be used from a thread other than the one that opened it
    (the caller then makes sure only one thread uses it at a time).
    """
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    connection = sqlite3.connect(
        directory / DATABASE_NAME,
        check_same_thread=not shared,
        timeout=10.0,
        factory=SqliteConnection,
    )
    connection.row_factory = sqlite3.Row
    _use_wal(connection)
    # WAL + NORMAL: a commit is in the log before it returns, so a killed process loses no
    # committed row; only an OS crash or power cut can take back the last commits (FULL would
    # fsync each one, about 5 ms a request here).
    connection.execute("PRAGMA synchronous=NORMAL")
    migrate(connection)
    return connection


def _use_wal(connection: sqlite3.Connection, patience: float = 10.0) -> None:
    """Switch a new database to write-ahead logging (it stays so). The switch needs the file
    to itself and does not wait for a busy lock, so a process that creates the database while
    another opens it retries."""
    deadline = time.monotonic() + patience
    while connection.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
        try:
            connection.execute("PRAGMA journal_mode=WAL")
        except sqlite3.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def migrate(connection: sqlite3.Connection) -> list[str]:
    """Apply migrations not yet recorded, in order; return the names applied.

    Under the write lock (BEGIN IMMEDIATE), and the applied ones are read inside it: processes
    or threads opening a new database together migrate it once.
    """
    connection.execute(
        "CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied_at TEXT NOT NULL "
        "DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')))"
    )
    if len(MIGRATIONS) == connection.execute("SELECT COUNT(*) FROM _migrations").fetchone()[0]:
        return []
    applied = []
    connection.execute("BEGIN IMMEDIATE")
    try:
        done = {row[0] for row in connection.execute("SELECT name FROM _migrations")}
        for name, sql in MIGRATIONS:
            if name in done:
                continue
            for statement in sql.split(";"):
                if statement.strip():
                    connection.execute(statement)
            connection.execute("INSERT INTO _migrations (name) VALUES (?)", (name,))
            applied.append(name)
        connection.execute("COMMIT")
    except BaseException:
        connection.execute("ROLLBACK")
        raise
    return applied
