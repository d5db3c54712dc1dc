"""A traffic simulator that drives the real gateway in-process, for evaluating the monitor.

The fleet (`distillguard.experiments.population`: benign users and harvesters, and what each
sends when) is planned up front. Every request goes through the gateway's ASGI app (keys,
limits, tiers, metering, audit, the monitor hook) on a simulated clock, against an in-process
upstream that answers at once with a plausible completion length. The gateway's monitor
events are recorded with each account's ground truth; detectors are then scored by replaying
them (`distillguard.experiments.evaluate`).

Each request arrives from its planned client (the ASGI scope's peer address, its user agent and
header order) and each key has its planned sign-up time, organisation and program. Until the
gateway fills in a monitor event's origin fields itself, the simulator's recorder does, with the
monitor's own keyed hashing (`monitor.identity`), from what it sent; the account metadata
always comes from the plan (the simulator's keys are all created at the same real moment).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import tempfile
import zlib
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from distillguard.experiments.network import Client
from distillguard.experiments.population import (
    MAX_TOKENS_CAP,
    MODEL,
    AccountMeta,
    PlannedRequest,
    Planner,
    Population,
    Truth,
)
from distillguard.gateway.apikeys import KeyStore, create_api_key
from distillguard.gateway.app import Gateway, GatewaySettings
from distillguard.gateway.backends import UpstreamBackend
from distillguard.gateway.backends.client import Upstream, UpstreamReply
from distillguard.gateway.ratelimit import MemoryRateLimiter
from distillguard.monitor.events import MonitorEvent, MonitorHook
from distillguard.monitor.identity import IdentityHasher, IdentityKind
from distillguard.monitor.monitor import Monitor
from distillguard.monitor.text import asks_for_reasoning
from distillguard.store import connect
from distillguard.store.audit import AuditLog

__all__ = ["SimulatedUpstream", "Simulation", "simulate"]


@dataclass
class Simulation:
    """What one run recorded: the monitor events, with every account's ground truth."""

    events: list[MonitorEvent]
    truth: dict[str, Truth]  # account (API key id) -> ground truth
    names: dict[str, str]  # account -> the simulator's name for it (b00001, hf000, hr0-007 ...)
    refused: dict[str, int]  # account -> requests the gateway refused with 429
    blocked: dict[str, float]  # account -> time the gateway first answered 403
    request_path_ms: float  # mean time the request path spent on the monitor hook
    statuses: dict[int, int] = field(default_factory=dict)


