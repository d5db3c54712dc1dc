"""The provider layer beside the tenant layer: which tuples each layer's test scores, and the
exact test for a ring of accounts.

A layered scheme (`SchemeConfig.layering`) biases every watermarked row with the tenant's key
and one provider-wide key. Three findings come out of it, each with its own null hypothesis:

- **provider layer** ("trained on this provider's outputs"): the green count under the
  provider key over the tuples the provider layer biased (SPLIT: contexts whose coin says
  provider; STACKED: every tuple). Null: the text is independent of the provider key, so the
  count is Binomial(N, gamma).
- **tenant layer** ("which account"): per tenant key, over the tuples the tenant layer biased
  (SPLIT: the other contexts; STACKED: every tuple), Holm-corrected over the keys tested.
- **ring** ("these accounts together"): the green counts of the ring's k tenant keys, summed
  over the same N tuples. Under the null, the k * N (key, tuple) values come from k distinct
  keys over N distinct (context, token) pairs of a keyed hash, so they are independent
  Bernoulli(gamma) and the sum is Binomial(k * N, gamma). A key listed twice would count the
  same evidence twice, so duplicates are refused.

The SPLIT selection uses only the coin key, derived from the provider key by a one-way hash
(`coin_key`), so it is independent of every green list it selects for: under the null, the
selected tuples are still independent Bernoulli(gamma).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

from distillguard.errors import InputError, SchemeError
from distillguard.watermark import hashing, stats
from distillguard.watermark.key import WatermarkKey, key_word_array
from distillguard.watermark.scheme import Layering, SchemeConfig

__all__ = [
    "COIN_LABEL",
    "Layer",
    "RingDetection",
    "coin_key",
    "green_counts",
    "layer_mask",
    "ring_detection",
]

COIN_LABEL = b"distillguard/provider-coin/v1"
_CELLS_PER_CHUNK = 1 << 22

Layer = Literal["provider", "tenant"]


def coin_key(provider: WatermarkKey) -> WatermarkKey:
    """The key of the split coin: sha256(label || provider secret), so that the coin is
    independent of the provider's green lists."""
    material = hashlib.sha256(COIN_LABEL + provider.secret).digest()
    return WatermarkKey(f"{provider.key_id}:coin", material)


def layer_mask(
    config: SchemeConfig,
    provider: WatermarkKey | None,
    digests: npt.NDArray[np.uint32],
    layer: Layer,
) -> npt.NDArray[np.bool_]:
    """Which tuples (by context digest, shape (N,)) the given layer biased under `config`."""
    layering = config.layering
    if layer not in ("provider", "tenant"):
        raise InputError(f"unknown layer {layer!r}")
    if layering is Layering.TENANT:
        return np.full(digests.shape, layer == "tenant", dtype=bool)
    if layering is Layering.STACKED:
        return np.ones(digests.shape, dtype=bool)
    if layering is Layering.SPLIT:
        if provider is None:
            raise SchemeError("the split layering needs the provider key to select positions")
        words = key_word_array([coin_key(provider)])[0]
        on_provider = hashing.position_coin(words, digests) < np.uint32(config.provider_threshold)
        return on_provider if layer == "provider" else ~on_provider
    raise SchemeError(f"unknown layering {layering}")  # pragma: no cover - Layering is closed


def green_counts(
    config: SchemeConfig,
    keys: Sequence[WatermarkKey],
    digests: npt.NDArray[np.uint32],
    tokens: npt.NDArray[np.uint32],
) -> npt.NDArray[np.int64]:
    """Green counts per key over the given (distinct) tuples; shape (keys,)."""
    words = key_word_array(list(keys))
    counts = np.zeros(len(keys), dtype=np.int64)
    chunk = max(1, _CELLS_PER_CHUNK // max(tokens.size, 1))
    threshold = np.uint32(config.green_threshold)
    for first in range(0, len(keys), chunk):
        block = words[first : first + chunk, None, :]
        uniforms = hashing.keyed_uniform(block, digests, tokens)
        counts[first : first + chunk] = (uniforms < threshold).sum(axis=1)
    return counts


@dataclass(frozen=True)
class RingDetection:
    """The evidence that a ring of accounts' tenant keys, together, marked a set of tuples."""

    key_ids: tuple[str, ...]
    fingerprint: str
    scored_tuples: int  # distinct (context, token) tuples
    green: int  # green (key, tuple) pairs over the ring's keys
    gamma: float
    p_value: float
    log10_p: float

    @property
    def pairs(self) -> int:
        return len(self.key_ids) * self.scored_tuples

    @property
    def expected(self) -> float:
        return self.gamma * self.pairs

    @property
    def null_hypothesis(self) -> str:
        return (
            f"the tokens were produced without knowledge of any of the {len(self.key_ids)} ring "
            f"keys: each of the {self.pairs} (key, tuple) pairs ({self.scored_tuples} distinct "
            f"tuples x {len(self.key_ids)} distinct keys) is green with probability {self.gamma} "
            f"independently, so the green count is Binomial({self.pairs}, {self.gamma})"
        )


def ring_detection(
    config: SchemeConfig,
    keys: Sequence[WatermarkKey],
    digests: npt.NDArray[np.uint32],
    tokens: npt.NDArray[np.uint32],
) -> RingDetection:
    """The exact ring test over distinct tuples: the summed green count of `keys`."""
    if not keys:
        raise InputError("a ring needs at least one key")
    if len({key.secret[:16] for key in keys}) != len(keys):
        # the hash reads the first 128 bits: two keys sharing them are the same key
        raise InputError("a ring lists the same key twice: its evidence would count twice")
    gamma = config.effective_gamma
    green = int(green_counts(config, keys, digests, tokens).sum())
    p_value, log10_p = stats.binomial_upper_tail(green, len(keys) * int(tokens.size), gamma)
    return RingDetection(
        key_ids=tuple(key.key_id for key in keys),
        fingerprint=config.fingerprint,
        scored_tuples=int(tokens.size),
        green=green,
        gamma=gamma,
        p_value=p_value,
        log10_p=log10_p,
    )
