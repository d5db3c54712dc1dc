"""The process that runs one console job: `python -m distillguard.gateway.console.worker JOB`.

It reads the job's options from its row, runs it, and writes back progress (by stage: an
audit cannot say how far into scoring it is), a heartbeat every `HEARTBEAT` seconds, and the
result: for `suspect`, `audit suspect` then the evidence report (HTML and JSON, stored in the
database so that every replica can serve it); for `verify`, `audit verify`'s verdict. Where
the data directory and database are comes from the environment (DISTILLGUARD_HOME,
DISTILLGUARD_DATABASE_URL), and so does a suspect's API key (DISTILLGUARD_SUSPECT_API_KEY).
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shlex
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from distillguard.errors import DistillGuardError
from distillguard.gateway.console.jobs import Jobs, finish_job, update_job
from distillguard.redact import redact
from distillguard.store import connect
from distillguard.store.base import Connection

__all__ = ["HEARTBEAT", "main", "run_suspect", "run_verify"]

log = logging.getLogger("distillguard.console")

HEARTBEAT = 2.0
Progress = Callable[[float, str], None]


def run_verify(
    home: Path, database: str | None, options: dict[str, Any], progress: Progress
) -> dict[str, Any]:
    """`audit verify`: the chain and the anchored checkpoints."""
    from distillguard.keys import load_master_secret
    from distillguard.store.integrity import verify_log

    progress(0.1, "recomputing the chain from every usage row")
    connection = connect(home, url=database)
    try:
        result = verify_log(connection, load_master_secret(home), Path(options["anchor"]))
    finally:
        connection.close()
    return {
        "ok": result.ok,
        "failure": result.failure(),
        "summary": result.summary(),
        "records": result.chain.records,
        "public_key": result.public_key,
    }


def run_suspect(
    home: Path, database: str | None, options: dict[str, Any], progress: Progress
) -> dict[str, Any]:
    """`audit suspect`, then its evidence report, stored in `evidence_reports`."""
    from distillguard.forensics.audit import audit_suspect
    from distillguard.forensics.report import build_report, render_html
    from distillguard.watermark.scheme import SchemeConfig

    progress(0.05, "loading the tenants' keys, the logged traffic and the suspect")
    outcome = audit_suspect(
        home,
        SchemeConfig.from_dict(options["scheme"]).unbound(),
        Path(options["model"]),
        database=database,
        url=options.get("url"),
        suspect_model=options.get("suspect_model"),
        weights=Path(options["weights"]) if options.get("weights") else None,
        reference=options.get("reference"),
        tenant=options.get("tenant"),
        queries=int(options.get("queries", 2000)),
        max_tokens=int(options.get("max_tokens", 64)),
        contexts=int(options.get("contexts", 20_000)),
        api_key=os.environ.get("DISTILLGUARD_SUSPECT_API_KEY") or None,
    )
    progress(0.85, "writing the evidence report")
    audit = outcome.to_json() | {"command": _command(options)}
    report = build_report(audit, home, database=database)
    report_id = "rep_" + secrets.token_hex(8)
    connection = connect(home, url=database)
    try:
        with connection:
            connection.execute(
                "INSERT INTO evidence_reports (report_id, job_id, created_at, suspect, summary, "
                "html, report_json) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    report_id,
                    options["job_id"],
                    report["generated_at"],
                    report["suspect"],
                    report["summary"],
                    render_html(report),
                    json.dumps(report, indent=2),
                ),
            )
    finally:
        connection.close()
    best = audit["results"][0]["best"]
    return {
        "report_id": report_id,
        "summary": report["summary"],
        "tenant": best["tenant"],
        "adjusted_log10_p": best["adjusted_log10_p"],
    }


def _command(options: dict[str, Any]) -> str:
    """The equivalent `distillguard audit suspect` command line, for the report."""
    words = ["distillguard", "audit", "suspect"]
    for name in ("url", "suspect_model", "weights", "reference", "tenant"):
        if options.get(name):
            words += [f"--{name.replace('_', '-')}", str(options[name])]
    words += ["--tokenizer", str(options["model"]), "--json"]
    return redact(shlex.join(words))


RUNNERS: dict[str, Callable[[Path, str | None, dict[str, Any], Progress], dict[str, Any]]] = {
    "suspect": run_suspect,
    "verify": run_verify,
}


def _heartbeat(connection: Connection, job_id: str, stop: threading.Event) -> None:
    while not stop.wait(HEARTBEAT):
        try:
            update_job(connection, job_id, heartbeat=time.time())
        except Exception as exc:  # the next beat may get through
            log.warning("job %s: heartbeat not written: %s", job_id, exc)


def run_job(job_id: str, home: Path, database: str | None) -> int:
    """Run job `job_id` to its end; the exit status (0 also when the job itself failed: the
    row says why)."""
    connection = connect(home, url=database)
    job = Jobs.get(connection, job_id)
    if job is None or job.status != "queued":
        print(f"job {job_id} is not waiting to run", file=sys.stderr)
        return 2
    update_job(
        connection,
        job_id,
        status="running",
        pid=os.getpid(),
        heartbeat=time.time(),
        stage="started",
    )
    beats = connect(home, shared=True, url=database)
    stop = threading.Event()
    beating = threading.Thread(target=_heartbeat, args=(beats, job_id, stop), daemon=True)
    beating.start()

    def progress(fraction: float, stage: str) -> None:
        update_job(connection, job_id, progress=fraction, stage=stage, heartbeat=time.time())

    try:
        result = RUNNERS[job.kind](home, database, job.options | {"job_id": job_id}, progress)
    except DistillGuardError as exc:
        finish_job(connection, job_id, error=redact(" ".join(str(exc).split())))
    except Exception as exc:
        log.exception("job %s failed", job_id)
        finish_job(connection, job_id, error=f"internal error: {type(exc).__name__}")
    else:
        finish_job(connection, job_id, result=result)
    finally:
        stop.set()
        beating.join()
        beats.close()
        connection.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    arguments = sys.argv[1:] if argv is None else argv
    if len(arguments) != 1:
        print("usage: python -m distillguard.gateway.console.worker JOB_ID", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    home = Path(os.environ.get("DISTILLGUARD_HOME") or ".")
    database = os.environ.get("DISTILLGUARD_DATABASE_URL") or None
    started = datetime.now(UTC)
    code = run_job(arguments[0], home, database)
    log.info("job %s ran %s", arguments[0], datetime.now(UTC) - started)
    return code


if __name__ == "__main__":
    sys.exit(main())
