"""Errors raised by distillguard.

Library code raises these; only the CLI and the HTTP layer turn them into exit codes and
OpenAI-format error bodies. The hierarchy::

    DistillGuardError                 base of everything the project raises on purpose
    ├── ConfigError                   a setting, path or environment variable is wrong
    │   └── ModelLoadError            a directory that is not a usable causal-LM model
    ├── SecretError                   the master secret is missing, malformed or exposed
    ├── KeyNotFoundError              an unknown tenant or key id
    ├── SchemeError                   an invalid watermark scheme configuration
    ├── FingerprintMismatchError      detection asked under a scheme that does not match
    │   └── VocabularyMismatchError   token ids or tokenizer disagree with the scheme
    ├── InputError                    user input that cannot be used (empty, not text, out of range)
    │   └── ContextLengthError        prompt + max_tokens exceed the model's context
    ├── EngineError                   generation failed or the engine is closed
    ├── AuditChainError               the audit log's hash chain does not verify
    │   └── JournalLineForged         an audit journal line whose MAC does not verify
    ├── AuthenticationError           an API key that is missing, unknown or revoked
    ├── ApiError                      an answer for an HTTP client, in OpenAI's error format
    ├── UpstreamError                 the upstream server could not be reached or broke off
    ├── ClientDisconnected            the client left before its answer was ready
    ├── ServiceUnavailableError       a shared service (Redis, PostgreSQL) cannot be reached
    │   ├── LimiterUnavailable        the shared rate limiter cannot decide an admission
    │   └── AuditUnavailable          the audit log cannot make a record safe in time
    └── MissingDependencyError        an optional extra is not installed
"""

from __future__ import annotations

__all__ = [
    "ApiError",
    "AuditChainError",
    "AuditUnavailable",
    "AuthenticationError",
    "ClientDisconnected",
    "ConfigError",
    "ContextLengthError",
    "DistillGuardError",
    "EngineError",
    "FingerprintMismatchError",
    "InputError",
    "JournalLineForged",
    "KeyNotFoundError",
    "LimiterUnavailable",
    "MissingDependencyError",
    "ModelLoadError",
    "SchemeError",
    "SecretError",
    "ServiceUnavailableError",
    "UpstreamError",
    "VocabularyMismatchError",
]


class DistillGuardError(Exception):
    """Base class of every error distillguard raises on purpose."""


class ConfigError(DistillGuardError):
    """A setting, path or environment variable is wrong."""


class ModelLoadError(ConfigError):
    """A path that is not a loadable Hugging Face causal-LM directory."""


class SecretError(DistillGuardError):
    """The master secret is missing, malformed or stored unsafely."""


class KeyNotFoundError(DistillGuardError):
    """An unknown tenant, key version or key id."""


class SchemeError(DistillGuardError):
    """A watermark scheme configuration is invalid."""


class FingerprintMismatchError(DistillGuardError):
    """Detection was asked under a scheme fingerprint that does not match the recorded one.

    Scoring text under the wrong scheme yields noise that looks like a clean result, so it
    fails loudly instead.
    """


class VocabularyMismatchError(FingerprintMismatchError):
    """Token ids or the tokenizer disagree with the scheme's vocabulary."""


class InputError(DistillGuardError):
    """Input that cannot be used: empty, too short, not text, or a parameter out of range."""


class ContextLengthError(InputError):
    """The prompt plus the requested completion do not fit the model's context."""


class EngineError(DistillGuardError):
    """Generation failed inside the engine, or the engine is closed."""


class AuditChainError(DistillGuardError):
    """The audit log's hash chain does not verify."""


class MissingDependencyError(DistillGuardError):
    """An optional extra is needed; the message says which one to install."""


def require(module: str, extra: str) -> None:
    """Raise MissingDependencyError naming the extra to install when `module` is absent."""
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise MissingDependencyError(
            f"this feature needs {module!r}: pip install 'distillguard[{extra}]'"
        )


class ServiceUnavailableError(DistillGuardError):
    """A shared service the gateway depends on (Redis, PostgreSQL) cannot be reached."""


class LimiterUnavailable(ServiceUnavailableError):
    """The shared rate limiter (Redis) cannot decide an admission in time."""


class JournalLineForged(AuditChainError):
    """An audit journal line whose MAC does not verify: forged or edited on disk."""


class AuditUnavailable(ServiceUnavailableError):
    """The audit log cannot make a record safe (journaled, or committed) in time."""


class ClientDisconnected(DistillGuardError):
    """The client left before its answer was ready: its generation was cancelled."""


class AuthenticationError(DistillGuardError):
    """An API key that is missing, malformed, unknown or revoked."""


class UpstreamError(DistillGuardError):
    """The upstream server could not be reached or broke the connection."""


class ApiError(DistillGuardError):
    """An error to return to an HTTP client in OpenAI's format.

    The HTTP layer raises it with the status and the body's fields
    (`{"error": {"message", "type", "param", "code"}}`); library errors are turned into one
    at that edge.
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        kind: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.kind = kind
        self.param = param
        self.code = code
