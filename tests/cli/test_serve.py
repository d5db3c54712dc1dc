"""`distillguard serve`: replica options refused in one line."""

from __future__ import annotations

from pathlib import Path

from .conftest import assert_one_line_error, run


def test_replica_options_give_one_line_errors(tmp_path: Path) -> None:
    assert_one_line_error(run(tmp_path, "serve", "--workers", "2"), "needs --redis")
    assert_one_line_error(
        run(tmp_path, "serve", "--redis", "redis://127.0.0.1:1/0"), "cannot reach Redis"
    )
    assert_one_line_error(
        run(tmp_path, "--database", "mysql://localhost/db", "keys", "list"), "postgresql://"
    )


def test_a_bad_trusted_proxy_is_a_one_line_error(tmp_path: Path) -> None:
    assert_one_line_error(
        run(tmp_path, "serve", "--trusted-proxy", "10.0.0.0/33"), "not an address or CIDR"
    )
    outcome = run(tmp_path, "serve", "--identity-retention-days", "0")
    assert outcome[0] != 0 and "identity-retention-days" in outcome[2]
