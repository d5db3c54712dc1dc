"""What both radioactivity tests share: the result, (context, token) tuples, and their test.

A tuple is packed into one 64-bit word, (context digest << 32) | token, so that sets of tuples
deduplicate with `np.unique`. Under the null each distinct tuple is green with probability
gamma, independently, and the green count's p-value is the exact binomial tail.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from distillguard.errors import InputError, SchemeError
from distillguard.watermark import hashing, stats
from distillguard.watermark.detector import Attribution, Detection, attribute_detections
from distillguard.watermark.key import WatermarkKey, key_word_array
from distillguard.watermark.layers import green_counts
from distillguard.watermark.scheme import Scheme, SchemeConfig, Seeding

__all__ = [
    "CELLS_PER_CHUNK",
    "RadioactivityResult",
    "binomial_result",
    "check_scheme",
    "check_vocabulary",
    "pack",
    "unpack",
    "window_digests",
]

CELLS_PER_CHUNK = 1 << 22  # keys x tuples hashed at once


@dataclass(frozen=True)
class RadioactivityResult:
    """One radioactivity test of one suspect against every tested key."""

    mode: str  # "black-box" or "open-weights"
    statistic: str  # "green tuples" (black-box); "top-1 green", "green mass", "green mass shift"
    scored: int  # unique tuples (or contexts) scored
    dropped: int  # tuples dropped: repeats, and contexts seen in the prompts (black-box)
    detections: tuple[Detection, ...]  # one per key, in the order the keys were given
    attribution: Attribution
    exact: bool  # False for the mass statistic's Chernoff bound
    curve: tuple[tuple[int, float], ...] = ()  # (tuples scored, log10 p) for the best key

    def for_key(self, key_id: str) -> Detection:
        for detection in self.detections:
            if detection.key_id == key_id:
                return detection
        raise KeyError(key_id)


def check_scheme(config: SchemeConfig) -> None:
    """Refuse what the tests cannot read: a scheme other than left-hash green lists, or one
    not bound to a vocabulary."""
    if config.scheme is not Scheme.GREEN_LIST or config.seeding is not Seeding.LEFT_HASH:
        raise SchemeError("radioactivity tests support left-hash green-list schemes only")
    if not config.is_bound:
        raise SchemeError("bind the scheme to the tokenizer's vocabulary first")


def check_vocabulary(model: Any, role: str, config: SchemeConfig, *, consequence: str = "") -> None:
    """Refuse a model (a transformers causal LM) with fewer tokens than the scheme's vocabulary:
    it does not share our tokenizer."""
    vocab = int(model.config.vocab_size)
    if config.vocab_size is not None and vocab < config.vocab_size:
        raise InputError(
            f"the {role}'s vocabulary has {vocab} entries, the scheme's "
            f"{config.vocab_size}: it does not share our tokenizer{consequence}"
        )


def window_digests(tokens: npt.NDArray[np.uint32], width: int) -> npt.NDArray[np.uint32]:
    """Digest of every window of `width` tokens; entry i covers tokens[i : i + width]."""
    count = tokens.size - width + 1
    if count <= 0:
        return np.zeros(0, dtype=np.uint32)
    return hashing.context_digest([tokens[j : j + count] for j in range(width)])


def pack(digests: npt.NDArray[np.uint32], tokens: npt.NDArray[np.uint32]) -> npt.NDArray[np.uint64]:
    """One 64-bit word per (context digest, token) tuple: (digest << 32) | token."""
    return (digests.astype(np.uint64) << np.uint64(32)) | tokens.astype(np.uint64)


def unpack(
    packed: npt.NDArray[np.uint64],
) -> tuple[npt.NDArray[np.uint32], npt.NDArray[np.uint32]]:
    """The (context digests, tokens) that `pack` joined."""
    digests = (packed >> np.uint64(32)).astype(np.uint32)
    tokens = (packed & np.uint64(0xFFFFFFFF)).astype(np.uint32)
    return digests, tokens


def binomial_result(
    mode: str,
    statistic: str,
    keys: Sequence[WatermarkKey],
    packed: npt.NDArray[np.uint64],
    dropped: int,
    config: SchemeConfig,
    *,
    allow_empty: bool = False,
) -> RadioactivityResult:
    """Exact binomial tails per key over distinct packed tuples. With `allow_empty`, no tuple
    gives p = 1 for every key (a selection that kept nothing found no evidence) instead of an
    error."""
    digests, tokens = unpack(packed)
    if tokens.size == 0 and not allow_empty:
        raise InputError("nothing to score: no tuples are left after deduplication and filters")
    gamma = config.effective_gamma
    greens = _green_counts(keys, digests, tokens, config)
    detections = []
    for key, green in zip(keys, greens.tolist(), strict=True):
        p_value, log10_p = stats.binomial_upper_tail(int(green), int(tokens.size), gamma)
        detections.append(
            Detection(
                key_id=key.key_id,
                tenant=key.tenant,
                scheme=config.scheme,
                fingerprint=config.fingerprint,
                scored_tokens=int(tokens.size),
                score=float(green),
                expected_score=gamma * tokens.size,
                p_value=p_value,
                log10_p=log10_p,
                gamma=gamma,
            )
        )
    attribution = attribute_detections(detections)
    best = next(k for k in keys if k.key_id == attribution.best.key_id)
    return RadioactivityResult(
        mode=mode,
        statistic=statistic,
        scored=int(tokens.size),
        dropped=dropped,
        detections=tuple(detections),
        attribution=attribution,
        exact=True,
        curve=_curve(best, digests, tokens, config) if tokens.size else (),
    )


def _green_counts(
    keys: Sequence[WatermarkKey],
    digests: npt.NDArray[np.uint32],
    tokens: npt.NDArray[np.uint32],
    config: SchemeConfig,
) -> npt.NDArray[np.int64]:
    """Green counts per key over the given tuples; shape (keys,)."""
    return green_counts(config, keys, digests, tokens)


def _curve(
    key: WatermarkKey,
    digests: npt.NDArray[np.uint32],
    tokens: npt.NDArray[np.uint32],
    config: SchemeConfig,
) -> tuple[tuple[int, float], ...]:
    """The key's p-value as tuples accumulate (in a fixed pseudo-random order: by digest)."""
    words = key_word_array([key])[0]
    green = hashing.keyed_uniform(words, digests, tokens) < np.uint32(config.green_threshold)
    running = np.cumsum(green)
    points = sorted({int(n) for n in np.geomspace(10, tokens.size, 16)} | {tokens.size})
    gamma = config.effective_gamma
    return tuple(
        (n, stats.binomial_upper_tail(int(running[n - 1]), n, gamma)[1])
        for n in points
        if 0 < n <= tokens.size
    )
