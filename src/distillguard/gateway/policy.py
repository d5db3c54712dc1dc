"""The policy file: what each tier does, and where the risk score puts an account.

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

from distillguard.errors import ConfigError
from distillguard.gateway.app import DEFAULT_TIERS, TIER_RANK, Tier

__all__ = ["Policy", "load_policy"]

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
