"""Cheap text features of one prompt: words, a hashed n-gram embedding, its random Fourier
features (for the distribution test), template shingles, MinHash bands for near-duplicates, and
chain-of-thought elicitation.

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
    "DISTRIBUTION_DIM",
    "EMBEDDING_DIM",
    "SIGNATURE_SIZE",
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
DISTRIBUTION_DIM = 128  # random Fourier features of the embedding (the MMD test's kernel)
KERNEL_WIDTH = 0.7  # Gaussian kernel bandwidth, in embedding (unit vector) distance
SIGNATURE_SIZE = 16  # MinHash values over an account's bands: prompt overlap between accounts

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
_SHINGLE_BASE = np.uint64(1_000_000_007)
_TAIL_TAG = np.uint64(0x5A5A5A5A5A5A5A5A)
# random Fourier features of the Gaussian kernel exp(-|x - y|^2 / (2 width^2)) (Rahimi and
# Recht, NeurIPS 2007): phi(x) = sqrt(2 / D) cos(W x + b), W ~ N(0, 1 / width^2), b ~ U[0, 2 pi)
_FOURIER_W = (_rng.standard_normal((DISTRIBUTION_DIM, EMBEDDING_DIM)) / KERNEL_WIDTH).astype(
    np.float32
)
_FOURIER_B = _rng.uniform(0.0, 2.0 * np.pi, size=DISTRIBUTION_DIM).astype(np.float32)
_FOURIER_SCALE = np.float32(np.sqrt(2.0 / DISTRIBUTION_DIM))
_SIGNATURE_SALTS = _rng.integers(1, 2**63 - 1, size=SIGNATURE_SIZE, dtype=np.uint64)
_NO_SIGNATURE = np.full(SIGNATURE_SIZE, np.iinfo(np.uint64).max, dtype=np.uint64)


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def asks_for_reasoning(text: str) -> bool:
    return _REASONING.search(text.lower()) is not None


_WORD_CACHE: dict[str, int] = {}  # word -> CRC-32; a vocabulary repeats, hashing did not
_WORD_CACHE_SIZE = 200_000


def _word_hashes(tokens: list[str]) -> list[int]:
    cache = _WORD_CACHE
    hashes = []
    for token in tokens:
        value = cache.get(token)
        if value is None:
            if len(cache) >= _WORD_CACHE_SIZE:
                cache.clear()
            value = cache[token] = zlib.crc32(token.encode())
        hashes.append(value)
    return hashes


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


@dataclass(frozen=True, slots=True)
class PromptFeatures:
    """What the monitor keeps of one prompt (the text itself is not kept)."""

    embedding: NDArray[np.float32]  # (EMBEDDING_DIM,), unit norm or zero
    distribution: NDArray[np.float32]  # (DISTRIBUTION_DIM,), random Fourier features of it
    topic: int  # LSH bucket of the embedding
    template_shingles: frozenset[int]  # word 4-shingles near the start and the end
    bands: tuple[int, ...]  # MinHash LSH bands over word 3-shingles
    signature: NDArray[np.uint64]  # (SIGNATURE_SIZE,), MinHash of the bands (all-ones: none)
    reasoning: bool
    word_count: int


def prompt_features(text: str) -> PromptFeatures:
    tokens = words(text)
    hashes = _word_hashes(tokens)
    word_array = np.asarray(hashes, dtype=np.uint64)
    embedding = embed(hashes)
    topic_bits = (_HYPERPLANES @ embedding) > 0
    topic = int(np.packbits(topic_bits, bitorder="little").view(np.uint16)[0])
    head = word_array[:TEMPLATE_REACH]
    tail = word_array[-TEMPLATE_REACH:] if len(hashes) > TEMPLATE_REACH else word_array[:0]
    template = frozenset(_shingle_array(head, TEMPLATE_SHINGLE).tolist()) | frozenset(
        # tail shingles are tagged so that a prompt's head never matches another's tail
        (_shingle_array(tail, TEMPLATE_SHINGLE) ^ _TAIL_TAG).tolist()
    )
    bands = _minhash_bands(word_array)
    return PromptFeatures(
        embedding=embedding,
        distribution=fourier_features(embedding),
        topic=topic,
        template_shingles=template,
        bands=bands,
        signature=_band_signature(bands),
        reasoning=asks_for_reasoning(text),
        word_count=len(tokens),
    )


def _shingle_array(hashes: NDArray[np.uint64], size: int) -> NDArray[np.uint64]:
    """Hashes of the word `size`-shingles, as one polynomial over the word hashes (mod 2^64):
    vectorized, where a byte join per shingle cost most of a long prompt's features."""
    count = max(len(hashes) - size + 1, 0)
    shingles = np.zeros(count, dtype=np.uint64)
    for offset in range(size):
        shingles = shingles * _SHINGLE_BASE + hashes[offset : offset + count]
    return shingles


def _minhash_bands(hashes: NDArray[np.uint64]) -> tuple[int, ...]:
    """MinHash of the word 3-shingles, folded into LSH bands (Broder 1997; Leskovec et al.,
    Mining of Massive Datasets ch. 3): two prompts whose shingle sets have Jaccard similarity
    0.6 share a band with probability 1 - (1 - 0.6^3)^6 = 0.77, at 0.2 with 0.05."""
    if len(hashes) < 3:
        return ()
    shingles = _shingle_array(hashes, 3)
    mixed = (shingles[:, None] ^ _MINHASH_SALTS[None, :]) * _MINHASH_MULT  # (shingles, hashes)
    minima = (mixed >> np.uint64(17)).min(axis=0).reshape(MINHASH_BANDS, MINHASH_ROWS)
    return tuple((band << 32) | zlib.crc32(row.tobytes()) for band, row in enumerate(minima))


def fourier_features(embedding: NDArray[np.float32]) -> NDArray[np.float32]:
    """phi(x), shape (DISTRIBUTION_DIM,): phi(x) . phi(y) approximates the Gaussian kernel, so
    that the mean of phi over a sample is its kernel mean embedding and MMD^2 between two
    samples is the squared distance of their means (Gretton et al., JMLR 2012)."""
    features: NDArray[np.float32] = _FOURIER_SCALE * np.cos(_FOURIER_W @ embedding + _FOURIER_B)
    return features


def _band_signature(bands: tuple[int, ...]) -> NDArray[np.uint64]:
    """MinHash of a prompt's bands; the element-wise minimum over an account's prompts is the
    MinHash of all its bands, and two accounts' signatures agree in a share of places equal to
    the Jaccard similarity of their band sets (how much their prompts overlap)."""
    if not bands:
        return _NO_SIGNATURE
    values = np.asarray(bands, dtype=np.uint64)
    mixed = (values[:, None] ^ _SIGNATURE_SALTS[None, :]) * _MINHASH_MULT
    signature: NDArray[np.uint64] = mixed.min(axis=0)
    return signature
