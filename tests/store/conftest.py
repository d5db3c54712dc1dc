"""Connections to the store under test (SQLite; PostgreSQL too when it is configured)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from distillguard.store import Connection, connect


@pytest.fixture
def opener(tmp_path: Path, store_url: str | None) -> Iterator[Callable[[], Connection]]:
    """Opens connections to the test's store; closes them all at the end of the test."""
    opened: list[Connection] = []

    def open_store() -> Connection:
        opened.append(connect(tmp_path, shared=True, url=store_url))
        return opened[-1]

    yield open_store
    for connection in opened:
        connection.close()
