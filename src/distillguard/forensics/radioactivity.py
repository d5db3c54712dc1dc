"""Radioactivity tests: did a suspect model learn from our watermarked outputs?

Following Sander et al., "Watermarking Makes Language Models Radioactive" (NeurIPS 2024):

- Black-box: the suspect's outputs to our prompts are scored like any text, with two
  precautions. Each (context, token) tuple counts once across all outputs. Tuples whose
  context also occurs in the prompts are dropped: a watermarked prompt echoed back would
  otherwise make a clean model look radioactive.
- Open weights: our logged watermarked outputs are fed to the suspect (teacher forcing). At
  each position the suspect's top-1 next-token prediction is scored under each key. A model
  that learned the watermark predicts green tokens more often than gamma. Each context counts
  once. The p-value is the exact binomial tail, as for text. A second statistic, the
  probability mass the suspect puts on green tokens, reads more of the logits; its p-value is a
  Chernoff bound, valid but conservative.

Under the null hypothesis (the suspect never learned from text watermarked with that key),
each scored tuple is green with probability gamma, independently, because the keyed hash of
distinct (context, token) pairs is independent of anything the suspect computes. Attribution
across tenants uses Holm-Bonferroni, as the detector does.

Only left-hash green-list schemes are supported: the tests read green lists, and a left-hash
context is what a student can learn.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from distillguard.errors import InputError, SchemeError
from distillguard.watermark import hashing, stats
from distillguard.watermark.detector import (
    Attribution,
    Detection,
    Detector,
    attribute_detections,
)
from distillguard.watermark.key import WatermarkKey, key_word_array
from distillguard.watermark.scheme import Scheme, SchemeConfig, Seeding

__all__ = [
    "RadioactivityResult",
    "black_box_test",
    "open_weights_test",
]

_CELLS_PER_CHUNK = 1 << 22


@dataclass(frozen=True)
class RadioactivityResult:
    """One radioactivity test of one suspect against every tested key."""

    mode: str  # "black-box" or "open-weights"
    statistic: str  # "green tuples" (black-box), "top-1 green" or "green mass" (open weights)
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


def _check_scheme(config: SchemeConfig) -> None:
    if config.scheme is not Scheme.GREEN_LIST or config.seeding is not Seeding.LEFT_HASH:
        raise SchemeError("radioactivity tests support left-hash green-list schemes only")
    if not config.is_bound:
        raise SchemeError("bind the scheme to the tokenizer's vocabulary first")


def _window_digests(tokens: npt.NDArray[np.uint32], width: int) -> npt.NDArray[np.uint32]:
    """Digest of every window of `width` tokens; entry i covers tokens[i : i + width]."""
    count = tokens.size - width + 1
    if count <= 0:
        return np.zeros(0, dtype=np.uint32)
    return hashing.context_digest([tokens[j : j + count] for j in range(width)])


def _pack(
    digests: npt.NDArray[np.uint32], tokens: npt.NDArray[np.uint32]
) -> npt.NDArray[np.uint64]:
    return (digests.astype(np.uint64) << np.uint64(32)) | tokens.astype(np.uint64)


def _green(
    keys: Sequence[WatermarkKey],
    digests: npt.NDArray[np.uint32],
    tokens: npt.NDArray[np.uint32],
    config: SchemeConfig,
) -> npt.NDArray[np.int64]:
    """Green counts per key over the given tuples; shape (keys,)."""
    words = key_word_array(list(keys))
    counts = np.zeros(len(keys), dtype=np.int64)
    chunk = max(1, _CELLS_PER_CHUNK // max(tokens.size, 1))
    threshold = np.uint32(config.green_threshold)
    for first in range(0, len(keys), chunk):
        block = words[first : first + chunk, None, :]
        uniforms = hashing.keyed_uniform(block, digests, tokens)
        counts[first : first + chunk] = (uniforms < threshold).sum(axis=1)
    return counts


def _binomial_result(
    mode: str,
    statistic: str,
    keys: Sequence[WatermarkKey],
    digests: npt.NDArray[np.uint32],
    tokens: npt.NDArray[np.uint32],
    dropped: int,
    config: SchemeConfig,
) -> RadioactivityResult:
    if tokens.size == 0:
        raise InputError("nothing to score: no tuples are left after deduplication and filters")
    gamma = config.effective_gamma
    greens = _green(keys, digests, tokens, config)
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
        curve=_curve(best, digests, tokens, config),
    )


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


def black_box_test(
    config: SchemeConfig,
    keys: Sequence[WatermarkKey],
    prompts: Sequence[Sequence[int]],
    outputs: Sequence[Sequence[int]],
) -> RadioactivityResult:
    """Score a suspect's outputs (token ids, one per prompt) against every key."""
    _check_scheme(config)
    Detector(config)  # the same checks a detection makes
    if len(prompts) != len(outputs):
        raise InputError("give one output per prompt")
    if not keys:
        raise InputError("no keys to test")
    width = config.context_width
    packed_parts = []
    filtered = 0
    for prompt, output in zip(prompts, outputs, strict=True):
        if not len(output):
            continue
        sequence = np.asarray([*prompt, *output], dtype=np.uint32)
        config.check_token_ids(int(sequence.max()))
        first = max(len(prompt), width)  # completion tokens with a full context
        if sequence.size <= first:
            continue
        digests = _window_digests(sequence[:-1], width)[first - width :]
        # a context that occurs in this query's own prompt may be the prompt's watermark
        # echoed back: drop it (Sander et al.; facebookresearch/radioactive-watermark)
        in_prompt = np.isin(digests, _window_digests(np.asarray(prompt, dtype=np.uint32), width))
        filtered += int(in_prompt.sum())
        packed_parts.append(_pack(digests[~in_prompt], sequence[first:][~in_prompt]))
    if not packed_parts:
        raise InputError("nothing to score: the outputs are empty or shorter than the context")
    packed = np.concatenate(packed_parts)
    kept = np.unique(packed)
    digests = (kept >> np.uint64(32)).astype(np.uint32)
    tokens = (kept & np.uint64(0xFFFFFFFF)).astype(np.uint32)
    return _binomial_result(
        "black-box",
        "green tuples",
        keys,
        digests,
        tokens,
        filtered + int(packed.size - kept.size),
        config,
    )


