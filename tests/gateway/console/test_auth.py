"""Signing in to the console: cookies, CSRF, roles, expiry and failed-login limits."""

from __future__ import annotations

from pathlib import Path

import pytest
from starlette.testclient import TestClient

from distillguard.gateway.console import AuthSettings
from distillguard.store import connect
from distillguard.store.operators import create_operator, disable_operator

from .conftest import PASSWORD, ConsoleHarness, csrf_of, make_console, seeded_monitor, sign_in


def test_pages_send_a_visitor_without_a_session_to_sign_in(harness: ConsoleHarness) -> None:
    client = harness.client()
    response = client.get("/console/accounts?tier=block", follow_redirects=False)
    assert response.status_code == 303
    assert response.headers["location"] == "/console/login?next=/console/accounts?tier=block"


def test_signing_in_sets_an_httponly_strict_cookie_and_lands_where_asked(
    harness: ConsoleHarness,
) -> None:
    client = harness.client()
    form = client.get("/console/login?next=/console/rings")
    response = client.post(
        "/console/login",
        data={"csrf": csrf_of(form.text), "name": "vera", "password": PASSWORD,
              "next": "/console/rings"},
        follow_redirects=False,
    )  # fmt: skip
    assert response.status_code == 303 and response.headers["location"] == "/console/rings"
    cookie = next(
        v for k, v in response.headers.multi_items() if k == "set-cookie" and "dg_console=" in v
    )
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/console" in cookie
    assert "Secure" not in cookie  # plain http, no override
    assert "Rings" in client.get("/console/rings").text


def test_cookies_are_secure_behind_https(harness: ConsoleHarness) -> None:
    client = TestClient(harness.admin.app(), base_url="https://console.example")
    form = client.get("/console/login")
    response = client.post(
        "/console/login",
        data={"csrf": csrf_of(form.text), "name": "vera", "password": PASSWORD},
        follow_redirects=False,
    )
    cookies = [v for k, v in response.headers.multi_items() if k == "set-cookie"]
    assert any("dg_console=" in c and "Secure" in c for c in cookies)


@pytest.mark.parametrize("target", ["https://evil.example/", "//evil.example/x", "/elsewhere"])
def test_after_signing_in_the_console_never_sends_you_elsewhere(
    harness: ConsoleHarness, target: str
) -> None:
    client = harness.client()
    form = client.get("/console/login")
    response = client.post(
        "/console/login",
        data={"csrf": csrf_of(form.text), "name": "vera", "password": PASSWORD, "next": target},
        follow_redirects=False,
    )
    assert response.headers["location"] == "/console/fleet"


def test_the_login_form_needs_its_own_token(harness: ConsoleHarness) -> None:
    client = harness.client()
    client.get("/console/login")
    response = client.post(
        "/console/login", data={"csrf": "forged", "name": "vera", "password": PASSWORD}
    )
    assert response.status_code == 403
    assert "dg_console" not in client.cookies


def test_a_wrong_password_is_refused(harness: ConsoleHarness) -> None:
    client = harness.client()
    form = client.get("/console/login")
    response = client.post(
        "/console/login", data={"csrf": csrf_of(form.text), "name": "vera", "password": "nope"}
    )
    assert response.status_code == 401 and "Wrong name or password" in response.text


def test_failed_logins_are_limited_per_address_even_with_the_right_password(
    tmp_path: Path,
) -> None:
    monitor = seeded_monitor()
    console, admin = make_console(
        tmp_path, monitor, auth=AuthSettings(failures_per_address=3, failures_per_name=100)
    )
    create_operator(connect(tmp_path), "vera", "viewer", PASSWORD)
    client = TestClient(admin.app(), base_url="http://testserver")
    for _ in range(3):
        form = client.get("/console/login")
        client.post(
            "/console/login", data={"csrf": csrf_of(form.text), "name": "vera", "password": "x"}
        )
    form = client.get("/console/login")
    response = client.post(
        "/console/login", data={"csrf": csrf_of(form.text), "name": "vera", "password": PASSWORD}
    )
    assert response.status_code == 429
    assert 0 < int(response.headers["retry-after"]) <= 900
    console.close()


def test_failed_logins_on_one_name_are_limited_from_any_address(tmp_path: Path) -> None:
    monitor = seeded_monitor()
    console, _ = make_console(
        tmp_path, monitor, auth=AuthSettings(failures_per_address=100, failures_per_name=2)
    )
    connection = connect(tmp_path)
    for address in ("10.0.0.1", "10.0.0.2"):
        console.limits.failed(connection, address, "vera")
    assert console.limits.retry_after(connection, "10.0.0.3", "vera") > 0
    assert console.limits.retry_after(connection, "10.0.0.3", "ada") == 0
    connection.close()
    console.close()


