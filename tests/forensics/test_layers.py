"""Radioactivity per layer: the provider layer and the ring read their own tuples, and their
p-values hold under the null."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as scipy_stats

from distillguard.forensics.radioactivity.layers import layer_findings, ring_finding
from distillguard.forensics.radioactivity.scoring import pack
from distillguard.watermark import hashing
from distillguard.watermark.key import WatermarkKey, key_word_array
from distillguard.watermark.layers import layer_mask
from distillguard.watermark.scheme import layered_scheme

VOCAB = 1024
SPLIT = layered_scheme("split").bind(VOCAB)
PROVIDER = WatermarkKey("wk_provider", b"p" * 32, "provider-layer")
RING = [WatermarkKey(f"wk_{i}", bytes([i + 1]) * 32, f"ring-{i}") for i in range(8)]


def learned_tuples(rng: np.random.Generator, count: int, bias: float) -> np.ndarray:
    """Distinct (previous token, token) tuples of a suspect that learned the split scheme:
    at provider contexts it favours the provider's green list, elsewhere a ring member's."""
    previous = rng.integers(0, VOCAB, size=count).astype(np.uint32)
    digests = hashing.context_digest([previous])
    on_provider = layer_mask(SPLIT, PROVIDER, digests, "provider")
    candidates = np.arange(VOCAB, dtype=np.uint32)
    tokens = np.empty(count, dtype=np.uint32)
    for index in range(count):
        key = PROVIDER if on_provider[index] else RING[index % len(RING)]
        words = key_word_array([key])[0]
        green = hashing.keyed_uniform(words, np.full(VOCAB, digests[index]), candidates)
        pool = candidates[green < np.uint32(SPLIT.green_threshold)]
        tokens[index] = rng.choice(pool) if rng.random() < bias else rng.integers(0, VOCAB)
    return np.unique(pack(digests, tokens))


def null_tuples(rng: np.random.Generator, count: int) -> np.ndarray:
    previous = rng.integers(0, VOCAB, size=count).astype(np.uint32)
    tokens = rng.integers(0, VOCAB, size=count).astype(np.uint32)
    return np.unique(pack(hashing.context_digest([previous]), tokens))


def test_the_provider_layer_and_the_ring_each_find_what_they_marked() -> None:
    packed = learned_tuples(np.random.default_rng(0), 3000, bias=0.3)
    (provider,) = layer_findings(SPLIT, [PROVIDER], packed, "provider", provider=PROVIDER)
    assert provider.log10_p < -10 and provider.exact
    ring = ring_finding(SPLIT, RING, packed, provider=PROVIDER)
    assert ring.log10_p < -10
    assert ring.scored + provider.scored == packed.size  # the layers split the tuples
    outsiders = [WatermarkKey(f"wk_o{i}", bytes([100 + i]) * 32) for i in range(8)]
    assert ring_finding(SPLIT, outsiders, packed, provider=PROVIDER).log10_p > -3
    # the provider key read over the tenant layer's tuples finds nothing
    (wrong,) = layer_findings(SPLIT, [PROVIDER], packed, "tenant", provider=PROVIDER)
    assert wrong.log10_p > -3


def test_exact_layer_and_ring_p_values_are_uniform_under_the_null() -> None:
    rng = np.random.default_rng(1)
    provider_p, ring_p = [], []
    for _ in range(300):
        packed = null_tuples(rng, 200)
        provider_p.append(
            layer_findings(SPLIT, [PROVIDER], packed, "provider", provider=PROVIDER)[0].log10_p
        )
        ring_p.append(ring_finding(SPLIT, RING, packed, provider=PROVIDER).log10_p)
    for log10_ps in (provider_p, ring_p):
        p = 10 ** np.array(log10_ps)
        for alpha in (0.01, 0.05, 0.2):
            assert (p <= alpha).sum() <= scipy_stats.binom.ppf(0.999, p.size, alpha)
        assert (p <= 0.5).mean() > 0.3  # a test that never rejects would pass the line above


@pytest.mark.parametrize("signed", [False, True])
def test_the_weighted_ring_bound_holds_under_the_null(signed: bool) -> None:
    rng = np.random.default_rng(2)
    rejected = 0
    trials = 300
    for _ in range(trials):
        packed = null_tuples(rng, 300)
        weights = rng.exponential(size=packed.size)
        if signed:
            weights -= weights.mean()
        found = ring_finding(SPLIT, RING, packed, provider=PROVIDER, weights=weights)
        assert not found.exact
        rejected += found.log10_p <= np.log10(0.05)
    assert rejected <= scipy_stats.binom.ppf(0.999, trials, 0.05)


def test_the_weighted_ring_finds_a_shift_toward_the_ring_green_lists() -> None:
    packed = learned_tuples(np.random.default_rng(3), 3000, bias=0.3)
    weights = np.ones(packed.size)
    found = ring_finding(SPLIT, RING, packed, provider=PROVIDER, weights=weights)
    assert found.log10_p < -5
    assert "Chernoff" in found.null_hypothesis
