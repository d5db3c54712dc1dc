"""The open-weights tests: our watermarked outputs teacher-forced through the suspect.

Three statistics over what `teacher_forcing.read` found: the suspect's top-1 predictions
(exact binomial), the probability mass it puts on green tokens, and, given a reference, the
shift of that mass away from the reference's (both with Chernoff-bound p-values, valid and a
little conservative).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from distillguard.errors import InputError
from distillguard.forensics.radioactivity.scoring import (
    CELLS_PER_CHUNK,
    RadioactivityResult,
    binomial_result,
    check_scheme,
    check_vocabulary,
    unpack,
)
from distillguard.forensics.radioactivity.teacher_forcing import Readings, read
from distillguard.watermark import hashing
from distillguard.watermark.detector import Detection, attribute_detections
from distillguard.watermark.key import WatermarkKey, key_word_array
from distillguard.watermark.scheme import SchemeConfig

__all__ = ["OpenWeightsResults", "chernoff_log10", "open_weights_test"]


@dataclass(frozen=True)
class OpenWeightsResults:
    """The open-weights tests of one suspect.

    `shift` (given a reference model) is the strongest: it reads how the suspect's predictions
    moved away from the reference's, where the top-1 and mass tests read the suspect alone.
    """

    top1: RadioactivityResult
    mass: RadioactivityResult
    shift: RadioactivityResult | None = None

    def all(self) -> list[RadioactivityResult]:
        """The tests that ran, the strongest first."""
        return ([self.shift] if self.shift is not None else []) + [self.top1, self.mass]


def open_weights_test(
    model: Any,
    config: SchemeConfig,
    keys: Sequence[WatermarkKey],
    documents: Sequence[Sequence[int]],
    *,
    reference: Any = None,
    max_contexts: int = 20_000,
    top_k: int = 32,
    batch_size: int = 16,
) -> OpenWeightsResults:
    """Teacher-force our watermarked documents through a local model (a transformers causal
    LM), reading at most `max_contexts` contexts (token positions).

    - top-1 (exact binomial): one tuple per distinct (context, predicted token);
    - green mass (Chernoff bound): the suspect's top-k probability on green tokens;
    - green mass shift (Chernoff bound, needs `reference`, a model with our tokenizer that
      never saw our outputs): how much more probability the suspect puts on green tokens than
      the reference does, over both models' top-k candidates. A suspect fine-tuned from a base
      moves away from it towards the green tokens of the text it learned from; the closer the
      reference is to the suspect's starting point (the public base it was fine-tuned from,
      ideally), the less of the suspect's own language the statistic has to see through.
    """
    check_scheme(config)
    if not keys:
        raise InputError("no keys to test")
    unscorable = ", so its predictions cannot be scored"
    check_vocabulary(model, "suspect", config, consequence=unscorable)
    if reference is not None:
        check_vocabulary(reference, "reference", config, consequence=unscorable)
    readings = read(
        model,
        reference,
        documents,
        config,
        max_contexts=max_contexts,
        top_k=top_k,
        batch_size=batch_size,
    )
    if readings.top1.size == 0:
        raise InputError("nothing to score: every prediction copies a tuple of its input")
    # distinct tokens after the same context have independent hash values, so each distinct
    # (context, token) tuple is its own Bernoulli(gamma) under the null
    top1 = binomial_result(
        "open-weights",
        "top-1 green",
        keys,
        readings.top1,
        readings.contexts - readings.top1.size,
        config,
    )
    mass = _weighted_result("green mass", keys, readings, readings.suspect_mass, config)
    shift = (
        _weighted_result("green mass shift", keys, readings, readings.shift, config)
        if readings.shift is not None
        else None
    )
    return OpenWeightsResults(top1=top1, mass=mass, shift=shift)


def _weighted_result(
    statistic: str,
    keys: Sequence[WatermarkKey],
    readings: Readings,
    weights: npt.NDArray[np.float64],
    config: SchemeConfig,
) -> RadioactivityResult:
    """S = sum of w * X over the distinct candidate tuples, against gamma * sum of w.

    Under the null the X are independent Bernoulli(gamma) and the weights w (summed over the
    positions where a tuple was a candidate) are functions of the models and the texts only.
    The p-value is the Chernoff bound
    P(S >= s) <= min over lambda > 0 of exp(-lambda s) prod(1 - gamma + gamma exp(lambda w)),
    valid for weights of either sign and a little conservative.
    """
    gamma = config.effective_gamma
    digests, tokens = unpack(readings.candidates)
    words = key_word_array(list(keys))
    threshold = np.uint32(config.green_threshold)
    chunk = max(1, CELLS_PER_CHUNK // max(tokens.size, 1))
    expected = gamma * float(weights.sum())
    detections = []
    for first in range(0, len(keys), chunk):
        block = words[first : first + chunk, None, :]
        green = hashing.keyed_uniform(block, digests, tokens) < threshold
        scores = green.astype(np.float64) @ weights
        for key, score in zip(keys[first : first + chunk], scores.tolist(), strict=True):
            log10_p = chernoff_log10(float(score), weights, gamma)
            detections.append(
                Detection(
                    key_id=key.key_id,
                    tenant=key.tenant,
                    scheme=config.scheme,
                    fingerprint=config.fingerprint,
                    scored_tokens=int(tokens.size),
                    score=float(score),
                    expected_score=expected,
                    p_value=10.0**log10_p,
                    log10_p=log10_p,
                    gamma=gamma,
                )
            )
    return RadioactivityResult(
        mode="open-weights",
        statistic=statistic,
        scored=readings.contexts,
        dropped=readings.copied_top1,
        detections=tuple(detections),
        attribution=attribute_detections(detections),
        exact=False,
    )


def chernoff_log10(observed: float, weights: npt.NDArray[np.float64], gamma: float) -> float:
    """log10 of the Chernoff bound on P(sum w X >= observed), X ~ Bernoulli(gamma) i.i.d.

    Weights may be negative. They are scaled to a largest magnitude of 1 first (the bound does
    not change), so that the search for lambda works at any scale."""
    from scipy.optimize import minimize_scalar

    scale = float(np.abs(weights).max()) if weights.size else 0.0
    if scale == 0.0 or observed <= gamma * float(weights.sum()):
        return 0.0
    weights = weights / scale
    observed = observed / scale
    log_keep, log_green = math.log(1 - gamma), math.log(gamma)

    def log_bound(lam: float) -> float:
        # log(1 - g + g e^{lw}), stably for either sign of w
        terms = np.logaddexp(log_keep, log_green + lam * weights)
        return float(terms.sum()) - lam * observed

    upper = 1.0
    while log_bound(upper * 2) < log_bound(upper) and upper < 1e9:
        upper *= 2
    best = minimize_scalar(log_bound, bounds=(0.0, upper * 2), method="bounded")
    return min(0.0, float(best.fun)) / math.log(10)
