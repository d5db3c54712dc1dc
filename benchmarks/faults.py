"""The gateway survives its databases: nothing answered is lost, nothing hangs (issue 16).

    python benchmarks/faults.py            # table
    python benchmarks/faults.py --json     # one JSON object

`distillguard serve --workers 2` in front of the instant mock upstream, on a PostgreSQL and a
Redis of its own (`_servers.py`: started here, so that they can be stopped and killed), with an
explicit `--journal-wait-ms`. `--clients` concurrent clients (half of them streaming) send
chat requests back to back (`_timed_load.py`) through four phases, each `--lead` seconds of
load, the fault, the service down for `--down` seconds, then `--after` seconds of load:

1. PostgreSQL restarted: fast shutdown (what `pg_ctl stop -m fast` sends), started again;
2. Redis restarted: SIGTERM, started again (empty: it keeps nothing on disk);
3. PostgreSQL killed: SIGKILL to the postmaster, started again (crash recovery);
4. Redis killed: SIGKILL, started again (empty).

Then the load stops, the gateway gets `--settle` seconds to commit what it journaled while the
database was away, and stops cleanly. Figures:

- `lost_rows`: answered requests (a 200 received in full: the whole body, or the stream up to
  `[DONE]`) whose usage row or audit record is not in PostgreSQL, matched by the `x-request-id`
  header (the usage row's `request_id`). `lost_rows_any_status`: the same for every response
  that carried a request id, errors included. `audit_verify`: `distillguard audit verify`.
- `hung_requests`: requests that waited longer than the journal wait plus 1 s for their first
  byte or between two chunks of a stream. Other answers (503s in OpenAI's format) are fine and
  counted by status and code, per phase.
- `recovery_s`: the worst phase's time from the service answering again (its port accepting
  and a query or PING answered) to the first answered request sent after that.
- `redis_refusal_us_300k` and `bytes_per_key_10k_rpm`: `benchmarks/limits.py`'s Redis figures
  (the Redis-side time of a daily refusal with 300,000 requests in the day; what one key at
  10,000 requests a minute holds in Redis), measured on this script's own Redis.

Targets: lost_rows 0, hung_requests 0, recovery_s <= 10.

`--frozen SECONDS` adds two phases, not in the default run: PostgreSQL (every process of it),
then Redis, frozen with SIGSTOP for that long, their connections open and nothing answering,
as behind a stuck disk or a partition that drops packets (docs/deployment.md: known gaps).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import print_table
from _servers import Fault, Outage, PostgresServer, RedisServer, missing, outage
from _timed_load import (
    Answer,
    Load,
    by_kind,
    hung,
    missing_rows,
    recovery_seconds,
    wait_for_rows,
)
from replicas import BIN, Stack, wait_for_workers

__all__ = ["Phase", "drive", "phase_figures", "run_faults", "scenario", "what_was_kept"]


@dataclass(frozen=True)
class Phase:
    """One fault: when its load began and ended, and the outage (monotonic seconds)."""

    name: str
    began: float
    outage: Outage
    ended: float

    def answers(self, everything: list[Answer]) -> list[Answer]:
        return [answer for answer in everything if self.began <= answer.sent < self.ended]


def phase_figures(phase: Phase, answers: list[Answer], bound: float) -> dict[str, Any]:
    mine = phase.answers(answers)
    down = phase.outage
    recovery = recovery_seconds(mine, down.back)
    after = [answer.done for answer in mine if answer.sent >= down.back and not answer.answered]
    return {
        "requests": len(mine),
        "answered": sum(1 for answer in mine if answer.answered),
        "by_kind": by_kind(mine),
        # sent after the service went away and answered before it began to come back
        "while_away": by_kind(
            [a for a in mine if down.went_away <= a.sent and a.done < down.returning]
        ),
        "hung": len(hung(mine, bound)),
        "longest_wait_s": max((answer.longest_wait for answer in mine), default=0.0),
        "down_s": down.back - down.went_away,
        "recovery_s": recovery,
        # the last failure of a request sent after the service was back (0: none)
        "errors_until_s": max(after) - down.back if after else 0.0,
    }


def scenario(
    args: argparse.Namespace, postgres: PostgresServer, redis_server: RedisServer
) -> list[tuple[str, PostgresServer | RedisServer, Fault, float]]:
    """The phases in order: (name, server, fault, seconds away)."""
    phases: list[tuple[str, PostgresServer | RedisServer, Fault, float]] = [
        ("postgres", postgres, Fault.STOP, args.down),
        ("redis", redis_server, Fault.STOP, args.down),
        ("postgres", postgres, Fault.KILL, args.down),
        ("redis", redis_server, Fault.KILL, args.down),
    ]
    if args.frozen:
        phases.append(("postgres", postgres, Fault.FREEZE, args.frozen))
        phases.append(("redis", redis_server, Fault.FREEZE, args.frozen))
    return phases


def drive(
    url: str,
    key: str,
    args: argparse.Namespace,
    faults: list[tuple[str, PostgresServer | RedisServer, Fault, float]],
) -> tuple[list[Answer], list[Phase]]:
    """The load through every phase: (every answer, the phases)."""
    phases: list[Phase] = []
    with Load(url, key, clients=args.clients) as load:
        for name, server, fault, seconds in faults:
            began = time.monotonic()
            time.sleep(args.lead)
            away = outage(server, fault, seconds)
            time.sleep(args.after)
            phases.append(Phase(f"{name} {fault.value}", began, away, time.monotonic()))
        return load.stop(), phases


def what_was_kept(
    stack: Stack, gateway: subprocess.Popen[bytes], answers: list[Answer], settle: float
) -> dict[str, Any]:
    """Give the gateway `settle` seconds to commit, stop it cleanly, then look for every
    response's usage row and audit record, and verify the audit log."""
    answered = {a.request_id for a in answers if a.answered and a.request_id}
    with_id = {a.request_id for a in answers if a.request_id}
    settle_s = wait_for_rows(stack.database, with_id, settle)
    stack.stop(gateway)  # cleanly: each worker commits what it holds
    no_usage, no_audit = missing_rows(stack.database, answered)
    any_usage, any_audit = missing_rows(stack.database, with_id)
    verify = subprocess.run(
        [
            *(str(BIN / "distillguard"), "--home", str(stack.home)),
            *("--database", stack.database, "audit", "verify"),
        ],
        capture_output=True,
        text=True,
    )
    return {
        "lost_rows": len(no_usage | no_audit),
        "lost_usage_rows": len(no_usage),
        "lost_audit_records": len(no_audit),
        "lost_rows_any_status": len(any_usage | any_audit),
        "audit_verify": {
            "ok": verify.returncode == 0,
            "output": (verify.stdout + verify.stderr).strip()[-2000:],
        },
        "answered": len(answered),
        "rows_settled_s": settle_s,
    }


