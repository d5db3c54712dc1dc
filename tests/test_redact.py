"""Secrets never reach a recorded command line, an error message or a log line."""

from __future__ import annotations

import ast
import logging
from pathlib import Path

import pytest

import distillguard
from distillguard.redact import PROJECT_LOGGERS, RedactingFilter, redact, redact_command

PACKAGE_ROOT = Path(distillguard.__file__).parent


@pytest.mark.parametrize(
    ("text", "secret", "kept"),
    [
        (
            "postgresql://auditor:hunter2@db.internal:5432/evidence",
            "hunter2",
            "postgresql://auditor:***@db.internal:5432/evidence",
        ),
        ("redis://:s3cret-pw@cache:6379/0", "s3cret-pw", "redis://:***@cache:6379/0"),
        ("postgresql://u:p@ss@host/db", "ss@host", "postgresql://u:***@host/db"),
        ("https://api.example/v1?api_key=abc123&model=m", "abc123", "?api_key=***&model=m"),
        ("host=db password=hunter2 user=x", "hunter2", "password=*** user=x"),
        ("Authorization: Bearer abcdef0123456789", "abcdef0123456789", "Bearer ***"),
        ("key dg-0123456789ab-Zm9vYmFyYmF6cXV4", "Zm9vYmFyYmF6cXV4", "dg-0123456789ab-***"),
        ("upstream key sk-proj-AbC123xyz789", "AbC123xyz789", "sk-***"),
        ("--admin-token=tok3n-value", "tok3n-value", "--admin-token=***"),
        ("--reference-api-key r3f-k3y --url x", "r3f-k3y", "--reference-api-key *** --url x"),
        ("DISTILLGUARD_SUSPECT_API_KEY=abc123 distillguard", "abc123", "API_KEY=*** distillguard"),
    ],
)
def test_every_kind_of_secret_is_redacted(text: str, secret: str, kept: str) -> None:
    redacted = redact(text)
    assert secret not in redacted
    assert kept in redacted


@pytest.mark.parametrize(
    "text",
    [
        "http://127.0.0.1:8000/v1",
        "postgresql://postgres@127.0.0.1:5432/test",  # a user alone is not a secret
        "--tokenizer /models/x --key-version 2 --max-tokens 64",
        "max_tokens=5 top_logprobs=3",
        "missing API key: send 'Authorization: Bearer <key>'",
        "pass --reference-api-key with --reference",
    ],
)
def test_text_without_secrets_is_unchanged(text: str) -> None:
    assert redact(text) == text


def test_a_command_line_loses_every_secret_and_keeps_the_rest() -> None:
    argv = [
        "distillguard",
        "--database",
        "postgresql://auditor:hunter2@db.internal/evidence",
        "audit",
        "suspect",
        "--url",
        "http://suspect:8000/v1",
        "--reference-api-key",
        "plain-looking secret",  # a value after a secret option goes, whatever it looks like
        "--api-key=sk-live-0123456789",
        "--token",
        "word",
        "--tokenizer",
        "/models/ours",
    ]
    line = redact_command(argv)
    for secret in ("hunter2", "plain-looking", "0123456789", "word"):
        assert secret not in line
    assert "postgresql://auditor:***@db.internal/evidence" in line
    assert "--reference-api-key '***'" in line and "'--api-key=***'" in line
    assert "--url http://suspect:8000/v1" in line and "--tokenizer /models/ours" in line


def test_log_records_are_redacted_message_and_traceback(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("distillguard.gateway")
    assert any(isinstance(item, RedactingFilter) for item in logger.filters)
    with caplog.at_level(logging.WARNING, logger="distillguard.gateway"):
        logger.warning("cannot reach %s", "postgresql://u:hunter2@db/x")
        try:
            raise RuntimeError("connect to redis://:t0ps3cret@cache:6379 failed")
        except RuntimeError:
            logger.exception("retrying")
    assert "hunter2" not in caplog.text and "t0ps3cret" not in caplog.text
    assert "postgresql://u:***@db/x" in caplog.text and "redis://:***@cache" in caplog.text


def _logger_names() -> set[str]:
    """Every name passed to logging.getLogger as a literal in the package's source."""
    names = set()
    for path in PACKAGE_ROOT.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "getLogger"
                and node.args
                and isinstance(node.args[0], ast.Constant)
            ):
                names.add(str(node.args[0].value))
    return names


def test_every_logger_the_project_writes_to_redacts() -> None:
    names = _logger_names()
    assert names, "the scan found no loggers"
    assert names <= set(PROJECT_LOGGERS)
    for name in names:
        filters = logging.getLogger(name).filters
        assert any(isinstance(item, RedactingFilter) for item in filters), name
