"""Usage rolled up for reading: per key and hour, per minute for the whole fleet, and per key
in total, so that the console reads a few rows instead of scanning millions of usage rows.

The rollup follows the audit chain: `usage_rollup_cursor` holds the last audit sequence number
rolled up, and `refresh_rollup` adds the usage rows of the records after it. Appends to the
chain are serialized (`Connection.lock_chain`) and commit in sequence order, so the records up
to the chain's committed head are a prefix that never gains a member later; each row is rolled
up exactly once. Replicas may refresh together: the cursor moves with a compare-and-set in the
same transaction as the sums, and a replica that loses the race rolls back and leaves it.

A refused request (status 429) is a usage row like any other, counted in `requests` and in
`refused`; its tokens are zero. Purging text leaves the rollups alone, since they hold no text.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from distillguard.store.base import Connection

__all__ = [
    "FLEET_MINUTES_KEPT",
    "Totals",
    "UsagePoint",
    "fleet_minutes",
    "hourly_usage",
    "refresh_rollup",
    "tenant_month_tokens",
    "totals_for",
]

FLEET_MINUTES_KEPT = 2 * 24 * 60  # the fleet's per-minute rows kept: two days
_BATCH = 100_000  # audit records rolled up per transaction


@dataclass(frozen=True)
class Totals:
    key_id: str
    tenant: str
    requests: int
    refused: int
    prompt_tokens: int
    completion_tokens: int
    last_seen: str

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class UsagePoint:
    """One bucket of a usage series: `at` is its hour ("2026-05-01T13") or minute."""

    at: str
    requests: int
    refused: int
    prompt_tokens: int
    completion_tokens: int

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


_SUMS = (
    "COUNT(*), SUM(CASE WHEN u.status = 429 THEN 1 ELSE 0 END), "
    "SUM(u.prompt_tokens), SUM(u.completion_tokens)"
)
_NEW_ROWS = (
    "FROM audit a JOIN usage u ON u.request_id = a.request_id WHERE a.seq > ? AND a.seq <= ?"
)
_ADD = (
    "requests = {t}.requests + excluded.requests, refused = {t}.refused + excluded.refused, "
    "prompt_tokens = {t}.prompt_tokens + excluded.prompt_tokens, "
    "completion_tokens = {t}.completion_tokens + excluded.completion_tokens"
)


def refresh_rollup(
    connection: Connection, batch: int = _BATCH, most_batches: int | None = None
) -> int:
    """Roll up the usage rows recorded since the last refresh, `batch` audit records per
    transaction (and at most `most_batches` of them: a page that refreshes first never waits
    for a large backlog); how many audit records it passed (0: nothing new, or another replica
    is rolling the same records up)."""
    passed = 0
    for _ in range(most_batches if most_batches is not None else 2**62):
        start = int(
            connection.execute(
                "SELECT seq FROM usage_rollup_cursor WHERE name = 'usage'"
            ).fetchone()[0]
        )
        head = connection.execute("SELECT MAX(seq) FROM audit").fetchone()[0]
        if head is None or int(head) <= start:
            return passed
        end = min(int(head), start + batch)
        if not _roll(connection, start, end):
            return passed  # another replica moved the cursor first
        passed += end - start
        if end == int(head):
            return passed
    return passed


def _roll(connection: Connection, start: int, end: int) -> bool:
    with connection:
        moved = connection.execute(
            "UPDATE usage_rollup_cursor SET seq = ? WHERE name = 'usage' AND seq = ?", (end, start)
        )
        if moved.rowcount != 1:
            return False
        connection.execute(
            "INSERT INTO usage_hourly (key_id, hour, tenant, requests, refused, prompt_tokens, "
            f"completion_tokens) SELECT u.key_id, substr(u.created_at, 1, 13), MIN(u.tenant), "
            f"{_SUMS} {_NEW_ROWS} GROUP BY u.key_id, substr(u.created_at, 1, 13) "
            f"ON CONFLICT (key_id, hour) DO UPDATE SET {_ADD.format(t='usage_hourly')}",
            (start, end),
        )
        connection.execute(
            "INSERT INTO usage_minutes (minute, requests, refused, prompt_tokens, "
            f"completion_tokens) SELECT substr(u.created_at, 1, 16), {_SUMS} {_NEW_ROWS} "
            "GROUP BY substr(u.created_at, 1, 16) "
            f"ON CONFLICT (minute) DO UPDATE SET {_ADD.format(t='usage_minutes')}",
            (start, end),
        )
        connection.execute(
            "INSERT INTO usage_totals (key_id, tenant, requests, refused, prompt_tokens, "
            f"completion_tokens, last_seen) SELECT u.key_id, MIN(u.tenant), {_SUMS}, "
            f"MAX(u.created_at) {_NEW_ROWS} GROUP BY u.key_id "
            f"ON CONFLICT (key_id) DO UPDATE SET {_ADD.format(t='usage_totals')}, "
            "last_seen = CASE WHEN excluded.last_seen > usage_totals.last_seen "
            "THEN excluded.last_seen ELSE usage_totals.last_seen END",
            (start, end),
        )
        newest = connection.execute("SELECT MAX(minute) FROM usage_minutes").fetchone()[0]
        if newest is not None:
            connection.execute(
                "DELETE FROM usage_minutes WHERE minute < ?", (_minutes_before(newest),)
            )
    return True


def _minutes_before(minute: str) -> str:
    """The minute `FLEET_MINUTES_KEPT` minutes before `minute` ("YYYY-MM-DDTHH:MM")."""
    from datetime import datetime, timedelta

    then = datetime.fromisoformat(minute) - timedelta(minutes=FLEET_MINUTES_KEPT)
    return then.strftime("%Y-%m-%dT%H:%M")


def totals_for(connection: Connection, key_ids: Sequence[str] | None = None) -> dict[str, Totals]:
    """Each key's totals (every key's when `key_ids` is None)."""
    query = (
        "SELECT key_id, tenant, requests, refused, prompt_tokens, completion_tokens, last_seen "
        "FROM usage_totals"
    )
    arguments: list[str] = []
    if key_ids is not None:
        if not key_ids:
            return {}
        query += f" WHERE key_id IN ({', '.join('?' for _ in key_ids)})"
        arguments = list(key_ids)
    rows = connection.execute(query, arguments).fetchall()
    return {row[0]: Totals(*(row[i] for i in range(7))) for row in rows}


def hourly_usage(
    connection: Connection, since_hour: str, *, key_id: str | None = None, tenant: str | None = None
) -> list[UsagePoint]:
    """Usage per hour from `since_hour` ("YYYY-MM-DDTHH") on: of a key, a tenant, or all."""
    clauses, arguments = ["hour >= ?"], [since_hour]
    if key_id is not None:
        clauses.append("key_id = ?")
        arguments.append(key_id)
    if tenant is not None:
        clauses.append("tenant = ?")
        arguments.append(tenant)
    rows = connection.execute(
        "SELECT hour, SUM(requests), SUM(refused), SUM(prompt_tokens), SUM(completion_tokens) "  # noqa: S608
        f"FROM usage_hourly WHERE {' AND '.join(clauses)} GROUP BY hour ORDER BY hour",
        arguments,
    ).fetchall()
    return [UsagePoint(row[0], *(int(row[i]) for i in range(1, 5))) for row in rows]


def fleet_minutes(connection: Connection, since_minute: str) -> list[UsagePoint]:
    rows = connection.execute(
        "SELECT minute, requests, refused, prompt_tokens, completion_tokens FROM usage_minutes "
        "WHERE minute >= ? ORDER BY minute",
        (since_minute,),
    ).fetchall()
    return [UsagePoint(row[0], *(int(row[i]) for i in range(1, 5))) for row in rows]


def tenant_month_tokens(connection: Connection, month: str) -> dict[str, int]:
    """Tokens each tenant used in `month` ("YYYY-MM"), as rolled up so far."""
    rows = connection.execute(
        "SELECT tenant, SUM(prompt_tokens) + SUM(completion_tokens) FROM usage_hourly "
        "WHERE hour >= ? AND hour < ? GROUP BY tenant",
        (f"{month}-01T00", f"{month}-32T00"),
    ).fetchall()
    return {row[0]: int(row[1]) for row in rows}