def run_faults(args: argparse.Namespace) -> dict[str, Any]:
    postgres, redis_server = PostgresServer(), RedisServer()
    bound = args.journal_wait_ms / 1000 + 1.0
    try:
        postgres.start()
        redis_server.start()
        stack = Stack(postgres.url, redis_server.url, "faults")
        try:
            key = stack.create_key(10**9, 10**12, concurrency=100_000)
            url, gateway = stack.serve(
                *("--upstream", stack.mock(), "--workers", str(args.workers)),
                *("--journal-wait-ms", str(args.journal_wait_ms)),
            )
            wait_for_workers(gateway.pid, args.workers)
            answers, phases = drive(url, key, args, scenario(args, postgres, redis_server))
            kept = what_was_kept(stack, gateway, answers, args.settle)
        finally:
            stack.close()
            shutil.rmtree(stack.work, ignore_errors=True)
        limits: dict[str, float] = {}
        if not args.no_limits:
            import limits as limits_benchmark

            limits = limits_benchmark.redis_figures(redis_server.url)
    finally:
        postgres.close()
        redis_server.close()

    per_phase = {phase.name: phase_figures(phase, answers, bound) for phase in phases}
    recoveries = [figures["recovery_s"] for figures in per_phase.values()]
    return {
        "lost_rows": kept.pop("lost_rows"),
        "hung_requests": len(hung(answers, bound)),
        "recovery_s": None if None in recoveries else max(recoveries),
        "redis_refusal_us_300k": limits.get("redis_refusal_us_300k"),
        "bytes_per_key_10k_rpm": limits.get("bytes_per_key_redis"),
        **kept,
        "requests": len(answers),
        "by_kind": by_kind(answers),
        "longest_wait_s": max((answer.longest_wait for answer in answers), default=0.0),
        "hang_bound_s": bound,
        "phases": per_phase,
        "limits": limits,
        "workers": args.workers,
        "clients": args.clients,
        "journal_wait_ms": args.journal_wait_ms,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--journal-wait-ms", type=float, default=1000.0)
    parser.add_argument("--lead", type=float, default=2.0, help="seconds of load before a fault")
    parser.add_argument("--down", type=float, default=2.0, help="seconds a service stays down")
    parser.add_argument("--after", type=float, default=4.0, help="seconds of load after it")
    parser.add_argument(
        "--frozen",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="also freeze PostgreSQL, then Redis (SIGSTOP) this long (6 covers the key cache's "
        "5 s); not in the default scenario",
    )
    parser.add_argument("--settle", type=float, default=30.0, help="most seconds for the rows")
    parser.add_argument(
        "--no-limits", action="store_true", help="skip benchmarks/limits.py's Redis figures"
    )
    args = parser.parse_args()
    absent = missing()
    if absent:
        raise SystemExit(f"needs {', '.join(absent)}")
    started = time.monotonic()
    result = run_faults(args)
    result["seconds"] = time.monotonic() - started
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_report(result)


def print_report(result: dict[str, Any]) -> None:
    rows = []
    for name, phase in result["phases"].items():
        recovery = phase["recovery_s"]
        kinds = ", ".join(f"{count} {kind}" for kind, count in phase["by_kind"].items())
        rows.append(
            (
                name,
                f"{kinds}; {phase['hung']} hung; down {phase['down_s']:.1f} s, recovered in "
                + ("NEVER" if recovery is None else f"{recovery:.2f} s"),
            )
        )
    verify = result["audit_verify"]
    rows += [
        ("lost rows (answered requests)", str(result["lost_rows"])),
        ("lost rows (any response)", str(result["lost_rows_any_status"])),
        ("audit verify", "ok" if verify["ok"] else "FAILED: " + verify["output"][-200:]),
        ("hung requests", f"{result['hung_requests']} (bound {result['hang_bound_s']:.1f} s)"),
        ("longest wait for a byte", f"{result['longest_wait_s']:.2f} s"),
    ]
    if result["limits"]:
        rows += [
            ("Redis-side daily refusal, 300k in the day", f"{result['redis_refusal_us_300k']} us"),
            ("bytes per key in Redis, 10k rpm", f"{result['bytes_per_key_10k_rpm'] / 1e6:.2f} MB"),
        ]
    print_table(
        f"Faults under load: {result['workers']} workers, {result['clients']} clients, "
        f"journal wait {result['journal_wait_ms']:.0f} ms ({result['seconds']:.0f} s)",
        rows,
    )


if __name__ == "__main__":
    main()
