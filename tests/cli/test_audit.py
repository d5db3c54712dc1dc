"""`distillguard audit` (and `report`, `demo`): the audit chain and refusals of bad input."""

from __future__ import annotations

from pathlib import Path

from .conftest import assert_one_line_error, run


def test_audit_verify_reports_a_broken_chain(tmp_path: Path) -> None:
    from distillguard.store import connect
    from distillguard.store.audit import AuditLog
    from distillguard.store.usage import UsageRecord

    log = AuditLog(lambda: connect(tmp_path))
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
    assert code == 0 and "3 records" in out
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
