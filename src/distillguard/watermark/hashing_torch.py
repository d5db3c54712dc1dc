"""The keyed hash, torch twin of `hashing` (generation side).

Values live in int64 tensors holding 0 .. 2**32-1. Every product is below 2**63 because both
multipliers are below 2**31, so no signed overflow happens; after each multiplication and
addition the value is masked back to 32 bits. Right shifts of non-negative values are logical.
The result is bit-identical to the numpy twin; `tests/watermark/test_hashing.py` proves it on
committed vectors and on a million random inputs.
"""

from __future__ import annotations

import torch

from distillguard.watermark.hashing import (
    ANCHOR_SALT,
    DIGEST_MULTIPLIER,
    DIGEST_SEED,
    MULTIPLIER_1,
    MULTIPLIER_2,
)

__all__ = [
    "anchor_rank",
    "combine",
    "context_digest",
    "keyed_seed",
    "keyed_uniform",
    "mix32",
    "position_coin",
    "token_value",
]

_MASK = 0xFFFFFFFF


def mix32(values: torch.Tensor) -> torch.Tensor:
    """The 32-bit finalizer on int64 tensors holding unsigned 32-bit values."""
    x = values ^ (values >> 16)
    x = (x * MULTIPLIER_1) & _MASK
    x = x ^ (x >> 15)
    x = (x * MULTIPLIER_2) & _MASK
    return x ^ (x >> 15)


def context_digest(columns: list[torch.Tensor]) -> torch.Tensor:
    """Unkeyed digest of context windows given as columns, oldest token first."""
    if not columns:
        raise ValueError("a context digest needs at least one column")
    digest = (columns[0] + ((DIGEST_SEED * DIGEST_MULTIPLIER) & _MASK)) & _MASK
    for column in columns[1:]:
        digest = (((digest * DIGEST_MULTIPLIER) & _MASK) + column) & _MASK
    return mix32(digest)


def anchor_rank(tokens: torch.Tensor) -> torch.Tensor:
    """Public rank used by self-hash seeding to choose the anchor token of a window."""
    return mix32(tokens ^ ANCHOR_SALT)


def keyed_seed(digests: torch.Tensor, k0: torch.Tensor | int) -> torch.Tensor:
    return mix32(digests ^ k0)


def token_value(
    tokens: torch.Tensor, k1: torch.Tensor | int, k2: torch.Tensor | int
) -> torch.Tensor:
    return mix32(tokens ^ k2) ^ k1


def combine(seed: torch.Tensor, value: torch.Tensor, k3: torch.Tensor | int) -> torch.Tensor:
    """mix32((seed ^ value) + k3); broadcasts, e.g. seeds (B, 1) with values (B or 1, V)."""
    return mix32(((seed ^ value) + k3) & _MASK)


def keyed_uniform(
    key_words: torch.Tensor, digests: torch.Tensor, tokens: torch.Tensor
) -> torch.Tensor:
    """Uniform 32-bit values for (key, context digest, candidate token), broadcasting.

    `key_words` has shape (..., 4) of int64 holding 32-bit words.
    """
    k0, k1, k2, k3 = (key_words[..., index] for index in range(4))
    return combine(keyed_seed(digests, k0), token_value(tokens, k1, k2), k3)


def position_coin(coin_words: torch.Tensor, digests: torch.Tensor) -> torch.Tensor:
    """The split coin of each context digest (see `hashing.position_coin`), broadcasting."""
    c0, c1, _, c3 = (coin_words[..., index] for index in range(4))
    return combine(keyed_seed(digests, c0), c1, c3)
