"""The operator console on a large fleet: the accounts page and an account's page (issue 19).

    python benchmarks/console.py            # table
    python benchmarks/console.py --json     # one JSON object

A fresh PostgreSQL schema (at --database, default $DISTILLGUARD_TEST_DATABASE_URL or
postgresql://postgres@127.0.0.1:5432/test; dropped at the end) gets 10,000 accounts' API keys
and 1,000,000 usage rows over 30 days, each with its audit record (an unkeyed chain, linked as
the gateway links it), written with COPY. A monitor scores the accounts from 10 requests each
(its tier changes go to the store, as `serve` records them), the console's watch rolls the
usage up and samples every account's risk once, and an operator signs in. The console is
served by uvicorn on this machine and read over HTTP by one client:

1. `p95_ms_accounts_10k`: the accounts page, 100 rows sorted by risk (the default), a random
   page of the 100 each time: 95th percentile of `--requests` loads, `--pause` seconds apart,
   after one warm-up load. The snapshot the page reads goes stale every 10 s and is retaken in
   the background (the monitor scores all 10,000 accounts again) while the loads run, as it
   would for an operator browsing: that work competes with the pages and is in the figure.
2. `p95_ms_account_detail`: an account's page (risk over time, contributions, tier history,
   ring, its 20 latest requests with their texts, its usage per hour for 7 days), a random
   account each time, loaded the same way.

Also reported: the medians, `ms_snapshot_10k` (taking one snapshot), `s_rollup_1m` (rolling
the million rows up the first time, as after an upgrade), `s_first_watch_round` (sampling
every account's risk once) and `s_seed` (writing the rows).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import re
import secrets
import shutil
import socket
import statistics
import sys
import threading
import time
import zlib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import httpx
import psycopg
import uvicorn

from _common import print_table
from distillguard.errors import ConfigError
from distillguard.gateway.admin import AdminApi
from distillguard.gateway.console import Console, ConsoleConfig
from distillguard.keys import init_master_secret
from distillguard.monitor.events import MonitorEvent
from distillguard.monitor.features import FEATURES
from distillguard.monitor.history import TierHistory
from distillguard.monitor.model import RiskModel
from distillguard.monitor.monitor import Monitor
from distillguard.store import connect
from distillguard.store.chain import GENESIS, link, record_json
from distillguard.store.integrity import current_chain_key
from distillguard.store.operators import create_operator
from distillguard.store.rollup import refresh_rollup
from distillguard.store.usage import USAGE_COLUMNS

PASSWORD = "benchmark password"  # noqa: S105 - a throwaway operator in a throwaway schema
CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def risk_model() -> tuple[RiskModel, str]:
    """The shipped model; while it is being refitted for new signals, a stand-in of the same
    shape (the console's cost does not depend on the weights)."""
    try:
        return RiskModel.load(), "shipped"
    except ConfigError:
        heavy = {"logprobs": 3.0, "multiple_samples": 3.0, "maximal_max_tokens": 2.0}
        model = RiskModel(
            features=tuple(signal.name for signal in FEATURES),
            weights=tuple(heavy.get(signal.name, 0.0) for signal in FEATURES),
            bias=-4.0,
            means=tuple(signal.prior for signal in FEATURES),
            scales=tuple(0.1 for _ in FEATURES),
            watch=0.5,
            flag=0.8,
            block=0.95,
            min_requests=5,
            block_min_requests=20,
        )
        return model, "stand-in (the shipped model does not match this version's signals)"


def seed_usage(url: str, accounts: int, rows: int, rng: random.Random) -> float:
    """COPY `rows` usage rows over the last 30 days, with their chained audit records."""
    started = time.perf_counter()
    now = datetime.now(UTC)
    prev_hash = GENESIS
    usage_rows, audit_rows = [], []
    for index in range(rows):
        account = rng.randrange(accounts)
        at = now - timedelta(seconds=rng.random() * 30 * 86_400)
        harvester = account % 50 == 0
        row: dict[str, Any] = {
            "request_id": f"req_{index:08d}",
            "created_at": at.isoformat(timespec="microseconds").replace("+00:00", "Z"),
            "tenant": f"tenant-{account % 500:03d}",
            "key_id": f"k{account:05d}",
            "model": "m",
            "endpoint": "chat.completions",
            "status": 200 if rng.random() > 0.02 else 429,
            "outcome": "ok",
            "prompt_tokens": rng.randrange(10, 400),
            "completion_tokens": rng.randrange(900, 1024) if harvester else rng.randrange(20, 300),
            "latency_ms": 50.0,
            "watermark_key_id": "wk",
            "fingerprint": "fp",
            "parameters": json.dumps({"n": 4, "logprobs": True} if harvester else {}),
            "prompt_text": f"question {index} about something",
            "output_text": json.dumps([f"answer {index}"]),
        }
        record = record_json(row)
        record_hash, tag = link(prev_hash, record)
        audit_rows.append((row["request_id"], record, prev_hash, record_hash, tag))
        prev_hash = record_hash
        row["prompt_text"] = zlib.compress(row["prompt_text"].encode())
        row["output_text"] = zlib.compress(row["output_text"].encode())
        usage_rows.append(tuple(row[name] for name in USAGE_COLUMNS))
    with psycopg.connect(url, autocommit=True) as connection, connection.cursor() as cursor:
        with cursor.copy(f"COPY usage ({', '.join(USAGE_COLUMNS)}) FROM STDIN") as copy:
            for values in usage_rows:
                copy.write_row(values)
        columns = "request_id, record, prev_hash, record_hash, chain"
        with cursor.copy(f"COPY audit ({columns}) FROM STDIN") as copy:
            for values in audit_rows:
                copy.write_row(values)
        cursor.execute("ANALYZE")
    return time.perf_counter() - started


def seed_monitor(monitor: Monitor, accounts: int, rng: random.Random) -> None:
    start = time.time() - 86_400
    for step in range(10):
        for account in range(accounts):
            harvester = account % 50 == 0
            monitor.process(
                MonitorEvent(
                    time=start + step * 600 + account * 0.01,
                    account=f"k{account:05d}",
                    tenant=f"tenant-{account % 500:03d}",
                    prompt=f"question {rng.randrange(10**6)} about topic {account % 13}",
                    turns=1 if harvester else rng.choice((1, 2, 3)),
                    prompt_tokens=100,
                    completion_tokens=1000 if harvester else 150,
                    max_tokens=1024 if harvester else 256,
                    max_tokens_cap=1024,
                    n=4 if harvester else 1,
                    logprobs=harvester,
                    status=200,
                )
            )
    monitor.regroup()


def serve(app: Any) -> tuple[uvicorn.Server, threading.Thread, str]:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    return server, thread, f"http://127.0.0.1:{sock.getsockname()[1]}"


def timed_loads(client: httpx.Client, paths: list[str], pause: float) -> list[float]:
    """Milliseconds of each page load, `pause` seconds apart (so that the loads span the
    background refreshes of the snapshot, as an operator's browsing does)."""
    timings = []
    for path in paths:
        time.sleep(pause)
        started = time.perf_counter()
        response = client.get(path)
        timings.append((time.perf_counter() - started) * 1000)
        if response.status_code != 200:
            raise RuntimeError(f"{path} answered {response.status_code}")
    return timings


def p95(values: list[float]) -> float:
    return float(statistics.quantiles(values, n=20)[-1])


def run(
    url: str, accounts: int, rows: int, requests: int, pause: float, home: Path
) -> dict[str, Any]:
    rng = random.Random(19)
    seed_seconds = seed_usage(url, accounts, rows, rng)
    model, model_kind = risk_model()
    history = TierHistory(lambda: connect(home, shared=True, url=url))
    monitor = Monitor(model, ring_every=10**9, on_tier_change=history.record)
    seed_monitor(monitor, accounts, rng)
    master, _ = init_master_secret(home)
    console = Console(
        ConsoleConfig(home=home, database=url, chain_key=current_chain_key(master)),
        lambda: monitor,
        lambda: connect(home, shared=True, url=url),
    )
    admin = AdminApi(None, lambda: monitor)
    admin.mount(console)
    rollup_connection = connect(home, url=url)
    started = time.perf_counter()
    refresh_rollup(rollup_connection)
    rollup_seconds = time.perf_counter() - started
    rollup_connection.close()
    started = time.perf_counter()
    console.watch.step()  # a snapshot; every account's risk sampled once
    watch_seconds = time.perf_counter() - started
    started = time.perf_counter()
    console.snapshots.expire()
    console.snapshots.refresh()
    snapshot_ms = (time.perf_counter() - started) * 1000
    operator_connection = connect(home, url=url)
    create_operator(operator_connection, "bench", "viewer", PASSWORD)
    operator_connection.close()
    server, thread, base = serve(admin.app())
    try:
        with httpx.Client(base_url=base, timeout=60) as client:
            form = client.get("/console/login").text
            token = CSRF.search(form)
            assert token is not None
            client.post(
                "/console/login",
                data={"csrf": token.group(1), "name": "bench", "password": PASSWORD},
                follow_redirects=False,
            )
            client.get("/console/accounts")  # warm-up
            pages = [f"/console/accounts?page={rng.randrange(1, 101)}" for _ in range(requests)]
            accounts_ms = timed_loads(client, pages, pause)
            details = [f"/console/accounts/k{rng.randrange(accounts):05d}" for _ in range(requests)]
            detail_ms = timed_loads(client, details, pause)
    finally:
        server.should_exit = True
        thread.join()
        console.close()
    return {
        "p95_ms_accounts_10k": round(p95(accounts_ms), 1),
        "p95_ms_account_detail": round(p95(detail_ms), 1),
        "median_ms_accounts_10k": round(statistics.median(accounts_ms), 1),
        "median_ms_account_detail": round(statistics.median(detail_ms), 1),
        "ms_snapshot_10k": round(snapshot_ms, 1),
        "s_rollup_1m": round(rollup_seconds, 1),
        "s_first_watch_round": round(watch_seconds, 1),
        "s_seed": round(seed_seconds, 1),
        "accounts": accounts,
        "usage_rows": rows,
        "requests": requests,
        "pause_s": pause,
        "risk_model": model_kind,
    }


def main() -> None:
    logging.getLogger("distillguard.monitor").setLevel(logging.ERROR)  # one line per flag
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--database",
        default=os.environ.get("DISTILLGUARD_TEST_DATABASE_URL")
        or "postgresql://postgres@127.0.0.1:5432/test",
    )
    parser.add_argument("--accounts", type=int, default=10_000)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--requests", type=int, default=200, help="Loads of each page.")
    parser.add_argument(
        "--pause",
        type=float,
        default=0.1,
        help="Seconds between loads (default 0.1: 200 "
        "loads span 20 s, two retakes of the snapshot).",
    )
    parser.add_argument("--json", action="store_true", help="Print one JSON object.")
    arguments = parser.parse_args()
    schema = "dg_bench_console_" + secrets.token_hex(4)
    with psycopg.connect(arguments.database, autocommit=True) as admin:
        admin.execute(f"CREATE SCHEMA {schema}")
    separator = "&" if "?" in arguments.database else "?"
    url = f"{arguments.database}{separator}options=-csearch_path%3D{schema}"
    home = Path(os.environ.get("TMPDIR", "/tmp")) / f"{schema}-home"
    try:
        connect(home, url=url).close()  # the schema, migrated
        result = run(
            url, arguments.accounts, arguments.rows, arguments.requests, arguments.pause, home
        )
    finally:
        with psycopg.connect(arguments.database, autocommit=True) as admin:
            admin.execute(f"DROP SCHEMA {schema} CASCADE")
        shutil.rmtree(home, ignore_errors=True)
    if arguments.json:
        print(json.dumps(result))
        return
    print_table(
        f"Console on {result['accounts']:,} accounts and {result['usage_rows']:,} usage rows "
        "(PostgreSQL)",
        [(name, str(value)) for name, value in result.items()],
    )


if __name__ == "__main__":
    main()
