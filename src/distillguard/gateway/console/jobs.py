"""Background jobs started from the console: an audit of a suspect model, a chain verification.

A job is a row in `console_jobs` and a separate process (`python -m
distillguard.gateway.console.worker JOB_ID`), never work on the gateway's event loop: an audit
loads models and runs for minutes. The worker writes its progress, a heartbeat every few
seconds, and its result into the row (an audit's evidence report into `evidence_reports`), so
any replica shows any job and its report. A job whose heartbeat stops (its machine or process
died) is shown as lost. The database URL and any API key reach the worker through its
environment, never its command line (which other users can read) nor the row.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from distillguard.errors import InputError
from distillguard.store.base import Connection

__all__ = [
    "JOB_KINDS",
    "LOST_AFTER",
    "MAX_RUNNING",
    "Job",
    "Jobs",
    "ReportInfo",
    "finish_job",
    "update_job",
]

log = logging.getLogger("distillguard.console")

JOB_KINDS = ("suspect", "verify")
MAX_RUNNING = 4  # jobs at once, all replicas together: each is a process loading models
LOST_AFTER = 30.0  # seconds without a heartbeat before a running job counts as lost
_COLUMNS = (
    "job_id, kind, created_at, started_by, options, status, progress, stage, host, pid, "
    "heartbeat, finished_at, error, result"
)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class Job:
    job_id: str
    kind: str
    created_at: str
    started_by: str
    options: dict[str, Any]
    status: str  # queued, running, done, failed
    progress: float  # 0..1
    stage: str  # what it is doing, in words
    host: str
    pid: int | None
    heartbeat: float | None  # time.time() of its last sign of life
    finished_at: str | None
    error: str | None
    result: dict[str, Any] | None

    def lost(self, now: float) -> bool:
        """Running (or queued), but silent for too long: its process is gone."""
        if self.status not in ("queued", "running"):
            return False
        last = self.heartbeat
        if last is None:
            created = datetime.fromisoformat(self.created_at.replace("Z", "+00:00"))
            last = created.timestamp()
        return now - last > LOST_AFTER

    def shown_status(self, now: float) -> str:
        return "lost" if self.lost(now) else self.status

    def to_json(self, now: float) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "kind": self.kind,
            "status": self.shown_status(now),
            "progress": self.progress,
            "stage": self.stage,
            "started_by": self.started_by,
            "created_at": self.created_at,
            "finished_at": self.finished_at,
            "error": self.error,
            "result": self.result,
        }


@dataclass(frozen=True)
class ReportInfo:
    report_id: str
    job_id: str
    created_at: str
    suspect: str
    summary: str


def _job(row: Any) -> Job:
    return Job(
        row[0], row[1], row[2], row[3], json.loads(row[4]), row[5], float(row[6]), row[7],
        row[8], row[9], row[10], row[11], row[12], json.loads(row[13]) if row[13] else None,
    )  # fmt: skip


def update_job(connection: Connection, job_id: str, **fields: Any) -> None:
    """Set columns of a job's row (the worker's progress and heartbeat)."""
    allowed = {"status", "progress", "stage", "host", "pid", "heartbeat", "error"}
    if not set(fields) <= allowed:
        raise ValueError(f"not job columns: {sorted(set(fields) - allowed)}")
    assignments = ", ".join(f"{name} = ?" for name in fields)
    with connection:
        connection.execute(
            f"UPDATE console_jobs SET {assignments} WHERE job_id = ?",  # noqa: S608 - fixed names
            [*fields.values(), job_id],
        )


def finish_job(
    connection: Connection,
    job_id: str,
    *,
    error: str | None = None,
    result: dict[str, Any] | None = None,
    only_if_unfinished: bool = False,
) -> None:
    """Mark a job done (with `result`) or failed (with `error`)."""
    status = "failed" if error is not None else "done"
    query = (
        "UPDATE console_jobs SET status = ?, progress = ?, stage = ?, finished_at = ?, "
        "error = ?, result = ? WHERE job_id = ?"
    )
    if only_if_unfinished:
        query += " AND status IN ('queued', 'running')"
    with connection:
        connection.execute(
            query,
            (
                status,
                1.0 if error is None else 0.0,
                "finished" if error is None else "failed",
                _now(),
                error,
                json.dumps(result) if result is not None else None,
                job_id,
            ),
        )


class Jobs:
    """Creates, starts and reads jobs; `python` runs the worker (this interpreter)."""

    def __init__(
        self,
        home: Path,
        database: str | None,
        *,
        python: str = sys.executable,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.home = home
        self.database = database
        self.python = python
        self.clock = clock

    def create(
        self, connection: Connection, kind: str, options: dict[str, Any], started_by: str
    ) -> Job:
        """A queued job (inside the caller's transaction, with its action's record)."""
        if kind not in JOB_KINDS:
            raise InputError(f"unknown job kind {kind!r}; kinds are {', '.join(JOB_KINDS)}")
        rows = connection.execute(
            f"SELECT {_COLUMNS} FROM console_jobs WHERE status IN ('queued', 'running')"  # noqa: S608
        ).fetchall()
        running = [job for job in map(_job, rows) if not job.lost(self.clock())]
        if len(running) >= MAX_RUNNING:
            raise InputError(
                f"{len(running)} jobs are running already; start this one when one finishes"
            )
        job_id = "job_" + secrets.token_hex(8)
        connection.execute(
            f"INSERT INTO console_jobs ({_COLUMNS}) VALUES "  # noqa: S608 - fixed names
            "(?, ?, ?, ?, ?, 'queued', 0.0, 'waiting for its process', ?, NULL, NULL, NULL, "
            "NULL, NULL)",
            (job_id, kind, _now(), started_by, json.dumps(options), socket.gethostname()),
        )
        found = self.get(connection, job_id)
        if found is None:  # pragma: no cover - just inserted
            raise RuntimeError("the job's row vanished")
        return found

    def launch(
        self,
        job: Job,
        connect: Callable[[], Connection],
        secrets_env: Mapping[str, str] | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start the job's worker process, and a thread that reaps it (a worker that exits
        without finishing its job leaves it failed, with the exit status)."""
        env = dict(os.environ)
        env["DISTILLGUARD_HOME"] = str(self.home)
        env.pop("DISTILLGUARD_DATABASE_URL", None)
        if self.database is not None:
            env["DISTILLGUARD_DATABASE_URL"] = self.database
        env.update(secrets_env or {})
        process = subprocess.Popen(
            [self.python, "-m", "distillguard.gateway.console.worker", job.job_id],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            start_new_session=True,  # a signal to the gateway's group does not kill the audit
        )
        threading.Thread(
            target=_reap, args=(process, job.job_id, connect), name="job-reaper", daemon=True
        ).start()
        return process

    @staticmethod
    def get(connection: Connection, job_id: str) -> Job | None:
        row = connection.execute(
            f"SELECT {_COLUMNS} FROM console_jobs WHERE job_id = ?",  # noqa: S608
            (job_id,),
        ).fetchone()
        return None if row is None else _job(row)

    @staticmethod
    def recent(connection: Connection, limit: int = 50) -> list[Job]:
        rows = connection.execute(
            f"SELECT {_COLUMNS} FROM console_jobs ORDER BY created_at DESC, job_id LIMIT ?",  # noqa: S608
            (limit,),
        ).fetchall()
        return [_job(row) for row in rows]

    @staticmethod
    def reports(connection: Connection, limit: int = 100) -> list[ReportInfo]:
        rows = connection.execute(
            "SELECT report_id, job_id, created_at, suspect, summary FROM evidence_reports "
            "ORDER BY created_at DESC, report_id LIMIT ?",
            (limit,),
        ).fetchall()
        return [ReportInfo(*(row[i] for i in range(5))) for row in rows]

    @staticmethod
    def report(connection: Connection, report_id: str, form: str) -> str | None:
        """A report's HTML (`form` "html") or JSON ("json")."""
        column = {"html": "html", "json": "report_json"}[form]
        row = connection.execute(
            f"SELECT {column} FROM evidence_reports WHERE report_id = ?",  # noqa: S608
            (report_id,),
        ).fetchone()
        return None if row is None else str(row[0])


def _reap(process: subprocess.Popen[bytes], job_id: str, connect: Callable[[], Connection]) -> None:
    code = process.wait()
    if code == 0:
        return
    try:
        connection = connect()
        try:
            finish_job(
                connection,
                job_id,
                error=f"the job's process exited with status {code}",
                only_if_unfinished=True,
            )
        finally:
            connection.close()
    except Exception:
        log.exception("could not record the end of job %s", job_id)
