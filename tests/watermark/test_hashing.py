"""The keyed hash: one definition, three implementations (pure Python, numpy, torch)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from distillguard.watermark import hashing

VECTORS = Path(__file__).parent / "data" / "hash_vectors.json"
MASK = 0xFFFFFFFF


# -- a pure-Python reference written from the definition in hashing's docstring ------------


def ref_mix32(x: int) -> int:
    x ^= x >> 16
    x = (x * 0x21F0AAAD) & MASK
    x ^= x >> 15
    x = (x * 0x735A2D97) & MASK
    x ^= x >> 15
    return x


def ref_digest(context: list[int]) -> int:
    accumulated = 0x9E3779B9
    for token in context:
        accumulated = (accumulated * 0x5BD1E995 + token) & MASK
    return ref_mix32(accumulated)


def ref_uniform(words: list[int], digest: int, token: int) -> int:
    k0, k1, k2, k3 = words
    seed = ref_mix32(digest ^ k0)
    token_value = ref_mix32(token ^ k2) ^ k1
    return ref_mix32(((seed ^ token_value) + k3) & MASK)


def load_vectors() -> dict[str, list[dict[str, object]]]:
    data: dict[str, list[dict[str, object]]] = json.loads(VECTORS.read_text())
    return data


def test_committed_vectors_match_the_reference_definition() -> None:
    vectors = load_vectors()
    assert len(vectors["uniform"]) >= 100
    for case in vectors["uniform"]:
        context = [int(token) for token in case["context"]]  # type: ignore[attr-defined]
        words = [int(word) for word in case["key_words"]]  # type: ignore[attr-defined]
        digest = ref_digest(context)
        assert digest == case["digest"]
        assert ref_uniform(words, digest, int(case["token"])) == case["uniform"]  # type: ignore[call-overload]


def test_numpy_twin_reproduces_committed_vectors() -> None:
    for case in load_vectors()["uniform"]:
        context = [np.array([token], dtype=np.uint32) for token in case["context"]]  # type: ignore[attr-defined]
        digest = hashing.context_digest(context)
        words = np.array(case["key_words"], dtype=np.uint32)
        token = np.array([case["token"]], dtype=np.uint32)
        assert int(digest[0]) == case["digest"]
        assert int(hashing.keyed_uniform(words, digest, token)[0]) == case["uniform"]


def test_torch_twin_reproduces_committed_vectors() -> None:
    torch = pytest.importorskip("torch")
    from distillguard.watermark import hashing_torch

    for case in load_vectors()["uniform"]:
        context = [torch.tensor([token], dtype=torch.int64) for token in case["context"]]  # type: ignore[attr-defined]
        digest = hashing_torch.context_digest(context)
        words = torch.tensor(case["key_words"], dtype=torch.int64)
        token = torch.tensor([case["token"]], dtype=torch.int64)
        assert int(digest[0]) == case["digest"]
        assert int(hashing_torch.keyed_uniform(words, digest, token)[0]) == case["uniform"]


def test_numpy_and_torch_twins_are_bit_identical_on_a_million_random_inputs() -> None:
    torch = pytest.importorskip("torch")
    from distillguard.watermark import hashing_torch

    rng = np.random.default_rng(20261130)
    count = 1_000_000
    # Full 32-bit range for tokens and context, plus edge values, so every bit is exercised.
    context = rng.integers(0, 1 << 32, size=(4, count), dtype=np.uint64).astype(np.uint32)
    tokens = rng.integers(0, 1 << 32, size=count, dtype=np.uint64).astype(np.uint32)
    words = rng.integers(0, 1 << 32, size=(count, 4), dtype=np.uint64).astype(np.uint32)
    tokens[:4] = [0, 1, MASK, MASK - 1]
    words[:4] = [[0, 0, 0, 0], [MASK] * 4, [1, 2, 3, 4], [MASK, 0, MASK, 0]]

    digest_np = hashing.context_digest(list(context))
    uniform_np = hashing.keyed_uniform(words, digest_np, tokens)
    rank_np = hashing.anchor_rank(tokens)

    as_torch = lambda array: torch.from_numpy(array.astype(np.int64))  # noqa: E731
    digest_t = hashing_torch.context_digest([as_torch(column) for column in context])
    uniform_t = hashing_torch.keyed_uniform(as_torch(words), digest_t, as_torch(tokens))
    rank_t = hashing_torch.anchor_rank(as_torch(tokens))

    np.testing.assert_array_equal(digest_t.numpy(), digest_np.astype(np.int64))
    np.testing.assert_array_equal(uniform_t.numpy(), uniform_np.astype(np.int64))
    np.testing.assert_array_equal(rank_t.numpy(), rank_np.astype(np.int64))


def test_uniform_values_are_uniform_and_independent_across_contexts() -> None:
    # One token seen in 200,000 different contexts: its green indicator must be Bernoulli(gamma)
    # with no visible structure, else repeated tokens would bias detection.
    from scipy import stats

    rng = np.random.default_rng(7)
    words = np.array([0x01234567, 0x89ABCDEF, 0xDEADBEEF, 0x0BADF00D], dtype=np.uint32)
    contexts = [
        np.arange(200_000, dtype=np.uint32),
        rng.integers(0, 50_000, 200_000).astype(np.uint32),
    ]
    digest = hashing.context_digest(contexts)
    values = hashing.keyed_uniform(words, digest, np.full(200_000, 42, dtype=np.uint32))
    top_bits = (values >> np.uint32(24)).astype(np.int64)
    chi2 = stats.chisquare(np.bincount(top_bits, minlength=256))
    assert chi2.pvalue > 1e-4
    green = values < np.uint32(1 << 30)
    # lag-1 correlation of green indicators over consecutive contexts
    correlation = np.corrcoef(green[:-1], green[1:])[0, 1]
    assert abs(correlation) < 0.01
