"""Admission through HTTP: many clients at once on one key get exactly its limit, and every
admitted request is settled, however it ends."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from distillguard.engine.engine import Engine
from distillguard.gateway.apikeys import KeyStore, create_api_key
from distillguard.gateway.app import Gateway
from distillguard.gateway.backends import UpstreamBackend
from distillguard.gateway.backends.client import UpstreamReply, estimate_tokens
from distillguard.gateway.mock import MOCK_MODEL, MOCK_TEXT
from distillguard.gateway.ratelimit import Limits, Scope
from distillguard.store import connect
from distillguard.store.audit import AuditLog
from distillguard.store.usage import read_usage

from .conftest import make_harness


def test_64_concurrent_http_clients_on_one_key_get_exactly_the_limit(
    tmp_path: Path, shared_engine: Engine
) -> None:
    harness = make_harness(tmp_path, shared_engine, rpm=20, tpm=1_000_000, concurrency=64)
    key = harness.keys["acme"]

    async def fire() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=harness.gateway.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as http:
            return list(
                await asyncio.gather(
                    *(
                        http.post(
                            "/v1/completions",
                            json={"model": harness.model, "prompt": "The", "max_tokens": 3},
                            headers={"authorization": f"Bearer {key}"},
                        )
                        for _ in range(64)
                    )
                )
            )

    responses = asyncio.run(fire())
    statuses = sorted(response.status_code for response in responses)
    assert statuses.count(200) == 20 and statuses.count(429) == 44
    refused = next(response for response in responses if response.status_code == 429)
    assert int(refused.headers["retry-after"]) >= 1
    assert int(refused.headers["retry-after-ms"]) >= 1
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"
    harness.flush()
    harness.audit.close()


class ScriptedUpstream:
    """An upstream client that answers every request with `reply` (a JSON body; streamed as
    one text chunk, then a usage chunk, then [DONE]) or fails with `error`."""

    def __init__(self, reply: dict[str, Any] | None = None, error: Exception | None = None):
        self.reply = reply or {}
        self.error = error

    async def post(self, path: str, body: dict[str, Any]) -> UpstreamReply:
        if self.error is not None:
            raise self.error
        return UpstreamReply(200, self.reply, json.dumps(self.reply).encode())

    async def stream(self, path: str, body: dict[str, Any]) -> AsyncIterator[tuple[int, str]]:
        if self.error is not None:
            raise self.error
        text = {"choices": [{"index": 0, "text": MOCK_TEXT}]}
        usage = {"choices": [], "usage": self.reply.get("usage")}
        for chunk in (text, usage):
            yield 200, "data: " + json.dumps(chunk)
        yield 200, "data: [DONE]"

    async def close(self) -> None:
        pass


@dataclass
class Proxy:
    gateway: Gateway
    audit: AuditLog
    key: str
    key_scope: Scope  # its per-minute limits


def upstream_gateway(home: Path, client: ScriptedUpstream) -> Proxy:
    """A gateway in upstream mode whose one key may have one request in flight."""
    connection = connect(home, shared=True)
    key, record = create_api_key(connection, "acme", rpm=1000, tpm=100_000, concurrency=1)
    audit = AuditLog(lambda: connect(home))
    gateway = Gateway(UpstreamBackend(client, (MOCK_MODEL,)), KeyStore(connection), audit)
    return Proxy(gateway, audit, key, Scope(f"key:{record.key_id}", Limits(1000, 100_000)))


def _send(proxy: Proxy, count: int, **fields: Any) -> list[httpx.Response]:
    """`count` requests one after another (a server answers a crash with 500)."""

    async def send() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=proxy.gateway.app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as http:
            return [
                await http.post(
                    "/v1/completions",
                    json={"model": MOCK_MODEL, "prompt": "hello there", **fields},
                    headers={"authorization": f"Bearer {proxy.key}"},
                )
                for _ in range(count)
            ]

    return asyncio.run(send())


NULL_USAGE = {
    "choices": [{"index": 0, "text": MOCK_TEXT, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": None, "completion_tokens": None, "total_tokens": None},
}


@pytest.mark.parametrize("stream", [False, True])
def test_null_usage_from_the_upstream_leaves_the_key_free(tmp_path: Path, stream: bool) -> None:
    """Two replies with `"prompt_tokens": null` once left a key at its concurrency cap for
    good (`int(None)` after admission skipped the settlement). They are counted ourselves."""
    proxy = upstream_gateway(tmp_path, ScriptedUpstream(NULL_USAGE))
    responses = _send(proxy, 3, max_tokens=16, stream=stream)
    assert [response.status_code for response in responses] == [200, 200, 200]
    assert proxy.audit.flush()
    rows = read_usage(connect(tmp_path))
    assert [(row.status, row.outcome) for row in rows] == [(200, "ok")] * 3
    # the prompt as estimated at admission (11 bytes / 4), the completion from its text
    assert {(row.prompt_tokens, row.completion_tokens) for row in rows} == {
        (3, estimate_tokens(MOCK_TEXT))
    }
    proxy.audit.close()


@pytest.mark.parametrize(("stream", "charged"), [(False, 3 + 16), (True, 3)])
def test_a_crash_after_admission_frees_the_slot(tmp_path: Path, stream: bool, charged: int) -> None:
    """Whatever fails once a request is admitted, its settlement still runs: with the tokens
    counted so far (a stream: its prompt), or else its whole reservation (3 + 16)."""
    client = ScriptedUpstream(error=RuntimeError("a bug after admission"))
    proxy = upstream_gateway(tmp_path, client)
    responses = _send(proxy, 3, max_tokens=16, stream=stream)
    statuses = [response.status_code for response in responses]
    assert 429 not in statuses  # never refused for concurrency: each crash gave the slot back
    snapshot = proxy.gateway.limiter.snapshot(proxy.key_scope)
    assert snapshot is not None and snapshot.remaining_tokens == 100_000 - 3 * charged
    proxy.audit.close()


def _scope(proxy: Proxy) -> dict[str, Any]:
    """The ASGI scope of a completions request with the proxy's key."""
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/completions",
        "raw_path": b"/v1/completions",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"authorization", f"Bearer {proxy.key}".encode())],
        "client": ("127.0.0.1", 1),
        "server": ("gateway", 80),
    }


