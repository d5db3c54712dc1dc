"""Persistence behind one interface, chosen by URL.

- no URL: SQLite, one file in the data directory (`store/sqlite.py`), the default;
- ``postgresql://...``: PostgreSQL (`store/postgres.py`), shared by several gateway replicas.

Both apply the same named, ordered migrations (`store/migrations.py`) and speak the same SQL
(``?`` placeholders; the PostgreSQL connection translates). `Connection` is what the rest of
the package relies on: `execute`, `executemany`, ``with connection:`` for one transaction,
rows readable by index and by column name, and `close`.
"""

from distillguard.store.base import Connection, connect, describe, lock_chain

__all__ = ["Connection", "connect", "describe", "lock_chain"]
