"""The store interface that every backend's connection implements."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from types import TracebackType
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

__all__ = ["POSTGRES_SCHEMES", "Connection", "Cursor", "describe"]

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

    def lock_chain(self) -> None:
        """Inside ``with connection:``, take the lock that serializes appends to the audit
        chain, so that every replica reads the chain's last hash and appends after it."""

    def __enter__(self) -> Any: ...

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
        /,
    ) -> Any: ...

    def close(self) -> None: ...


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
