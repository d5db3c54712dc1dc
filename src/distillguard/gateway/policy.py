"""Tiers: what each allows, how a request is checked against its key's tier, and the policy
file that configures them and where the risk score puts an account.

TOML, passed to `distillguard serve --policy FILE`. Every section and key is optional; what is
left out keeps its default (docs/deployment.md shows the defaults)::

    [thresholds]            # override the risk model's fitted thresholds
    watch = 0.6
    flag = 0.8              # the score at which an account is throttled
    block = 0.97
    min_requests = 20       # no action before an account has made this many requests
    block_min_requests = 300

    [tiers.throttle]        # what a tier allows
    max_n = 1
    max_top_logprobs = 0
    max_tokens = 256
    rate_factor = 0.25      # scales the key's requests and tokens per minute

    [tiers.block]
    block = false           # keep serving a blocked account, collecting evidence
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from distillguard.errors import ApiError, ConfigError
from distillguard.gateway.protocol import ParsedRequest

__all__ = [
    "DEFAULT_TIERS",
    "TIER_RANK",
    "Policy",
    "Tier",
    "enforce_tier",
    "higher_tier",
    "load_policy",
]


@dataclass(frozen=True)
class Tier:
    """What a key's tier allows; the harvest monitor moves keys up the tiers.

    `rate_factor` scales the key's requests and tokens per minute; `block` refuses every
    request with 403. A tier that only watches keeps serving while evidence accumulates.
    """

    max_n: int = 8
    max_top_logprobs: int = 20
    max_tokens: int | None = None
    rate_factor: float = 1.0
    block: bool = False


DEFAULT_TIERS = {
    "normal": Tier(),
    "watch": Tier(max_n=4, max_top_logprobs=5),
    "throttle": Tier(max_n=1, max_top_logprobs=0, max_tokens=256, rate_factor=0.25),
    "block": Tier(block=True),
}
TIER_RANK = {"normal": 0, "watch": 1, "throttle": 2, "block": 3}


def higher_tier(configured: str, watched: str) -> str:
    """The key's configured tier, or the monitor's for it when that one is higher."""
    return watched if TIER_RANK.get(watched, 0) > TIER_RANK.get(configured, 0) else configured


def enforce_tier(tier: Tier, parsed: ParsedRequest) -> None:
    """Raise the error to answer when the request asks for more than its tier allows."""
    if tier.block:
        raise ApiError(
            403,
            "This key is blocked: its traffic matches harvesting of model outputs. "
            "Contact the provider to review it.",
            kind="permission_denied",
            code="account_blocked",
        )
    if parsed.n > tier.max_n:
        raise ApiError(400, f"n is limited to {tier.max_n} for this key", param="n")
    if parsed.top_logprobs > tier.max_top_logprobs:
        raise ApiError(
            400,
            f"top_logprobs is limited to {tier.max_top_logprobs} for this key",
            param="top_logprobs",
        )
    if (
        parsed.max_tokens is not None
        and tier.max_tokens is not None
        and parsed.max_tokens > tier.max_tokens
    ):
        raise ApiError(
            400, f"max_tokens is limited to {tier.max_tokens} for this key", param="max_tokens"
        )


_THRESHOLDS = {
    "watch": float,
    "flag": float,
    "block": float,
    "min_requests": int,
    "block_min_requests": int,
}


@dataclass(frozen=True)
class Policy:
    tiers: dict[str, Tier]
    thresholds: dict[str, float | int]


def load_policy(path: Path | None) -> Policy:
    if path is None:
        return Policy(dict(DEFAULT_TIERS), {})
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read policy file {path}: {exc.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"policy file {path} is not valid TOML: {exc}") from None
    unknown = set(data) - {"thresholds", "tiers"}
    if unknown:
        raise ConfigError(f"policy file {path}: unknown section(s) {sorted(unknown)}")
    thresholds: dict[str, float | int] = {}
    for name, value in _table(data, "thresholds", path).items():
        kind = _THRESHOLDS.get(name)
        if kind is None:
            raise ConfigError(f"policy file {path}: unknown threshold {name!r}")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"policy file {path}: threshold {name!r} must be a number")
        if kind is float and not 0.0 <= value <= 1.0:
            raise ConfigError(f"policy file {path}: threshold {name!r} must be in [0, 1]")
        if kind is int and (not isinstance(value, int) or value < 0):
            raise ConfigError(f"policy file {path}: {name!r} must be a non-negative integer")
        thresholds[name] = kind(value)
    tiers = dict(DEFAULT_TIERS)
    allowed = {field.name: field.type for field in fields(Tier)}
    for name, settings in _table(data, "tiers", path).items():
        if name not in TIER_RANK:
            raise ConfigError(
                f"policy file {path}: unknown tier {name!r}; tiers are {', '.join(TIER_RANK)}"
            )
        if not isinstance(settings, dict):
            raise ConfigError(f"policy file {path}: [tiers.{name}] must be a table")
        for key, value in settings.items():
            if key not in allowed:
                raise ConfigError(
                    f"policy file {path}: [tiers.{name}] has unknown key {key!r}; "
                    f"keys are {', '.join(allowed)}"
                )
            _check_tier_value(path, name, key, value)
        tiers[name] = replace(tiers[name], **settings)
    return Policy(tiers, thresholds)


def _table(data: dict[str, Any], name: str, path: Path) -> dict[str, Any]:
    table = data.get(name, {})
    if not isinstance(table, dict):
        raise ConfigError(f"policy file {path}: [{name}] must be a table")
    return table


def _check_tier_value(path: Path, tier: str, key: str, value: Any) -> None:
    where = f"policy file {path}: tiers.{tier}.{key}"
    if key == "block":
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false")
    elif key == "rate_factor":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
            raise ConfigError(f"{where} must be a number in (0, 1]")
    elif isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"{where} must be a non-negative integer")
