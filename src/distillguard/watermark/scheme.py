"""Watermark scheme configurations and their fingerprints.

A scheme says how the keyed hash turns into a watermark (green list or Gumbel-max), with its
parameters, and is bound to one vocabulary: its size and a hash of the tokenizer. The
fingerprint covers all of it plus the hash version, so that detection under a different
configuration fails loudly instead of silently reporting noise.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, replace
from enum import StrEnum
from typing import Any, Protocol

from distillguard.errors import SchemeError, VocabularyMismatchError
from distillguard.watermark.hashing import HASH_VERSION

__all__ = [
    "Layering",
    "Scheme",
    "SchemeConfig",
    "Seeding",
    "layered_scheme",
    "tokenizer_fingerprint",
]

_TWO_POW_32 = 1 << 32


class Scheme(StrEnum):
    """How the uniform values change sampling."""

    GREEN_LIST = "green_list"  # Kirchenbauer et al. 2023: +delta on a gamma-fraction of tokens
    GUMBEL = "gumbel"  # Aaronson 2022: argmax r_v ** (1 / p_v), distortion-free


class Seeding(StrEnum):
    """Which tokens seed the hash for a candidate."""

    LEFT_HASH = "left_hash"  # the previous `context_width` tokens, in order
    SELF_HASH = "self_hash"  # anchored min-hash over the previous width-1 tokens and the candidate


class Layering(StrEnum):
    """Which keys bias a watermarked row (green lists, left-hash only).

    The tenant layer names an account; the provider layer is one key for every account, so its
    trace in a student does not dilute with the number of accounts a ring spreads its harvest
    over (docs/forensics.md).
    """

    TENANT = "tenant"  # the tenant's key alone (the original scheme)
    SPLIT = "split"  # a keyed coin on the context picks the provider key or the tenant key
    STACKED = "stacked"  # both green lists at every position: +delta tenant, +provider_delta


@dataclass(frozen=True)
class SchemeConfig:
    """A watermark scheme, optionally bound to a vocabulary.

    For GREEN_LIST a token is green when its uniform 32-bit value is below
    ``green_threshold = floor(gamma * 2**32)``; detection uses the exact ``effective_gamma``.
    `delta` is the logit bias added to green tokens. GUMBEL ignores gamma and delta.

    `layering` adds a provider-wide layer beside the tenant's (green lists, left-hash only).
    SPLIT: at a context whose keyed coin (`hashing.position_coin` under the provider's coin
    key) falls below ``provider_threshold = floor(provider_share * 2**32)`` the provider key
    biases the row, elsewhere the tenant key, both by `delta`. STACKED: both green lists at
    every position, the tenant's by `delta` and the provider's by `provider_delta`.
    """

    scheme: Scheme = Scheme.GREEN_LIST
    gamma: float = 0.25
    delta: float = 2.0
    context_width: int = 1  # radioactivity needs a short window: see docs/watermark.md
    seeding: Seeding = Seeding.LEFT_HASH
    vocab_size: int | None = None
    tokenizer_hash: str | None = None
    hash_version: str = HASH_VERSION
    layering: Layering = Layering.TENANT
    provider_share: float = 0.5  # SPLIT: the fraction of contexts the provider key biases
    provider_delta: float = 1.0  # STACKED: the provider layer's bias

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "scheme", Scheme(self.scheme))
            object.__setattr__(self, "seeding", Seeding(self.seeding))
            object.__setattr__(self, "layering", Layering(self.layering))
        except ValueError as exc:
            raise SchemeError(str(exc)) from None
        if not 0.0 < self.gamma < 1.0:
            raise SchemeError(f"gamma must be in (0, 1), got {self.gamma}")
        if self.delta < 0.0:
            raise SchemeError(f"delta must be >= 0, got {self.delta}")
        if not 1 <= self.context_width <= 64:
            raise SchemeError(f"context_width must be in 1..64, got {self.context_width}")
        if self.vocab_size is not None and not 2 <= self.vocab_size < _TWO_POW_32:
            raise SchemeError(f"vocab_size must be in 2..2**32-1, got {self.vocab_size}")
        if self.layering is not Layering.TENANT and (
            self.scheme is not Scheme.GREEN_LIST or self.seeding is not Seeding.LEFT_HASH
        ):
            # the split coin is drawn per context, so every candidate of a row shares one key;
            # a self-hash window contains the candidate, and Gumbel-max cannot add two biases
            raise SchemeError("a provider layer needs a left-hash green-list scheme")
        if not 0.0 < self.provider_share < 1.0:
            raise SchemeError(f"provider_share must be in (0, 1), got {self.provider_share}")
        if self.provider_delta < 0.0:
            raise SchemeError(f"provider_delta must be >= 0, got {self.provider_delta}")
        if self.hash_version != HASH_VERSION:
            raise SchemeError(
                f"hash version {self.hash_version!r} is not supported by this build "
                f"(it implements {HASH_VERSION!r})"
            )

    @property
    def green_threshold(self) -> int:
        """Uniform values strictly below this are green."""
        return int(self.gamma * _TWO_POW_32)

    @property
    def effective_gamma(self) -> float:
        """The exact probability that a token is green under the null hypothesis."""
        return self.green_threshold / _TWO_POW_32

    @property
    def provider_threshold(self) -> int:
        """SPLIT: a context whose coin is strictly below this is biased by the provider key."""
        return int(self.provider_share * _TWO_POW_32)

    @property
    def has_provider_layer(self) -> bool:
        return self.layering is not Layering.TENANT

    def tenant_only(self) -> SchemeConfig:
        """The same scheme without the provider layer (e.g. a second provider's)."""
        return replace(self, layering=Layering.TENANT)

    @property
    def is_bound(self) -> bool:
        return self.vocab_size is not None

    def bind(self, vocab_size: int, tokenizer_hash: str | None = None) -> SchemeConfig:
        """The same scheme bound to a vocabulary (size and tokenizer hash)."""
        return replace(self, vocab_size=vocab_size, tokenizer_hash=tokenizer_hash)

    def unbound(self) -> SchemeConfig:
        """The same scheme without a vocabulary."""
        return replace(self, vocab_size=None, tokenizer_hash=None)

    def canonical(self) -> dict[str, Any]:
        """The parameters that matter, in a stable form (what the fingerprint hashes)."""
        data: dict[str, Any] = {
            "scheme": self.scheme.value,
            "context_width": self.context_width,
            "seeding": self.seeding.value,
            "vocab_size": self.vocab_size,
            "tokenizer_hash": self.tokenizer_hash,
            "hash_version": self.hash_version,
        }
        if self.scheme is Scheme.GREEN_LIST:
            data["green_threshold"] = self.green_threshold
            data["delta"] = repr(float(self.delta))
        elif self.scheme is Scheme.GUMBEL:
            pass
        else:  # pragma: no cover - Scheme is closed
            raise SchemeError(f"unknown scheme {self.scheme}")
        # the tenant-only scheme keeps the fingerprint it had before layers existed
        if self.layering is Layering.SPLIT:
            data["layering"] = self.layering.value
            data["provider_threshold"] = self.provider_threshold
        elif self.layering is Layering.STACKED:
            data["layering"] = self.layering.value
            data["provider_delta"] = repr(float(self.provider_delta))
        elif self.layering is not Layering.TENANT:  # pragma: no cover - Layering is closed
            raise SchemeError(f"unknown layering {self.layering}")
        return data

    @property
    def fingerprint(self) -> str:
        """``sha256:<hex>`` over the canonical JSON of the configuration."""
        encoded = json.dumps(self.canonical(), sort_keys=True, separators=(",", ":"))
        return "sha256:" + hashlib.sha256(encoded.encode()).hexdigest()

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["scheme"] = self.scheme.value
        data["seeding"] = self.seeding.value
        if self.layering is Layering.TENANT:
            # the tenant-only scheme serializes as it did before layers existed
            for name in ("layering", "provider_share", "provider_delta"):
                del data[name]
        else:
            data["layering"] = self.layering.value
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SchemeConfig:
        known = set(cls.__dataclass_fields__)
        unknown = set(data) - known
        if unknown:
            raise SchemeError(f"unknown scheme fields: {', '.join(sorted(unknown))}")
        return cls(**data)

    def check_token_ids(self, max_token_id: int) -> None:
        """Raise VocabularyMismatchError when ids fall outside the bound vocabulary."""
        if self.vocab_size is not None and max_token_id >= self.vocab_size:
            raise VocabularyMismatchError(
                f"token id {max_token_id} is outside the scheme's vocabulary of "
                f"{self.vocab_size}: the text was tokenized with a different tokenizer"
            )


def layered_scheme(layering: Layering | str) -> SchemeConfig:
    """The default green-list scheme under each layering (gamma 0.25, left-hash h = 1).

    TENANT and SPLIT bias each position once, by delta 2, so they cost the same perplexity;
    STACKED biases every position twice, so each layer gets a lower delta (1.5 + 1.5).
    The parameters are chosen in docs/forensics.md from `benchmarks/adversary.py`."""
    try:
        chosen = Layering(layering)
    except ValueError as exc:
        raise SchemeError(str(exc)) from None
    if chosen is Layering.TENANT:
        return SchemeConfig()
    if chosen is Layering.SPLIT:
        return SchemeConfig(layering=chosen, provider_share=0.5)
    if chosen is Layering.STACKED:
        return SchemeConfig(layering=chosen, delta=1.5, provider_delta=1.5)
    raise SchemeError(f"unknown layering {chosen}")  # pragma: no cover - Layering is closed


class _HasVocab(Protocol):
    def get_vocab(self) -> dict[str, int]: ...


def tokenizer_fingerprint(tokenizer: _HasVocab) -> str:
    """``sha256:<hex>`` of a tokenizer's vocabulary (token -> id, added tokens included).

    Works with `tokenizers.Tokenizer` and transformers tokenizers alike: both expose
    `get_vocab()`. Two tokenizers with the same fingerprint map every token to the same id.
    """
    vocab = tokenizer.get_vocab()
    ordered = sorted(vocab.items(), key=lambda item: (item[1], item[0]))
    encoded = json.dumps(ordered, ensure_ascii=False, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(encoded.encode()).hexdigest()
