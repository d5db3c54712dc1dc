"""Several gateway replicas on Redis and PostgreSQL: exact shared limits, nothing lost, scaling.

    python benchmarks/replicas.py            # table
    python benchmarks/replicas.py --json     # one JSON object

Every gateway here is `distillguard serve` in its own processes, with state in PostgreSQL
(a fresh schema) and, unless stated, limits and the monitor in Redis (a database flushed
first). Four measurements:

1. Limits (`over_admitted`): `--workers 4` in front of the instant mock upstream, one key,
   `--clients` concurrent clients (half of them streaming) for `--limit-seconds`. For every
   60-second window starting at a request's send time, the admitted requests (and their
   tokens) that certainly fell inside it (sent and answered within it) are counted against
   the key's limits. The peer row runs the same load over four single-process gateways with
   in-memory limits (each replica enforcing the limit alone, the multi-instance overshoot
   reported against LiteLLM in its issues #13202 and #40291).
2. Crash (`lost_rows`): `--workers 2` under load; one worker is killed with SIGKILL midway (the
   supervisor starts it again). Every response a client received, 200 or not, must have its
   usage row, and the audit chain must verify.
3. Redis cost (`redis_added_p50_ms`): median latency at concurrency 1 of one process with the
   Redis limiter minus one with the in-memory limiter, both in front of the mock, on one
   SQLite store, monitor off; `with_monitor_added_ms` with the monitor on in both.
4. Scale (`scale_2_over_1`): requests/s of `--workers 2` over `--workers 1` in front of a lean
   mock upstream, driven by a lean client (`_lean_http.py`; Starlette and aiohttp would take a
   third of the two cores), state in PostgreSQL (and `scale_2_over_1_sqlite`: in SQLite).
   `engine_scale`: the same on the embedded model, where one process already uses both cores
   (torch's threads).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import print_table

BIN = Path(sys.executable).parent
DEFAULT_DATABASE = os.environ.get(
    "DISTILLGUARD_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
DEFAULT_REDIS = "redis://127.0.0.1:6379/13"


@dataclass
class Outcome:
    sent: float
    received: float
    status: int  # 0: no response (connection refused or reset)
    request_id: str | None
    tokens: int  # prompt + completion tokens the response reported
    complete: bool  # a stream that reached [DONE], or a whole JSON body
    stream: bool = False


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_ready(url: str, seconds: float = 180.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2.0).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise RuntimeError(f"{url} did not come up in {seconds:.0f} s")


class Stack:
    """A data directory, a fresh PostgreSQL schema, a flushed Redis database, child processes."""

    def __init__(self, database: str, redis_url: str, name: str) -> None:
        import psycopg
        import redis

        self.work = Path(tempfile.mkdtemp(prefix=f"dg-replicas-{name}-"))
        self.home = self.work / "home"
        self.schema = f"dg_bench_{name}_{os.getpid()}"
        self.admin_url = database
        with psycopg.connect(database, autocommit=True) as admin:
            admin.execute(f"DROP SCHEMA IF EXISTS {self.schema} CASCADE")
            admin.execute(f"CREATE SCHEMA {self.schema}")
        separator = "&" if "?" in database else "?"
        self.database = f"{database}{separator}options=-csearch_path%3D{self.schema}"
        self.redis_url = redis_url
        redis.Redis.from_url(redis_url).flushdb()
        self.processes: list[subprocess.Popen[bytes]] = []

    def create_key(self, rpm: int, tpm: int, concurrency: int, *, sqlite: bool = False) -> str:
        """An API key in the PostgreSQL schema (or, with `sqlite`, the data directory's file)."""
        from distillguard.gateway.apikeys import create_api_key
        from distillguard.gateway.server import prepare_home
        from distillguard.store import connect

        database = None if sqlite else self.database
        prepare_home(self.home, database)
        connection = connect(self.home, url=database)
        secret, _ = create_api_key(connection, "bench", rpm=rpm, tpm=tpm, concurrency=concurrency)
        connection.close()
        return secret

    def mock(self) -> str:
        port = free_port()
        self.processes.append(
            subprocess.Popen(
                [
                    str(BIN / "uvicorn"),
                    "distillguard.gateway.mock:mock_upstream_app",
                    "--factory",
                    "--port",
                    str(port),
                    "--log-level",
                    "warning",
                    "--no-access-log",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        url = f"http://127.0.0.1:{port}/v1"
        wait_ready(url + "/models")
        return url

    def lean_mock(self) -> str:
        port = free_port()
        script = Path(__file__).resolve().parent / "_lean_http.py"
        self.processes.append(
            subprocess.Popen(
                [sys.executable, str(script), str(port)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        url = f"http://127.0.0.1:{port}/v1"
        wait_ready(url + "/models")
        return url

    def serve(
        self,
        *arguments: str,
        redis: bool = True,
        redis_url: str | None = None,
        sqlite: bool = False,
    ) -> tuple[str, subprocess.Popen[bytes]]:
        port = free_port()
        store = [] if sqlite else ["--database", self.database]
        command = [
            str(BIN / "distillguard"),
            "--home",
            str(self.home),
            *store,
            "serve",
            "--port",
            str(port),
            "--admin-port",
            "0",
            *arguments,
        ]
        if redis:
            command += ["--redis", redis_url or self.redis_url]
        log = (self.work / f"serve-{port}.log").open("wb")
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        self.processes.append(process)
        wait_ready(f"http://127.0.0.1:{port}/healthz")
        return f"http://127.0.0.1:{port}/v1", process

    def stop(self, process: subprocess.Popen[bytes]) -> None:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def close(self) -> None:
        import psycopg

        for process in reversed(self.processes):
            self.stop(process)
        with psycopg.connect(self.admin_url, autocommit=True) as admin:
            admin.execute(f"DROP SCHEMA IF EXISTS {self.schema} CASCADE")


def sibling(redis_url: str, offset: int) -> str:
    """Another (flushed) database on the same Redis: /13 -> /12 for offset 1."""
    import redis

    base, _, number = redis_url.rpartition("/")
    url = f"{base}/{int(number) - offset}" if number.isdigit() else redis_url
    redis.Redis.from_url(url).flushdb()
    return url


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_for_workers(parent: int, count: int, seconds: float = 120.0) -> None:
    """Until `count` workers run and have had time to bind their sockets (so that clients'
    connections spread over all of them)."""
    deadline = time.monotonic() + seconds
    while len(worker_pids(parent)) < count:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{count} workers did not start in {seconds:.0f} s")
        time.sleep(0.2)
    time.sleep(8.0)  # each worker imports the engine and binds after that


def worker_pids(parent: int) -> list[int]:
    """The spawned gateway workers of a `serve --workers` process."""
    found = subprocess.run(
        ["pgrep", "-P", str(parent), "-f", "spawn_main"], capture_output=True, text=True
    ).stdout.split()
    return [int(pid) for pid in found]


# -- load ---------------------------------------------------------------------------------------


async def one_request(
    session: aiohttp.ClientSession, url: str, key: str, model: str, stream: bool, max_tokens: int
) -> Outcome:
    body: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": "Tell me about the sea."}],
        "max_tokens": max_tokens,
    }
    if stream:
        body |= {"stream": True, "stream_options": {"include_usage": True}}
    sent = time.time()
    try:
        async with session.post(
            url + "/chat/completions", json=body, headers={"authorization": f"Bearer {key}"}
        ) as response:
            request_id = response.headers.get("x-request-id")
            tokens, complete = 0, False
            if response.status == 200 and stream:
                async for raw in response.content:
                    line = raw.decode().strip()
                    if line == "data: [DONE]":
                        complete = True
                    elif line.startswith("data: "):
                        usage = json.loads(line[6:]).get("usage")
                        if usage:
                            tokens = int(usage["total_tokens"])
            else:
                payload = await response.json(content_type=None)
                complete = True
                if response.status == 200:
                    tokens = int(payload["usage"]["total_tokens"])
            return Outcome(sent, time.time(), response.status, request_id, tokens, complete, stream)
    except (TimeoutError, aiohttp.ClientError, json.JSONDecodeError):
        return Outcome(sent, time.time(), 0, None, 0, False, stream)


async def load(
    urls: list[str],
    key: str,
    model: str,
    clients: int,
    seconds: float,
    *,
    stream_share: float = 0.5,
    max_tokens: int = 16,
    pace: float = 0.0,
) -> list[Outcome]:
    """`clients` loops, each sending requests back to back (or every `pace` seconds) to the
    URLs in turn, for `seconds`."""
    outcomes: list[Outcome] = []
    deadline = time.monotonic() + seconds
    connector = aiohttp.TCPConnector(limit=clients, force_close=False)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def client(index: int) -> None:
            stream = index < clients * stream_share
            turn = index
            while time.monotonic() < deadline:
                url = urls[turn % len(urls)]
                turn += 1
                outcome = await one_request(session, url, key, model, stream, max_tokens)
                outcomes.append(outcome)
                if outcome.status in (0, 429) or pace:
                    await asyncio.sleep(max(pace, 0.05))

        await asyncio.gather(*(client(index) for index in range(clients)))
    return outcomes


def worst_windows(outcomes: list[Outcome], window: float = 60.0) -> tuple[int, int]:
    """(most requests, most tokens) admitted certainly within one window: sent and answered
    inside [start, start + window), over every start at a request's send time."""
    admitted = sorted((o for o in outcomes if o.status == 200), key=lambda o: o.sent)
    most_requests = most_tokens = 0
    for first in admitted:
        end = first.sent + window
        inside = [o for o in admitted if first.sent <= o.sent and o.received < end]
        most_requests = max(most_requests, len(inside))
        most_tokens = max(most_tokens, sum(o.tokens for o in inside))
    return most_requests, most_tokens


# -- the four measurements ----------------------------------------------------------------------


def measure_limits(
    database: str, redis_url: str, clients: int, seconds: float, rpm: int, tpm: int
) -> dict[str, Any]:
    rows: dict[str, Any] = {}
    for name in ("redis", "peer"):
        stack = Stack(database, redis_url, f"limits_{name}")
        try:
            key = stack.create_key(rpm, tpm, concurrency=1000)
            mock = stack.mock()
            if name == "redis":
                url, parent = stack.serve("--upstream", mock, "--workers", "4")
                wait_for_workers(parent.pid, 4)
                urls = [url]
            else:  # four independent processes, each with in-memory limits
                urls = [stack.serve("--upstream", mock, redis=False)[0] for _ in range(4)]
            outcomes = asyncio.run(load(urls, key, "mock", clients, seconds))
            most_requests, most_tokens = worst_windows(outcomes)
            ok = [o for o in outcomes if o.status == 200]
            rows[name] = {
                "requests_sent": len(outcomes),
                "admitted": len(ok),
                "streams_admitted": sum(1 for o in ok if o.stream and o.complete),
                "worst_window_requests": most_requests,
                "worst_window_tokens": most_tokens,
                "over_requests": max(0, most_requests - rpm),
                "over_tokens": max(0, most_tokens - tpm),
            }
        finally:
            stack.close()
    return rows


def measure_crash(database: str, redis_url: str, clients: int, seconds: float) -> dict[str, Any]:
    from distillguard.keys import init_master_secret
    from distillguard.keys.derive import chain_keys
    from distillguard.store import connect
    from distillguard.store.chain import verify_chain

    stack = Stack(database, redis_url, "crash")
    try:
        key = stack.create_key(10**7, 10**10, concurrency=10_000)
        mock = stack.mock()
        url, process = stack.serve("--upstream", mock, "--workers", "2")

        wait_for_workers(process.pid, 2)

        async def run() -> tuple[list[Outcome], int]:
            task = asyncio.create_task(load([url], key, "mock", clients, seconds, pace=0.0))
            before = {pid: cpu_seconds(pid) for pid in worker_pids(process.pid)}
            await asyncio.sleep(seconds / 2)
            # the worker that served most so far: certainly one with requests in flight
            victim = max(before, key=lambda pid: cpu_seconds(pid) - before[pid])
            os.kill(victim, signal.SIGKILL)
            return await task, victim

        outcomes, victim = asyncio.run(run())
        time.sleep(1.0)
        stack.stop(process)  # graceful: the surviving workers flush
        received = [o for o in outcomes if o.request_id is not None]
        connection = connect(stack.home, url=stack.database)
        stored = {row[0] for row in connection.execute("SELECT request_id FROM usage")}
        chain = verify_chain(connection, chain_keys(init_master_secret(stack.home)[0]))
        connection.close()
        lost = [o for o in received if o.request_id not in stored]
        return {
            "killed_pid": victim,
            "responses_received": len(received),
            "complete_200": sum(1 for o in received if o.status == 200 and o.complete),
            "failed_connections": sum(1 for o in outcomes if o.status == 0),
            "lost_rows": len(lost),
            "usage_rows": len(stored),
            "chain_ok": chain.ok,
            "chain_records": chain.records,
        }
    finally:
        stack.close()


def latency_p50(url: str, key: str, model: str, count: int) -> float:
    body = {"model": model, "messages": [{"role": "user", "content": "Hi."}], "max_tokens": 16}
    headers = {"authorization": f"Bearer {key}"}
    timings = []
    with httpx.Client(headers=headers, timeout=30.0) as client:
        for _ in range(30):
            client.post(url + "/chat/completions", json=body).raise_for_status()
        for _ in range(count):
            start = time.perf_counter()
            client.post(url + "/chat/completions", json=body).raise_for_status()
            timings.append((time.perf_counter() - start) * 1000)
    return statistics.median(timings)


def measure_redis_cost(database: str, redis_url: str, requests: int) -> dict[str, float]:
    """p50 at concurrency 1, in-memory limiter against the Redis one, the rest the same: one
    SQLite store (PostgreSQL's commit, about 5 ms here, would bury the difference in its
    noise), the monitor off in both (`--redis` would also move the monitor to Redis); then
    the same with the monitor (local against shared through Redis)."""
    result: dict[str, float] = {}
    for label, extra in (("", ("--no-monitor",)), ("with_monitor_", ())):
        medians: dict[str, list[float]] = {"memory": [], "redis": []}
        stack = Stack(database, redis_url, "latency")
        try:
            key = stack.create_key(10**7, 10**10, concurrency=10_000, sqlite=True)
            mock = stack.mock()
            memory_url, _ = stack.serve("--upstream", mock, *extra, redis=False, sqlite=True)
            shared_url, _ = stack.serve("--upstream", mock, *extra, sqlite=True)
            for _ in range(5):  # alternate, so drift on a noisy machine hits both
                medians["memory"].append(latency_p50(memory_url, key, "mock", requests))
                medians["redis"].append(latency_p50(shared_url, key, "mock", requests))
        finally:
            stack.close()
        memory_ms = statistics.median(medians["memory"])
        redis_ms = statistics.median(medians["redis"])
        result |= {
            f"{label}memory_p50_ms": memory_ms,
            f"{label}redis_p50_ms": redis_ms,
            f"{label}added_ms": redis_ms - memory_ms,
        }
    return result


def measure_scale(
    database: str, redis_url: str, concurrency: int, seconds: float, repeats: int, sqlite: bool
) -> dict[str, Any]:
    """Requests/s of 1 and 2 workers in front of the lean mock, driven by the lean client,
    alternating `repeats` times (the best of each): the gateway's own work is what scales.
    State in PostgreSQL, or (`sqlite`) in the data directory's SQLite file."""
    from _lean_http import lean_load

    body = {"model": "mock", "messages": [{"role": "user", "content": "Hi."}], "max_tokens": 16}
    rates: dict[int, list[float]] = {1: [], 2: []}
    stack = Stack(database, redis_url, "scale")
    try:
        key = stack.create_key(10**9, 10**12, concurrency=100_000, sqlite=sqlite)
        mock = stack.lean_mock()
        # each its own Redis database: separate limits, and each its own monitor leader
        servers = {}
        for workers in (1, 2):
            url, parent = stack.serve(
                "--upstream",
                mock,
                "--workers",
                str(workers),
                redis_url=sibling(redis_url, workers),
                sqlite=sqlite,
            )
            if workers > 1:
                wait_for_workers(parent.pid, workers)
            servers[workers] = url
        for _ in range(repeats):
            for workers, url in servers.items():
                port = int(url.split(":")[-1].split("/")[0])
                path = "/v1/chat/completions"
                asyncio.run(lean_load("127.0.0.1", port, path, body, key, concurrency, 2.0))
                ok, other, elapsed = asyncio.run(
                    lean_load("127.0.0.1", port, path, body, key, concurrency, seconds)
                )
                if other:
                    raise RuntimeError(f"{other} requests failed while measuring throughput")
                rates[workers].append(ok / elapsed)
    finally:
        stack.close()
    one, two = max(rates[1]), max(rates[2])
    return {"one_rps": one, "two_rps": two, "ratio": two / one, "runs": rates}


def measure_engine_scale(
    database: str, redis_url: str, concurrency: int, seconds: float, max_tokens: int
) -> dict[str, float]:
    """The same on the embedded model (generation in the gateway process)."""
    rates: dict[int, float] = {}
    for workers in (1, 2):
        stack = Stack(database, redis_url, f"engine{workers}")
        try:
            key = stack.create_key(10**9, 10**12, concurrency=100_000)
            url, _ = stack.serve("--workers", str(workers))
            model = httpx.get(url + "/models", headers={"authorization": f"Bearer {key}"}).json()[
                "data"
            ][0]["id"]
            asyncio.run(load([url], key, model, concurrency, 3.0, stream_share=0.0))
            outcomes = asyncio.run(
                load(
                    [url], key, model, concurrency, seconds, stream_share=0.0, max_tokens=max_tokens
                )
            )
            ok = [o for o in outcomes if o.status == 200]
            rates[workers] = len(ok) / (max(o.received for o in ok) - min(o.sent for o in ok))
        finally:
            stack.close()
    return {"one_rps": rates[1], "two_rps": rates[2], "ratio": rates[2] / rates[1]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--database", default=DEFAULT_DATABASE)
    parser.add_argument("--redis", default=DEFAULT_REDIS, help="a Redis database it may flush")
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--limit-seconds", type=float, default=75.0)
    parser.add_argument("--rpm", type=int, default=600)
    parser.add_argument("--tpm", type=int, default=9000)
    parser.add_argument("--crash-seconds", type=float, default=20.0)
    parser.add_argument("--latency-requests", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=128)
    parser.add_argument("--scale-seconds", type=float, default=10.0)
    parser.add_argument("--scale-repeats", type=int, default=5)
    parser.add_argument("--engine-concurrency", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=32)
    parts_all = ("limits", "crash", "latency", "scale", "engine")
    parser.add_argument("--only", choices=parts_all, action="append", default=None)
    args = parser.parse_args()
    parts = set(args.only or parts_all)

    result: dict[str, Any] = {"cpus": os.cpu_count()}
    started = time.monotonic()
    if "limits" in parts:
        limits = measure_limits(
            args.database, args.redis, args.clients, args.limit_seconds, args.rpm, args.tpm
        )
        result["limits"] = limits | {"rpm": args.rpm, "tpm": args.tpm, "clients": args.clients}
        result["over_admitted"] = limits["redis"]["over_requests"] + limits["redis"]["over_tokens"]
        result["peer_over_admitted"] = (
            limits["peer"]["over_requests"] + limits["peer"]["over_tokens"]
        )
    if "crash" in parts:
        crash = measure_crash(args.database, args.redis, args.clients, args.crash_seconds)
        result["crash"] = crash
        result["lost_rows"] = crash["lost_rows"]
        result["chain_ok"] = crash["chain_ok"]
    if "latency" in parts:
        latency = measure_redis_cost(args.database, args.redis, args.latency_requests)
        result["latency"] = latency
        result["redis_added_p50_ms"] = latency["added_ms"]
    if "scale" in parts:
        for suffix, sqlite in (("", False), ("_sqlite", True)):
            scale = measure_scale(
                args.database,
                args.redis,
                args.concurrency,
                args.scale_seconds,
                args.scale_repeats,
                sqlite=sqlite,
            )
            result[f"scale{suffix}"] = scale
            result[f"scale_2_over_1{suffix}"] = scale["ratio"]
    if "engine" in parts:
        result["engine_scale"] = measure_engine_scale(
            args.database, args.redis, args.engine_concurrency, 20.0, args.max_tokens
        )
    result["seconds"] = time.monotonic() - started

    if args.json:
        print(json.dumps(result, indent=2))
        return
    rows = []
    if "limits" in result:
        for name, row in result["limits"].items():
            if isinstance(row, dict):
                rows.append(
                    (
                        f"limits, {name}",
                        f"{row['admitted']} of {row['requests_sent']} admitted; worst window "
                        f"{row['worst_window_requests']}/{args.rpm} req, "
                        f"{row['worst_window_tokens']}/{args.tpm} tok",
                    )
                )
    if "crash" in result:
        crash = result["crash"]
        rows.append(
            (
                "kill -9 one of 2 workers",
                f"{crash['responses_received']} responses, {crash['lost_rows']} without rows, "
                f"chain {'verifies' if crash['chain_ok'] else 'BROKEN'} "
                f"({crash['chain_records']} records)",
            )
        )
    if "latency" in result:
        latency = result["latency"]
        rows.append(
            (
                "p50, memory vs Redis limiter",
                f"{latency['memory_p50_ms']:.2f} ms vs {latency['redis_p50_ms']:.2f} ms "
                f"(+{latency['added_ms']:.2f} ms)",
            )
        )
        rows.append(
            (
                "p50, same with the monitor",
                f"{latency['with_monitor_memory_p50_ms']:.2f} ms vs "
                f"{latency['with_monitor_redis_p50_ms']:.2f} ms "
                f"(+{latency['with_monitor_added_ms']:.2f} ms)",
            )
        )
    for name, label in (
        ("scale", "PostgreSQL"),
        ("scale_sqlite", "SQLite"),
        ("engine_scale", "embedded model"),
    ):
        if name in result:
            scale = result[name]
            rows.append(
                (
                    f"req/s, 1 vs 2 workers, {label}",
                    f"{scale['one_rps']:.1f} vs {scale['two_rps']:.1f} ({scale['ratio']:.2f}x)",
                )
            )
    print_table("Replicas on Redis + PostgreSQL", rows)


if __name__ == "__main__":
    main()
