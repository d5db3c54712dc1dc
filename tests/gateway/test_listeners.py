"""The two listeners (`gateway/listeners.py`): each serves its app, keep-alive answers do not
stall, and a taken port is one line."""

from __future__ import annotations

import socket
import statistics
import subprocess
import sys
import textwrap
import time

import httpx
import pytest

from distillguard.errors import ConfigError
from distillguard.gateway.listeners import Listener, run_listeners

_SERVER = textwrap.dedent(
    """
    import sys
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route
    from distillguard.gateway.listeners import Listener, run_listeners

    def app(name):
        async def hello(request):
            return JSONResponse({"listener": name})
        return Starlette(routes=[Route("/", hello)])

    run_listeners(
        Listener(app("public"), "127.0.0.1", int(sys.argv[1])),
        Listener(app("admin"), "127.0.0.1", int(sys.argv[2])),
    )
    """
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_both_listeners_answer_and_keep_alive_does_not_stall() -> None:
    public, admin = _free_port(), _free_port()
    process = subprocess.Popen([sys.executable, "-c", _SERVER, str(public), str(admin)])
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"http://127.0.0.1:{public}/", timeout=1)
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline and process.poll() is None
                time.sleep(0.1)
        assert httpx.get(f"http://127.0.0.1:{admin}/").json() == {"listener": "admin"}
        with httpx.Client(base_url=f"http://127.0.0.1:{public}") as client:
            timings = []
            for _ in range(30):
                started = time.perf_counter()
                assert client.get("/").json() == {"listener": "public"}
                timings.append(time.perf_counter() - started)
        # before: 40+ ms each (no TCP_NODELAY on the pre-bound socket's connections: every
        # keep-alive answer waited for a delayed ACK)
        assert statistics.median(timings[5:]) < 0.02
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_a_taken_port_is_a_config_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match=f"127.0.0.1:{port}"):
            run_listeners(Listener(None, "127.0.0.1", port), None)
