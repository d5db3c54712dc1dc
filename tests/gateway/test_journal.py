"""The audit journal in the gateway: answers do not wait for the database, a bounded wait
turns into a 503, and a `serve` process killed with SIGKILL while its database is locked
loses no answered request (its journal is replayed at the next start).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from distillguard.gateway.apikeys import KeyStore, create_api_key
from distillguard.gateway.app import Gateway, GatewaySettings
from distillguard.gateway.backends import UpstreamBackend
from distillguard.gateway.backends.client import Upstream
from distillguard.gateway.mock import MOCK_MODEL, mock_upstream_app
from distillguard.gateway.server import journal_directory, prepare_home
from distillguard.keys import init_master_secret
from distillguard.keys.derive import chain_keys
from distillguard.store import Connection, connect
from distillguard.store.audit import AuditLog
from distillguard.store.chain import verify_chain
from distillguard.store.journal import Journal
from distillguard.store.sqlite import DATABASE_NAME

from .conftest import run_app

BODY = {"model": MOCK_MODEL, "messages": [{"role": "user", "content": "Hi"}]}


@pytest.fixture(scope="module")
def mock_url() -> Iterator[str]:
    server, thread, url = run_app(mock_upstream_app())
    yield url
    server.should_exit = True  # type: ignore[attr-defined]
    thread.join()


@pytest.mark.parametrize("stream", [False, True])
def test_a_record_not_safe_in_time_is_a_503_and_is_committed_later(
    tmp_path: Path, mock_url: str, stream: bool
) -> None:
    reachable = threading.Event()

    def flaky() -> Connection:
        if not reachable.is_set():
            raise OSError("database unreachable")
        return connect(tmp_path)

    connection = connect(tmp_path, shared=True)
    key, _ = create_api_key(connection, "acme", rpm=100, tpm=100_000)
    journal_dir = tmp_path / "journal"
    # max_backlog=0: the database is "behind", so the answer waits for the commit
    audit = AuditLog(flaky, journal=Journal(journal_dir, key=b"k" * 32), max_backlog=0)
    gateway = Gateway(
        UpstreamBackend(Upstream(mock_url), (MOCK_MODEL,)),
        KeyStore(connection),
        audit,
        GatewaySettings(audit_wait=0.2),
    )

    async def send() -> httpx.Response:
        transport = httpx.ASGITransport(app=gateway.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as http:
            response = await http.post(
                "/v1/chat/completions",
                json=BODY | {"stream": stream},
                headers={"authorization": f"Bearer {key}"},
            )
        await gateway.backend.aclose()
        return response

    started = time.monotonic()
    response = asyncio.run(asyncio.wait_for(send(), timeout=10))  # the old code waited forever
    assert time.monotonic() - started < 5
    request_id = response.headers["x-request-id"]
    if stream:
        events = [line[6:] for line in response.text.splitlines() if line.startswith("data: ")]
        assert "[DONE]" not in events
        error = json.loads(events[-1])["error"]
    else:
        assert response.status_code == 503
        error = response.json()["error"]
    assert (error["type"], error["code"]) == ("server_error", "audit_unavailable")
    assert request_id in "".join(path.read_text() for path in journal_dir.glob("*.jsonl"))
    reachable.set()
    assert audit.flush()
    audit.close()
    stored = {row[0] for row in connection.execute("SELECT request_id FROM usage")}
    assert request_id in stored
    assert list(journal_dir.glob("*.jsonl")) == []  # committed: the segment is gone


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _serve(
    home: Path, port: int, mock: str, admin_port: int = 0, admin_token: str | None = None
) -> subprocess.Popen[bytes]:
    environment = os.environ | {"PYTHONUNBUFFERED": "1"}
    environment.pop("DISTILLGUARD_ADMIN_TOKEN", None)
    if admin_token is not None:
        environment["DISTILLGUARD_ADMIN_TOKEN"] = admin_token
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "distillguard",
            "--home",
            str(home),
            "serve",
            "--port",
            str(port),
            "--upstream",
            mock,
            "--no-monitor",
            "--admin-port",
            str(admin_port),
        ],
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1.0).status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        assert process.poll() is None and time.monotonic() < deadline, "serve did not start"
        time.sleep(0.1)


def test_serve_killed_while_its_database_is_locked_loses_no_answered_request(
    tmp_path: Path, mock_url: str
) -> None:
    prepare_home(tmp_path)
    store = connect(tmp_path)
    key, _ = create_api_key(store, "acme", rpm=100_000, tpm=10**9, concurrency=1000)
    port = _free_port()
    gateway = _serve(tmp_path, port, mock_url)
    # another process holds SQLite's write lock: no commit can happen until it lets go
    blocker = sqlite3.connect(tmp_path / DATABASE_NAME, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    received: list[str] = []
    stop = threading.Event()

    def client(index: int) -> None:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=2.0) as http:
            while not stop.is_set():
                stream = (len(received) + index) % 2 == 0
                try:
                    response = http.post(
                        "/v1/chat/completions",
                        json=BODY | {"stream": stream},
                        headers={"authorization": f"Bearer {key}"},
                    )
                except httpx.HTTPError:
                    continue  # cut off by the kill (or, on the old code, a commit never came)
                if response.status_code == 200 and (not stream or "[DONE]" in response.text):
                    received.append(response.headers["x-request-id"])

    clients = [threading.Thread(target=client, args=(index,)) for index in range(4)]
    for each in clients:
        each.start()
    time.sleep(2.0)
    gateway.send_signal(signal.SIGKILL)  # under load, with nothing committed
    gateway.communicate()
    stop.set()
    for each in clients:
        each.join()
    blocker.rollback()
    blocker.close()
    journal = journal_directory(tmp_path, None)
    assert sum(1 for _ in journal.glob("*.jsonl")) == 1  # the dead process's segment
    assert stat_mode(next(journal.glob("*.jsonl"))) == 0o600
    assert len(received) > 20  # answered without waiting for the (locked) database

    restarted = _serve(tmp_path, _free_port(), mock_url)  # replays the journal at start
    restarted.send_signal(signal.SIGINT)
    _, errors = restarted.communicate(timeout=60)
    assert b"Traceback" not in errors, errors.decode()[-2000:]
    stored = {row[0] for row in store.execute("SELECT request_id FROM usage")}
    assert [request for request in received if request not in stored] == []
    chain = verify_chain(store, chain_keys(init_master_secret(tmp_path)[0]))
    store.close()
    assert chain.ok and chain.records == len(stored)
    assert list(journal.glob("*.jsonl")) == []


def stat_mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_serve_puts_the_admin_api_on_its_own_listener(tmp_path: Path, mock_url: str) -> None:
    prepare_home(tmp_path)
    port, admin_port = _free_port(), _free_port()
    token = "admin-token-0123456789-abcdef"
    gateway = _serve(tmp_path, port, mock_url, admin_port=admin_port, admin_token=token)
    try:
        headers = {"authorization": f"Bearer {token}"}
        public = httpx.get(f"http://127.0.0.1:{port}/v1/admin/accounts", headers=headers)
        assert public.status_code == 404  # before: the admin API answered on the public port
        admin = httpx.get(f"http://127.0.0.1:{admin_port}/v1/admin/accounts", headers=headers)
        assert admin.status_code == 404 and admin.json()["error"]["code"] == "monitor_off"
        wrong = httpx.get(f"http://127.0.0.1:{admin_port}/v1/admin/accounts")
        assert wrong.status_code == 401
    finally:
        gateway.send_signal(signal.SIGINT)
        _, errors = gateway.communicate(timeout=60)
    assert gateway.returncode == 0 and b"Traceback" not in errors, errors.decode()[-2000:]


def test_a_taken_admin_port_is_one_line_error(tmp_path: Path, mock_url: str) -> None:
    prepare_home(tmp_path)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        admin_port = taken.getsockname()[1]
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "distillguard",
                "--home",
                str(tmp_path),
                "serve",
                "--port",
                str(_free_port()),
                "--upstream",
                mock_url,
                "--no-monitor",
                "--admin-port",
                str(admin_port),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode != 0
    assert "Traceback" not in result.stderr and f"127.0.0.1:{admin_port}" in result.stderr
