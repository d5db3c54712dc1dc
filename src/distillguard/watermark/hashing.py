"""The keyed hash behind every watermark decision (numpy twin).

One counter-based function maps (tenant key, context, candidate token) to a uniform 32-bit
value. There is no RNG state and no per-token reseeding: generation evaluates it over the whole
vocabulary at once (`hashing_torch`, bit-identical), detection over the scored tokens.

Definition, hash version ``dg-mix32-v1`` (all arithmetic modulo 2**32)::

    mix32(x)         = xorshift-multiply finalizer: x ^= x>>16; x *= M1; x ^= x>>15; x *= M2;
                       x ^= x>>15   (M1 = 0x21F0AAAD, M2 = 0x735A2D97)
    digest(c1..ch)   = mix32(d) after d := 0x9E3779B9; for c in c1..ch (oldest first):
                       d := d * P + c   (P = 0x5BD1E995)
    seed(d)          = mix32(d ^ k0)                  one per context
    token_value(v)   = mix32(v ^ k2) ^ k1             one per candidate (cached over the vocab)
    uniform(k, d, v) = mix32((seed(d) ^ token_value(v)) + k3)

where k0..k3 are the four little-endian 32-bit words of the first 16 bytes of the tenant key
(128 bits). The context digest is unkeyed, so it is computed once per token and shared by
every tenant key during attribution; all key material enters after it. Digest collisions
(about 2**-32 per pair of contexts) only make two contexts share green lists, and detection
deduplicates on the exact (digest, token) pair the keyed part sees, so they never count the
same evidence twice. All multipliers are below 2**31 so the torch twin can hold values in
int64 without overflow.

The provider layer's split coin (scheme layering "split") is drawn per context, not per
candidate, under a coin key c0..c3 derived from the provider key (`layers.coin_key`)::

    position_coin(c, d) = mix32((mix32(d ^ c0) ^ c1) + c3)

so every candidate of a row shares one decision, and the coin is independent of the green
lists of the provider and tenant keys (a different key).

The self-hash seeding picks an anchor token from a window by an unkeyed rank,
``anchor_rank(v) = mix32(v ^ 0x85EBCA6B)``, and uses ``digest(anchor)`` as the context.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = [
    "ANCHOR_SALT",
    "DIGEST_MULTIPLIER",
    "DIGEST_SEED",
    "HASH_VERSION",
    "MULTIPLIER_1",
    "MULTIPLIER_2",
    "anchor_rank",
    "combine",
    "context_digest",
    "keyed_seed",
    "keyed_uniform",
    "mix32",
    "position_coin",
    "token_value",
]

HASH_VERSION = "dg-mix32-v1"
MULTIPLIER_1 = 0x21F0AAAD
MULTIPLIER_2 = 0x735A2D97
DIGEST_SEED = 0x9E3779B9
DIGEST_MULTIPLIER = 0x5BD1E995
ANCHOR_SALT = 0x85EBCA6B

U32 = npt.NDArray[np.uint32]

_M1 = np.uint32(MULTIPLIER_1)
_M2 = np.uint32(MULTIPLIER_2)
_S16 = np.uint32(16)
_S15 = np.uint32(15)


def mix32(values: U32) -> U32:
    """The 32-bit finalizer, elementwise. Returns a new array; the input is untouched."""
    x = values ^ (values >> _S16)
    x *= _M1  # uint32 multiplication wraps modulo 2**32, as the definition wants
    shifted = x >> _S15
    x ^= shifted
    x *= _M2
    np.right_shift(x, _S15, out=shifted)
    x ^= shifted
    return x


def context_digest(columns: list[U32]) -> U32:
    """Unkeyed digest of context windows given as columns, oldest token first.

    `columns[j]` holds the j-th context token of every window, shape (n,).
    """
    if not columns:
        raise ValueError("a context digest needs at least one column")
    # polynomial accumulation (uint32 wraps modulo 2**32), then one full mix
    digest = columns[0] + np.uint32((DIGEST_SEED * DIGEST_MULTIPLIER) & 0xFFFFFFFF)
    multiplier = np.uint32(DIGEST_MULTIPLIER)
    for column in columns[1:]:
        digest *= multiplier
        digest += column
    return mix32(digest)


def anchor_rank(tokens: U32) -> U32:
    """Public rank used by self-hash seeding to choose the anchor token of a window."""
    return mix32(tokens ^ np.uint32(ANCHOR_SALT))


def keyed_seed(digests: U32, k0: npt.NDArray[np.uint32] | np.uint32) -> U32:
    """The keyed seed of a context digest: mix32(d ^ k0)."""
    return mix32(digests ^ k0)


def token_value(
    tokens: U32, k1: npt.NDArray[np.uint32] | np.uint32, k2: npt.NDArray[np.uint32] | np.uint32
) -> U32:
    """The keyed value of a candidate token: mix32(v ^ k2) ^ k1."""
    value = mix32(tokens ^ k2)
    value ^= k1
    return value


def combine(seed: U32, value: U32, k3: npt.NDArray[np.uint32] | np.uint32) -> U32:
    """The uniform value of (seed, candidate value): mix32((seed ^ value) + k3)."""
    combined = seed ^ value
    combined += k3
    return mix32(combined)


def keyed_uniform(key_words: npt.NDArray[np.uint32], digests: U32, tokens: U32) -> U32:
    """Uniform 32-bit values for (key, context digest, candidate token).

    `key_words` has shape (..., 4); its leading dimensions broadcast against those of
    `digests` and `tokens` (e.g. keys (K, 1, 4) against tokens (N,) gives (K, N)).
    """
    k0, k1, k2, k3 = (key_words[..., index] for index in range(4))
    return combine(keyed_seed(digests, k0), token_value(tokens, k1, k2), k3)


def position_coin(coin_words: npt.NDArray[np.uint32], digests: U32) -> U32:
    """The split coin of each context digest: mix32((mix32(d ^ c0) ^ c1) + c3).

    `coin_words` has shape (..., 4) and broadcasts against `digests` like `keyed_uniform`.
    """
    c0, c1, _, c3 = (coin_words[..., index] for index in range(4))
    return combine(keyed_seed(digests, c0), np.asarray(c1, dtype=np.uint32), c3)
