"""A gateway on the tiny model: in-process (httpx ASGI) and over real HTTP (uvicorn)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

pytest.importorskip("starlette")
pytest.importorskip("torch")

from distillguard.engine.engine import Engine
from distillguard.gateway.apikeys import KeyStore, create_api_key
from distillguard.gateway.app import Gateway, GatewaySettings
from distillguard.gateway.backends import LocalBackend, UpstreamBackend
from distillguard.keys import derive_tenant_key, init_master_secret, record_commitment
from distillguard.store import connect
from distillguard.store.audit import AuditLog
from distillguard.watermark.key import WatermarkKey


@dataclass
class Harness:
    gateway: Gateway
    home: Path
    model: str
    keys: dict[str, str]  # tenant -> API key
    audit: AuditLog

    def flush(self) -> None:
        assert self.audit.flush()


@pytest.fixture(scope="session")
def shared_engine(tiny_model_dir: Path) -> Iterator[Engine]:
    with Engine(tiny_model_dir) as engine:
        yield engine


@pytest.fixture(scope="session")
def embedded_engine() -> Iterator[Engine]:
    """The shipped model: real prose, so text survives decode and re-tokenization."""
    with Engine() as engine:
        yield engine


def make_harness(
    home: Path,
    engine: Engine,
    *,
    minute: float = 60.0,
    rpm: int = 1000,
    tpm: int = 1_000_000,
    concurrency: int = 64,
    max_body_bytes: int = 1 << 16,
) -> Harness:
    connection = connect(home, shared=True)
    master, _ = init_master_secret(home)
    keys = {}
    for tenant in ("acme", "globex", "initech"):
        keys[tenant], _ = create_api_key(
            connection, tenant, rpm=rpm, tpm=tpm, concurrency=concurrency
        )
    cache: dict[str, WatermarkKey] = {}

    def key_for(tenant: str) -> WatermarkKey:
        if tenant not in cache:
            derived = derive_tenant_key(master, tenant)
            record_commitment(connection, derived, engine.scheme)
            cache[tenant] = derived.watermark_key()
        return cache[tenant]

    audit = AuditLog(lambda: connect(home))
    settings = GatewaySettings(minute=minute, max_body_bytes=max_body_bytes)
    gateway = Gateway(LocalBackend(engine, key_for), KeyStore(connection), audit, settings)
    return Harness(gateway, home, engine.model_name, keys, audit)


@pytest.fixture
def harness(tmp_path: Path, shared_engine: Engine) -> Iterator[Harness]:
    built = make_harness(tmp_path, shared_engine)
    yield built
    built.audit.close()


@dataclass
class LiveServer:
    harness: Harness
    base_url: str


def run_live(harness: Harness) -> tuple[object, threading.Thread, str]:
    return run_app(harness.gateway.app)


def run_app(app: object) -> tuple[object, threading.Thread, str]:
    """Serve an ASGI app with uvicorn on a free port in a thread; (server, thread, base URL)."""
    import uvicorn

    # uvicorn gets the bound socket itself: no window for another process to take the port
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    if not server.started:
        raise RuntimeError("uvicorn did not start within 10 s")
    return server, thread, f"http://127.0.0.1:{port}/v1"


@pytest.fixture
def live(harness: Harness) -> Iterator[LiveServer]:
    server, thread, url = run_live(harness)
    yield LiveServer(harness, url)
    server.should_exit = True  # type: ignore[attr-defined]
    thread.join()


def monitored_gateway(
    home: Path, monitor: object, admin_token: str, *, rpm: int = 1000, tpm: int = 1_000_000
) -> tuple[Gateway, AuditLog, str, str]:
    """The gateway in front of the simulator's instant upstream, with a monitor and the admin
    API on; returns (gateway, audit log, API key of tenant acme, its key id)."""
    from distillguard.experiments.simulate import MODEL, SimulatedUpstream

    connection = connect(home, shared=True)
    key, record = create_api_key(connection, "acme", rpm=rpm, tpm=tpm)
    audit = AuditLog(lambda: connect(home))
    gateway = Gateway(
        UpstreamBackend(SimulatedUpstream(), (MODEL,)),
        KeyStore(connection),
        audit,
        GatewaySettings(admin_token=admin_token),
        monitor=monitor,  # type: ignore[arg-type]
    )
    return gateway, audit, key, record.key_id
