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
    DIGEST_SEED,
    MULTIPLIER_1,
    MULTIPLIER_2,
)

__all__ = ["anchor_rank", "context_digest", "keyed_uniform", "mix32"]

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
    digest = mix32(columns[0] ^ DIGEST_SEED)
    for column in columns[1:]:
        digest = mix32(digest ^ column)
    return digest


def anchor_rank(tokens: torch.Tensor) -> torch.Tensor:
    """Public rank used by self-hash seeding to choose the anchor token of a window."""
    return mix32(tokens ^ ANCHOR_SALT)


def keyed_uniform(
    key_words: torch.Tensor, digests: torch.Tensor, tokens: torch.Tensor
) -> torch.Tensor:
    """Uniform 32-bit values for (key, context digest, candidate token), broadcasting.

    `key_words` has shape (..., 4) of int64 holding 32-bit words.
    """
    k0 = key_words[..., 0]
    k1 = key_words[..., 1]
    k2 = key_words[..., 2]
    k3 = key_words[..., 3]
    seed = mix32(mix32(digests ^ k0) ^ k1)
    token_value = mix32(tokens ^ k2)
    return mix32(((seed ^ token_value) + k3) & _MASK)


def seed_and_mix(seed: torch.Tensor, token_values: torch.Tensor, k3: torch.Tensor) -> torch.Tensor:
    """Last step of `keyed_uniform` given precomputed seeds and candidate token values.

    Generation caches `token_values = mix32(vocab ^ k2)` per key, shape (V,), and computes one
    seed per row, shape (B, 1); this returns (B, V).
    """
    return mix32(((seed ^ token_values) + k3) & _MASK)