class SimulatedUpstream(Upstream):
    """Answers at once, with a completion length that depends on what was asked (longer for
    reasoning requests), capped by max_tokens. No network, no model."""

    def __init__(self) -> None:
        super().__init__("sim://upstream")

    def _usage(self, body: dict[str, Any]) -> tuple[int, int, str]:
        messages = body.get("messages") or [{"content": str(body.get("prompt", ""))}]
        text = str(messages[-1].get("content", ""))
        prompt_tokens = max(1, len(json.dumps(messages)) // 4)
        draw = zlib.crc32(text.encode()) / 2**32
        wanted = int(200 + 600 * draw) if asks_for_reasoning(text) else int(30 + 400 * draw)
        limit = body.get("max_tokens") or MAX_TOKENS_CAP
        completion = min(wanted, int(limit)) * int(body.get("n") or 1)
        return prompt_tokens, completion, text

    async def post(self, path: str, body: dict[str, Any]) -> UpstreamReply:
        prompt_tokens, completion_tokens, _ = self._usage(body)
        answer = {
            "id": "sim",
            "object": "chat.completion",
            "created": 0,
            "model": MODEL,
            "choices": [
                {
                    "index": i,
                    "message": {"role": "assistant", "content": "(simulated answer)"},
                    "finish_reason": "stop",
                    "logprobs": None,
                }
                for i in range(int(body.get("n") or 1))
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }
        return UpstreamReply(200, answer, json.dumps(answer).encode())

    async def stream(
        self, path: str, body: dict[str, Any]
    ) -> AsyncGenerator[tuple[int, str], None]:
        prompt_tokens, completion_tokens, _ = self._usage(body)
        chunk = {
            "id": "sim",
            "object": "chat.completion.chunk",
            "created": 0,
            "model": MODEL,
            "choices": [{"index": 0, "delta": {"content": "(simulated answer)"}}],
        }
        yield 200, "data: " + json.dumps(chunk)
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }
        yield 200, "data: " + json.dumps(chunk | {"choices": [], "usage": usage})
        yield 200, "data: [DONE]"

    async def close(self) -> None:
        return None


class _Recorder:
    """Records every event the gateway hands over, with the origin and account metadata of the
    request in flight, and passes it on: to a monitor processed in step with the traffic
    (`live`), or to any hook (a threaded monitor)."""

    def __init__(self, live: Monitor | None, hook: MonitorHook | None, hasher: IdentityHasher):
        self.events: list[MonitorEvent] = []
        self.live = live
        self.hook = hook
        self.hasher = hasher
        self.client: Client | None = None  # of the request in flight (the driver sets it)
        self.meta: dict[str, AccountMeta] = {}  # key id -> sign-up

    def observe(self, event: MonitorEvent) -> None:
        event = self._with_origin(event)
        self.events.append(event)
        if self.live is not None:
            self.live.observe(event)
            self.live.drain()
        elif self.hook is not None:
            self.hook.observe(event)

    def _with_origin(self, event: MonitorEvent) -> MonitorEvent:
        changes: dict[str, Any] = {}
        if not event.address and self.client is not None:
            identity = self.hasher.request(
                self.client.address, self.client.user_agent, self.client.headers
            )
            changes |= {
                "address": identity.address,
                "network": identity.network,
                "agent": identity.agent,
                "header_fingerprint": identity.header_fingerprint,
            }
        meta = self.meta.get(event.account)
        if meta is not None:
            changes |= {
                "org": self.hasher.token(IdentityKind.ORG, meta.org),
                "signup_program": meta.program,
                "created_at": meta.created_at,
            }
        return replace(event, **changes) if changes else event

    def tier_of(self, account: str) -> str:
        if self.live is not None:
            return self.live.tier_of(account)
        return self.hook.tier_of(account) if self.hook is not None else "normal"


async def _call(
    app: Any, path: str, api_key: str, body: dict[str, Any], client: Client | None = None
) -> int:
    """One POST through the ASGI app from `client`; returns the status (the body is read and
    dropped)."""
    payload = json.dumps(body).encode()
    values = {
        "host": b"simulator",
        "authorization": f"Bearer {api_key}".encode(),
        "content-type": b"application/json",
        "content-length": str(len(payload)).encode(),
        "user-agent": (client.user_agent if client else "simulator").encode(),
    }
    # the client's own order; what it lacks of the request's essentials goes last
    order = list(client.headers) if client else []
    order += [name for name in values if name not in order]
    headers = [(name.encode(), values.get(name, b"*")) for name in order]
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": (client.address if client else "127.0.0.1", 40_000),
        "server": ("simulator", 80),
    }
    sent = False
    status = 0

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": payload, "more_body": False}
        await asyncio.sleep(3600)  # the client never disconnects
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = int(message["status"])

    await app(scope, receive, send)
    return status


