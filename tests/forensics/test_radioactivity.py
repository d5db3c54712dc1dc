"""Radioactivity tests on synthetic suspects whose behaviour is known exactly."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import pytest

from distillguard.errors import InputError, SchemeError
from distillguard.forensics.radioactivity import (
    black_box_focused_test,
    black_box_test,
    open_weights_test,
)
from distillguard.forensics.radioactivity.open_weights import chernoff_log10
from distillguard.watermark import hashing
from distillguard.watermark.key import WatermarkKey, key_word_array
from distillguard.watermark.scheme import Scheme, SchemeConfig

torch = pytest.importorskip("torch")

VOCAB = 512
CONFIG = SchemeConfig(context_width=1).bind(VOCAB)


def key(name: str) -> WatermarkKey:
    return WatermarkKey(f"wk_{name}", name.encode().ljust(32, b"k"), name)


KEYS = [key("a"), key("b"), key("c")]


def green_mask(watermark: WatermarkKey, previous: int) -> np.ndarray:
    digest = hashing.context_digest([np.asarray([previous], dtype=np.uint32)])
    words = key_word_array([watermark])[0]
    uniforms = hashing.keyed_uniform(
        words, np.repeat(digest, VOCAB), np.arange(VOCAB, dtype=np.uint32)
    )
    return uniforms < np.uint32(CONFIG.green_threshold)


def biased_text(rng: np.random.Generator, length: int, bias: float, start: int) -> list[int]:
    """Tokens that are green under key "a" with probability `bias` (gamma when unbiased)."""
    tokens = [start]
    for _ in range(length):
        green = np.flatnonzero(green_mask(KEYS[0], tokens[-1]))
        pool = green if rng.random() < bias else np.arange(VOCAB)
        tokens.append(int(rng.choice(pool)))
    return tokens[1:]


def test_black_box_finds_and_attributes_a_suspect_that_favours_green() -> None:
    rng = np.random.default_rng(0)
    prompts = [list(rng.integers(0, VOCAB, 8)) for _ in range(40)]
    outputs = [biased_text(rng, 50, 0.3, int(p[-1])) for p in prompts]
    result = black_box_test(CONFIG, KEYS, prompts, outputs)
    assert result.attribution.best.tenant == "a"
    assert result.for_key(KEYS[0].key_id).log10_p < -6
    for other in KEYS[1:]:
        assert result.for_key(other.key_id).log10_p > -3
    assert result.exact and result.mode == "black-box"


def test_an_echoed_watermarked_prompt_does_not_make_a_clean_model_radioactive() -> None:
    rng = np.random.default_rng(1)
    watermarked = [biased_text(rng, 60, 1.0, 7) for _ in range(30)]
    # a clean model that repeats the end of its prompt, then goes on at random
    outputs = [p[30:] + list(rng.integers(0, VOCAB, 30)) for p in watermarked]
    echoed = black_box_test(CONFIG, KEYS, watermarked, outputs)
    assert echoed.dropped > 0
    assert echoed.for_key(KEYS[0].key_id).log10_p > -3
    assert (
        black_box_test(CONFIG, KEYS, [[]] * 30, watermarked).for_key(KEYS[0].key_id).log10_p < -20
    )  # the same tokens as an output, without the prompt: detected


def test_black_box_p_values_are_calibrated_on_clean_outputs() -> None:
    rng = np.random.default_rng(2)
    p_values = []
    for _ in range(200):
        prompts = [list(rng.integers(0, VOCAB, 4)) for _ in range(5)]
        outputs = [list(rng.integers(0, VOCAB, 30)) for _ in range(5)]
        p_values.append(black_box_test(CONFIG, KEYS[:1], prompts, outputs).detections[0].p_value)
    share = float(np.mean(np.asarray(p_values) <= 0.05))
    assert share <= 0.05 + 3 * np.sqrt(0.05 * 0.95 / 200)


class _Bigram(torch.nn.Module):  # type: ignore[misc]
    """A model whose next-token logits depend on the last token only."""

    def __init__(self, logits: Any) -> None:
        super().__init__()
        self.logits = logits
        self.config = type("C", (), {"n_positions": 64, "vocab_size": VOCAB})()

    def forward(self, input_ids: Any, attention_mask: Any = None) -> Any:
        return type("Out", (), {"logits": self.logits[input_ids]})()


def test_focusing_on_what_our_model_explains_finds_a_diluted_learned_watermark() -> None:
    rng = np.random.default_rng(10)
    # our model favours 16 tokens after each token; the reference knows nothing of them
    favoured = [rng.choice(VOCAB, 16, replace=False) for _ in range(VOCAB)]
    ours = torch.zeros(VOCAB, VOCAB)
    for previous, tokens in enumerate(favoured):
        ours[previous, torch.from_numpy(tokens)] = 4.0
    reference = _Bigram(torch.zeros(VOCAB, VOCAB))
    # the suspect writes at random, and 1 token in 8 it learned from us: a favoured token,
    # green under key "a" twice as often as chance
    outputs = []
    for _ in range(300):
        tokens = [int(rng.integers(VOCAB))]
        for _ in range(40):
            if rng.random() < 0.125:
                pool = favoured[tokens[-1]]
                green = pool[green_mask(KEYS[0], tokens[-1])[pool]]
                choice = (
                    rng.choice(green) if rng.random() < 0.5 and green.size else rng.choice(pool)
                )
            else:
                choice = rng.integers(VOCAB)
            tokens.append(int(choice))
        outputs.append(tokens[1:])
    prompts = [[int(rng.integers(VOCAB))] for _ in outputs]
    plain = black_box_test(CONFIG, KEYS, prompts, outputs)
    focused = black_box_focused_test(CONFIG, KEYS, prompts, outputs, _Bigram(ours), reference)
    assert focused.attribution.best.tenant == "a"
    assert focused.for_key(KEYS[0].key_id).log10_p < -6
    assert focused.for_key(KEYS[0].key_id).log10_p < plain.for_key(KEYS[0].key_id).log10_p - 3
    assert focused.scored < plain.scored and focused.exact
    for other in KEYS[1:]:
        assert focused.for_key(other.key_id).log10_p > -3


def test_focused_p_values_are_calibrated_on_clean_outputs() -> None:
    rng = np.random.default_rng(11)
    ours = _Bigram(torch.randn(VOCAB, VOCAB, generator=torch.Generator().manual_seed(1)) * 2)
    reference = _Bigram(torch.randn(VOCAB, VOCAB, generator=torch.Generator().manual_seed(2)))
    p_values = []
    for _ in range(150):
        prompts = [list(rng.integers(0, VOCAB, 4)) for _ in range(5)]
        outputs = [list(rng.integers(0, VOCAB, 40)) for _ in range(5)]
        result = black_box_focused_test(CONFIG, KEYS[:1], prompts, outputs, ours, reference)
        p_values.append(result.detections[0].p_value)
    share = float(np.mean(np.asarray(p_values) <= 0.05))
    assert share <= 0.05 + 3 * np.sqrt(0.05 * 0.95 / 150)


def test_an_echoed_watermarked_prompt_does_not_fool_the_focused_test() -> None:
    rng = np.random.default_rng(12)
    watermarked = [biased_text(rng, 60, 1.0, 7) for _ in range(30)]
    outputs = [p[30:] + list(rng.integers(0, VOCAB, 30)) for p in watermarked]
    # our model knows the watermarked text perfectly: the echo is what it explains best
    ours = torch.zeros(VOCAB, VOCAB)
    for text in watermarked:
        for previous, token in itertools.pairwise(text):
            ours[previous, token] = 6.0
    focused = black_box_focused_test(
        CONFIG, KEYS, watermarked, outputs, _Bigram(ours), _Bigram(torch.zeros(VOCAB, VOCAB))
    )
    assert focused.dropped > 0
    assert focused.for_key(KEYS[0].key_id).log10_p > -3


class _Suspect(torch.nn.Module):  # type: ignore[misc]
    """Logits that favour key "a"'s green tokens after each token by `bias` (h = 1)."""

    def __init__(self, bias: float, seed: int = 0, noise: float = 0.0, noise_seed: int = 1) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.base = torch.randn(VOCAB, VOCAB, generator=generator) * 2.0
        # a key-independent change of the same base (another fine-tune, say)
        drift = torch.Generator().manual_seed(noise_seed)
        self.base += noise * torch.randn(VOCAB, VOCAB, generator=drift)
        masks = np.stack([green_mask(KEYS[0], previous) for previous in range(VOCAB)])
        self.base += bias * torch.from_numpy(masks.astype(np.float32))
        self.config = type("C", (), {"n_positions": 64, "vocab_size": VOCAB})()

    def forward(self, input_ids: Any, attention_mask: Any = None) -> Any:
        return type("Out", (), {"logits": self.base[input_ids]})()


