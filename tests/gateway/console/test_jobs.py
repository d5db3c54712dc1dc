"""Jobs run in their own process: a verification, and an audit of a suspect whose evidence
report the console then serves. The suspect's API key reaches the worker, never the row."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from distillguard.gateway.console.jobs import LOST_AFTER, Job
from distillguard.store import connect
from distillguard.store.operators import create_operator

from .conftest import PASSWORD, ConsoleHarness, csrf_of, make_console, seeded_monitor, sign_in


def wait_for(client: TestClient, job_url: str, timeout: float = 180.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job: dict[str, Any] = client.get(job_url + ".json").json()
        if job["status"] not in ("queued", "running"):
            return job
        time.sleep(0.25)
    raise AssertionError(f"job {job_url} still running after {timeout} s")


def test_verify_now_runs_in_its_own_process_and_its_verdict_is_shown(
    harness: ConsoleHarness,
) -> None:
    client = harness.client()
    csrf = sign_in(client, "otto")
    response = client.post("/console/audit/verify", data={"csrf": csrf}, follow_redirects=False)
    assert response.status_code == 303
    job_url = response.headers["location"]
    assert 'data-job-url="' in client.get(job_url).text  # polled by the script while it runs
    job = wait_for(client, job_url)
    assert job["status"] == "done" and job["result"]["ok"], job
    assert job["started_by"] == "otto"
    audit = client.get("/console/audit").text
    assert "Intact at the last verification" in audit and "otto" in audit


def test_a_failing_job_says_why(harness: ConsoleHarness) -> None:
    anchor = harness.home / "bad-anchor.jsonl"
    anchor.write_text("not a checkpoint\n")
    from dataclasses import replace

    harness.console.config = replace(harness.console.config, anchor=anchor)
    client = harness.client()
    csrf = sign_in(client, "otto")
    job_url = client.post(
        "/console/audit/verify", data={"csrf": csrf}, follow_redirects=False
    ).headers["location"]
    job = wait_for(client, job_url)
    assert job["status"] == "failed" and "not a checkpoint" in job["error"]


def test_a_job_whose_heartbeat_stopped_is_shown_as_lost() -> None:
    job = Job(
        "job_1", "verify", "2026-05-01T10:00:00Z", "otto", {}, "running", 0.1, "scoring",
        "host", 1, 1_000.0, None, None, None,
    )  # fmt: skip
    assert not job.lost(1_000.0 + LOST_AFTER - 1)
    assert job.shown_status(1_000.0 + LOST_AFTER + 1) == "lost"


@pytest.fixture(scope="module")
def harvested(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    from distillguard.experiments.distill import ExperimentConfig, harvest

    home = tmp_path_factory.mktemp("console-audit-home")
    config = ExperimentConfig(harvest_max_tokens=16, tenants=2)
    harvest([f"Module {i} provides the" for i in range(8)], home, config, model=tiny_model_dir)
    create_operator(connect(home), "otto", "operator", PASSWORD)
    return home


@pytest.fixture
def suspect() -> Iterator[tuple[str, list[str | None]]]:
    """An OpenAI-compatible suspect that answers every completion; the keys it was sent."""
    keys: list[str | None] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            keys.append(self.headers.get("authorization"))
            sent = json.loads(self.rfile.read(int(self.headers["content-length"])))
            body = json.dumps(
                {"choices": [{"index": 0, "text": f"{sent['prompt']} and then it returns"}]}
            ).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1", keys
    server.shutdown()
    server.server_close()


def test_an_audit_job_writes_a_report_the_console_serves(
    harvested: Path, tiny_model_dir: Path, suspect: tuple[str, list[str | None]]
) -> None:
    url, keys = suspect
    console, admin = make_console(harvested, seeded_monitor(), model=tiny_model_dir)
    client = TestClient(admin.app(), base_url="http://testserver")
    csrf = sign_in(client, "otto")
    form = {"csrf": csrf, "mode": "url", "target": url, "suspect_model": "student",
            "queries": "4", "max_tokens": "8", "api_key": "sk-suspect-0001"}  # fmt: skip
    response = client.post("/console/evidence/audits", data=form, follow_redirects=False)
    assert response.status_code == 303, response.text
    job = wait_for(client, response.headers["location"])
    assert job["status"] == "done", job
    assert keys and set(keys) == {"Bearer sk-suspect-0001"}
    stored = connect(harvested).execute("SELECT options FROM console_jobs").fetchall()
    assert all("sk-suspect" not in row[0] for row in stored)
    page = client.get(response.headers["location"]).text
    report_id = job["result"]["report_id"]
    assert f"/console/evidence/reports/{report_id}" in page
    report = client.get(f"/console/evidence/reports/{report_id}")
    assert "Evidence report" in report.text
    assert "sandbox" in report.headers["content-security-policy"]
    twin = client.get(f"/console/evidence/reports/{report_id}.json").json()
    assert url in twin["suspect"]
    assert report_id in client.get("/console/evidence").text
    console.close()


def test_an_audit_needs_a_suspect(harness: ConsoleHarness) -> None:
    client = harness.client()
    csrf = sign_in(client, "otto")
    page = client.post(
        "/console/evidence/audits", data={"csrf": csrf, "mode": "url", "target": "ftp://x"}
    )
    assert page.status_code == 400 and "http:// or https:// URL" in page.text
    assert csrf_of(page.text)  # the form comes back, ready to fix


def test_no_more_than_a_few_jobs_run_at_once(harness: ConsoleHarness) -> None:
    from distillguard.errors import InputError
    from distillguard.gateway.console.jobs import MAX_RUNNING

    connection = harness.connect()
    jobs = harness.console.jobs
    with connection:
        for _ in range(MAX_RUNNING):
            jobs.create(connection, "verify", {}, "otto")
    with pytest.raises(InputError, match="running already"):
        jobs.create(connection, "verify", {}, "otto")
    client = harness.client()
    csrf = sign_in(client, "otto")
    refused = client.post("/console/audit/verify", data={"csrf": csrf})
    assert refused.status_code == 409 and "running already" in refused.text
