"""The audit log's status and "verify now"; evidence: audits of suspects, their jobs and reports."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from distillguard.config import data_dir
from distillguard.errors import InputError
from distillguard.gateway.console.jobs import Job
from distillguard.gateway.console.page import PREFIX, Page
from distillguard.store.base import Connection
from distillguard.store.checkpoint import ANCHOR_FILE, Checkpoint

__all__ = ["PAGES"]

# A report is a self-contained page with its own inline styles and no script: it may style
# itself, and nothing else.
_REPORT_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; sandbox"
_TAIL_BYTES = 64 * 1024


def _anchor(page: Page) -> Path:
    config = page.console.config
    return config.anchor or data_dir(config.home) / ANCHOR_FILE


def last_checkpoint(path: Path) -> Checkpoint | None:
    """The anchor's last checkpoint, read from the end of the file (it grows without end)."""
    if not path.is_file():
        return None
    with path.open("rb") as anchor:
        anchor.seek(0, 2)
        size = anchor.tell()
        anchor.seek(max(0, size - _TAIL_BYTES))
        lines = anchor.read().decode("utf-8", "replace").splitlines()
    for line in reversed(lines):
        try:
            return Checkpoint(**json.loads(line))
        except (ValueError, TypeError):
            continue
    return None


async def audit(page: Page) -> Response:
    checkpoint = last_checkpoint(_anchor(page))

    def read(connection: Connection) -> dict[str, Any]:
        head = connection.execute(
            "SELECT seq, record_hash FROM audit ORDER BY seq DESC LIMIT 1"
        ).fetchone()
        at_checkpoint = None
        if checkpoint is not None and checkpoint.seq:
            row = connection.execute(
                "SELECT record_hash FROM audit WHERE seq = ?", (checkpoint.seq,)
            ).fetchone()
            at_checkpoint = row[0] if row else None
        jobs = [job for job in page.console.jobs.recent(connection, 200) if job.kind == "verify"]
        return {"head": head, "at_checkpoint": at_checkpoint, "verifications": jobs[:10]}

    found = await page.console.db(read)
    head_seq = int(found["head"][0]) if found["head"] else 0
    intact = (
        checkpoint is None or not checkpoint.seq or found["at_checkpoint"] == checkpoint.head_hash
    )
    done = [job for job in found["verifications"] if job.status == "done" and job.result]
    return page.render(
        "audit.html",
        checkpoint=checkpoint,
        anchor=_anchor(page),
        head_seq=head_seq,
        head_hash=found["head"][1] if found["head"] else "",
        intact=intact,
        last=done[0] if done else None,
        verifications=found["verifications"],
        clock=page.console.clock(),
    )


async def verify_now(page: Page) -> Response:
    """Start `audit verify` as a job (it reads every record: minutes on a large chain)."""
    options = {"anchor": str(_anchor(page))}
    try:
        job = await page.console.db(lambda c: _create(page, c, "verify", options))
    except InputError as exc:
        return page.console.problem(page.request, page.session, 409, str(exc))
    page.console.jobs.launch(job, page.console.new_connection)
    return RedirectResponse(f"{PREFIX}/evidence/jobs/{job.job_id}", status_code=303)


def _create(page: Page, connection: Connection, kind: str, options: dict[str, Any]) -> Job:
    """The job's row and its action's record, in one transaction."""
    with connection:
        job = page.console.jobs.create(connection, kind, options, page.session.operator)
        page.console.actions.record(
            connection,
            page.session.operator,
            "start_job",
            job.job_id,
            {"kind": kind, "options": options},
        )
    return job


async def evidence(page: Page, message: str = "", status: int = 200) -> Response:
    def read(connection: Connection) -> tuple[list[Any], list[Job]]:
        return page.console.jobs.reports(connection), page.console.jobs.recent(connection)

    reports, jobs = await page.console.db(read)
    return page.render(
        "evidence.html",
        status=status,
        reports=reports,
        jobs=[job for job in jobs if job.kind == "suspect"],
        clock=page.console.clock(),
        message=message,
        form=page.form,
    )


