"""What every command test shares: a clean environment, a runner and the one-line-error check."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from distillguard.cli import main
from distillguard.config import MASTER_SECRET_ENV


@pytest.fixture(autouse=True)
def no_secret_in_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(MASTER_SECRET_ENV, raising=False)


def run(home: Path, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, ["--home", str(home), *args])
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


def assert_one_line_error(outcome: tuple[int, str, str], fragment: str) -> None:
    code, _, stderr = outcome
    assert code != 0
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert fragment in lines[0]
    assert "Traceback" not in stderr
