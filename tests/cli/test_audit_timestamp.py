"""`audit anchor --tsa`, `audit verify --tsa-cert` and `serve --anchor-tsa`, against the stand-in
TSA: a stamped checkpoint shows the TSA's time, a failed TSA is one line and costs no
checkpoint, bad TSA settings are one-line errors."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from distillguard.store.timestamp import TSA_CERT_ENV, TSA_ENV

from ..store.tsa_standin import running_tsa
from .conftest import assert_one_line_error, run


@pytest.fixture(autouse=True)
def no_tsa_in_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(TSA_ENV, raising=False)
    monkeypatch.delenv(TSA_CERT_ENV, raising=False)


def write_records(home: Path) -> None:
    from distillguard.keys import load_master_secret
    from distillguard.store import connect
    from distillguard.store.audit import AuditLog
    from distillguard.store.integrity import current_chain_key
    from distillguard.store.usage import UsageRecord

    log = AuditLog(lambda: connect(home), chain_key=current_chain_key(load_master_secret(home)))
    usage = UsageRecord(
        "req_0", "2026-11-30T00:00:00Z", "acme", "k", "m", "completions", 200, "ok", 1, 1, 1.0,
        None, None,
    )  # fmt: skip
    log.append(usage)
    log.close()


def test_audit_anchor_with_a_tsa_and_verify_with_its_certificate(tmp_path: Path) -> None:
    assert run(tmp_path, "keys", "init")[0] == 0
    write_records(tmp_path)
    with running_tsa() as tsa:
        ca = str(tsa.authority.write_ca(tmp_path / "tsa-ca.pem"))
        code, out, _ = run(tmp_path, "audit", "anchor", "--tsa", tsa.url, "--tsa-cert", ca)
        assert code == 0 and "timestamped by CN=Stand-in TSA at 20" in out
        code, out, _ = run(tmp_path, "audit", "verify", "--tsa-cert", ca)
        assert code == 0
        assert "1 of 1 checkpoints timestamped (signatures checked" in out
        tsa.mode = "error"
        code, out, err = run(tmp_path, "audit", "anchor", "--tsa", tsa.url)
    assert code == 0 and "checkpoint at record 1" in out
    assert err.strip().splitlines() == [f"not timestamped: the TSA at {tsa.url} answered HTTP 500"]
    code, out, _ = run(tmp_path, "audit", "verify", "--tsa-cert", ca)
    assert code == 0 and "2 checkpoints verified" in out and "1 of 2 checkpoints timestamped" in out
    assert_one_line_error(
        run(tmp_path, "audit", "verify", "--tsa-cert", str(tmp_path / "missing.pem")),
        "cannot read the TSA certificate file",
    )


def test_serve_refuses_bad_tsa_settings_in_one_line(tmp_path: Path) -> None:
    assert_one_line_error(
        run(tmp_path, "serve", "--anchor-tsa", "ftp://tsa.example/"), "http:// or https://"
    )
    not_a_certificate = tmp_path / "ca.pem"
    not_a_certificate.write_text("no")
    outcome = run(
        tmp_path, "serve", "--anchor-tsa", "http://127.0.0.1:9/", "--anchor-tsa-cert",
        str(not_a_certificate),
    )  # fmt: skip
    assert_one_line_error(outcome, "not a PEM or DER certificate file")
    assert TSA_ENV not in os.environ  # nothing handed on when the settings are refused


def test_an_unreachable_tsa_costs_no_checkpoint(tmp_path: Path) -> None:
    assert run(tmp_path, "keys", "init")[0] == 0
    write_records(tmp_path)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    code, out, err = run(tmp_path, "audit", "anchor", "--tsa", f"http://127.0.0.1:{port}/")
    assert code == 0 and "appended to" in out
    assert "could not be reached" in err and len(err.strip().splitlines()) == 1
    code, out, _ = run(tmp_path, "audit", "verify")
    assert code == 0 and "no checkpoint timestamped by a TSA" in out
