"""`build_server` wires the console onto the admin listener: operators sign in there, and a
budget an admin sets is enforced on the public API."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
from starlette.testclient import TestClient

from distillguard.gateway.apikeys import create_api_key
from distillguard.gateway.server import build_server
from distillguard.store import connect
from distillguard.store.operators import create_operator

from .conftest import PASSWORD, risk_model, sign_in


def complete(app: object, key: str, model: str) -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
            return await client.post(
                "/v1/completions",
                json={"model": model, "prompt": "Module 1 provides the", "max_tokens": 8},
                headers={"authorization": f"Bearer {key}"},
            )

    return asyncio.run(go())


def test_a_monthly_budget_set_in_the_console_is_enforced(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    model_file = tmp_path / "risk.json"
    model_file.write_text(risk_model().to_json())
    server = build_server(
        tmp_path, tiny_model_dir, risk_model=model_file, admin_token="t", create_demo_key=False
    )
    try:
        connection = connect(tmp_path)
        key, _ = create_api_key(connection, "acme", rpm=100, tpm=100_000)
        create_operator(connection, "ada", "admin", PASSWORD)
        connection.close()
        model = server.gateway.model_name
        assert complete(server.gateway.app, key, model).status_code == 200
        assert server.console is not None
        client = TestClient(server.gateway.admin.app(), base_url="http://testserver")
        csrf = sign_in(client, "ada")
        client.post(
            "/console/usage/budgets", data={"csrf": csrf, "tenant": "acme", "monthly_tokens": "5"}
        )
        refused = complete(server.gateway.app, key, model)
        assert refused.status_code == 429
        assert "monthly token budget of tenant acme" in refused.json()["error"]["message"]
    finally:
        server.close()


def test_the_console_needs_the_monitor_for_tier_changes(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    server = build_server(tmp_path, tiny_model_dir, monitor=False, create_demo_key=False)
    try:
        connection = connect(tmp_path)
        create_operator(connection, "otto", "operator", PASSWORD)
        connection.close()
        client = TestClient(server.gateway.admin.app(), base_url="http://testserver")
        csrf = sign_in(client, "otto")
        response = client.post(
            "/console/accounts/k1/tier", data={"csrf": csrf, "tier": "block", "reason": "r"}
        )
        assert response.status_code == 409 and "monitor is off" in response.text
    finally:
        server.close()
