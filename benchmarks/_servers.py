"""PostgreSQL and Redis servers of our own, to stop, kill and restart under load (issue 16).

The fault checks (`benchmarks/faults.py`, `tests/faults/`) cannot touch the shared servers the
other tests use, so each starts its own: a PostgreSQL cluster made by `initdb` in a temporary
directory and a Redis without persistence, each on a free port of 127.0.0.1, each a child
process of the caller so that it can be stopped (`stop`: PostgreSQL's fast shutdown, the
signal `pg_ctl stop -m fast` sends; Redis's SIGTERM), killed (`kill`: SIGKILL), frozen
(`frozen`: SIGSTOP, then SIGCONT) and started again on the same port and data directory
(`start`, `restart`).

PostgreSQL refuses to run as root: under root its processes run as the `postgres` user (the
data directory is handed to it), otherwise as the caller. Trust authentication on 127.0.0.1,
no Unix socket. `fsync=off`: these servers are killed, never their host, and the page cache
survives a killed process.

`missing()` says which binaries are absent (the tests skip with it, naming them).
"""

from __future__ import annotations

import contextlib
import enum
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

__all__ = [
    "Fault",
    "Outage",
    "PostgresServer",
    "RedisServer",
    "free_port",
    "missing",
    "outage",
]

_POSTGRES_USER = "postgres"


class Fault(enum.Enum):
    """How a server goes away, and the words the reports use for it."""

    STOP = "restarted"  # a clean shutdown, then a start
    KILL = "killed (SIGKILL)"  # no shutdown at all, then a start
    FREEZE = "frozen (SIGSTOP)"  # connections stay open, nothing answers, then SIGCONT


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _binary(name: str) -> str | None:
    """`name` on PATH, or in a Debian-style /usr/lib/postgresql/<version>/bin."""
    found = shutil.which(name)
    if found is not None:
        return found
    candidates = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), reverse=True)
    return str(candidates[0]) if candidates else None


