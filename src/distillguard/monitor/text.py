"""Cheap text features of one prompt: words, a hashed n-gram embedding, template shingles,
MinHash bands for near-duplicates, and chain-of-thought elicitation.

Everything here is deterministic across processes (CRC-32, not Python's salted `hash`), so
replicas and replays compute the same features. A sentence-embedding model would cost about
5 ms per prompt on a CPU core; the hashed embedding costs microseconds and is what the monitor's
signals need (distance between successive prompts, topic buckets).
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "EMBEDDING_DIM",
    "PromptFeatures",
    "asks_for_reasoning",
    "embed",
    "prompt_features",
    "words",
]

EMBEDDING_DIM = 256
TOPIC_BITS = 10  # random hyperplanes -> 1,024 topic buckets
TEMPLATE_SHINGLE = 4  # words per template shingle
TEMPLATE_REACH = 8  # shingles are taken from the first and last 8 words of a prompt
MINHASH_BANDS = 6
MINHASH_ROWS = 3

_WORD = re.compile(r"[a-z0-9']+")
_MASK64 = (1 << 64) - 1

# Phrases that ask a model to spell out its reasoning: the traces a distiller wants. Broad on
# purpose; a benign user asks this now and then, a chain-of-thought harvester on most prompts.
_REASONING = re.compile(
    r"step[- ]by[- ]step|chain[- ]of[- ]thought|show (?:all )?(?:your|the|of your) (?:work|steps|"
    r"reasoning)|explain (?:your|the|each|every) (?:reasoning|steps?|thinking)|thought process|"
    r"reasoning (?:process|steps?|trace)|walk (?:me|us) through|work(?:ed)? (?:it )?through|"
    r"think (?:carefully|through|aloud|out loud|it through|before)|let'?s think|intermediate steps|"
    r"worked solution|rationale|justify (?:your|each)|detailed (?:explanation|solution|reasoning)|"
    r"explain how you (?:got|arrived|reached)|before (?:giving|stating) (?:the|your) (?:final )?"
    r"answer|<think>|reason (?:about|through) (?:it|this)|in detail|each step"
)

_rng = np.random.default_rng(20260501)
_HYPERPLANES = _rng.standard_normal((TOPIC_BITS, EMBEDDING_DIM)).astype(np.float32)
_MINHASH_SALTS = _rng.integers(1, 2**63 - 1, size=MINHASH_BANDS * MINHASH_ROWS, dtype=np.uint64)
_MINHASH_MULT = np.uint64(0x9E3779B97F4A7C15)


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def asks_for_reasoning(text: str) -> bool:
    return _REASONING.search(text.lower()) is not None


def _word_hashes(tokens: list[str]) -> list[int]:
    return [zlib.crc32(token.encode()) for token in tokens]


def embed(hashes: list[int]) -> NDArray[np.float32]:
    """Signed feature hashing of unigrams and bigrams, L2-normalized; shape (EMBEDDING_DIM,)."""
    if not hashes:
        return np.zeros(EMBEDDING_DIM, dtype=np.float32)
    unigrams = np.asarray(hashes, dtype=np.uint64)
    bigrams = (unigrams[:-1] * np.uint64(1_000_003)) ^ unigrams[1:]
    features = np.concatenate([unigrams, bigrams])
    buckets = (features % np.uint64(EMBEDDING_DIM)).astype(np.intp)
    signs = np.where((features >> np.uint64(20)) & np.uint64(1), 1.0, -1.0)
    vector = np.bincount(buckets, weights=signs, minlength=EMBEDDING_DIM).astype(np.float32)
    norm = float(np.linalg.norm(vector))
    return vector / norm if norm > 0 else vector


def _shingles(hashes: list[int], size: int) -> list[int]:
    return [
        zlib.crc32(b"".join(h.to_bytes(4, "little") for h in hashes[i : i + size]))
        for i in range(len(hashes) - size + 1)
    ]


@dataclass(frozen=True, slots=True)
class PromptFeatures:
    """What the monitor keeps of one prompt (the text itself is not kept)."""

    embedding: NDArray[np.float32]  # (EMBEDDING_DIM,), unit norm or zero
    topic: int  # LSH bucket of the embedding
    template_shingles: frozenset[int]  # word 4-shingles near the start and the end
    bands: tuple[int, ...]  # MinHash LSH bands over word 3-shingles
    reasoning: bool
    word_count: int


def prompt_features(text: str) -> PromptFeatures:
    tokens = words(text)
    hashes = _word_hashes(tokens)
    embedding = embed(hashes)
    topic_bits = (_HYPERPLANES @ embedding) > 0
    topic = int(np.packbits(topic_bits, bitorder="little").view(np.uint16)[0])
    head = hashes[:TEMPLATE_REACH]
    tail = hashes[-TEMPLATE_REACH:] if len(hashes) > TEMPLATE_REACH else []
    template = frozenset(_shingles(head, TEMPLATE_SHINGLE)) | frozenset(
        # tail shingles are tagged so that a prompt's head never matches another's tail
        s ^ 0x5A5A5A5A
        for s in _shingles(tail, TEMPLATE_SHINGLE)
    )
    return PromptFeatures(
        embedding=embedding,
        topic=topic,
        template_shingles=template,
        bands=_minhash_bands(hashes),
        reasoning=asks_for_reasoning(text),
        word_count=len(tokens),
    )


def _minhash_bands(hashes: list[int]) -> tuple[int, ...]:
    """MinHash of the word 3-shingles, folded into LSH bands (Broder 1997; Leskovec et al.,
    Mining of Massive Datasets ch. 3): two prompts whose shingle sets have Jaccard similarity
    0.6 share a band with probability 1 - (1 - 0.6^3)^6 = 0.77, at 0.2 with 0.05."""
    if len(hashes) < 3:
        return ()
    shingles = np.asarray(_shingles(hashes, 3), dtype=np.uint64)
    mixed = (shingles[:, None] ^ _MINHASH_SALTS[None, :]) * _MINHASH_MULT  # (shingles, hashes)
    minima = (mixed >> np.uint64(17)).min(axis=0).reshape(MINHASH_BANDS, MINHASH_ROWS)
    return tuple((band << 32) | zlib.crc32(row.tobytes()) for band, row in enumerate(minima))