def test_open_weights_reads_a_learned_watermark_from_top1_and_mass() -> None:
    rng = np.random.default_rng(3)
    documents = [list(rng.integers(0, VOCAB, 64)) for _ in range(80)]
    result = open_weights_test(_Suspect(bias=3.0), CONFIG, KEYS, documents)
    top1, mass = result.top1, result.mass
    assert result.shift is None and result.all() == [top1, mass]
    assert top1.attribution.best.tenant == "a" and top1.for_key(KEYS[0].key_id).log10_p < -10
    assert mass.attribution.best.tenant == "a" and mass.for_key(KEYS[0].key_id).log10_p < -10
    assert not mass.exact
    for other in KEYS[1:]:
        assert top1.for_key(other.key_id).log10_p > -4


def test_open_weights_on_a_model_that_never_saw_the_key_is_null() -> None:
    rng = np.random.default_rng(4)
    documents = [list(rng.integers(0, VOCAB, 64)) for _ in range(80)]
    result = open_weights_test(_Suspect(bias=0.0, seed=9), CONFIG, KEYS, documents)
    assert min(d.log10_p for d in result.top1.detections) > -3
    assert min(d.log10_p for d in result.mass.detections) > -3


def test_the_shift_from_a_reference_finds_a_small_learned_bias_the_suspect_alone_hides() -> None:
    rng = np.random.default_rng(6)
    documents = [biased_text(rng, 64, 0.5, int(rng.integers(VOCAB))) for _ in range(60)]
    base = _Suspect(bias=0.0)
    suspect = _Suspect(bias=0.15, noise=0.3)  # fine-tuned from the base: drift and a bias
    result = open_weights_test(suspect, CONFIG, KEYS, documents, reference=base, top_k=64)
    assert result.shift is not None and result.all()[0] is result.shift
    assert result.shift.attribution.best.tenant == "a"
    assert result.shift.for_key(KEYS[0].key_id).log10_p < -8
    assert result.top1.for_key(KEYS[0].key_id).log10_p > -3  # too small to move the top-1
    for other in KEYS[1:]:
        assert result.shift.for_key(other.key_id).log10_p > -3