def test_a_session_ends_after_its_idle_time_and_its_lifetime(tmp_path: Path) -> None:
    now = [1_000_000.0]
    monitor = seeded_monitor()
    console, admin = make_console(
        tmp_path, monitor, auth=AuthSettings(idle=600, lifetime=3600), clock=lambda: now[0]
    )
    create_operator(connect(tmp_path), "vera", "viewer", PASSWORD)
    client = TestClient(admin.app(), base_url="http://testserver")
    sign_in(client, "vera")
    now[0] += 500
    assert client.get("/console/rings", follow_redirects=False).status_code == 200
    now[0] += 599  # idle clock restarted by the last request (touched once a minute)
    assert client.get("/console/rings", follow_redirects=False).status_code == 200
    now[0] += 601
    assert client.get("/console/rings", follow_redirects=False).status_code == 303
    sign_in(client, "vera")
    for _ in range(7):  # active all along, yet the lifetime ends it
        now[0] += 550
        last = client.get("/console/rings", follow_redirects=False).status_code
    assert last == 303
    console.close()


def test_signing_out_ends_the_session_for_a_replayed_cookie(harness: ConsoleHarness) -> None:
    client = harness.client()
    csrf = sign_in(client, "vera")
    stolen = client.cookies["dg_console"]
    client.post("/console/logout", data={"csrf": csrf})
    thief = harness.client()
    thief.cookies.set("dg_console", stolen, path="/console")
    assert thief.get("/console/fleet", follow_redirects=False).status_code == 303


def test_disabling_an_operator_ends_their_session(harness: ConsoleHarness) -> None:
    client = harness.client()
    sign_in(client, "vera")
    disable_operator(harness.connect(), "vera")
    assert client.get("/console/fleet", follow_redirects=False).status_code == 303


@pytest.mark.parametrize("token", [None, "", "wrong-token"])
def test_a_change_without_the_right_csrf_token_is_refused(
    harness: ConsoleHarness, token: str | None
) -> None:
    client = harness.client()
    sign_in(client, "otto")
    data = {"tier": "block", "reason": "harvesting"} | (
        {"csrf": token} if token is not None else {}
    )
    response = client.post("/console/accounts/k_alice/tier", data=data)
    assert response.status_code == 403 and "CSRF" in response.text
    assert harness.monitor.tier_of("k_alice") == "normal"


def test_a_change_from_another_origin_is_refused(harness: ConsoleHarness) -> None:
    client = harness.client()
    csrf = sign_in(client, "otto")
    response = client.post(
        "/console/accounts/k_alice/tier",
        data={"csrf": csrf, "tier": "block", "reason": "harvesting"},
        headers={"origin": "http://evil.example"},
    )
    assert response.status_code == 403
    assert harness.monitor.tier_of("k_alice") == "normal"


def test_the_csrf_token_also_works_as_a_header(harness: ConsoleHarness) -> None:
    client = harness.client()
    csrf = sign_in(client, "otto")
    response = client.post(
        "/console/accounts/k_alice/tier",
        data={"tier": "watch", "reason": "checking"},
        headers={"x-csrf-token": csrf},
    )
    assert response.status_code == 200
    assert harness.monitor.tier_of("k_alice") == "watch"


@pytest.mark.parametrize(
    ("name", "path", "data", "allowed"),
    [
        ("vera", "/console/accounts/k_alice/tier", {"tier": "block", "reason": "r"}, False),
        ("otto", "/console/accounts/k_alice/tier", {"tier": "block", "reason": "r"}, True),
        ("otto", "/console/usage/budgets", {"tenant": "acme", "monthly_tokens": "5"}, False),
        ("ada", "/console/usage/budgets", {"tenant": "acme", "monthly_tokens": "5"}, True),
        ("vera", "/console/audit/verify", {}, False),
    ],
)
def test_each_role_may_do_only_what_it_allows(
    harness: ConsoleHarness, name: str, path: str, data: dict[str, str], allowed: bool
) -> None:
    client = harness.client()
    csrf = sign_in(client, name)
    response = client.post(path, data=data | {"csrf": csrf}, follow_redirects=False)
    assert (response.status_code == 403) is not allowed, response.text


def test_every_page_forbids_framing_inline_scripts_and_caching(harness: ConsoleHarness) -> None:
    client = harness.client()
    sign_in(client, "vera")
    response = client.get("/console/fleet")
    policy = response.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy
    assert "unsafe-inline" not in policy
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["x-content-type-options"] == "nosniff"


def test_a_change_through_a_proxy_that_forwards_the_host_is_accepted(
    harness: ConsoleHarness,
) -> None:
    client = harness.client()
    csrf = sign_in(client, "otto")
    response = client.post(
        "/console/accounts/k_alice/tier",
        data={"csrf": csrf, "tier": "watch", "reason": "checking"},
        headers={"origin": "https://console.example", "x-forwarded-host": "console.example"},
    )
    assert response.status_code == 200 and harness.monitor.tier_of("k_alice") == "watch"
