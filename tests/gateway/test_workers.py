"""`serve --workers 2` on PostgreSQL and Redis: one worker killed with SIGKILL under load loses
no answered request, the supervisor starts it again, and the audit chain verifies.

Real processes, real services: skips without DISTILLGUARD_TEST_DATABASE_URL and
DISTILLGUARD_TEST_REDIS_URL (the Redis database is flushed).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from distillguard.gateway.apikeys import create_api_key
from distillguard.gateway.mock import mock_upstream_app
from distillguard.gateway.server import prepare_home
from distillguard.keys import load_master_secret
from distillguard.keys.derive import chain_keys
from distillguard.store import connect
from distillguard.store.chain import verify_chain

from ..conftest import redis_url
from .conftest import run_app


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _workers(parent: int) -> list[int]:
    found = subprocess.run(
        ["pgrep", "-P", str(parent), "-f", "spawn_main"], capture_output=True, text=True
    ).stdout.split()
    return [int(pid) for pid in found]


def test_a_worker_killed_under_load_loses_no_answered_request(
    tmp_path: Path, fresh_postgres_url: str
) -> None:
    import redis

    shared_redis = redis_url()
    redis.Redis.from_url(shared_redis).flushdb()
    server, thread, mock = run_app(mock_upstream_app())
    prepare_home(tmp_path, fresh_postgres_url)
    store = connect(tmp_path, url=fresh_postgres_url)
    key, _ = create_api_key(store, "acme", rpm=100_000, tpm=10**9, concurrency=1000)
    port = _free_port()
    environment = os.environ | {"PYTHONUNBUFFERED": "1"}
    environment.pop("DISTILLGUARD_ADMIN_TOKEN", None)
    gateway = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "distillguard",
            "--home",
            str(tmp_path),
            "--database",
            fresh_postgres_url,
            "serve",
            "--port",
            str(port),
            "--admin-port",
            "0",
            "--upstream",
            mock,
            "--workers",
            "2",
            "--redis",
            shared_redis,
        ],
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    received: list[str] = []
    stop = threading.Event()
    try:
        deadline = time.monotonic() + 120
        while len(_workers(gateway.pid)) < 2 or not _answers(base):
            assert time.monotonic() < deadline, "the workers did not start"
            time.sleep(0.2)

        def client() -> None:
            body = {"model": "mock", "messages": [{"role": "user", "content": "Hi"}]}
            with httpx.Client(base_url=base, timeout=10.0) as http:
                while not stop.is_set():
                    stream = len(received) % 2 == 0
                    try:
                        response = http.post(
                            "/v1/chat/completions",
                            json=body | {"stream": stream},
                            headers={"authorization": f"Bearer {key}"},
                        )
                    except httpx.HTTPError:
                        continue  # cut off by the kill: no answer received
                    if response.status_code == 200 and (not stream or "[DONE]" in response.text):
                        received.append(response.headers["x-request-id"])

        time.sleep(5.0)  # both workers listening: connections spread over them
        clients = [threading.Thread(target=client) for _ in range(8)]
        before = {pid: _cpu_seconds(pid) for pid in _workers(gateway.pid)}
        for each in clients:
            each.start()
        time.sleep(2.0)
        victim = max(before, key=lambda pid: _cpu_seconds(pid) - before[pid])  # it is serving
        os.kill(victim, signal.SIGKILL)
        time.sleep(3.0)
        stop.set()
        for each in clients:
            each.join()
        restarted = _workers(gateway.pid)
        assert victim not in restarted and len(restarted) == 2
    finally:
        stop.set()
        gateway.send_signal(signal.SIGINT)
        _, errors = gateway.communicate(timeout=60)
        server.should_exit = True  # type: ignore[attr-defined]
        thread.join()
    assert b"Traceback" not in errors, errors.decode()[-2000:]
    stored = {row[0] for row in store.execute("SELECT request_id FROM usage")}
    assert len(received) > 100
    assert [request for request in received if request not in stored] == []
    chain = verify_chain(store, chain_keys(load_master_secret(tmp_path)))
    store.close()
    assert chain.ok and chain.records == len(stored)


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _answers(base: str) -> bool:
    try:
        return httpx.get(base + "/healthz", timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False