def test_shift_p_values_are_calibrated_when_the_suspect_never_saw_the_key() -> None:
    rng = np.random.default_rng(7)
    base = _Suspect(bias=0.0)
    p_values = []
    for trial in range(60):
        documents = [biased_text(rng, 48, 0.5, int(rng.integers(VOCAB))) for _ in range(6)]
        drifted = _Suspect(bias=0.0, noise=0.5, noise_seed=100 + trial)
        result = open_weights_test(drifted, CONFIG, KEYS, documents, reference=base)
        assert result.shift is not None
        p_values.extend(d.p_value for d in result.shift.detections)
    share = float(np.mean(np.asarray(p_values) <= 0.05))
    assert share <= 0.05 + 3 * np.sqrt(0.05 * 0.95 / len(p_values))


class _Copier(torch.nn.Module):  # type: ignore[misc]
    """A clean model that copies: after a token seen before in its input it predicts the token
    that followed it then (an induction head); otherwise fixed random logits."""

    def __init__(self) -> None:
        super().__init__()
        self.base = torch.randn(VOCAB, VOCAB, generator=torch.Generator().manual_seed(3))
        self.config = type("C", (), {"n_positions": 64, "vocab_size": VOCAB})()

    def forward(self, input_ids: Any, attention_mask: Any = None) -> Any:
        logits = self.base[input_ids].clone()
        for row in range(input_ids.shape[0]):
            followers: dict[int, int] = {}
            ids = input_ids[row].tolist()
            for t, token in enumerate(ids):
                if token in followers:
                    logits[row, t, followers[token]] += 50.0
                if t + 1 < len(ids):
                    followers[token] = ids[t + 1]
        return type("Out", (), {"logits": logits})()


def test_a_model_copying_watermarked_tuples_from_its_input_is_not_radioactive() -> None:
    rng = np.random.default_rng(8)
    # every tuple green under key "a", and short cycles so that tokens recur inside a window
    documents = []
    for _ in range(40):
        loop = biased_text(rng, 6, 1.0, int(rng.integers(VOCAB)))
        documents.append((loop * 8)[:48])
    result = open_weights_test(
        _Copier(), CONFIG, KEYS, documents, reference=_Suspect(bias=0.0, seed=3)
    )
    assert result.top1.dropped > 0
    for statistic in result.all():
        assert statistic.for_key(KEYS[0].key_id).log10_p > -3, statistic.statistic


def test_the_chernoff_bound_is_above_the_simulated_tail() -> None:
    rng = np.random.default_rng(5)
    weights = rng.dirichlet(np.ones(8), size=200).reshape(-1)
    draws = (rng.random((20_000, weights.size)) < 0.25) @ weights
    for observed in np.quantile(draws, [0.9, 0.99, 0.999]):
        tail = float(np.mean(draws >= observed))
        assert 10 ** chernoff_log10(float(observed), weights, 0.25) >= tail


def test_the_chernoff_bound_holds_for_signed_weights_at_any_scale() -> None:
    rng = np.random.default_rng(9)
    weights = rng.normal(size=1500) * 1e-4  # differences of two models' probabilities
    draws = (rng.random((20_000, weights.size)) < 0.25) @ weights
    for observed in np.quantile(draws, [0.9, 0.99, 0.999]):
        tail = float(np.mean(draws >= observed))
        bound = 10 ** chernoff_log10(float(observed), weights, 0.25)
        assert tail <= bound <= 20 * tail  # valid, and not far above the tail
    assert chernoff_log10(-1.0, weights, 0.25) == 0.0


def test_unsupported_schemes_and_bad_input_are_refused() -> None:
    with pytest.raises(SchemeError, match="left-hash green-list"):
        black_box_test(SchemeConfig(scheme=Scheme.GUMBEL).bind(VOCAB), KEYS, [[1]], [[2, 3]])
    with pytest.raises(InputError, match="one output per prompt"):
        black_box_test(CONFIG, KEYS, [[1]], [])
    with pytest.raises(InputError, match="nothing to score"):
        black_box_test(CONFIG, KEYS, [[1]], [[]])
