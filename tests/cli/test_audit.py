"""`distillguard audit` (and `report`, `demo`): the audit chain and refusals of bad input."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from .conftest import assert_one_line_error, run


def test_audit_verify_reports_a_broken_chain(tmp_path: Path) -> None:
    from distillguard.keys import load_master_secret
    from distillguard.store import connect
    from distillguard.store.audit import AuditLog
    from distillguard.store.integrity import current_chain_key
    from distillguard.store.usage import UsageRecord

    assert run(tmp_path, "keys", "init")[0] == 0
    key = current_chain_key(load_master_secret(tmp_path))
    log = AuditLog(lambda: connect(tmp_path), chain_key=key)
    for index in range(3):
        log.append(
            UsageRecord(
                f"req_{index}",
                "2026-11-30T00:00:00Z",
                "acme",
                "k",
                "m",
                "completions",
                200,
                "ok",
                1,
                1,
                1.0,
                None,
                None,
            )
        )
    log.close()
    code, out, _ = run(tmp_path, "audit", "verify")
    assert code == 0 and "3 records (3 keyed" in out
    assert run(tmp_path, "audit", "anchor")[0] == 0
    code, out, _ = run(tmp_path, "audit", "purge-text", "--older-than-days", "0")
    assert code == 0
    code, out, _ = run(tmp_path, "audit", "verify")
    assert code == 0 and "1 purge events" in out and "1 records not yet anchored" in out
    import sqlite3

    with sqlite3.connect(tmp_path / "distillguard.db") as connection:
        connection.execute("UPDATE usage SET prompt_tokens = 99 WHERE request_id = 'req_1'")
    assert_one_line_error(run(tmp_path, "audit", "verify"), "broken at record 2")


def test_audit_suspect_and_report_refuse_bad_input_in_one_line(tmp_path: Path) -> None:
    assert_one_line_error(run(tmp_path, "audit", "suspect"), "either --url")
    assert_one_line_error(
        run(tmp_path, "audit", "suspect", "--url", "http://127.0.0.1:9/v1"), "--suspect-model"
    )
    assert_one_line_error(
        run(tmp_path, "audit", "suspect", "--weights", str(tmp_path), "--queries", "0"),
        "must be positive",
    )
    missing = tmp_path / "missing.json"
    assert_one_line_error(run(tmp_path, "report", str(missing)), "cannot read")
    assert_one_line_error(run(tmp_path, "demo", "--queries", "5"), "at least 100")


def test_audit_suspect_json_records_the_command_without_its_secrets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import distillguard.forensics.audit as audit_module

    received: dict[str, Any] = {}

    class Outcome:
        def to_json(self) -> dict[str, Any]:
            return {"mode": "black-box", "results": []}

    def audit(home: Path, scheme: Any, our_model: Path, **options: Any) -> Outcome:
        received.update(options)
        return Outcome()

    monkeypatch.setattr(audit_module, "audit_suspect", audit)
    monkeypatch.setenv("DISTILLGUARD_SUSPECT_API_KEY", "sk-suspect-0123456789")
    args = [
        "--database",
        "postgresql://auditor:hunter2@db.internal/evidence",
        "audit",
        "suspect",
        "--url",
        "http://suspect:8000/v1",
        "--suspect-model",
        "theirs",
        "--reference",
        "http://reference:8000/v1",
        "--reference-api-key",
        "reference-key-0123",
        "--json",
    ]
    monkeypatch.setattr(sys, "argv", ["distillguard", *args])  # what the command records
    code, out, _ = run(tmp_path, *args[2:])
    assert code == 0, out
    command = json.loads(out)["command"]
    for secret in ("hunter2", "reference-key-0123", "sk-suspect-0123456789"):
        assert secret not in out
    assert "postgresql://auditor:***@db.internal/evidence" in command
    assert "--url http://suspect:8000/v1" in command
    # each key goes to its own host
    assert received["api_key"] == "sk-suspect-0123456789"
    assert received["reference_api_key"] == "reference-key-0123"
