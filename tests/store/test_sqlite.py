"""The SQLite store applies named migrations once, in order."""

from __future__ import annotations

from pathlib import Path

from distillguard.store import connect
from distillguard.store.migrations import MIGRATIONS
from distillguard.store.sqlite import migrate


def test_migrations_apply_once_in_order(tmp_path: Path) -> None:
    connection = connect(tmp_path)
    names = [row[0] for row in connection.execute("SELECT name FROM _migrations ORDER BY rowid")]
    assert names == [name for name, _ in MIGRATIONS]
    assert migrate(connection) == []
    connection.close()
    assert migrate(connect(tmp_path)) == []