@dataclass(frozen=True)
class _Predictions:
    digests: npt.NDArray[np.uint32]  # unique contexts
    top_tokens: npt.NDArray[np.uint32]  # (contexts, k)
    top_probabilities: npt.NDArray[np.float64]  # (contexts, k)
    positions: int  # positions read before deduplication


def _predict(
    model: Any,
    documents: Sequence[Sequence[int]],
    config: SchemeConfig,
    *,
    max_contexts: int,
    top_k: int,
    batch_size: int,
) -> tuple[_Predictions, npt.NDArray[np.uint64]]:
    """Teacher-force the documents. Returns each new context's top-k next-token distribution
    (for the mass test) and the unique (context, top-1 token) pairs, packed (for the top-1
    test); reading stops once `max_contexts` pairs are collected."""
    import torch

    width = config.context_width
    limit = int(getattr(model.config, "n_positions", 0) or model.config.max_position_embeddings)
    seen_contexts: set[int] = set()
    seen_pairs: set[int] = set()
    pairs: list[int] = []
    digests: list[int] = []
    tokens_kept: list[npt.NDArray[np.int64]] = []
    probabilities_kept: list[npt.NDArray[np.float64]] = []
    positions = 0
    windows = [
        list(document[start : start + limit])
        for document in documents
        for start in range(0, max(len(document) - width, 0), limit - width)
        if len(document[start : start + limit]) > width
    ]
    model.eval()
    with torch.no_grad():
        for first in range(0, len(windows), batch_size):
            if len(pairs) >= max_contexts:
                break
            batch = windows[first : first + batch_size]
            longest = max(len(window) for window in batch)
            ids = torch.zeros((len(batch), longest), dtype=torch.long)
            mask = torch.zeros((len(batch), longest), dtype=torch.long)
            for row, window in enumerate(batch):
                ids[row, : len(window)] = torch.tensor(window)
                mask[row, : len(window)] = 1
            logits = model(input_ids=ids, attention_mask=mask).logits.float()
            top = torch.topk(torch.softmax(logits, dim=-1), top_k, dim=-1)
            indices = top.indices.numpy()
            values = top.values.double().numpy()
            for row, window in enumerate(batch):
                # the prediction at position t follows the context window ending at t
                contexts = _window_digests(np.asarray(window, dtype=np.uint32), width)
                for index, digest in enumerate(contexts.tolist()):
                    if len(pairs) >= max_contexts:
                        break
                    positions += 1
                    t = index + width - 1
                    pair = (digest << 32) | int(indices[row, t, 0])
                    if pair not in seen_pairs:
                        seen_pairs.add(pair)
                        pairs.append(pair)
                    if digest not in seen_contexts:
                        seen_contexts.add(digest)
                        digests.append(digest)
                        tokens_kept.append(indices[row, t])
                        probabilities_kept.append(values[row, t])
    if not pairs:
        raise InputError("nothing to score: the documents are shorter than the scheme's context")
    predictions = _Predictions(
        digests=np.asarray(digests, dtype=np.uint32),
        top_tokens=np.stack(tokens_kept).astype(np.uint32),
        top_probabilities=np.stack(probabilities_kept),
        positions=positions,
    )
    return predictions, np.asarray(pairs, dtype=np.uint64)


