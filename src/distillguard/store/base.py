"""The store interface and the URL that picks a backend."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

from distillguard.errors import ConfigError

__all__ = ["Connection", "Cursor", "connect", "describe", "lock_chain"]

POSTGRES_SCHEMES = ("postgresql", "postgres")


class Cursor(Protocol):
    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def __iter__(self) -> Iterator[Any]: ...


class Connection(Protocol):
    """What the package needs of a database connection (sqlite3's shape)."""

    def execute(self, sql: str, parameters: Sequence[Any] = ..., /) -> Any: ...

    def executemany(self, sql: str, parameters: Iterable[Sequence[Any]], /) -> Any: ...

    def __enter__(self) -> Any: ...

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
        /,
    ) -> Any: ...

    def close(self) -> None: ...


def connect(directory: Path, *, shared: bool = False, url: str | None = None) -> Connection:
    """Open the store, applying pending migrations.

    Without `url`, the SQLite file in `directory`; with a ``postgresql://`` URL, that
    database (`directory` still holds the master secret). `shared` lets a SQLite connection be
    used from a thread other than the one that opened it (one thread at a time).
    """
    if url is None:
        from distillguard.store.sqlite import connect as connect_sqlite

        return connect_sqlite(directory, shared=shared)
    scheme = urlsplit(url).scheme
    if scheme in POSTGRES_SCHEMES:
        from distillguard.store.postgres import connect as connect_postgres

        return connect_postgres(url)
    raise ConfigError(
        f"unsupported database URL scheme {scheme!r}: use postgresql://... "
        "(or no URL for the SQLite file in the data directory)"
    )


def describe(url: str | None) -> str:
    """The URL with any password replaced, for logs and reports."""
    if url is None:
        return "sqlite (data directory)"
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def lock_chain(connection: Connection) -> None:
    """Inside ``with connection:``, take the lock that serializes appends to the audit chain.

    SQLite: BEGIN IMMEDIATE (the database's one write lock, across processes). PostgreSQL: a
    transaction-scoped advisory lock, released at commit. So every replica reads the chain's
    last hash and appends after it, and the log stays one chain.
    """
    if isinstance(connection, sqlite3.Connection):
        if not connection.in_transaction:
            connection.execute("BEGIN IMMEDIATE")
        return
    connection.execute("SELECT pg_advisory_xact_lock(?)", (_CHAIN_LOCK,))


_CHAIN_LOCK = 0x6447_6175  # "dGau": distillguard audit
