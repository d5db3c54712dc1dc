"""Upstream mode: the same keys, limits, metering and audit in front of another server."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from distillguard.gateway.apikeys import KeyStore, create_api_key
from distillguard.gateway.app import Gateway
from distillguard.gateway.backends import UpstreamBackend
from distillguard.gateway.backends.client import Upstream
from distillguard.gateway.mock import MOCK_MODEL, MOCK_TEXT, mock_upstream_app
from distillguard.store import connect
from distillguard.store.audit import AuditLog
from distillguard.store.chain import verify_chain

from .conftest import run_app


@pytest.fixture(scope="module")
def mock_url() -> Iterator[str]:
    server, thread, url = run_app(mock_upstream_app())
    yield url
    server.should_exit = True  # type: ignore[attr-defined]
    thread.join()


@pytest.fixture
def build(mock_url: str) -> Callable[[Path, int], tuple[Gateway, str, AuditLog]]:
    def make(home: Path, rpm: int = 100) -> tuple[Gateway, str, AuditLog]:
        return _build(home, rpm, mock_url)

    return make


def _build(home: Path, rpm: int, url: str) -> tuple[Gateway, str, AuditLog]:
    connection = connect(home, shared=True)
    key, _ = create_api_key(connection, "acme", rpm=rpm, tpm=100_000)
    upstream = Upstream(url)
    audit = AuditLog(lambda: connect(home))
    gateway = Gateway(UpstreamBackend(upstream, (MOCK_MODEL,)), KeyStore(connection), audit)
    return gateway, key, audit


async def send(
    gateway: Gateway, key: str, body: dict[str, object], path: str = "/v1/chat/completions"
) -> httpx.Response:
    transport = httpx.ASGITransport(app=gateway.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as http:
        return await http.post(path, json=body, headers={"authorization": f"Bearer {key}"})


def test_proxied_responses_are_metered_audited_and_marked_unwatermarked(
    tmp_path: Path, build: Callable[..., tuple[Gateway, str, AuditLog]]
) -> None:
    gateway, key, audit = build(tmp_path)

    async def scenario() -> tuple[httpx.Response, httpx.Response, httpx.Response]:
        try:
            chat = await send(
                gateway, key, {"model": MOCK_MODEL, "messages": [{"role": "user", "content": "hi"}]}
            )
            body = {"model": MOCK_MODEL, "prompt": "hi", "stream": True}
            stream = await send(gateway, key, body, "/v1/completions")
            body = {"model": "gpt-x", "messages": [{"role": "user", "content": "hi"}]}
            unknown = await send(gateway, key, body)
            return chat, stream, unknown
        finally:
            await gateway.backend.aclose()

    chat, stream, unknown = asyncio.run(scenario())
    assert chat.status_code == 200
    assert chat.json()["choices"][0]["message"]["content"] == MOCK_TEXT
    assert chat.headers["x-distillguard-watermark"] == "unavailable"
    assert chat.headers["x-ratelimit-remaining-requests"] == "99"
    events = [line for line in stream.text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]"
    assert not any('"choices": []' in event or '"choices":[]' in event for event in events)
    assert unknown.status_code == 404
    audit.close()
    with sqlite3.connect(tmp_path / "distillguard.db") as connection:
        rows = connection.execute(
            "SELECT status, prompt_tokens, completion_tokens, watermark_key_id "
            "FROM usage ORDER BY created_at"
        ).fetchall()
    assert rows == [(200, 7, 8, None), (200, 7, 8, None), (404, 0, 0, None)]
    assert verify_chain(connect(tmp_path)).ok


def test_limits_hold_in_upstream_mode(
    tmp_path: Path, build: Callable[..., tuple[Gateway, str, AuditLog]]
) -> None:
    gateway, key, audit = build(tmp_path, rpm=2)

    async def scenario() -> list[int]:
        try:
            body = {"model": MOCK_MODEL, "prompt": "hi"}
            return [
                (await send(gateway, key, body, "/v1/completions")).status_code for _ in range(4)
            ]
        finally:
            await gateway.backend.aclose()

    assert asyncio.run(scenario()) == [200, 200, 429, 429]
    audit.close()
