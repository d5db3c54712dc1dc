"""The distiller's steps on a tiny base: stealing finds green lists at h = 1, scrubbing removes
them, paraphrasing rewrites its share."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from distillguard.experiments.attacks import paraphrase, perplexity, scrub, steal  # noqa: E402
from distillguard.watermark import hashing  # noqa: E402
from distillguard.watermark.key import WatermarkKey, key_word_array  # noqa: E402
from distillguard.watermark.scheme import SchemeConfig  # noqa: E402

VOCAB = 64
CONFIG = SchemeConfig().bind(VOCAB)
KEY = WatermarkKey("wk_t", b"t" * 32, "tenant")


def green_table() -> np.ndarray:
    """green[c, v] under KEY at h = 1."""
    words = key_word_array([KEY])[0]
    previous = np.repeat(np.arange(VOCAB, dtype=np.uint32), VOCAB)
    tokens = np.tile(np.arange(VOCAB, dtype=np.uint32), VOCAB)
    uniforms = hashing.keyed_uniform(words, hashing.context_digest([previous]), tokens)
    return (uniforms < np.uint32(CONFIG.green_threshold)).reshape(VOCAB, VOCAB)


def tiny_base() -> Any:
    """A small random GPT-2 over VOCAB tokens (end-of-text 0): nearly uniform predictions."""
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        vocab_size=VOCAB, n_positions=32, n_embd=16, n_layer=1, n_head=1, eos_token_id=0
    )
    return transformers.GPT2LMHeadModel(config)


def watermarked(rng: np.random.Generator, documents: int, length: int) -> list[list[int]]:
    """Documents whose every token after the first is green with probability 0.9."""
    green = green_table()
    out = []
    for _ in range(documents):
        tokens = [int(rng.integers(1, VOCAB))]
        for _ in range(length):
            pool = np.flatnonzero(green[tokens[-1]]) if rng.random() < 0.9 else np.arange(VOCAB)
            pool = pool[pool != 0]
            tokens.append(int(rng.choice(pool)))
        out.append(tokens)
    return out


def green_share(documents: list[list[int]], first: int) -> float:
    green = green_table()
    pairs = [(d[i - 1], d[i]) for d in documents for i in range(first, len(d))]
    return float(np.mean([green[c, v] for c, v in pairs]))


def test_stealing_flags_green_pairs_and_scrubbing_removes_them() -> None:
    base = tiny_base()
    documents = watermarked(np.random.default_rng(0), 120, 60)
    lengths = [1] * len(documents)
    stolen = steal(base, documents, lengths, vocab=VOCAB, min_count=2, ratio=1.5)
    green = green_table()
    assert stolen.flagged.sum() > 100
    assert green[stolen.flagged].mean() > 0.7  # precision well above gamma
    scrubbed, changed = scrub(base, documents, lengths, stolen, end_of_text=0, seed=1)
    assert changed > 0
    assert green_share(documents, 1) > 0.8
    assert green_share(scrubbed, 1) < 0.6
    penalty = stolen.penalty(2.0)
    assert penalty.max() <= 2.0 and (penalty[~stolen.flagged] == 0).all()


def test_paraphrase_rewrites_about_its_share_of_output_tokens_only() -> None:
    documents = watermarked(np.random.default_rng(2), 40, 50)
    lengths = [10] * len(documents)
    rewritten, changed = paraphrase(tiny_base(), documents, lengths, 0.3, end_of_text=0, seed=3)
    outputs = sum(len(d) - 10 for d in documents)
    assert 0.2 < changed / outputs < 0.4
    for before, after in zip(documents, rewritten, strict=True):
        assert before[:10] == after[:10]


def test_perplexity_of_a_uniform_model_is_the_vocabulary() -> None:
    base = tiny_base()
    with torch.no_grad():
        for parameter in base.parameters():
            parameter.zero_()
    documents = [[1, 2, 3, 4, 5, 6]]
    assert math.isclose(perplexity(base, documents, [2]), VOCAB, rel_tol=1e-4)
