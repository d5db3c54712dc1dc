"""The `distillguard` group: help, the console script, and the global --database option."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from distillguard.cli import main

from .conftest import run


def test_help_explains_each_command() -> None:
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    for command in ("keys", "detect"):
        assert command in result.stdout
    keys_help = CliRunner().invoke(main, ["keys", "--help"]).stdout
    assert "init" in keys_help and "tenant" in keys_help


def test_console_script_errors_without_traceback(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "distillguard", "--home", str(tmp_path), "keys", "tenant", "acme"],
        capture_output=True,
        text=True,
        check=False,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )
    assert result.returncode == 1
    assert result.stderr.startswith("error: no master secret")
    assert "Traceback" not in result.stderr


def test_keys_and_audit_commands_work_on_postgresql(
    tmp_path: Path, fresh_postgres_url: str
) -> None:
    code, out, _ = run(
        tmp_path,
        "--database",
        fresh_postgres_url,
        "keys",
        "create",
        "--tenant",
        "acme",
        "--rpm",
        "60",
        "--tpm",
        "1000",
    )
    assert code == 0 and "dg-" in out
    code, out, _ = run(tmp_path, "--database", fresh_postgres_url, "keys", "list")
    assert code == 0 and "acme" in out
    assert not (tmp_path / "distillguard.db").exists()  # nothing went to SQLite
    assert run(tmp_path, "keys", "init")[0] == 0  # the chain key comes from the master secret
    code, out, _ = run(tmp_path, "--database", fresh_postgres_url, "audit", "verify")
    assert code == 0 and "intact: 0 records" in out


def test_a_library_error_is_one_line_with_its_secrets_redacted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the admin client's error quoted its URL, password and all
    monkeypatch.setenv("DISTILLGUARD_ADMIN_TOKEN", "t" * 32)
    code, _, stderr = run(tmp_path, "accounts", "--url", "http://admin:hunter2@127.0.0.1:9/")
    assert code == 1 and len(stderr.strip().splitlines()) == 1
    assert "cannot reach the gateway at http://admin:***@127.0.0.1:9/" in stderr
    assert "hunter2" not in stderr and "Traceback" not in stderr
    # a multi-line message (psycopg's) is still one line
    unreachable = "postgresql://auditor:hunter2@127.0.0.1:9/evidence?connect_timeout=1"
    code, _, stderr = run(tmp_path, "--database", unreachable, "keys", "list")
    assert code == 1 and len(stderr.strip().splitlines()) == 1 and "hunter2" not in stderr
