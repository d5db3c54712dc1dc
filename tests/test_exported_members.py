"""Each public package's `__all__` is pinned: a name leaves or joins the API on purpose."""

from __future__ import annotations

import importlib

import pytest

PUBLIC = {
    "distillguard.errors": [
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
    ],
    "distillguard.keys": [
        "KeyCommitment",
        "Keyring",
        "MasterSecret",
        "TenantKey",
        "commit",
        "derive_tenant_key",
        "hkdf_sha256",
        "init_master_secret",
        "load_master_secret",
        "record_commitment",
        "recorded_commitments",
    ],
    "distillguard.watermark": [
        "Attribution",
        "Detection",
        "DetectionReport",
        "Detector",
        "DocumentDetection",
        "RankedKey",
        "Scheme",
        "SchemeConfig",
        "Seeding",
        "WatermarkKey",
        "tokenizer_fingerprint",
    ],
    "distillguard.store": ["Connection", "connect", "describe"],
    "distillguard.engine": [
        "Choice",
        "Completion",
        "Engine",
        "GenerationRequest",
        "PreparedRequest",
        "SamplingParams",
        "TokenEvent",
        "TokenLogprob",
    ],
    "distillguard.monitor": [
        "TIERS",
        "AccountReport",
        "Monitor",
        "MonitorEvent",
        "MonitorHook",
        "RingReport",
        "RingRules",
        "RiskModel",
    ],
    "distillguard.forensics": [
        "AuditOutcome",
        "OpenWeightsResults",
        "RadioactivityResult",
        "audit_suspect",
        "black_box_focused_test",
        "black_box_test",
        "build_report",
        "load_prompts",
        "open_weights_test",
        "run_audit",
        "write_report",
    ],
    "distillguard.gateway": [],
    "distillguard.gateway.backends": [
        "Backend",
        "Failure",
        "Finish",
        "LocalBackend",
        "Reply",
        "UpstreamBackend",
        "UpstreamClient",
    ],
    "distillguard.gateway.console": ["AuthSettings", "Console", "ConsoleConfig"],
    "distillguard.gateway.ratelimit": [
        "WINDOW",
        "Admission",
        "Limits",
        "MemoryRateLimiter",
        "RateLimiter",
        "Refusal",
        "Scope",
        "Snapshot",
        "admitted",
        "format_duration",
        "limiter_from_url",
    ],
    "distillguard.experiments": [],
    "distillguard.redact": [
        "PROJECT_LOGGERS",
        "REDACTED",
        "RedactingFilter",
        "is_secret_option",
        "redact",
        "redact_command",
    ],
    "distillguard.cli": ["main"],
}


@pytest.mark.parametrize("package", sorted(PUBLIC))
def test_the_public_names_are_pinned_and_exist(package: str) -> None:
    module = importlib.import_module(package)
    exported = getattr(module, "__all__", None)
    assert exported is not None, f"{package} has no __all__"
    assert sorted(exported) == sorted(PUBLIC[package])
    missing = [name for name in exported if not hasattr(module, name)]
    assert missing == []
