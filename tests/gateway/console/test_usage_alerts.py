"""Usage and budgets; alerts (log, table, webhook) and the review queue; replicas sharing
sessions, login limits and jobs through one database."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from distillguard.gateway.budgets import Budgets
from distillguard.gateway.review import ReviewedMonitor
from distillguard.monitor.monitor import RingReport
from distillguard.store import connect
from distillguard.store.chain import append_records
from distillguard.store.operators import create_operator

from .conftest import PASSWORD, ConsoleHarness, csrf_of, make_console, seeded_monitor, sign_in
from .test_jobs import wait_for
from .test_pages import usage


def test_usage_shows_each_tenant_against_its_budget(harness: ConsoleHarness) -> None:
    connection = harness.connect()
    append_records(connection, [usage(i, "k_bob", "acme") for i in range(3)], None)
    budgets = Budgets(harness.connect)
    harness.console.budgets = budgets
    client = harness.client()
    csrf = sign_in(client, "ada")
    page = client.post(
        "/console/usage/budgets", data={"csrf": csrf, "tenant": "acme", "monthly_tokens": "1,000"}
    ).text
    assert budgets.monthly_tokens("acme") == 1000  # in force on this replica at once
    assert "ada" in page and "1,000" in page
    row = connection.execute(
        "SELECT operator, detail FROM operator_actions WHERE action = 'set_budget'"
    ).fetchone()
    assert row[0] == "ada" and json.loads(row[1]) == {"monthly_tokens": 1000}
    keys = client.get("/console/usage?tenant=acme&days=9999").text
    assert "k_bob" in keys and "Tokens per hour, tenant acme, last 90 days" in keys


def test_a_budget_must_be_a_positive_whole_number(harness: ConsoleHarness) -> None:
    client = harness.client()
    csrf = sign_in(client, "ada")
    page = client.post(
        "/console/usage/budgets", data={"csrf": csrf, "tenant": "acme", "monthly_tokens": "lots"}
    )
    assert page.status_code == 400 and "whole number" in page.text


@pytest.fixture
def webhook() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    received: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received.append(json.loads(self.rfile.read(int(self.headers["content-length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook", received
    server.shutdown()
    server.server_close()


def test_tier_changes_and_new_rings_are_announced_once(
    tmp_path: Path, webhook: tuple[str, list[dict[str, Any]]], caplog: pytest.LogCaptureFixture
) -> None:
    url, received = webhook
    console, admin = make_console(tmp_path, seeded_monitor(), webhook=url)
    connection = connect(tmp_path)
    insert = (
        "INSERT INTO tier_changes (changed_at, key_id, tenant, previous, tier, pinned, score, "
        "requests, reasons) VALUES ('2026-05-01T10:00:00Z', ?, 'acme', 'normal', ?, 0, 0.9, 50, ?)"
    )
    with connection:
        connection.execute(insert, ("k_old", "watch", "[]"))
    alerts = console.watch.alerts
    assert alerts.tier_changes(connection) == 0  # history before the first look: no flood
    with connection:
        connection.execute(insert, ("k_new", "throttle", json.dumps(["asks for logprobs"])))
    assert alerts.tier_changes(connection) == 1
    assert alerts.tier_changes(connection) == 0
    ring = RingReport(0, ("a1", "a2", "a3"), 300, 0.97, ("share one template (0.90)",))
    assert alerts.rings(connection, [ring]) == 1
    grown = RingReport(0, ("a1", "a2", "a3", "a4"), 400, 0.97, ())
    assert alerts.rings(connection, [grown]) == 0  # the same ring, a member more
    assert [item["kind"] for item in received] == ["tier_change", "ring"]
    assert received[0]["details"]["account"] == "k_new" and "logprobs" in received[0]["message"]
    assert "alert (tier_change): account k_new" in caplog.text
    client = TestClient(admin.app(), base_url="http://testserver")
    create_operator(connection, "vera", "viewer", PASSWORD)
    sign_in(client, "vera")
    page = client.get("/console/alerts").text
    assert "ring of 3 accounts found" in page and "delivered" in page
    console.close()


def test_an_operator_confirms_a_block_from_the_review_queue(tmp_path: Path) -> None:
    monitor = seeded_monitor()
    reviewed = ReviewedMonitor(monitor, ["block"], lambda: connect(tmp_path, shared=True))
    console, admin = make_console(tmp_path, monitor, review=("block",))
    console.monitor = lambda: reviewed
    reviewed.start()
    create_operator(connect(tmp_path), "otto", "operator", PASSWORD)
    assert reviewed.tier_of("k_harvest") == "throttle"  # proposed, not in force
    client = TestClient(admin.app(), base_url="http://testserver")
    sign_in(client, "otto")
    page = client.get("/console/alerts").text
    assert "Confirm block" in page and "k_harvest" in page
    response = client.post(
        "/console/alerts/review/k_harvest",
        data={"csrf": csrf_of(page), "decision": "confirm", "reason": "logprob harvesting"},
    )
    assert "Nothing waits for review" in response.text
    assert reviewed.tier_of("k_harvest") == "block"
    history = client.get("/console/accounts/k_harvest").text
    assert "otto" in history and "logprob harvesting" in history
    reviewed.close()
    console.close()


def test_replicas_share_sessions_login_limits_and_jobs(
    tmp_path: Path, fresh_postgres_url: str
) -> None:
    from distillguard.gateway.console import AuthSettings

    auth = AuthSettings(failures_per_address=2)
    first, first_admin = make_console(
        tmp_path / "a", seeded_monitor(), url=fresh_postgres_url, auth=auth
    )
    second, second_admin = make_console(
        tmp_path / "b", seeded_monitor(), url=fresh_postgres_url, auth=auth
    )
    connection = connect(tmp_path, url=fresh_postgres_url)
    create_operator(connection, "otto", "operator", PASSWORD)
    connection.close()
    one = TestClient(first_admin.app(), base_url="http://testserver")
    other = TestClient(second_admin.app(), base_url="http://testserver")
    csrf = sign_in(one, "otto")
    other.cookies.set("dg_console", one.cookies["dg_console"], path="/console")
    assert other.get("/console/fleet", follow_redirects=False).status_code == 200
    job_url = other.post(
        "/console/audit/verify", data={"csrf": csrf}, follow_redirects=False
    ).headers["location"]
    assert wait_for(one, job_url)["status"] == "done"  # run from one replica, seen on the other
    for client in (one, one):
        form = client.get("/console/login")
        client.post(
            "/console/login", data={"csrf": csrf_of(form.text), "name": "x", "password": "y"}
        )
    form = other.get("/console/login")
    refused = other.post(
        "/console/login", data={"csrf": csrf_of(form.text), "name": "otto", "password": PASSWORD}
    )
    assert refused.status_code == 429  # the failures on the first count on the second
    first.close()
    second.close()
