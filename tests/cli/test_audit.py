"""`distillguard audit` (and `report`, `demo`): the audit chain and refusals of bad input."""

from __future__ import annotations

from pathlib import Path

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
