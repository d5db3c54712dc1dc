"""Usage per key and tenant over time, tenants' monthly budgets, alerts and the review queue."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.responses import RedirectResponse, Response

from distillguard.gateway.budgets import read_budgets, write_budget
from distillguard.gateway.console.alerts import recent_alerts
from distillguard.gateway.console.charts import Series, line_chart
from distillguard.gateway.console.page import PREFIX, Page
from distillguard.gateway.console.pages_accounts import hourly_series
from distillguard.gateway.console.snapshot import TIER_ORDER
from distillguard.gateway.console.watch import admin_monitor
from distillguard.redact import redact
from distillguard.store.base import Connection
from distillguard.store.rollup import hourly_usage, tenant_month_tokens

__all__ = ["PAGES"]

_TOP_KEYS = 50


def _days(text: str | None) -> int:
    try:
        return min(max(int(text or 7), 1), 90)
    except ValueError:
        return 7


async def usage(page: Page, message: str = "", status: int = 200) -> Response:
    query = page.request.query_params
    tenant = query.get("tenant") or None
    key_id = query.get("key") or None
    days = _days(query.get("days"))
    now = datetime.now(UTC)
    month = now.strftime("%Y-%m")
    since = (now - timedelta(days=days)).strftime("%Y-%m-%dT%H")
    await page.console.snapshot()  # brings the rollup up to date (at most a few seconds old)

    def read(connection: Connection) -> dict[str, Any]:
        clauses, arguments = [], []
        if tenant is not None:
            clauses.append("tenant = ?")
            arguments.append(tenant)
        where = f"WHERE {' AND '.join(clauses)} " if clauses else ""
        keys = connection.execute(
            "SELECT key_id, tenant, requests, refused, prompt_tokens + completion_tokens, "  # noqa: S608
            f"last_seen FROM usage_totals {where}"
            "ORDER BY prompt_tokens + completion_tokens DESC, key_id LIMIT ?",
            [*arguments, _TOP_KEYS],
        ).fetchall()
        return {
            "hours": hourly_usage(connection, since, key_id=key_id, tenant=tenant),
            "keys": keys,
            "month": tenant_month_tokens(connection, month),
            "budgets": read_budgets(connection),
        }

    found = await page.console.db(read)
    hours = hourly_series(found["hours"], days)
    labels = [point.at.replace("T", " ") + "h" for point in hours]
    scope = f"key {key_id}" if key_id else f"tenant {tenant}" if tenant else "all tenants"
    tenants = sorted(set(found["month"]) | set(found["budgets"]))
    return page.render(
        "usage.html",
        status=status,
        tenant=tenant,
        key_id=key_id,
        days=days,
        month=month,
        scope=scope,
        requests_chart=line_chart(
            [
                Series("requests", [float(p.requests) for p in hours]),
                Series("refused (429)", [float(p.refused) for p in hours], "series-b"),
            ],
            labels,
            f"Requests per hour, {scope}, last {days} days (UTC)",
            low=0,
        ),
        tokens_chart=line_chart(
            [Series("tokens", [float(p.tokens) for p in hours])],
            labels,
            f"Tokens per hour, {scope}, last {days} days (UTC)",
            low=0,
        ),
        keys=found["keys"],
        tenants=[
            (name, found["month"].get(name, 0), found["budgets"].get(name)) for name in tenants
        ],
        message=message,
        enforced=page.console.budgets is not None,
    )


async def set_budget(page: Page) -> Response:
    tenant = page.form.get("tenant", "").strip()
    text = page.form.get("monthly_tokens", "").replace(",", "").replace("_", "").strip()
    if not tenant:
        return await usage(page, "Name the tenant whose budget to set.", 400)
    if text and not text.isdigit():
        return await usage(page, "A budget is a whole number of tokens (empty removes it).", 400)
    tokens = int(text) if text else None
    if tokens is not None and tokens < 1:
        return await usage(page, "A budget is at least one token (empty removes it).", 400)

    def write(connection: Connection) -> None:
        with connection:
            write_budget(connection, tenant, tokens, page.session.operator)
            page.console.actions.record(
                connection,
                page.session.operator,
                "set_budget",
                tenant,
                {"monthly_tokens": tokens},
            )
        if page.console.budgets is not None:  # in force here now, on other replicas soon
            page.console.budgets.reload(connection)

    await page.console.db(write)
    return RedirectResponse(f"{PREFIX}/usage?tenant={tenant}", status_code=303)


def _pending(page: Page, rows: list[Any]) -> list[Any]:
    hook = page.console.monitor()
    review = set(page.console.config.review)
    pending = getattr(hook, "pending", None)
    return [
        row
        for row in rows
        if row.tier in review
        and not row.pinned
        and (pending is None or pending(row.account, row.tier, row.pinned))
    ]


async def alerts(page: Page, message: str = "", status: int = 200) -> Response:
    snapshot = await page.console.snapshot()
    found = await page.console.db(recent_alerts)
    webhook = page.console.config.webhook
    return page.render(
        "alerts.html",
        status=status,
        alerts=found,
        pending=_pending(page, snapshot.rows),
        review=page.console.config.review,
        webhook=redact(webhook) if webhook else None,
        tiers=TIER_ORDER,
        message=message,
    )


async def decide(page: Page) -> Response:
    """Confirm a proposed tier, or reject it for another; either way a pinned tier with the
    operator's name and reason, in the history and the audit chain."""
    account = page.request.path_params["account"]
    decision = page.form.get("decision", "")
    reason = " ".join(page.form.get("reason", "").split())
    snapshot = await page.console.snapshot()
    row = snapshot.by_account.get(account)
    if row is None or decision not in ("confirm", "reject"):
        return await alerts(page, "Choose confirm or reject for an account in the queue.", 400)
    tier = row.tier if decision == "confirm" else page.form.get("tier", "throttle")
    if tier not in TIER_ORDER:
        return await alerts(page, "Choose the tier to put it in instead.", 400)
    if not reason:
        return await alerts(page, "Give a reason: it goes into the tier history.", 400)
    monitor = admin_monitor(page.console.monitor())
    if monitor is None:
        return page.console.problem(page.request, page.session, 409, "The monitor is off.")

    def record(connection: Connection) -> None:
        with connection:
            page.console.actions.record(
                connection,
                page.session.operator,
                "set_tier",
                account,
                {"tier": tier, "previous": row.tier, "reason": reason, "review": decision},
            )

    await page.console.db(record)
    await run_in_threadpool(monitor.set_tier, account, tier)  # it may write or call Redis
    await page.console.fresh_snapshot()
    return RedirectResponse(f"{PREFIX}/alerts", status_code=303)


PAGES = [
    ("/usage", usage, "GET", "viewer"),
    ("/usage/budgets", set_budget, "POST", "admin"),
    ("/alerts", alerts, "GET", "viewer"),
    ("/alerts/review/{account}", decide, "POST", "operator"),
]