def test_a_stream_whose_client_left_before_it_started_frees_the_slot_and_is_recorded(
    tmp_path: Path,
) -> None:
    proxy = upstream_gateway(tmp_path, ScriptedUpstream(NULL_USAGE))
    body = json.dumps({"model": MOCK_MODEL, "prompt": "hi", "stream": True}).encode()

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def gone(message: dict[str, Any]) -> None:
        raise OSError("the client closed the connection")

    async def leave() -> None:
        with contextlib.suppress(Exception):
            await proxy.gateway.app(_scope(proxy), receive, gone)

    asyncio.run(leave())
    assert proxy.audit.flush()
    (row,) = read_usage(connect(tmp_path))  # before: no row at all
    assert (row.status, row.outcome) == (499, "client_disconnected")
    assert [response.status_code for response in _send(proxy, 1)] == [200]
    proxy.audit.close()


def _raw_request(
    proxy: Proxy, body: bytes, *, disconnect_after: float | None
) -> list[dict[str, Any]]:
    """One request straight through the ASGI app: the body, then (after `disconnect_after`
    seconds) the client's disconnect; the messages the app sent back."""
    scope = _scope(proxy)
    sent: list[dict[str, Any]] = []
    messages = 0

    async def receive() -> dict[str, Any]:
        nonlocal messages
        messages += 1
        if messages == 1:
            return {"type": "http.request", "body": body, "more_body": False}
        if disconnect_after is None:
            await asyncio.Event().wait()
        await asyncio.sleep(disconnect_after or 0)
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def run() -> None:
        await asyncio.wait_for(proxy.gateway.app(scope, receive, send), timeout=10)

    asyncio.run(run())
    return sent


class SlowUpstream(ScriptedUpstream):
    """An upstream that takes 30 s to answer, and notes when its request is cancelled."""

    cancelled = False

    async def post(self, path: str, body: dict[str, Any]) -> UpstreamReply:
        if not SlowUpstream.cancelled:  # the first request only
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                SlowUpstream.cancelled = True
                raise
        return await super().post(path, body)


def test_a_client_that_leaves_cancels_its_upstream_request_and_is_recorded(
    tmp_path: Path,
) -> None:
    proxy = upstream_gateway(tmp_path, SlowUpstream(NULL_USAGE))
    body = json.dumps({"model": MOCK_MODEL, "prompt": "hi", "max_tokens": 16}).encode()
    sent = _raw_request(proxy, body, disconnect_after=0.2)  # before: waited out the 30 s
    assert SlowUpstream.cancelled
    assert sent[0]["status"] == 499
    assert proxy.audit.flush()
    (row,) = read_usage(connect(tmp_path))
    assert (row.status, row.outcome, row.completion_tokens) == (499, "client_disconnected", 0)
    assert [response.status_code for response in _send(proxy, 1)] == [200]  # slot given back
    proxy.audit.close()


def test_a_key_refused_on_requests_is_refused_before_its_body_is_read(tmp_path: Path) -> None:
    """Refusals cost the client nothing, so they must cost the server little: once a key is
    out of requests, its next ones are refused without reading, rendering or tokenizing."""
    connection = connect(tmp_path, shared=True)
    key, _ = create_api_key(connection, "acme", rpm=2, tpm=100_000)
    audit = AuditLog(lambda: connect(tmp_path))
    gateway = Gateway(
        UpstreamBackend(ScriptedUpstream(NULL_USAGE), (MOCK_MODEL,)), KeyStore(connection), audit
    )
    proxy = Proxy(gateway, audit, key, Scope("unused", Limits(2, 100_000)))
    assert [response.status_code for response in _send(proxy, 3)] == [200, 200, 429]
    sent = _raw_request(proxy, b"{not json at all" + b"x" * 100_000, disconnect_after=None)
    assert sent[0]["status"] == 429  # before: 400, after reading and parsing the body
    assert audit.flush()
    rows = read_usage(connect(tmp_path))
    assert [row.status for row in rows] == [200, 200, 429, 429]
    refused = rows[2]
    assert refused.prompt_text == ""  # a refused request's text is not kept: its hash is
    assert refused.parameters["prompt_sha256"] == hashlib.sha256(b"hello there").hexdigest()
    audit.close()
