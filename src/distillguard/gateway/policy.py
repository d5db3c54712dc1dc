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

    [tiers.throttle]        # what a tier allows (these are its defaults)
    max_n = 1
    max_best_of = 1
    allow_logprobs = false  # logprobs of the completion at all (even with top_logprobs 0)
    max_top_logprobs = 0    # also caps completions' logprobs and prompt_logprobs
    max_tokens = 256
    allow_logit_bias = false
    allow_logit_bias_with_logprobs = false   # the logit-extraction pair: off in every tier
    allow_echo = false
    allow_prompt_logprobs = false
    allow_ignore_eos = false
    max_min_tokens = 0
    rate_factor = 0.25      # scales the key's requests and tokens per minute

    [tiers.watch]
    allow_logit_bias = true # as the normal tier does (never with logprobs)

    [tiers.block]
    block = false           # keep serving a blocked account, collecting evidence

    [review]                # tiers that wait for an operator's confirmation in the console
    tiers = ["block"]       # (gateway/review.py); none by default
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
    "check_tier_name",
    "enforce_tier",
    "higher_tier",
    "load_policy",
]


@dataclass(frozen=True)
class Tier:
    """What a key's tier allows; the harvest monitor moves keys up the tiers.

    `rate_factor` scales the key's requests and tokens per minute; `block` refuses every
    request with 403. A tier that only watches keeps serving while evidence accumulates.

    The defaults are the normal tier's. `logit_bias` together with any logprobs is refused
    even there: biasing chosen tokens and reading their logprobs back recovers the model's
    logits, and from them its final layer (Carlini et al. 2024, "Stealing Part of a Production
    Language Model", sec. 5). Prompt logprobs (vLLM's `prompt_logprobs`, or `echo` with
    `logprobs`) score any text the client writes with the teacher: a distillation signal, capped
    by `max_top_logprobs` like the completion's. `allow_logprobs` governs logprobs themselves:
    even with no alternatives (`top_logprobs` 0), the sampled token's logprob is the teacher's
    confidence, a soft label to distill from.
    """

    max_n: int = 8
    max_best_of: int = 8  # completions generated for one request (best_of), as n caps returned
    allow_logprobs: bool = True  # chat's logprobs, completions' logprobs (any number)
    max_top_logprobs: int = 20  # top_logprobs, completions' logprobs, and prompt_logprobs
    max_tokens: int | None = None
    allow_logit_bias: bool = True
    allow_logit_bias_with_logprobs: bool = False
    allow_echo: bool = True
    allow_prompt_logprobs: bool = True
    allow_ignore_eos: bool = True
    max_min_tokens: int | None = None  # vLLM's min_tokens; None: no cap beyond max_tokens
    rate_factor: float = 1.0
    block: bool = False


def _without_extras(tier: Tier) -> Tier:
    """`tier` less logprobs, logit_bias, echo, prompt logprobs, ignore_eos and min_tokens."""
    return replace(
        tier,
        allow_logprobs=False,
        allow_logit_bias=False,
        allow_echo=False,
        allow_prompt_logprobs=False,
        allow_ignore_eos=False,
        max_min_tokens=0,
    )


DEFAULT_TIERS = {
    "normal": Tier(),
    "watch": Tier(max_n=4, max_best_of=4, max_top_logprobs=5, allow_logit_bias=False),
    "throttle": _without_extras(
        Tier(max_n=1, max_best_of=1, max_top_logprobs=0, max_tokens=256, rate_factor=0.25)
    ),
    "block": _without_extras(Tier(block=True)),
}
TIER_RANK = {"normal": 0, "watch": 1, "throttle": 2, "block": 3}


def check_tier_name(tier: str) -> str:
    """`tier`, when it names a tier; else ConfigError. An unknown name never falls back to
    any tier's privileges: a typo would otherwise hand out the normal tier's."""
    if tier not in TIER_RANK:
        raise ConfigError(f"unknown tier {tier!r}: tiers are {', '.join(TIER_RANK)}")
    return tier


def higher_tier(configured: str, watched: str) -> str:
    """The key's configured tier, or the monitor's for it when that one is higher."""
    return watched if TIER_RANK.get(watched, 0) > TIER_RANK.get(configured, 0) else configured


def enforce_tier(tier: Tier, parsed: ParsedRequest) -> None:
    """Raise the error to answer when the request asks for more than its tier allows: 403 for
    a blocked key, else 400 naming the parameter."""
    if tier.block:
        raise ApiError(
            403,
            "This key is blocked: its traffic matches harvesting of model outputs. "
            "Contact the provider to review it.",
            kind="permission_denied",
            code="account_blocked",
        )
    _enforce_choices(tier, parsed)
    _enforce_logprobs(tier, parsed)
    _enforce_logit_bias(tier, parsed)
    _enforce_length(tier, parsed)


def _refuse(param: str, message: str) -> ApiError:
    return ApiError(400, message, param=param)