def suspect_options(form: dict[str, str], page: Page) -> dict[str, Any]:
    """The audit's options from the form (checked again, fully, by the audit itself)."""
    mode = form.get("mode", "url")
    target = form.get("target", "").strip()
    if not target:
        raise ValueError("Give the suspect: a URL (black-box) or a model directory (open weights).")
    options: dict[str, Any] = {
        "scheme": page.console.config.scheme.unbound().to_dict(),
        "model": str(page.console.config.model or _embedded_model()),
    }
    if mode == "url":
        if not target.startswith(("http://", "https://")):
            raise ValueError("A black-box suspect is an http:// or https:// URL.")
        model = form.get("suspect_model", "").strip()
        if not model:
            raise ValueError("A black-box audit needs the model name the suspect serves.")
        options |= {"url": target, "suspect_model": model}
    elif mode == "weights":
        options["weights"] = target
    else:
        raise ValueError("Choose black-box (URL) or open weights (directory).")
    for name in ("reference", "tenant"):
        if form.get(name, "").strip():
            options[name] = form[name].strip()
    for name, low, high in (("queries", 1, 100_000), ("max_tokens", 1, 4096)):
        if form.get(name, "").strip():
            if not form[name].strip().isdigit():
                raise ValueError(f"{name} must be a whole number.")
            value = int(form[name])
            if not low <= value <= high:
                raise ValueError(f"{name} must be between {low} and {high}.")
            options[name] = value
    return options


def _embedded_model() -> Path:
    from distillguard.engine.model import EMBEDDED_MODEL_DIR

    return Path(EMBEDDED_MODEL_DIR)


async def start_audit(page: Page) -> Response:
    try:
        options = suspect_options(page.form, page)
    except ValueError as exc:
        return await evidence(page, str(exc), 400)
    api_key = page.form.get("api_key", "")
    try:
        job = await page.console.db(lambda c: _create(page, c, "suspect", options))
    except InputError as exc:
        return await evidence(page, str(exc), 409)
    # the key reaches the worker through its environment only: never the row, never argv
    secrets_env = {"DISTILLGUARD_SUSPECT_API_KEY": api_key} if api_key else None
    page.console.jobs.launch(job, page.console.new_connection, secrets_env)
    return RedirectResponse(f"{PREFIX}/evidence/jobs/{job.job_id}", status_code=303)


async def job_page(page: Page) -> Response:
    job_id = page.request.path_params["job_id"]
    job = await page.console.db(lambda c: page.console.jobs.get(c, job_id))
    if job is None:
        return page.console.problem(page.request, page.session, 404, f"No job {job_id}.")
    status = job.shown_status(page.console.clock())
    return page.render("job.html", job=job, shown=status, running=status in ("queued", "running"))


async def job_json(page: Page) -> Response:
    job_id = page.request.path_params["job_id"]
    job = await page.console.db(lambda c: page.console.jobs.get(c, job_id))
    if job is None:
        return JSONResponse({"error": f"no job {job_id}"}, status_code=404)
    return JSONResponse(job.to_json(page.console.clock()))


async def report(page: Page) -> Response:
    report_id = page.request.path_params["report_id"]
    form = "json" if report_id.endswith(".json") else "html"
    report_id = report_id.removesuffix(".json")
    body = await page.console.db(lambda c: page.console.jobs.report(c, report_id, form))
    if body is None:
        return page.console.problem(page.request, page.session, 404, f"No report {report_id}.")
    if form == "json":
        return Response(body, media_type="application/json")
    return HTMLResponse(body, headers={"content-security-policy": _REPORT_CSP})


PAGES = [
    ("/audit", audit, "GET", "viewer"),
    ("/audit/verify", verify_now, "POST", "operator"),
    ("/evidence", evidence, "GET", "viewer"),
    ("/evidence/audits", start_audit, "POST", "operator"),
    ("/evidence/jobs/{job_id}.json", job_json, "GET", "viewer"),  # before the page's route
    ("/evidence/jobs/{job_id}", job_page, "GET", "viewer"),
    ("/evidence/reports/{report_id}", report, "GET", "viewer"),
]