def open_weights_test(
    model: Any,
    config: SchemeConfig,
    keys: Sequence[WatermarkKey],
    documents: Sequence[Sequence[int]],
    *,
    max_contexts: int = 20_000,
    top_k: int = 32,
    batch_size: int = 16,
) -> tuple[RadioactivityResult, RadioactivityResult]:
    """Teacher-force our watermarked documents through a local model (a transformers causal LM).

    Returns the top-1 test (exact) and the green-mass test (Chernoff bound). Reading stops at
    `max_contexts` distinct (context, top-1 token) pairs.
    """
    _check_scheme(config)
    if not keys:
        raise InputError("no keys to test")
    vocab = int(model.config.vocab_size)
    if config.vocab_size is not None and vocab < config.vocab_size:
        raise InputError(
            f"the suspect's vocabulary has {vocab} entries, the scheme's {config.vocab_size}: "
            "it does not share our tokenizer, so its predictions cannot be scored"
        )
    predictions, pairs = _predict(
        model, documents, config, max_contexts=max_contexts, top_k=top_k, batch_size=batch_size
    )
    # top-1: one tuple per distinct (context, predicted token); distinct tokens after the same
    # context have independent hash values, so each is its own Bernoulli(gamma) under the null
    top1 = _binomial_result(
        "open-weights",
        "top-1 green",
        keys,
        (pairs >> np.uint64(32)).astype(np.uint32),
        (pairs & np.uint64(0xFFFFFFFF)).astype(np.uint32),
        predictions.positions - pairs.size,
        config,
    )
    # mass: one term per distinct context (the same context shares its green list)
    mass = _mass_result(keys, predictions, predictions.positions - predictions.digests.size, config)
    return top1, mass


def _mass_result(
    keys: Sequence[WatermarkKey], predictions: _Predictions, dropped: int, config: SchemeConfig
) -> RadioactivityResult:
    """Sum over contexts of the top-k probability mass on green tokens, against gamma.

    Under the null S = sum of w * X over independent X ~ Bernoulli(gamma), with weights w the
    suspect's top-k probabilities. The p-value is the Chernoff bound
    P(S >= s) <= min over lambda > 0 of exp(-lambda s) prod(1 - gamma + gamma exp(lambda w)),
    a valid upper bound on the exact tail (tight to within a small factor in practice).
    """
    gamma = config.effective_gamma
    contexts, k = predictions.top_tokens.shape
    digests = np.repeat(predictions.digests, k)
    tokens = predictions.top_tokens.reshape(-1)
    weights = predictions.top_probabilities.reshape(-1)
    words = key_word_array(list(keys))
    threshold = np.uint32(config.green_threshold)
    chunk = max(1, _CELLS_PER_CHUNK // max(tokens.size, 1))
    expected = gamma * float(weights.sum())
    detections = []
    for first in range(0, len(keys), chunk):
        block = words[first : first + chunk, None, :]
        green = hashing.keyed_uniform(block, digests, tokens) < threshold
        masses = (green * weights[None, :]).sum(axis=1)
        for key, mass in zip(keys[first : first + chunk], masses.tolist(), strict=True):
            log10_p = _chernoff_log10(float(mass), weights, gamma)
            detections.append(
                Detection(
                    key_id=key.key_id,
                    tenant=key.tenant,
                    scheme=config.scheme,
                    fingerprint=config.fingerprint,
                    scored_tokens=contexts,
                    score=float(mass),
                    expected_score=expected,
                    p_value=10.0**log10_p,
                    log10_p=log10_p,
                    gamma=gamma,
                )
            )
    return RadioactivityResult(
        mode="open-weights",
        statistic="green mass",
        scored=contexts,
        dropped=dropped,
        detections=tuple(detections),
        attribution=attribute_detections(detections),
        exact=False,
    )


def _chernoff_log10(observed: float, weights: npt.NDArray[np.float64], gamma: float) -> float:
    """log10 of the Chernoff bound on P(sum w X >= observed), X ~ Bernoulli(gamma) i.i.d."""
    from scipy.optimize import minimize_scalar

    if observed <= gamma * float(weights.sum()):
        return 0.0

    def log_bound(lam: float) -> float:
        # log(1 - g + g e^{lw}) computed stably as lw + log(g + (1 - g) e^{-lw})
        scaled = lam * weights
        terms = scaled + np.log(gamma + (1 - gamma) * np.exp(-scaled))
        return float(terms.sum()) - lam * observed

    upper = 1.0
    while log_bound(upper * 2) < log_bound(upper) and upper < 1e6:
        upper *= 2
    best = minimize_scalar(log_bound, bounds=(0.0, upper * 2), method="bounded")
    return min(0.0, float(best.fun)) / math.log(10)