def _enforce_choices(tier: Tier, parsed: ParsedRequest) -> None:
    if parsed.n > tier.max_n:
        raise _refuse("n", f"n is limited to {tier.max_n} for this key")
    if parsed.best_of is not None and parsed.best_of > tier.max_best_of:
        raise _refuse("best_of", f"best_of is limited to {tier.max_best_of} for this key")


def _enforce_logprobs(tier: Tier, parsed: ParsedRequest) -> None:
    if parsed.logprobs and not tier.allow_logprobs:
        raise _refuse("logprobs", "logprobs is not allowed for this key")
    if parsed.top_logprobs > tier.max_top_logprobs:
        # completions' integer logprobs is its top_logprobs: name what the client sent
        param = "top_logprobs" if parsed.chat else "logprobs"
        raise _refuse(param, f"{param} is limited to {tier.max_top_logprobs} for this key")
    if parsed.prompt_logprobs is not None:
        if not tier.allow_prompt_logprobs:
            raise _refuse("prompt_logprobs", "prompt_logprobs is not allowed for this key")
        if parsed.prompt_logprobs > tier.max_top_logprobs:
            raise _refuse(
                "prompt_logprobs",
                f"prompt_logprobs is limited to {tier.max_top_logprobs} for this key",
            )
    if parsed.echo:
        if not tier.allow_echo:
            raise _refuse("echo", "echo is not allowed for this key")
        if parsed.logprobs and not tier.allow_prompt_logprobs:
            raise _refuse(
                "echo", "echo with logprobs returns prompt logprobs, not allowed for this key"
            )


def _enforce_logit_bias(tier: Tier, parsed: ParsedRequest) -> None:
    if not parsed.logit_bias:
        return  # an empty map biases nothing
    if not tier.allow_logit_bias:
        raise _refuse("logit_bias", "logit_bias is not allowed for this key")
    if parsed.wants_logprobs and not tier.allow_logit_bias_with_logprobs:
        raise _refuse(
            "logit_bias",
            "logit_bias cannot be combined with logprobs for this key "
            "(together they reveal the model's logits)",
        )


def _enforce_length(tier: Tier, parsed: ParsedRequest) -> None:
    if (
        parsed.max_tokens is not None
        and tier.max_tokens is not None
        and parsed.max_tokens > tier.max_tokens
    ):
        raise _refuse("max_tokens", f"max_tokens is limited to {tier.max_tokens} for this key")
    if parsed.ignore_eos and not tier.allow_ignore_eos:
        raise _refuse("ignore_eos", "ignore_eos is not allowed for this key")
    if tier.max_min_tokens is not None and parsed.min_tokens > tier.max_min_tokens:
        raise _refuse("min_tokens", f"min_tokens is limited to {tier.max_min_tokens} for this key")


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
    review: tuple[str, ...] = ()  # tiers an operator must confirm before they take effect


def load_policy(path: Path | None) -> Policy:
    if path is None:
        return Policy(dict(DEFAULT_TIERS), {})
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read policy file {path}: {exc.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"policy file {path} is not valid TOML: {exc}") from None
    unknown = set(data) - {"thresholds", "tiers", "review"}
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
    allowed = _TIER_TYPES
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
    return Policy(tiers, thresholds, _review(data, path))


def _review(data: dict[str, Any], path: Path) -> tuple[str, ...]:
    """The [review] section's tiers: above normal, each named once."""
    table = _table(data, "review", path)
    unknown = set(table) - {"tiers"}
    if unknown:
        raise ConfigError(f"policy file {path}: [review] has unknown key(s) {sorted(unknown)}")
    tiers = table.get("tiers", [])
    if not isinstance(tiers, list) or not all(isinstance(tier, str) for tier in tiers):
        raise ConfigError(f"policy file {path}: review.tiers must be a list of tier names")
    for tier in tiers:
        if tier not in TIER_RANK or tier == "normal":
            raise ConfigError(
                f"policy file {path}: review.tiers: {tier!r} is not a tier above normal"
            )
    return tuple(dict.fromkeys(tiers))


def _table(data: dict[str, Any], name: str, path: Path) -> dict[str, Any]:
    table = data.get(name, {})
    if not isinstance(table, dict):
        raise ConfigError(f"policy file {path}: [{name}] must be a table")
    return table


def _check_tier_value(path: Path, tier: str, key: str, value: Any) -> None:
    """Each key by its type in `Tier`: true or false, the rate factor, or a count."""
    where = f"policy file {path}: tiers.{tier}.{key}"
    kind = _TIER_TYPES[key]
    if kind == "bool":
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false")
    elif kind == "float":  # rate_factor
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
            raise ConfigError(f"{where} must be a number in (0, 1]")
    elif kind in ("int", "int | None"):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConfigError(f"{where} must be a non-negative integer")
    else:
        raise ConfigError(f"{where}: no check for a {kind} key")


# each Tier key's annotation (a string: the module postpones annotations)
_TIER_TYPES = {field.name: str(field.type) for field in fields(Tier)}
