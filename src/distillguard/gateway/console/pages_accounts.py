"""The fleet, the accounts, one account (with its tier decision), and the rings."""

from __future__ import annotations

import json
import zlib
from datetime import UTC, datetime, timedelta
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.responses import RedirectResponse, Response

from distillguard.gateway.console.charts import Series, bars, line_chart, sparkline
from distillguard.gateway.console.page import PREFIX, Page
from distillguard.gateway.console.snapshot import SORTS, TIER_ORDER
from distillguard.gateway.console.watch import admin_monitor
from distillguard.monitor.features import describe
from distillguard.store.base import Connection
from distillguard.store.rollup import UsagePoint, fleet_minutes, hourly_usage

__all__ = ["PAGES", "PAGE_SIZE", "hourly_series"]

PAGE_SIZE = 100
MAX_REASON = 500  # characters of an operator's reason
RECENT_REQUESTS = 20
PREVIEW = 240  # characters of a prompt or output shown


def _minute(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M")


async def fleet(page: Page) -> Response:
    snapshot = await page.console.snapshot()
    now = datetime.now(UTC)
    since = _minute(now - timedelta(minutes=59))
    top = [row for row in snapshot.rows[:10] if row.score is not None]

    def read(connection: Connection) -> tuple[list[Any], dict[str, list[float]]]:
        minutes = fleet_minutes(connection, since)
        sparks: dict[str, list[float]] = {row.account: [] for row in top}
        if top:
            rows = connection.execute(
                "SELECT key_id, score FROM risk_samples WHERE key_id IN "  # noqa: S608
                f"({', '.join('?' for _ in top)}) AND sampled_at >= ? ORDER BY sampled_at",
                [*(row.account for row in top), _minute(now - timedelta(days=1))],
            ).fetchall()
            for key_id, score in rows:
                sparks[key_id].append(float(score))
        return minutes, sparks

    minutes, sparks = await page.console.db(read)
    by_minute = {point.at: point for point in minutes}
    labels = [_minute(now - timedelta(minutes=59 - i)) for i in range(60)]
    points = [by_minute.get(label) for label in labels]
    requests = [float(p.requests) if p else 0.0 for p in points]
    tokens = [float(p.tokens) if p else 0.0 for p in points]
    refused = [float(p.refused) if p else 0.0 for p in points]
    short = [label[11:] for label in labels]
    return page.render(
        "fleet.html",
        snapshot=snapshot,
        counts=snapshot.tier_counts(),
        top=[
            (row, sparkline(sparks.get(row.account, []), f"risk of {row.account}, 24 h"))
            for row in top
        ],
        requests_chart=line_chart(
            [Series("requests", requests), Series("refused (429)", refused, "series-b")],
            short,
            "Requests and refusals per minute, last hour (UTC)",
            low=0,
        ),
        tokens_chart=line_chart(
            [Series("tokens", tokens)], short, "Tokens per minute, last hour (UTC)", low=0
        ),
        last_hour={"requests": sum(requests), "tokens": sum(tokens), "refused": sum(refused)},
    )


async def accounts(page: Page) -> Response:
    query = page.request.query_params
    tier = query.get("tier") or None
    if tier not in (None, *TIER_ORDER):
        tier = None
    sort = query.get("sort", "risk")
    if sort not in SORTS:
        sort = "risk"
    descending = query.get("order", "desc" if sort not in ("account", "tenant") else "asc") != "asc"
    snapshot = await page.console.snapshot()
    ordered = snapshot.ordered(sort, descending, tier)
    pages = max(1, -(-len(ordered) // PAGE_SIZE))
    number = min(max(1, _int(query.get("page"), 1)), pages)
    rows = ordered[(number - 1) * PAGE_SIZE : number * PAGE_SIZE]
    return page.render(
        "accounts.html",
        snapshot=snapshot,
        rows=rows,
        tier=tier,
        sort=sort,
        descending=descending,
        page_number=number,
        pages=pages,
        total=len(ordered),
        tiers=TIER_ORDER,
        columns=[
            ("account", "Account"),
            ("tenant", "Tenant"),
            ("tier", "Tier"),
            ("risk", "Risk"),
            ("requests", "Requests"),
            ("tokens", "Tokens"),
            ("last_seen", "Last seen"),
        ],
    )


def hourly_series(points: list[UsagePoint], days: int) -> list[UsagePoint]:
    """One point per hour of the last `days` days, zero where nothing was used."""
    now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    by_hour = {point.at: point for point in points}
    hours = [(now - timedelta(hours=h)).strftime("%Y-%m-%dT%H") for h in range(days * 24, -1, -1)]
    return [by_hour.get(hour) or UsagePoint(hour, 0, 0, 0, 0) for hour in hours]


def _int(text: str | None, default: int) -> int:
    try:
        return int(text) if text is not None else default
    except ValueError:
        return default


def _account_records(connection: Connection, account: str, store_text: bool) -> dict[str, Any]:
    """What the account page reads from the store, in one trip to a worker thread."""
    now = datetime.now(UTC)
    samples = connection.execute(
        "SELECT sampled_at, score, ring_score, tier, contributions FROM risk_samples "
        "WHERE key_id = ? AND sampled_at >= ? ORDER BY sampled_at",
        (account, _minute(now - timedelta(days=30))),
    ).fetchall()
    changes = connection.execute(
        "SELECT changed_at, previous, tier, pinned, score, requests, reasons FROM tier_changes "
        "WHERE key_id = ? AND pinned = 0 ORDER BY seq DESC LIMIT 50",
        (account,),
    ).fetchall()
    decisions = connection.execute(
        "SELECT acted_at, operator, detail FROM operator_actions WHERE target = ? "
        "AND action = 'set_tier' ORDER BY seq DESC LIMIT 50",
        (account,),
    ).fetchall()
    recent = connection.execute(
        "SELECT created_at, endpoint, status, outcome, prompt_tokens, completion_tokens, "
        "parameters, prompt_text, output_text FROM usage WHERE key_id = ? "
        "ORDER BY created_at DESC LIMIT ?",
        (account, RECENT_REQUESTS),
    ).fetchall()
    hours = hourly_usage(
        connection, (now - timedelta(days=7)).strftime("%Y-%m-%dT%H"), key_id=account
    )
    history = [
        {"at": row[0], "previous": row[1], "tier": row[2], "by": "monitor",
         "why": "; ".join(json.loads(row[6])) or f"score {row[4]:.2f}"}
        for row in changes
    ] + [
        {"at": row[0], "previous": json.loads(row[2]).get("previous", ""),
         "tier": json.loads(row[2]).get("tier", ""), "by": row[1],
         "why": json.loads(row[2]).get("reason", "")}
        for row in decisions
    ]  # fmt: skip
    history.sort(key=lambda item: str(item["at"]), reverse=True)
    return {
        "samples": samples,
        "history": history,
        "recent": [_request(row, store_text) for row in recent],
        "hours": hours,
    }


def _request(row: Any, store_text: bool) -> dict[str, Any]:
    def preview(blob: Any) -> str | None:
        if not store_text or not blob:
            return None  # not kept, or purged
        text = zlib.decompress(blob).decode("utf-8", "replace")
        return text[:PREVIEW] + ("…" if len(text) > PREVIEW else "")

    parameters = json.loads(row[6]) if row[6] else {}
    return {
        "at": row[0], "endpoint": row[1], "status": row[2], "outcome": row[3],
        "tokens": int(row[4]) + int(row[5]),
        "parameters": ", ".join(f"{k}={v}" for k, v in sorted(parameters.items()))[:160],
        "prompt": preview(row[7]), "output": preview(row[8]),
    }  # fmt: skip


async def account(page: Page, message: str = "", status: int = 200) -> Response:
    name = page.request.path_params["account"]
    snapshot = await page.console.snapshot()
    row = snapshot.by_account.get(name)
    records = await page.console.db(
        lambda c: _account_records(c, name, page.console.config.store_text)
    )
    if row is None and not records["history"] and not records["recent"]:
        return page.console.problem(page.request, page.session, 404, f"No account {name}.")
    model = page.console.risk_model()
    thresholds = (
        [("watch", model.watch), ("throttle", model.flag), ("block", model.block)] if model else []
    )
    samples = records["samples"]
    points = [(s[0].replace("T", " "), float(s[1]), s[2]) for s in samples]
    if row is not None and row.score is not None:  # a sample is taken only when risk moves
        points.append(("now", row.score, row.ring_score))
    series = [Series("own score", [own for _, own, _ in points])]
    if any(ring is not None for _, _, ring in points):
        series.append(Series("ring score", [float(ring or 0.0) for *_, ring in points], "series-b"))
    labels = [label for label, _, _ in points]
    latest = json.loads(samples[-1][4]) if samples else {}
    pushes = sorted(latest.items(), key=lambda item: -abs(item[1]))[:12]
    ring = snapshot.rings[row.ring] if row is not None and row.ring is not None else None
    hours = hourly_series(records["hours"], 7)
    return page.render(
        "account.html",
        status=status,
        name=name,
        row=row,
        ring=ring,
        ring_rows=[snapshot.by_account.get(member) for member in ring.accounts] if ring else [],
        history=records["history"],
        recent=records["recent"],
        store_text=page.console.config.store_text,
        risk_chart=line_chart(
            series, labels, f"Risk of {name} over time", low=0.0, high=1.0, thresholds=thresholds
        ),
        contributions_chart=bars(
            [(name.replace("_", " "), value) for name, value in pushes],
            f"What pushes the score of {name} up (right) or down (left), latest sample",
        ),
        usage_chart=line_chart(
            [Series("requests", [float(p.requests) for p in hours])],
            [p.at.replace("T", " ") + "h" for p in hours],
            f"Requests per hour of {name}, last 7 days",
            low=0,
        ),
        tiers=TIER_ORDER,
        message=message,
        notice=_notice(page),
        describe=describe,
    )


def _notice(page: Page) -> str:
    changed = page.request.query_params.get("changed")
    if changed in TIER_ORDER:
        return f"Tier set to {changed}, pinned, and recorded in the audit log under your name."
    return ""


async def set_tier(page: Page) -> Response:
    """An operator sets an account's tier, with a reason: recorded (by name, in the audit
    chain) before it is applied, then applied on the monitor (pinned)."""
    name = page.request.path_params["account"]
    tier = page.form.get("tier", "")
    reason = " ".join(page.form.get("reason", "").split())
    if tier not in TIER_ORDER:
        return await account(page, f"Choose a tier: {', '.join(TIER_ORDER)}.", 400)
    if not reason:
        return await account(page, "Give a reason: it goes into the tier history.", 400)
    if len(reason) > MAX_REASON:
        return await account(page, f"Keep the reason under {MAX_REASON} characters.", 400)
    monitor = admin_monitor(page.console.monitor())
    if monitor is None:
        return page.console.problem(page.request, page.session, 409, "The monitor is off.")
    snapshot = await page.console.snapshot()
    row = snapshot.by_account.get(name)
    previous = row.tier if row is not None else "normal"

    def record(connection: Connection) -> None:
        with connection:
            page.console.actions.record(
                connection,
                page.session.operator,
                "set_tier",
                name,
                {"tier": tier, "previous": previous, "reason": reason},
            )

    await page.console.db(record)
    await run_in_threadpool(monitor.set_tier, name, tier)  # it may write or call Redis
    await page.console.fresh_snapshot()
    return RedirectResponse(f"{PREFIX}/accounts/{name}?changed={tier}", status_code=303)


async def rings(page: Page) -> Response:
    snapshot = await page.console.snapshot()
    return page.render(
        "rings.html",
        snapshot=snapshot,
        rings=[
            (ring, [snapshot.by_account.get(member) for member in ring.accounts[:200]])
            for ring in snapshot.rings
        ],
    )


PAGES = [
    ("/fleet", fleet, "GET", "viewer"),
    ("/accounts", accounts, "GET", "viewer"),
    ("/accounts/{account}", account, "GET", "viewer"),
    ("/accounts/{account}/tier", set_tier, "POST", "operator"),
    ("/rings", rings, "GET", "viewer"),
]
