"""Secrets out of what the project records: command lines, error messages and log lines.

An audit records the command that produced it (its report prints it under "Reproduce"), the
CLI prints errors, the gateway answers with error bodies and everything logs. Any of them can
hold a database URL with its password, an API key or the value of a secret option. Each goes
through `redact` (text) or `redact_command` (an argument vector) first, and the project's
loggers carry `RedactingFilter`. What is removed:

- the password of a URL's user information (``postgresql://user:***@host/db``);
- secret query parameters (``?password=***``, ``&api_key=***``, ``&token=***``) and
  ``password=***`` in a libpq connection string;
- API keys: ours keep their public key id (``dg-0123456789ab-***``), OpenAI-style
  ``sk-...`` keys and bearer tokens are replaced whole;
- the value of any option or variable named like a secret: ``--api-key``, ``--token``,
  ``--admin-token``, ``--reference-api-key``, ``--password`` (``--name value`` or
  ``--name=value``), and ``NAME_API_KEY=value``, ``NAME_TOKEN=value``, ``NAME_SECRET=value``.
"""

from __future__ import annotations

import logging
import re
import shlex
from collections.abc import Iterable, Sequence

__all__ = [
    "PROJECT_LOGGERS",
    "REDACTED",
    "RedactingFilter",
    "is_secret_option",
    "redact",
    "redact_command",
]

REDACTED = "***"

# the option names whose value is a secret: --api-key, --admin-token, --reference-api-key...
_SECRET_NAME = r"(?:key|token|secret|password|passwd)"  # noqa: S105 - names, not a secret
_SECRET_OPTION = re.compile(rf"--?[A-Za-z0-9-]*{_SECRET_NAME}", re.IGNORECASE)

_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # scheme://user:password@host: the password goes, the user stays (it names the account);
    # greedy up to the host's @, so an unencoded @ in the password does not leak its tail
    (re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://[^\s/@:]*):[^\s/]*@"), rf"\1:{REDACTED}@"),
    # secret query parameters of a URL (?api_key=..., &token=...), and passwords as libpq's
    # key=value connection strings and URLs both take them (password=..., ?password=...)
    (
        re.compile(
            r"([?&](?:api[_-]?key|key|token|access_token|secret)=)[^\s&#'\"]*", re.IGNORECASE
        ),
        rf"\1{REDACTED}",
    ),
    (
        re.compile(r"\b((?:ssl)?(?:password|passwd|pwd)\s*=\s*)[^\s&#'\"]+", re.IGNORECASE),
        rf"\1{REDACTED}",
    ),
    # our API keys (dg-<public key id>-<secret>), OpenAI-style keys, bearer tokens
    (re.compile(r"\b(dg-[0-9a-f]{12}-)[A-Za-z0-9_-]+"), rf"\1{REDACTED}"),
    (re.compile(r"\bsk-[A-Za-z0-9_-]{6,}"), f"sk-{REDACTED}"),
    (re.compile(r"\b(bearer\s+)[A-Za-z0-9._~+/-]{8,}=*", re.IGNORECASE), rf"\1{REDACTED}"),
    # --admin-token=VALUE, or --api-key VALUE inside a line of text; after a space, only a
    # value that is not a plain word ("pass --api-key with --url" names the option)
    (
        re.compile(rf"(--?[A-Za-z0-9-]*{_SECRET_NAME})=[^\s'\"]+", re.IGNORECASE),
        rf"\1={REDACTED}",
    ),
    (
        re.compile(
            rf"(--?[A-Za-z0-9-]*{_SECRET_NAME}\s+)(?!-)(?=[^\s'\"]*[^A-Za-z\s'\",.;:])[^\s'\"]+",
            re.IGNORECASE,
        ),
        rf"\1{REDACTED}",
    ),
    # environment assignments: DISTILLGUARD_SUSPECT_API_KEY=..., ADMIN_TOKEN=...
    (
        re.compile(r"\b([A-Z0-9_]*(?:KEY|TOKEN|SECRET|PASSWORD|PASSWD))=[^\s'\"]+"),
        rf"\1={REDACTED}",
    ),
)


def redact(text: str) -> str:
    """`text` with every secret it shows replaced by ``***``."""
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def is_secret_option(argument: str) -> bool:
    """Whether `argument` is the name of an option whose value is a secret (`--api-key`)."""
    return _SECRET_OPTION.fullmatch(argument) is not None


def redact_command(argv: Sequence[str]) -> str:
    """A command line, shell-quoted, with secrets redacted: the value after a secret option
    (`--api-key VALUE` or `--api-key=VALUE`) and any secret inside an argument (a URL's
    password, an API key)."""
    redacted: list[str] = []
    hide_next = False
    for argument in argv:
        if hide_next:
            redacted.append(REDACTED)
            hide_next = False
            continue
        name, equals, _ = argument.partition("=")
        if is_secret_option(name):
            if equals:
                redacted.append(f"{name}={REDACTED}")
            else:
                redacted.append(argument)
                hide_next = True
            continue
        redacted.append(redact(argument))
    return shlex.join(redacted)


class RedactingFilter(logging.Filter):
    """Redacts a log record's message and traceback before any handler formats them."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: the handler reports it, as it always did
            return True
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        if record.exc_info and not record.exc_text:
            # formatters reuse exc_text when it is set: the traceback is formatted once, here
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


# Every logger the project writes to. A filter on a logger applies to the records logged
# through it, not to its children's, so each named logger carries one (tests/test_redact.py
# checks that every `logging.getLogger` name in the source is listed here). The package's
# __init__ imports this module, so they carry it from the first import of distillguard.
PROJECT_LOGGERS = (
    "distillguard.audit",
    "distillguard.console",
    "distillguard.engine",
    "distillguard.gateway",
    "distillguard.monitor",
    "distillguard.ratelimit",
    "distillguard.vllm",
)


def _guard(names: Iterable[str]) -> None:
    for name in names:
        logger = logging.getLogger(name)
        if not any(isinstance(item, RedactingFilter) for item in logger.filters):
            logger.addFilter(RedactingFilter())


_guard(PROJECT_LOGGERS)
