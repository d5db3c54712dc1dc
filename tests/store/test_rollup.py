"""The usage rollup: every usage row counted once, whoever refreshes, in per-key totals,
hours and the fleet's minutes."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from distillguard.store import Connection
from distillguard.store.chain import append_records
from distillguard.store.rollup import (
    fleet_minutes,
    hourly_usage,
    refresh_rollup,
    tenant_month_tokens,
    totals_for,
)
from distillguard.store.usage import UsageRecord


def record(index: int, key_id: str = "k1", status: int = 200, hour: int = 10) -> UsageRecord:
    return UsageRecord(
        request_id=f"req_{key_id}_{index:05d}",
        created_at=f"2026-05-01T{hour:02d}:{index % 60:02d}:00.000000Z",
        tenant="acme" if key_id != "k3" else "globex",
        key_id=key_id,
        model="m",
        endpoint="completions",
        status=status,
        outcome="ok" if status == 200 else "rate_limited",
        prompt_tokens=5 if status == 200 else 0,
        completion_tokens=7 if status == 200 else 0,
        latency_ms=1.0,
        watermark_key_id=None,
        fingerprint=None,
    )


def test_every_row_is_rolled_up_once_across_refreshes(opener: Callable[[], Connection]) -> None:
    connection = opener()
    append_records(connection, [record(i) for i in range(10)], None)
    append_records(connection, [record(i, status=429) for i in range(10, 13)], None)
    assert refresh_rollup(connection) == 13
    assert refresh_rollup(connection) == 0
    append_records(connection, [record(i, "k2", hour=11) for i in range(4)], None)
    append_records(connection, [record(i, "k3", hour=11) for i in range(2)], None)
    assert refresh_rollup(connection, batch=2) == 6  # in several transactions
    totals = totals_for(connection)
    assert (totals["k1"].requests, totals["k1"].refused, totals["k1"].tokens) == (13, 3, 120)
    assert totals["k2"].last_seen == "2026-05-01T11:03:00.000000Z"
    assert set(totals_for(connection, ["k2", "k3"])) == {"k2", "k3"}
    hours = hourly_usage(connection, "2026-05-01T00", tenant="acme")
    assert [(p.at, p.requests) for p in hours] == [("2026-05-01T10", 13), ("2026-05-01T11", 4)]
    assert [p.requests for p in hourly_usage(connection, "2026-05-01T11", key_id="k3")] == [2]
    minutes = fleet_minutes(connection, "2026-05-01T00:00")
    assert sum(p.requests for p in minutes) == 19 and sum(p.refused for p in minutes) == 3
    assert tenant_month_tokens(connection, "2026-05") == {"acme": 168, "globex": 24}
    assert tenant_month_tokens(connection, "2026-06") == {}


def test_two_replicas_refreshing_together_count_each_row_once(
    opener: Callable[[], Connection],
) -> None:
    first, second = opener(), opener()
    append_records(first, [record(i) for i in range(50)], None)
    import threading

    passed: list[int] = []
    threads = [
        threading.Thread(target=lambda c=c: passed.append(refresh_rollup(c, batch=7)))
        for c in (first, second)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(passed) == 50
    assert totals_for(first)["k1"].requests == 50


def test_audit_events_are_not_usage(opener: Callable[[], Connection]) -> None:
    from distillguard.store.chain import append_event

    connection = opener()
    append_records(connection, [replace(record(1), key_id="k9")], None)
    with connection:
        append_event(connection, {"event": "operator", "action": "set_tier"}, None)
    assert refresh_rollup(connection) == 2
    assert totals_for(connection)["k9"].requests == 1
