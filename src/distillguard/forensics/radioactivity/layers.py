"""Radioactivity per watermark layer: "trained on this provider's outputs" and "which accounts"
as separate findings, each with its own null hypothesis.

The black-box and open-weights tests collect key-independent tuples (`black_box.focused_tuples`,
`black_box.black_box_tuples`, `teacher_forcing.read`); this module scores them per layer
(`watermark.layers`):

- provider layer: the provider key over the tuples its layer biased;
- tenant layer: each tenant key over the tuples the tenant layer biased, Holm-corrected;
- ring: the ring's k tenant keys summed over the same tuples.

Exact binomial tails for tuple counts: Binomial(N, gamma) per key, Binomial(k * N, gamma) for
a ring (k distinct keys over N distinct tuples are k * N independent Bernoulli(gamma) under
the null). Weighted statistics (green mass, mass shift) use the Chernoff bound of
`open_weights`, for a ring over the weights repeated once per key (the same independence).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from distillguard.errors import InputError
from distillguard.forensics.radioactivity.open_weights import chernoff_log10
from distillguard.forensics.radioactivity.scoring import unpack
from distillguard.watermark import hashing, stats
from distillguard.watermark.key import WatermarkKey, key_word_array
from distillguard.watermark.layers import Layer, green_counts, layer_mask, ring_detection
from distillguard.watermark.scheme import SchemeConfig

__all__ = ["LayerFinding", "layer_findings", "ring_finding"]


@dataclass(frozen=True)
class LayerFinding:
    """One key (or one ring of keys) tested over one layer's tuples."""

    layer: Layer
    statistic: str  # "green tuples" (exact) or a weighted statistic (Chernoff bound)
    key_ids: tuple[str, ...]  # one key; several for a ring
    scored: int  # distinct tuples of the layer
    score: float
    expected: float
    log10_p: float
    exact: bool

    @property
    def null_hypothesis(self) -> str:
        keys = len(self.key_ids)
        law = (
            f"Binomial({keys * self.scored}, gamma)"
            if self.exact
            else "a weighted sum of independent Bernoulli(gamma) (Chernoff bound)"
        )
        return (
            f"the suspect never learned from text marked with {'any of ' if keys > 1 else ''}"
            f"{keys} key{'s' if keys > 1 else ''} of the {self.layer} layer: the {keys} x "
            f"{self.scored} (key, tuple) values are independent, so the score is {law}"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "layer": self.layer,
            "statistic": self.statistic,
            "keys": len(self.key_ids),
            "scored": self.scored,
            "score": self.score,
            "expected": self.expected,
            "log10_p": self.log10_p,
            "exact": self.exact,
            "null_hypothesis": self.null_hypothesis,
        }


def _selected(
    config: SchemeConfig,
    provider: WatermarkKey | None,
    packed: npt.NDArray[np.uint64],
    layer: Layer,
) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.uint32], npt.NDArray[np.uint32]]:
    digests, tokens = unpack(packed)
    mask = layer_mask(config, provider, digests, layer)
    return mask, digests[mask], tokens[mask]


def layer_findings(
    config: SchemeConfig,
    keys: Sequence[WatermarkKey],
    packed: npt.NDArray[np.uint64],
    layer: Layer,
    *,
    provider: WatermarkKey | None,
    weights: npt.NDArray[np.float64] | None = None,
    statistic: str = "green tuples",
) -> list[LayerFinding]:
    """Each key's test over `layer`'s tuples among `packed` (distinct tuples). With `weights`
    (one per tuple) the weighted statistic and its Chernoff bound, else the exact count."""
    if not keys:
        raise InputError("no keys to test")
    mask, digests, tokens = _selected(config, provider, packed, layer)
    gamma = config.effective_gamma
    if weights is None:
        counts = green_counts(config, keys, digests, tokens)
        return [
            LayerFinding(
                layer=layer,
                statistic=statistic,
                key_ids=(key.key_id,),
                scored=int(tokens.size),
                score=float(count),
                expected=gamma * tokens.size,
                log10_p=stats.binomial_upper_tail(int(count), int(tokens.size), gamma)[1],
                exact=True,
            )
            for key, count in zip(keys, counts.tolist(), strict=True)
        ]
    chosen = weights[mask]
    green = _green_matrix(config, keys, digests, tokens)
    scores = green.astype(np.float64) @ chosen
    return [
        LayerFinding(
            layer=layer,
            statistic=statistic,
            key_ids=(key.key_id,),
            scored=int(tokens.size),
            score=float(score),
            expected=gamma * float(chosen.sum()),
            log10_p=chernoff_log10(float(score), chosen, gamma),
            exact=False,
        )
        for key, score in zip(keys, scores.tolist(), strict=True)
    ]


def ring_finding(
    config: SchemeConfig,
    ring: Sequence[WatermarkKey],
    packed: npt.NDArray[np.uint64],
    *,
    provider: WatermarkKey | None,
    weights: npt.NDArray[np.float64] | None = None,
    statistic: str = "green tuples",
) -> LayerFinding:
    """The ring's tenant keys summed over the tenant layer's tuples among `packed`."""
    mask, digests, tokens = _selected(config, provider, packed, "tenant")
    gamma = config.effective_gamma
    if weights is None:
        found = ring_detection(config, ring, digests, tokens)
        return LayerFinding(
            layer="tenant",
            statistic=f"{statistic}, ring of {len(ring)}",
            key_ids=found.key_ids,
            scored=found.scored_tuples,
            score=float(found.green),
            expected=found.expected,
            log10_p=found.log10_p,
            exact=True,
        )
    ring_detection(config, ring, digests[:0], tokens[:0])  # the same checks on the keys
    chosen = weights[mask]
    score = float((_green_matrix(config, ring, digests, tokens).astype(np.float64) @ chosen).sum())
    # k independent copies of the weighted sum: the bound over the weights repeated k times
    repeated = np.tile(chosen, len(ring))
    return LayerFinding(
        layer="tenant",
        statistic=f"{statistic}, ring of {len(ring)}",
        key_ids=tuple(key.key_id for key in ring),
        scored=int(tokens.size),
        score=score,
        expected=gamma * float(repeated.sum()),
        log10_p=chernoff_log10(score, repeated, gamma),
        exact=False,
    )


def _green_matrix(
    config: SchemeConfig,
    keys: Sequence[WatermarkKey],
    digests: npt.NDArray[np.uint32],
    tokens: npt.NDArray[np.uint32],
) -> npt.NDArray[np.bool_]:
    """Green status of each tuple under each key: (keys, tuples)."""
    words = key_word_array(list(keys))[:, None, :]
    return hashing.keyed_uniform(words, digests, tokens) < np.uint32(config.green_threshold)
