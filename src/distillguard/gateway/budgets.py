"""Tenants' monthly token budgets: set by admins in the console, enforced by the limiter.

The budgets live in the store (`tenant_budgets`), so every replica enforces the same ones. The
request path asks `monthly_tokens(tenant)`, a dictionary read; a background thread re-reads
the table every `refresh` seconds, so a budget set on one replica is in force on all of them
within that time. The limiter counts the month's tokens (`admission.month_scope`): with the
shared Redis limiter the count survives restarts; the in-memory one starts each process at
zero, as it does for the daily budget.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from distillguard.errors import InputError
from distillguard.store.base import Connection

__all__ = ["Budget", "Budgets", "read_budgets", "write_budget"]

log = logging.getLogger("distillguard.gateway")


@dataclass(frozen=True)
class Budget:
    tenant: str
    monthly_tokens: int
    updated_by: str
    updated_at: str


def read_budgets(connection: Connection) -> dict[str, Budget]:
    rows = connection.execute(
        "SELECT tenant, monthly_tokens, updated_by, updated_at FROM tenant_budgets"
    ).fetchall()
    return {row[0]: Budget(row[0], int(row[1]), row[2], row[3]) for row in rows}


def write_budget(
    connection: Connection, tenant: str, monthly_tokens: int | None, updated_by: str
) -> None:
    """Set (or, with None, remove) a tenant's budget, inside the caller's transaction."""
    if not tenant:
        raise InputError("a budget needs a tenant")
    if monthly_tokens is None:
        connection.execute("DELETE FROM tenant_budgets WHERE tenant = ?", (tenant,))
        return
    if monthly_tokens < 1:
        raise InputError("a monthly token budget is a positive number of tokens")
    now = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    connection.execute(
        "INSERT INTO tenant_budgets (tenant, monthly_tokens, updated_by, updated_at) "
        "VALUES (?, ?, ?, ?) ON CONFLICT (tenant) DO UPDATE SET "
        "monthly_tokens = excluded.monthly_tokens, updated_by = excluded.updated_by, "
        "updated_at = excluded.updated_at",
        (tenant, monthly_tokens, updated_by, now),
    )


class Budgets:
    """The budgets in force, kept in memory for the request path and refreshed from the store."""

    def __init__(self, connect: Callable[[], Connection], refresh: float = 5.0) -> None:
        self._connect = connect
        self.refresh_seconds = refresh
        self._tokens: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def monthly_tokens(self, tenant: str) -> int | None:
        return self._tokens.get(tenant)

    def reload(self, connection: Connection) -> None:
        self._tokens = {
            tenant: budget.monthly_tokens for tenant, budget in read_budgets(connection).items()
        }

    def start(self) -> None:
        """Read the budgets now (a failure here is a configuration error), then keep them
        fresh on a daemon thread."""
        connection = self._connect()
        self.reload(connection)
        self._thread = threading.Thread(
            target=self._run, args=(connection,), name="distillguard-budgets", daemon=True
        )
        self._thread.start()

    def _run(self, connection: Connection) -> None:
        try:
            while not self._stop.wait(self.refresh_seconds):
                try:
                    self.reload(connection)
                except Exception as exc:  # the budgets in memory stay in force
                    log.warning("could not re-read the tenants' budgets: %s", exc)
        finally:
            connection.close()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