def simulate(
    benign: list[str],
    harvest: list[str],
    *,
    seed: int,
    population: Population | None = None,
    fold: int = 0,
    monitor: Monitor | None = None,
    hook: MonitorHook | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Simulation:
    """Run one simulated fleet through a fresh gateway.

    With `monitor`, each event is processed before the next request, so its tiers act on the
    traffic (throttled harvesters lose n and logprobs, blocked ones stop). With `hook` (say, a
    threaded monitor) events are handed over as in production. With neither, the gateway serves
    everyone and detectors are compared on the same traffic by replaying `Simulation.events`.
    """
    population = population or Population()
    rng = np.random.default_rng(seed)
    planner = Planner(rng, population, benign, harvest, fold)
    requests = planner.plan()
    clock = _Clock()
    identity_key = hashlib.sha256(f"distillguard-simulation-{seed}".encode()).digest()
    recorder = _Recorder(monitor, hook, IdentityHasher(identity_key))
    with tempfile.TemporaryDirectory(prefix="distillguard-sim-") as home:
        # shared: the key store may read it from a worker thread
        connection = connect(Path(home), shared=True)
        created = {
            account: create_api_key(connection, tenant=account, rpm=120, tpm=2_000_000)
            for account in planner.truth
        }
        api_keys = {account: secret for account, (secret, _) in created.items()}
        key_ids = {account: record.key_id for account, (_, record) in created.items()}
        recorder.meta = {key_ids[a]: meta for a, meta in planner.meta.items()}
        keys = KeyStore(connection)
        for secret in api_keys.values():  # read every key once, here: none waits on a thread
            keys.authenticate(secret)
        audit = AuditLog(lambda: connect(Path(home), shared=True), store_text=False)
        gateway = Gateway(
            UpstreamBackend(SimulatedUpstream(), (MODEL,), max_tokens=MAX_TOKENS_CAP),
            keys,
            audit,
            GatewaySettings(
                store_text=False,
                clock=clock,
                durable_audit=False,  # a simulated clock: no process to lose, no commit to wait
            ),
            limiter=MemoryRateLimiter(clock=clock),
            monitor=recorder,
        )
        driver = _Driver(
            gateway.app, clock, recorder, api_keys, key_ids, retry_plain=monitor is not None
        )
        asyncio.run(driver.run(requests, progress))
        audit.close()
        connection.close()
    calls = max(gateway.monitor_calls, 1)
    return Simulation(
        events=recorder.events,
        truth={key_ids[a]: truth for a, truth in planner.truth.items()},
        names={key_ids[a]: a for a in planner.truth},
        refused=driver.refused,
        blocked={key_ids[a]: time for a, time in driver.blocked.items()},
        request_path_ms=gateway.monitor_seconds / calls * 1000.0,
        statuses=driver.statuses,
    )


@dataclass
class _Driver:
    """Sends the planned requests through the app in time order, on the simulated clock, and
    counts the answers."""

    app: Any
    clock: _Clock
    recorder: _Recorder
    api_keys: dict[str, str]  # account -> API key
    key_ids: dict[str, str]  # account -> API key id
    retry_plain: bool  # after a 400 (a tier's caps), ask again without the extras
    statuses: dict[int, int] = field(default_factory=dict)
    refused: dict[str, int] = field(default_factory=dict)  # key id -> requests refused (429)
    blocked: dict[str, float] = field(default_factory=dict)  # account -> time of the first 403

    async def run(
        self, requests: list[PlannedRequest], progress: Callable[[int, int], None] | None
    ) -> None:
        for number, request in enumerate(requests):
            if request.account in self.blocked:
                continue  # a blocked harvester gives up on that key
            self.clock.now = request.time
            status = await self.send(request)
            self.statuses[status] = self.statuses.get(status, 0) + 1
            key_id = self.key_ids[request.account]
            if status == 429:
                self.refused[key_id] = self.refused.get(key_id, 0) + 1
            elif status == 403:
                self.blocked[request.account] = request.time
            if progress is not None and number % 5000 == 0:
                progress(number, len(requests))

    async def send(self, request: PlannedRequest) -> int:
        path = "/v1/chat/completions" if request.chat else "/v1/completions"
        api_key = self.api_keys[request.account]
        self.recorder.client = request.client
        status = await _call(self.app, path, api_key, request.body, request.client)
        if status == 400 and self.retry_plain:  # tier caps: ask again without extras
            plain = {
                k: v
                for k, v in request.body.items()
                if k not in ("n", "logprobs", "top_logprobs", "max_tokens")
            }
            status = await _call(self.app, path, api_key, plain, request.client)
        return status


class _Clock:
    """The simulated wall clock, shared by the rate limiter and the monitor events."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now
