"""A gateway in upstream mode in front of the mock upstream, which records every body it gets."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from distillguard.gateway.apikeys import KeyStore, create_api_key
from distillguard.gateway.app import Gateway, GatewaySettings
from distillguard.gateway.backends import UpstreamBackend
from distillguard.gateway.backends.client import Upstream
from distillguard.gateway.mock import MOCK_MODEL, mock_upstream_app
from distillguard.gateway.policy import DEFAULT_TIERS, Tier
from distillguard.store import connect
from distillguard.store.audit import AuditLog

from ..conftest import run_app

ASGIApp = Callable[..., Any]


def recording(app: ASGIApp, received: list[dict[str, Any]]) -> ASGIApp:
    """`app`, appending the JSON body of every POST it gets to `received`."""

    async def wrapped(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await app(scope, receive, send)
            return
        chunks, more = [], True
        while more:
            message = await receive()
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        raw = b"".join(chunks)
        received.append(json.loads(raw))
        replayed = False

        async def replay() -> dict[str, Any]:
            nonlocal replayed
            if replayed:
                return dict(await receive())
            replayed = True
            return {"type": "http.request", "body": raw, "more_body": False}

        await app(scope, replay, send)

    return wrapped


@dataclass
class Recorder:
    url: str
    received: list[dict[str, Any]]


@pytest.fixture(scope="module")
def recorder() -> Iterator[Recorder]:
    received: list[dict[str, Any]] = []
    server, thread, url = run_app(recording(mock_upstream_app(), received))
    yield Recorder(url, received)
    server.should_exit = True  # type: ignore[attr-defined]
    thread.join()


@dataclass
class Proxy:
    """The gateway, its tenant's key, and what the upstream received since the test began."""

    gateway: Gateway
    key: str
    audit: AuditLog
    received: list[dict[str, Any]]
    home: Path

    def post(self, path: str, body: dict[str, Any]) -> httpx.Response:
        async def send() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.gateway.app)
            try:
                async with httpx.AsyncClient(transport=transport, base_url="http://gw") as http:
                    return await http.post(
                        path, json=body, headers={"authorization": f"Bearer {self.key}"}
                    )
            finally:
                await self.gateway.backend.aclose()

        return asyncio.run(send())

    def chat(self, **fields: Any) -> httpx.Response:
        messages = [{"role": "user", "content": "hi"}]
        return self.post(
            "/v1/chat/completions", {"model": MOCK_MODEL, "messages": messages} | fields
        )

    def completion(self, **fields: Any) -> httpx.Response:
        return self.post("/v1/completions", {"model": MOCK_MODEL, "prompt": "hi"} | fields)


def make_proxy(
    home: Path, recorder: Recorder, *, tier: str = "normal", tpm: int = 100_000, **tiers: Tier
) -> Proxy:
    connection = connect(home, shared=True)
    key, _ = create_api_key(connection, "acme", rpm=1000, tpm=tpm, tier=tier)
    audit = AuditLog(lambda: connect(home))
    settings = GatewaySettings(tiers=dict(DEFAULT_TIERS) | tiers)
    backend = UpstreamBackend(Upstream(recorder.url), (MOCK_MODEL,))
    gateway = Gateway(backend, KeyStore(connection), audit, settings)
    recorder.received.clear()
    return Proxy(gateway, key, audit, recorder.received, home)


@pytest.fixture
def proxy(tmp_path: Path, recorder: Recorder) -> Iterator[Proxy]:
    built = make_proxy(tmp_path, recorder)
    yield built
    built.audit.close()
