"""PostgreSQL store: the database that several gateway replicas share.

The connection speaks the package's SQL (sqlite3's ``?`` placeholders, ``with connection:``
for one transaction, rows readable by index and by name) over psycopg 3 in autocommit mode, so
a read outside a transaction never leaves one open. Migrations are the SQLite ones with their
type names translated, applied under an advisory lock so that replicas starting together
migrate once.
"""

from __future__ import annotations

import contextlib
import re
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

from distillguard.errors import ConfigError, ServiceUnavailableError
from distillguard.redact import redact
from distillguard.store.base import describe
from distillguard.store.migrations import MIGRATIONS

try:
    import psycopg
except ImportError as exc:  # pragma: no cover - psycopg ships with the gateway extra
    raise ConfigError("PostgreSQL needs psycopg: pip install 'distillguard[gateway]'") from exc

__all__ = ["PostgresConnection", "Row", "connect", "migrate", "translate_schema"]

_MIGRATION_LOCK = 0x6447_6D69  # "dGmi": distillguard migrations
_CHAIN_LOCK = 0x6447_6175  # "dGau": distillguard audit
_CONNECT_TIMEOUT = 3  # seconds: a server that does not answer is down, not slow
_BACKOFF_START = 0.1
_BACKOFF_MOST = 2.0


class Row(tuple[Any, ...]):
    """A result row readable like sqlite3.Row: by index, by column name, or unpacked."""

    _names: dict[str, int]

    def __new__(cls, values: Sequence[Any], names: dict[str, int]) -> Row:
        row = super().__new__(cls, values)
        row._names = names
        return row

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            return tuple.__getitem__(self, self._names[key])
        return tuple.__getitem__(self, key)

    def keys(self) -> list[str]:
        return list(self._names)


def _row_factory(cursor: Any) -> Any:
    description = cursor.description or ()
    names = {column.name: index for index, column in enumerate(description)}

    def make(values: Sequence[Any]) -> Row:
        return Row(values, names)

    return make


_PLACEHOLDER_CACHE: dict[str, str] = {}


def _placeholders(sql: str) -> str:
    """``?`` -> ``%s`` (and a literal ``%`` -> ``%%``); the package's SQL has no ``?`` in
    string literals."""
    translated = _PLACEHOLDER_CACHE.get(sql)
    if translated is None:
        translated = _PLACEHOLDER_CACHE[sql] = sql.replace("%", "%%").replace("?", "%s")
    return translated


