"""Upstream mode: the same keys, limits, metering and audit in front of another server."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import httpx

from distillguard.gateway.apikeys import KeyStore, create_api_key
from distillguard.gateway.app import Gateway
from distillguard.gateway.audit import AuditLog, verify_chain
from distillguard.gateway.mock import MOCK_MODEL, MOCK_TEXT, mock_upstream_app
from distillguard.gateway.upstream import Upstream
from distillguard.store import connect


def build(home: Path, rpm: int = 100) -> tuple[Gateway, str, AuditLog]:
    connection = connect(home, shared=True)
    key, _ = create_api_key(connection, "acme", rpm=rpm, tpm=100_000)
    upstream = Upstream(
        "http://upstream/v1", transport=httpx.ASGITransport(app=mock_upstream_app())
    )
    audit = AuditLog(lambda: connect(home))
    gateway = Gateway(
        None,
        KeyStore(connection),
        audit,
        lambda tenant: None,
        upstream=upstream,
        upstream_models=(MOCK_MODEL,),
    )
    return gateway, key, audit


def send(
    gateway: Gateway, key: str, body: dict[str, object], path: str = "/v1/chat/completions"
) -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=gateway.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as http:
            return await http.post(path, json=body, headers={"authorization": f"Bearer {key}"})

    return asyncio.run(go())


def test_proxied_responses_are_metered_audited_and_marked_unwatermarked(tmp_path: Path) -> None:
    gateway, key, audit = build(tmp_path)
    chat = send(
        gateway, key, {"model": MOCK_MODEL, "messages": [{"role": "user", "content": "hi"}]}
    )
    assert chat.status_code == 200 and chat.json()["choices"][0]["message"]["content"] == MOCK_TEXT
    assert chat.headers["x-distillguard-watermark"] == "unavailable"
    assert chat.headers["x-ratelimit-remaining-requests"] == "99"
    stream = send(
        gateway, key, {"model": MOCK_MODEL, "prompt": "hi", "stream": True}, "/v1/completions"
    )
    events = [line for line in stream.text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]"
    assert '"usage"' not in stream.text or '"usage":null' in stream.text.replace(
        " ", ""
    )  # not asked for
    unknown = send(
        gateway, key, {"model": "gpt-x", "messages": [{"role": "user", "content": "hi"}]}
    )
    assert unknown.status_code == 404
    audit.close()
    with sqlite3.connect(tmp_path / "distillguard.db") as connection:
        rows = connection.execute(
            "SELECT status, prompt_tokens, completion_tokens, watermark_key_id "
            "FROM usage ORDER BY created_at"
        ).fetchall()
    assert rows == [(200, 7, 8, None), (200, 7, 8, None), (404, 0, 0, None)]
    assert verify_chain(connect(tmp_path)).ok


def test_limits_hold_in_upstream_mode(tmp_path: Path) -> None:
    gateway, key, audit = build(tmp_path, rpm=2)
    statuses = [
        send(gateway, key, {"model": MOCK_MODEL, "prompt": "hi"}, "/v1/completions").status_code
        for _ in range(4)
    ]
    assert statuses == [200, 200, 429, 429]
    audit.close()
