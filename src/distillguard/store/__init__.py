"""Persistence behind one interface, chosen by URL.

- no URL: SQLite, one file in the data directory (`store/sqlite.py`), the default;
- ``postgresql://...``: PostgreSQL (`store/postgres.py`), shared by several gateway replicas.

Both apply the same named, ordered migrations (`store/migrations.py`) and speak the same SQL
(``?`` placeholders; the PostgreSQL connection translates). `Connection` (`store/base.py`) is
what the rest of the package relies on: `execute`, ``with connection:`` for one transaction,
`lock_chain` inside one, rows readable by index and by column name, and `close`. On top of it:
the usage rows (`store/usage.py`: read, purge text) and the audit chain (`store/audit.py`).
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from distillguard.errors import ConfigError
from distillguard.store.base import POSTGRES_SCHEMES, Connection, describe

__all__ = ["Connection", "connect", "describe"]


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