def missing() -> list[str]:
    """The binaries these servers need that this machine lacks (and why, for root)."""
    absent = [name for name in ("initdb", "postgres", "redis-server") if _binary(name) is None]
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(_POSTGRES_USER)
        except KeyError:
            absent.append(f"a '{_POSTGRES_USER}' user (PostgreSQL refuses to run as root)")
    return absent


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _wait_port_closed(port: int, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while _port_open(port):
        if time.monotonic() > deadline:
            raise RuntimeError(f"port {port} still accepts connections after {seconds:.0f} s")
        time.sleep(0.05)


class _Server:
    """A server process of ours on a fixed port: started, stopped, killed, started again."""

    name = "server"
    _stop_signal = signal.SIGTERM

    def __init__(self, directory: Path | None = None, port: int | None = None) -> None:
        self.directory = directory or Path(tempfile.mkdtemp(prefix=f"dg-{self.name}-"))
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = self.directory / f"{self.name}.log"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, seconds: float = 30.0) -> float:
        """Start on the same port and data; returns the (monotonic) time it first answered."""
        if self.running:
            raise RuntimeError(f"{self.name} on port {self.port} is already running")
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self._command(), stdout=log, stderr=subprocess.STDOUT, **self._popen_options()
            )
        deadline = time.monotonic() + seconds
        while not self.answers():
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited at start: {self.log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} did not answer in {seconds:.0f} s")
            time.sleep(0.05)
        return time.monotonic()

    def stop(self, seconds: float = 30.0) -> None:
        """A clean shutdown (the server finishes what it must), waited for."""
        process = self._process()
        process.send_signal(self._stop_signal)
        try:
            process.wait(timeout=seconds)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        self._after_exit()

    def kill(self) -> None:
        """SIGKILL: no shutdown at all."""
        process = self._process()
        process.kill()
        process.wait()
        self._after_exit()

    @contextlib.contextmanager
    def frozen(self) -> Iterator[None]:
        """SIGSTOP for the block's duration, then SIGCONT: a server that still holds its
        connections open but answers nothing (a stuck disk, a network partition)."""
        pids = self._pids()
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        try:
            yield
        finally:
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)

    def restart(self) -> float:
        """Stop cleanly, then start on the same port; when it answers again (monotonic)."""
        self.stop()
        return self.start()

    def close(self) -> None:
        """Stop it if it runs (killed if it will not stop), and delete its directory (data
        and log)."""
        if self.running:
            with contextlib.suppress(Exception):
                self.stop(seconds=10.0)
        if self.running:
            self.kill()
        shutil.rmtree(self.directory, ignore_errors=True)

    def log_tail(self, characters: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-characters:]
        except OSError:
            return ""

    def answers(self) -> bool:
        raise NotImplementedError

    def _command(self) -> list[str]:
        raise NotImplementedError

    def _popen_options(self) -> dict[str, Any]:
        return {}

    def _pids(self) -> list[int]:
        """Every process of the server (PostgreSQL's backends too)."""
        pid = self._process().pid
        return [pid, *_children_of(pid)]

    def _after_exit(self) -> None:
        _wait_port_closed(self.port, 10.0)

    def _process(self) -> subprocess.Popen[bytes]:
        if self.process is None or self.process.poll() is not None:
            raise RuntimeError(f"{self.name} on port {self.port} is not running")
        return self.process

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class PostgresServer(_Server):
    """A PostgreSQL cluster of its own (`initdb` at construction); `url` reaches its
    `postgres` database as the `postgres` superuser."""

    name = "postgres"
    _stop_signal = signal.SIGINT  # fast shutdown: what `pg_ctl stop -m fast` sends

    def __init__(self, directory: Path | None = None, port: int | None = None) -> None:
        super().__init__(directory, port)
        self.data = self.directory / "data"
        self._account = pwd.getpwnam(_POSTGRES_USER) if os.geteuid() == 0 else None
        if self._account is not None:
            os.chown(self.directory, self._account.pw_uid, self._account.pw_gid)
        initdb = _binary("initdb")
        if initdb is None:
            raise RuntimeError("initdb is not installed")
        subprocess.run(
            [
                initdb,
                "-D",
                str(self.data),
                "-U",
                "postgres",
                "--auth=trust",
                "--no-sync",
                "--no-instructions",
                "--encoding=UTF8",
                "--locale=C",
            ],
            check=True,
            capture_output=True,
            **self._popen_options(),
        )

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def answers(self) -> bool:
        import psycopg

        try:
            with psycopg.connect(self.url, connect_timeout=1) as connection:
                connection.execute("SELECT 1")
            return True
        except psycopg.Error:
            return False

    def kill(self) -> None:
        """SIGKILL the postmaster alone, as the OOM killer would. Its backends notice that it
        died and exit; until they have, its shared memory is in use and no new postmaster
        starts, so this waits for them (and kills any that linger past 10 s)."""
        backends = self._pids()[1:]
        super().kill()
        if not _all_gone(backends, 10.0):
            for pid in backends:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            _all_gone(backends, 10.0)

    def _command(self) -> list[str]:
        postgres = _binary("postgres")
        if postgres is None:
            raise RuntimeError("postgres is not installed")
        return [
            postgres,
            "-D",
            str(self.data),
            "-p",
            str(self.port),
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            "unix_socket_directories=",
            "-c",
            "fsync=off",
            "-c",
            "max_connections=200",
        ]

    def _popen_options(self) -> dict[str, Any]:
        if self._account is None:
            return {}
        return {
            "user": self._account.pw_uid,
            "group": self._account.pw_gid,
            "extra_groups": [],
            "cwd": str(self.directory),
        }


class RedisServer(_Server):
    """A Redis with no persistence: a restart, clean or not, starts it empty."""

    name = "redis"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def answers(self) -> bool:
        import redis

        try:
            client = redis.Redis(port=self.port, socket_timeout=1, socket_connect_timeout=1)
            with contextlib.closing(client):
                return bool(client.ping())
        except redis.RedisError:
            return False

    def _command(self) -> list[str]:
        binary = _binary("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed")
        return [
            binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.directory),
        ]


@dataclass(frozen=True)
class Outage:
    """When a server went away and came back (monotonic seconds)."""

    went_away: float  # it had stopped answering
    returning: float  # its start (or SIGCONT) began: from here on it may answer
    back: float  # it answered again


def outage(server: _Server, fault: Fault, seconds: float) -> Outage:
    """Take `server` away by `fault` for `seconds`, then bring it back."""
    if fault is Fault.FREEZE:
        with server.frozen():
            went_away = time.monotonic()
            time.sleep(seconds)
            returning = time.monotonic()
        while not server.answers():
            time.sleep(0.01)
        return Outage(went_away, returning, time.monotonic())
    if fault is Fault.STOP:
        server.stop()
    elif fault is Fault.KILL:
        server.kill()
    else:
        raise ValueError(f"unknown fault {fault!r}")
    went_away = time.monotonic()
    time.sleep(seconds)
    returning = time.monotonic()
    return Outage(went_away, returning, server.start())


def _children_of(pid: int) -> list[int]:
    children = Path(f"/proc/{pid}/task/{pid}/children")
    try:
        return [int(child) for child in children.read_text().split()]
    except OSError:
        return []


def _all_gone(pids: list[int], seconds: float) -> bool:
    """Wait until none of `pids` runs; False if some still do after `seconds`."""
    deadline = time.monotonic() + seconds
    while any(_alive(pid) for pid in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie, dead but not reaped, does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"
