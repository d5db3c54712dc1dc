"""The gateway acts on the monitor's tiers, hands it every request, and serves the admin API."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
import pytest

from distillguard.errors import ConfigError
from distillguard.experiments.simulate import MODEL
from distillguard.gateway.admin import MAX_FAILURES, FailedAttempts
from distillguard.gateway.app import Gateway
from distillguard.gateway.policy import DEFAULT_TIERS, load_policy
from distillguard.monitor.events import MonitorEvent
from distillguard.monitor.monitor import Monitor
from distillguard.store.audit import AuditLog

from ..monitor.test_monitor import eager_model
from .conftest import monitored_gateway

ADMIN = "admin-token-for-tests-0123456789"


@dataclass
class Setup:
    gateway: Gateway
    monitor: Monitor
    key: str
    key_id: str
    audit: AuditLog


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[Setup]:
    monitor = Monitor(eager_model())
    gateway, audit, key, key_id = monitored_gateway(tmp_path, monitor, ADMIN)
    yield Setup(gateway, monitor, key, key_id, audit)
    audit.close()


def call(
    gateway: Gateway,
    method: str,
    path: str,
    *,
    token: str | None,
    body: dict[str, Any] | None = None,
) -> httpx.Response:
    app = gateway.admin.app() if path.startswith("/v1/admin") else gateway.app

    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
            headers = {"authorization": f"Bearer {token}"} if token else {}
            return await client.request(method, path, json=body, headers=headers)

    return asyncio.run(go())


def chat(setup: Setup, **extra: Any) -> httpx.Response:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hello there"}]} | extra
    return call(setup.gateway, "POST", "/v1/chat/completions", token=setup.key, body=body)


def test_every_request_reaches_the_monitor_with_its_conversation_shape(setup: Setup) -> None:
    seen: list[MonitorEvent] = []
    setup.monitor.observe = seen.append  # type: ignore[method-assign]
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "first question"},
        {"role": "assistant", "content": "an answer"},
        {"role": "user", "content": "and a follow-up"},
    ]
    body = {"model": MODEL, "messages": messages, "max_tokens": 300, "n": 2}
    assert call(setup.gateway, "POST", "/v1/chat/completions", token=setup.key, body=body)
    assert len(seen) == 1
    event = seen[0]
    assert (event.prompt, event.turns, event.max_tokens, event.n) == ("and a follow-up", 2, 300, 2)
    assert event.account == setup.key_id and event.tenant == "acme"
    assert event.completion_tokens > 0 and event.status == 200
    assert setup.gateway.monitor_calls == 1 and setup.gateway.monitor_seconds > 0


def test_a_blocked_key_gets_403_in_openai_format(setup: Setup) -> None:
    setup.monitor.set_tier(setup.key_id, "block")
    response = chat(setup)
    assert response.status_code == 403
    error = response.json()["error"]
    assert error["code"] == "account_blocked" and error["type"] == "permission_denied"
    assert set(error) == {"message", "type", "param", "code"}


def test_a_throttled_key_loses_extras_and_most_of_its_rate(setup: Setup) -> None:
    assert chat(setup, n=2, max_tokens=50).status_code == 200
    throttle = setup.gateway.tiers["throttle"]
    setup.gateway.tiers["throttle"] = replace(throttle, rate_factor=0.002)
    setup.monitor.set_tier(setup.key_id, "throttle")
    refused = chat(setup, n=2)
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "n"
    assert chat(setup, logprobs=True, top_logprobs=2).status_code == 400
    # rpm 1000 x rate_factor 0.002 = 2 a minute; one request was already admitted this minute
    statuses = [chat(setup, max_tokens=50).status_code for _ in range(3)]
    assert statuses == [200, 429, 429]


def test_a_watched_key_keeps_being_served(setup: Setup) -> None:
    setup.monitor.set_tier(setup.key_id, "watch")
    assert chat(setup, n=4).status_code == 200
    assert chat(setup, n=5).status_code == 400


def test_the_admin_api_needs_its_token(setup: Setup) -> None:
    assert call(setup.gateway, "GET", "/v1/admin/accounts", token=None).status_code == 401
    assert call(setup.gateway, "GET", "/v1/admin/accounts", token="wrong").status_code == 401
    assert call(setup.gateway, "GET", "/v1/admin/accounts", token=setup.key).status_code == 401
    setup.gateway.admin.token = None
    disabled = call(setup.gateway, "GET", "/v1/admin/accounts", token=ADMIN)
    assert disabled.status_code == 403
    assert "DISTILLGUARD_ADMIN_TOKEN" in disabled.json()["error"]["message"]


def test_the_admin_api_lists_accounts_and_pins_tiers(setup: Setup) -> None:
    for index in range(12):
        text = f"Think step by step about problem {index}."
        body = {"model": MODEL, "messages": [{"role": "user", "content": text}]}
        call(setup.gateway, "POST", "/v1/chat/completions", token=setup.key, body=body)
    setup.monitor.drain()
    listed = call(setup.gateway, "GET", "/v1/admin/accounts", token=ADMIN).json()["data"]
    assert [row["account"] for row in listed] == [setup.key_id]
    assert listed[0]["tier"] == "throttle" and listed[0]["reasons"]
    path = f"/v1/admin/accounts/{setup.key_id}/tier"
    assert call(setup.gateway, "POST", path, token=ADMIN, body={"tier": "normal"}).json() == {
        "account": setup.key_id,
        "tier": "normal",
        "pinned": True,
    }
    assert chat(setup, n=2).status_code == 200
    bad = call(setup.gateway, "POST", path, token=ADMIN, body={"tier": "banished"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "tier"
    rings = call(setup.gateway, "GET", "/v1/admin/rings", token=ADMIN).json()
    assert rings == {"object": "list", "data": []}


def test_without_a_monitor_the_admin_api_says_so(setup: Setup) -> None:
    setup.gateway.monitor = None
    response = call(setup.gateway, "GET", "/v1/admin/accounts", token=ADMIN)
    assert response.status_code == 404 and response.json()["error"]["code"] == "monitor_off"


def test_a_policy_file_configures_tiers_and_thresholds(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_text(
        "[thresholds]\nflag = 0.8\nblock_min_requests = 500\n"
        "[tiers.block]\nblock = false\n[tiers.throttle]\nrate_factor = 0.5\nmax_n = 2\n"
    )
    policy = load_policy(path)
    assert policy.thresholds == {"flag": 0.8, "block_min_requests": 500}
    assert policy.tiers["block"].block is False
    assert policy.tiers["throttle"].rate_factor == 0.5 and policy.tiers["throttle"].max_n == 2
    assert policy.tiers["throttle"].max_top_logprobs == DEFAULT_TIERS["throttle"].max_top_logprobs
    assert load_policy(None).tiers == DEFAULT_TIERS


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[tiers.banned]\nblock = true\n", "unknown tier"),
        ("[tiers.block]\nblok = true\n", "unknown key"),
        ("[tiers.throttle]\nrate_factor = 2\n", r"\(0, 1\]"),
        ("[tiers.throttle]\nmax_n = -1\n", "non-negative integer"),
        ("[thresholds]\nflag = 1.5\n", r"\[0, 1\]"),
        ("[thresholds]\nflagg = 0.5\n", "unknown threshold"),
        ("[limits]\n", "unknown section"),
        ("not toml [", "not valid TOML"),
    ],
)
def test_bad_policy_files_are_refused_with_a_clear_error(
    tmp_path: Path, text: str, message: str
) -> None:
    path = tmp_path / "policy.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_policy(path)


def test_a_throttled_key_cannot_get_the_upstream_maximum_by_omitting_max_tokens(
    setup: Setup,
) -> None:
    seen: list[MonitorEvent] = []
    setup.monitor.observe = seen.append  # type: ignore[method-assign]
    setup.monitor.set_tier(setup.key_id, "throttle")
    text = "Think step by step and explain your reasoning: why is the sky blue?"
    response = call(
        setup.gateway,
        "POST",
        "/v1/chat/completions",
        token=setup.key,
        body={"model": MODEL, "messages": [{"role": "user", "content": text}]},
    )
    assert response.status_code == 200
    cap = DEFAULT_TIERS["throttle"].max_tokens
    assert cap is not None and response.json()["usage"]["completion_tokens"] <= cap
    assert seen[0].max_tokens == cap


def test_the_admin_api_is_not_on_the_public_listener(setup: Setup) -> None:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=setup.gateway.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
            headers = {"authorization": f"Bearer {ADMIN}"}
            return await client.get("/v1/admin/accounts", headers=headers)

    response = asyncio.run(go())
    assert response.status_code == 404  # before: served to anyone who reached the public port
    assert "error" in response.json()


def test_failed_admin_attempts_are_limited_per_address(setup: Setup) -> None:
    for _ in range(MAX_FAILURES):
        assert call(setup.gateway, "GET", "/v1/admin/accounts", token="guess").status_code == 401
    refused = call(setup.gateway, "GET", "/v1/admin/accounts", token=ADMIN)
    assert refused.status_code == 429  # even the right token, until the failures age out
    assert refused.json()["error"]["code"] == "admin_attempts_exceeded"
    assert int(refused.headers["retry-after"]) > 0


def test_failures_age_out_of_their_window() -> None:
    now = [0.0]
    attempts = FailedAttempts(limit=3, window=10.0, clock=lambda: now[0])
    for _ in range(3):
        attempts.failed("10.0.0.1")
    assert attempts.retry_after("10.0.0.1") == 10.0
    assert attempts.retry_after("10.0.0.2") == 0.0  # per address
    now[0] = 10.5
    assert attempts.retry_after("10.0.0.1") == 0.0
