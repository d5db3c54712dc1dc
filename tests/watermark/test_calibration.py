"""Null calibration: random tenant keys against human text and random tokens.

Green-list p-values are exact binomial tails. A binomial count is discrete, so P(p <= alpha)
equals the test's attained size, which is at most alpha (for ~200 tokens it is visibly below
alpha at 1e-2). The checks are therefore: the observed false-positive count lies in the 99.9%
binomial interval of the exact attained size, that size never exceeds alpha, and the randomized
probability integral transform P(X > g) + U P(X = g), which is exactly uniform under the null
law, passes a KS test. Gumbel p-values are continuous, so their false-positive rate is checked
against alpha directly and the raw p-values are KS-tested.

The intervals are 99.9% ones: the suite makes about a dozen such checks, and at 99% one of
them fails by chance every few runs (seen when the default context width went from 4 to 1:
a 2.75-sigma excursion at alpha 1e-3 for one seed, while seeds 3-5 gave -0.9 to +0.9). At
100,000 trials a 99.9% interval still catches a false-positive rate off by about 10%.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
from scipy import stats as scistats

from distillguard.watermark import Detector, Scheme, SchemeConfig, Seeding, WatermarkKey

ALPHAS = (1e-2, 1e-3, 1e-4)
INTERVAL = 0.999
SEGMENTS = 1000
KEYS_PER_SEGMENT = 100  # 100,000 null trials per corpus
SEGMENT_TOKENS = 200


def word_ids(text: str) -> tuple[np.ndarray, int]:
    words = re.findall(r"\w+|[^\w\s]", text)
    vocab: dict[str, int] = {}
    ids = np.array([vocab.setdefault(word, len(vocab)) for word in words], dtype=np.int64)
    return ids, len(vocab)


def random_keys(rng: np.random.Generator, count: int) -> list[WatermarkKey]:
    return [WatermarkKey(f"null{index}", rng.bytes(32)) for index in range(count)]


def null_trials(
    tokens: np.ndarray, vocab: int, config: SchemeConfig, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(p-values, scored counts, green counts) of SEGMENTS x KEYS_PER_SEGMENT null trials."""
    rng = np.random.default_rng(seed)
    detector = Detector(config.bind(vocab))
    p_values, scored, green = [], [], []
    for _ in range(SEGMENTS):
        start = int(rng.integers(0, tokens.size - SEGMENT_TOKENS))
        segment = tokens[start : start + SEGMENT_TOKENS]
        report = detector.detect([segment], random_keys(rng, KEYS_PER_SEGMENT))
        for detection in report.total:
            p_values.append(detection.p_value)
            scored.append(detection.scored_tokens)
            green.append(detection.score)
    return np.array(p_values), np.array(scored), np.array(green)


def check_green_list_calibration(
    p_values: np.ndarray, scored: np.ndarray, green: np.ndarray, gamma: float
) -> None:
    trials = p_values.size
    for alpha in ALPHAS:
        # attained size per trial: P(X >= g*) where g* is the smallest count with tail <= alpha
        thresholds = scistats.binom.isf(alpha, scored, gamma) + 1
        sizes = scistats.binom.sf(thresholds - 1, scored, gamma)
        assert np.all(sizes <= alpha * (1 + 1e-9))
        expected = float(sizes.mean())
        observed = int(np.sum(p_values <= alpha))
        low, high = scistats.binom.interval(INTERVAL, trials, expected)
        assert low <= observed <= high, (alpha, observed, expected * trials, low, high)
    rng = np.random.default_rng(99)
    tail_above = scistats.binom.sf(green, scored, gamma)
    mass_at = scistats.binom.pmf(green, scored, gamma)
    randomized = tail_above + rng.random(trials) * mass_at
    assert scistats.kstest(randomized, "uniform").pvalue > 1e-3


@pytest.mark.slow
@pytest.mark.parametrize("seeding", [Seeding.LEFT_HASH, Seeding.SELF_HASH])
def test_green_list_null_on_human_text_is_calibrated(
    shakespeare_text: str, seeding: Seeding
) -> None:
    tokens, vocab = word_ids(shakespeare_text)
    config = SchemeConfig(seeding=seeding)
    p_values, scored, green = null_trials(tokens, vocab, config, seed=1)
    assert p_values.size == SEGMENTS * KEYS_PER_SEGMENT
    check_green_list_calibration(p_values, scored, green, config.effective_gamma)


@pytest.mark.slow
def test_green_list_null_on_random_tokens_is_calibrated() -> None:
    rng = np.random.default_rng(5)
    tokens = rng.integers(0, 32_000, size=400_000)
    config = SchemeConfig()
    p_values, scored, green = null_trials(tokens, 32_000, config, seed=2)
    check_green_list_calibration(p_values, scored, green, config.effective_gamma)


@pytest.mark.slow
@pytest.mark.parametrize("corpus", ["human", "random"])
def test_gumbel_null_false_positive_rate_matches_alpha(shakespeare_text: str, corpus: str) -> None:
    if corpus == "human":
        tokens, vocab = word_ids(shakespeare_text)
    else:
        tokens, vocab = np.random.default_rng(6).integers(0, 32_000, size=400_000), 32_000
    p_values, _, _ = null_trials(tokens, vocab, SchemeConfig(scheme=Scheme.GUMBEL), seed=3)
    trials = p_values.size
    for alpha in ALPHAS:
        observed = int(np.sum(p_values <= alpha))
        low, high = scistats.binom.interval(INTERVAL, trials, alpha)
        assert low <= observed <= high, (alpha, observed, low, high)
    assert scistats.kstest(p_values, "uniform").pvalue > 1e-3


def test_a_sentence_repeated_fifty_times_is_not_flagged() -> None:
    rng = np.random.default_rng(11)
    sentence = rng.integers(0, 5000, size=25)
    repeated = np.tile(sentence, 50)
    detector = Detector(SchemeConfig().bind(5000))
    keys = random_keys(rng, 200)
    report = detector.detect([repeated], keys)
    for detection in report.total:
        # each distinct (context, token) tuple counts once: one pass through the sentence plus
        # the wrap-around contexts, not 1,250 tokens
        assert detection.scored_tokens <= 25
        assert detection.p_value > 1e-6
    # The repetition carries no extra evidence: scores equal those of two copies.
    twice = detector.detect([np.tile(sentence, 2)], keys)
    assert [d.score for d in report.total] == [d.score for d in twice.total]
