"""`distillguard operators`: create, list, change a password and disable, from the shell."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from distillguard.cli import main
from distillguard.store import connect
from distillguard.store.operators import check_password

from .conftest import assert_one_line_error


def invoke(home: Path, *args: str, stdin: str = "") -> tuple[int, str, str]:
    result = CliRunner().invoke(main, ["--home", str(home), *args], input=stdin)
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


def test_an_operator_is_created_listed_and_disabled(tmp_path: Path) -> None:
    password = "correct horse battery\n"
    code, out, _ = invoke(
        tmp_path, "operators", "create", "ada", "--role", "admin", "--password-stdin",
        stdin=password,
    )  # fmt: skip
    assert code == 0 and "created operator ada (admin)" in out
    connection = connect(tmp_path)
    assert check_password(connection, "ada", password.strip()) is not None
    listed = json.loads(invoke(tmp_path, "operators", "list", "--json")[1])
    assert [(item["name"], item["role"]) for item in listed] == [("ada", "admin")]
    assert invoke(tmp_path, "operators", "disable", "ada")[0] == 0
    assert check_password(connection, "ada", password.strip()) is None
    connection.close()


def test_the_password_can_be_prompted_twice(tmp_path: Path) -> None:
    code, out, _ = invoke(
        tmp_path, "operators", "create", "vera", stdin="long enough secret\nlong enough secret\n"
    )
    assert code == 0 and "(viewer)" in out


def test_a_short_password_is_one_line_of_error(tmp_path: Path) -> None:
    outcome = invoke(tmp_path, "operators", "create", "ada", "--password-stdin", stdin="short\n")
    assert_one_line_error(outcome, "at least 12 characters")