class PostgresConnection:
    """One psycopg connection with sqlite3's interface; safe to share between threads.

    It survives the server going away (a restart, a failover): a statement outside a
    transaction that fails because the connection is lost is retried once on a new
    connection; inside a transaction the error is raised (the caller retries the whole
    transaction) and the next transaction reconnects. While the server stays away, reconnects
    are tried with backoff (0.1 s doubling to 2 s) and fail fast in between, with
    ServiceUnavailableError, so no caller blocks for long on a server that is down."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._retry_at = 0.0  # no reconnect before this (monotonic); 0: none failed
        self._backoff = _BACKOFF_START
        self._connect_lock = threading.Lock()
        try:
            self._connection = self._open()
        except psycopg.Error as exc:
            raise ConfigError(f"cannot connect to {describe(url)}: {exc}".strip()) from None
        self._lock = threading.RLock()  # a transaction belongs to the thread that opened it
        self._transactions: list[Any] = []
        self._owner: int | None = None  # the thread whose transaction is open

    def _open(self) -> psycopg.Connection[Any]:
        return psycopg.connect(
            self._url, autocommit=True, row_factory=_row_factory, connect_timeout=_CONNECT_TIMEOUT
        )

    def _reconnect(self, lost: psycopg.Connection[Any]) -> None:
        """Replace `lost` (unless another thread already did), or raise ServiceUnavailableError."""
        with self._connect_lock:
            if self._connection is not lost and not self._connection.closed:
                return
            if time.monotonic() < self._retry_at:
                raise ServiceUnavailableError(
                    f"the database {describe(self._url)} cannot be reached; retrying shortly"
                )
            try:
                fresh = self._open()
            except psycopg.Error as exc:
                self._retry_at = time.monotonic() + self._backoff
                self._backoff = min(self._backoff * 2, _BACKOFF_MOST)
                reason = (
                    str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                )
                raise ServiceUnavailableError(
                    f"the database {describe(self._url)} cannot be reached: {redact(reason)}"
                ) from None
            self._retry_at, self._backoff = 0.0, _BACKOFF_START
            with contextlib.suppress(Exception):
                lost.close()
            self._connection = fresh

    def execute(self, sql: str, parameters: Sequence[Any] = (), /) -> Any:
        connection = self._connection
        if connection.closed or connection.broken:
            self._reconnect(connection)
            connection = self._connection
        try:
            return connection.execute(_placeholders(sql), tuple(parameters), prepare=False)
        except psycopg.OperationalError:  # the server went away (or shut this backend)
            if self._in_transaction():
                raise
        self._reconnect(connection)  # lost outside a transaction: once more, on a new one
        return self._connection.execute(_placeholders(sql), tuple(parameters), prepare=False)

    def _in_transaction(self) -> bool:
        return bool(self._transactions) and self._owner == threading.get_ident()

    def lock_chain(self) -> None:
        """A transaction-scoped advisory lock on the audit chain, released at commit."""
        self.execute("SELECT pg_advisory_xact_lock(?)", (_CHAIN_LOCK,))

    def __enter__(self) -> PostgresConnection:
        self._lock.acquire()
        try:
            transaction = self._begin()
        except BaseException:
            self._lock.release()
            raise
        self._transactions.append(transaction)
        self._owner = threading.get_ident()
        return self

    def _begin(self) -> Any:
        """Open a transaction; the outermost one reconnects first if the connection is lost."""
        connection = self._connection
        if not self._transactions and (connection.closed or connection.broken):
            self._reconnect(connection)
            connection = self._connection
        transaction = connection.transaction()
        try:
            transaction.__enter__()
        except psycopg.OperationalError:
            if self._transactions:
                raise
            self._reconnect(connection)  # it died unnoticed: BEGIN was its first statement
            transaction = self._connection.transaction()
            transaction.__enter__()
        return transaction

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
        /,
    ) -> None:
        transaction = self._transactions.pop()
        try:
            transaction.__exit__(kind, value, traceback)
        finally:
            if not self._transactions:
                self._owner = None
            self._lock.release()

    def close(self) -> None:
        self._connection.close()


def connect(url: str) -> PostgresConnection:
    """Connect and apply pending migrations."""
    connection = PostgresConnection(url)
    try:
        migrate(connection)
    except BaseException:
        connection.close()
        raise
    return connection


def translate_schema(sql: str) -> str:
    """A migration's SQLite DDL in PostgreSQL's types."""
    sql = re.sub(
        r"\bseq INTEGER PRIMARY KEY\b",
        "seq BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY",
        sql,
    )
    sql = re.sub(r"\bINTEGER\b", "BIGINT", sql)
    sql = re.sub(r"\bREAL\b", "DOUBLE PRECISION", sql)
    return re.sub(r"\bBLOB\b", "BYTEA", sql)


def migrate(connection: PostgresConnection) -> list[str]:
    """Apply migrations not yet recorded, in order, in one transaction (DDL is transactional)."""
    applied = []
    with connection:
        connection.execute("SELECT pg_advisory_xact_lock(?)", (_MIGRATION_LOCK,))
        connection.execute(
            "CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, "
            "applied_at TEXT NOT NULL)"
        )
        done = {row[0] for row in connection.execute("SELECT name FROM _migrations")}
        for name, sql in MIGRATIONS:
            if name in done:
                continue
            for statement in translate_schema(sql).split(";"):
                if statement.strip():
                    connection.execute(statement)
            connection.execute(
                "INSERT INTO _migrations (name, applied_at) VALUES (?, ?)",
                (name, datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")),
            )
            applied.append(name)
    return applied
