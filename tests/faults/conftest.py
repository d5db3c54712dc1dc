"""A gateway process on a PostgreSQL and a Redis of the suite's own, which the tests stop,
kill, freeze and start again under load (issue 16).

The servers come from `benchmarks/_servers.py` and the timed load from
`benchmarks/_timed_load.py`, the helpers the fault benchmark (`benchmarks/faults.py`) uses.
One gateway (`distillguard serve`, one process, in front of the instant mock upstream, journal
wait 1 s) serves the whole suite; before each test both servers run again, whatever the test
before did to them. Without `initdb`, `postgres` or `redis-server` the suite skips, naming
what is missing.
"""

from __future__ import annotations

import importlib.util
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
BIN = Path(sys.executable).parent
JOURNAL_WAIT_S = 1.0
BOUND_S = JOURNAL_WAIT_S + 1.0  # no wait for a byte may last longer (the bound)


def _benchmark_helper(name: str) -> ModuleType:
    """A helper module of benchmarks/, loaded from its file. The folder never goes on sys.path:
    its scripts (vllm.py, engine.py, monitor.py...) would shadow the packages of those names
    for every test after this one."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load benchmarks/{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


_servers = _benchmark_helper("_servers")
_timed_load = _benchmark_helper("_timed_load")

Fault = _servers.Fault
PostgresServer = _servers.PostgresServer
RedisServer = _servers.RedisServer
outage = _servers.outage
Answer = _timed_load.Answer
Load = _timed_load.Load
by_kind = _timed_load.by_kind
hung = _timed_load.hung
missing_rows = _timed_load.missing_rows
recovery_seconds = _timed_load.recovery_seconds
wait_for_rows = _timed_load.wait_for_rows


@dataclass(frozen=True)
class Servers:
    postgres: PostgresServer
    redis: RedisServer


@dataclass(frozen=True)
class LiveGateway:
    url: str  # .../v1
    key: str  # an API key with limits far above the tests' load
    database: str
    home: Path

    def new_key(self) -> str:
        """Another API key, which the gateway has not seen (nor cached) yet."""
        return _create_key(self.home, self.database)


def _create_key(home: Path, database: str) -> str:
    """An API key whose limits the tests' load never reaches."""
    from distillguard.gateway.apikeys import create_api_key
    from distillguard.store import connect

    connection = connect(home, url=database)
    try:
        secret, _ = create_api_key(connection, "faults", rpm=10**9, tpm=10**12, concurrency=10**5)
    finally:
        connection.close()
    return secret


@pytest.fixture(scope="package")
def servers() -> Iterator[Servers]:
    absent = _servers.missing()
    if absent:
        pytest.skip(f"the fault tests start their own servers and need {', '.join(absent)}")
    for module in ("psycopg", "redis", "aiohttp", "uvicorn"):
        pytest.importorskip(module)
    postgres, redis_server = PostgresServer(), RedisServer()
    try:
        postgres.start()
        redis_server.start()
        yield Servers(postgres, redis_server)
    finally:
        postgres.close()
        redis_server.close()


@pytest.fixture(autouse=True)
def both_running(servers: Servers) -> None:
    """Each test starts with both servers up, whatever the one before left."""
    for server in (servers.postgres, servers.redis):
        if not server.running:
            server.start()


@pytest.fixture(scope="package")
def gateway(servers: Servers, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveGateway]:
    from distillguard.gateway.server import prepare_home

    home = tmp_path_factory.mktemp("faults-home")
    database = servers.postgres.url
    prepare_home(home, database)
    processes: list[subprocess.Popen[bytes]] = []
    try:
        mock_port, port = _servers.free_port(), _servers.free_port()
        processes.append(
            _spawn(
                home / "mock.log",
                BIN / "uvicorn",
                *("distillguard.gateway.mock:mock_upstream_app", "--factory"),
                *("--port", str(mock_port), "--log-level", "warning", "--no-access-log"),
            )
        )
        _wait_ready(f"http://127.0.0.1:{mock_port}/v1/models", processes[-1], home / "mock.log")
        processes.append(
            _spawn(
                home / "serve.log",
                BIN / "distillguard",
                *("--home", str(home), "--database", database, "serve", "--port", str(port)),
                *("--upstream", f"http://127.0.0.1:{mock_port}/v1", "--redis", servers.redis.url),
                *("--journal-wait-ms", str(JOURNAL_WAIT_S * 1000)),
            )
        )
        _wait_ready(f"http://127.0.0.1:{port}/healthz", processes[-1], home / "serve.log")
        yield LiveGateway(
            f"http://127.0.0.1:{port}/v1", _create_key(home, database), database, home
        )
    finally:
        for server in (servers.postgres, servers.redis):  # so that the gateway stops cleanly
            if not server.running:
                server.start()
        for process in reversed(processes):
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _spawn(log: Path, *command: str | Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as output:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            [str(part) for part in command], stdout=output, stderr=subprocess.STDOUT
        )


def _wait_ready(
    url: str, process: subprocess.Popen[bytes], log: Path, seconds: float = 60.0
) -> None:
    """Until `url` answers; the process's last output if it exits or `seconds` pass first."""
    import httpx

    deadline = time.monotonic() + seconds
    while process.poll() is None and time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2.0).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up: {log.read_text(errors='replace')[-1500:]}")
