"""Detection: exact p-values per tenant key, per document and in total, and attribution.

The detector tokenizes (when given text), builds the scored (context, token) tuples, scores
each unique tuple once across all documents of a call, and turns the counts into exact tail
probabilities. Subclassing is not needed: the scheme enum picks the score and its null law.

Which tokens are scored. Token i of a document is scored when it has a full context inside
the document (i >= context_width for left-hash, i >= context_width - 1 for self-hash) and it
is not a prompt token (i >= the document's prompt length). Generation seeds token i from the
same positions of prompt + completion, so with the prompt supplied every completion token is
scored, and without it the first context_width completion tokens serve as context only.

Deduplication. The keyed hash sees a tuple only through (context digest, candidate), so
tuples are deduplicated on exactly that 64-bit pair: two tuples that share it get the same
value under every key and would count the same evidence twice. For self-hash the context is
the anchor token, so repeated anchors are deduplicated too.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from distillguard.errors import FingerprintMismatchError, InputError, VocabularyMismatchError
from distillguard.watermark import hashing, stats
from distillguard.watermark.key import WatermarkKey, key_word_array
from distillguard.watermark.scheme import Scheme, SchemeConfig, Seeding, tokenizer_fingerprint

__all__ = [
    "Attribution",
    "Detection",
    "DetectionReport",
    "Detector",
    "DocumentDetection",
    "RankedKey",
    "attribute_detections",
    "log10_to_text",
]

_TWO_POW_32 = float(1 << 32)
_CELLS_PER_CHUNK = 1 << 21  # keys x tuples evaluated at once; bounds memory during attribution

TokenDocument = Sequence[int] | npt.NDArray[np.integer]


class _Tokenizer(Protocol):
    def get_vocab(self) -> dict[str, int]: ...


@dataclass(frozen=True)
class Detection:
    """The evidence for one key over one set of tokens.

    `score` is the green count (green list) or the sum of -log(1 - r) (Gumbel) over the
    `scored_tokens` unique tuples; `expected_score` is its mean under the null hypothesis.
    """

    key_id: str
    tenant: str | None
    scheme: Scheme
    fingerprint: str
    scored_tokens: int
    score: float
    expected_score: float
    p_value: float
    log10_p: float
    gamma: float | None = None

    @property
    def green_tokens(self) -> int | None:
        return int(self.score) if self.scheme is Scheme.GREEN_LIST else None

    @property
    def green_fraction(self) -> float | None:
        if self.scheme is not Scheme.GREEN_LIST or self.scored_tokens == 0:
            return None
        return self.score / self.scored_tokens

    @property
    def null_hypothesis(self) -> str:
        if self.scheme is Scheme.GREEN_LIST:
            return (
                f"the tokens were produced without knowledge of key {self.key_id}: each of the "
                f"{self.scored_tokens} unique (context, token) tuples is green with probability "
                f"{self.gamma} independently, so the green count is Binomial("
                f"{self.scored_tokens}, {self.gamma})"
            )
        return (
            f"the tokens were produced without knowledge of key {self.key_id}: each of the "
            f"{self.scored_tokens} unique (context, token) tuples contributes -log(1 - r) with r "
            f"uniform, so the score is Gamma({self.scored_tokens}, 1)"
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict with the derived fields and the null hypothesis in words."""
        return {
            "tenant": self.tenant,
            "key_id": self.key_id,
            "scheme": self.scheme.value,
            "fingerprint": self.fingerprint,
            "scored_tokens": self.scored_tokens,
            "score": self.score,
            "expected_score": self.expected_score,
            "green_tokens": self.green_tokens,
            "green_fraction": self.green_fraction,
            "p_value": self.p_value,
            "log10_p": self.log10_p,
            "null_hypothesis": self.null_hypothesis,
        }


@dataclass(frozen=True)
class DocumentDetection:
    """Detections for one document of a call, one per key, in the order the keys were given."""

    index: int
    tokens: int
    detections: tuple[Detection, ...]


@dataclass(frozen=True)
class DetectionReport:
    """Per-document and total detections of one call."""

    fingerprint: str
    documents: tuple[DocumentDetection, ...]
    total: tuple[Detection, ...]


@dataclass(frozen=True)
class RankedKey:
    detection: Detection
    adjusted_p_value: float
    adjusted_log10_p: float


@dataclass(frozen=True)
class Attribution:
    """Which of several tenant keys the tokens carry, with family-wise error control.

    `corrected_log10_p` is the best key's p-value after Holm-Bonferroni over all
    `keys_tested` keys (for the best key this equals Bonferroni: min(1, K * p)).
    """

    keys_tested: int
    best: Detection
    corrected_p_value: float
    corrected_log10_p: float
    ranking: tuple[RankedKey, ...]
    correction: str = "holm-bonferroni"

    @property
    def tenant(self) -> str | None:
        return self.best.tenant


@dataclass(frozen=True)
class _Tuples:
    """Unique scored tuples of a call (for the total) and, when several documents need their
    own tables, the distinct tuples of each document."""

    digests: npt.NDArray[np.uint32]
    candidates: npt.NDArray[np.uint32]
    document_lengths: npt.NDArray[np.int64]
    positions: _Positions | None = None


@dataclass(frozen=True)
class _Positions:
    """The tuples each document scores: one entry per distinct (document, tuple) pair."""

    digests: npt.NDArray[np.uint32]
    candidates: npt.NDArray[np.uint32]
    documents: npt.NDArray[np.int64]


class Detector:
    """Scores token ids (or text, with a tokenizer) against tenant keys under one scheme."""

    def __init__(self, config: SchemeConfig) -> None:
        if not config.is_bound:
            raise VocabularyMismatchError(
                "the scheme is not bound to a vocabulary: call config.bind(vocab_size, "
                "tokenizer_hash) with the tokenizer the text was generated with"
            )
        self.config = config
        self.fingerprint = config.fingerprint

    # -- public API ---------------------------------------------------------------------

    def detect(
        self,
        documents: Sequence[TokenDocument],
        keys: Sequence[WatermarkKey],
        *,
        prompt_lengths: Sequence[int] | None = None,
        fingerprint: str | None = None,
        per_document: bool = True,
    ) -> DetectionReport:
        """Detect each key in each document and in all documents together.

        With `per_document=False` only the total is computed (`documents` is empty): the
        call a forensic scan of a large corpus makes, about twice as fast.
        """
        self._check_fingerprint(fingerprint)
        keys = self._check_keys(keys)
        tuples = self._tuples(documents, prompt_lengths, per_document=per_document)
        totals, by_document = self._score(tuples, keys, per_document=per_document)
        if not per_document:
            return DetectionReport(self.fingerprint, (), tuple(totals))
        return DetectionReport(
            fingerprint=self.fingerprint,
            documents=tuple(
                DocumentDetection(
                    index=index,
                    tokens=int(tuples.document_lengths[index]),
                    detections=tuple(by_document[index]),
                )
                for index in range(len(tuples.document_lengths))
            ),
            total=tuple(totals),
        )

    def attribute(
        self,
        documents: Sequence[TokenDocument],
        keys: Sequence[WatermarkKey],
        *,
        prompt_lengths: Sequence[int] | None = None,
        fingerprint: str | None = None,
    ) -> Attribution:
        """Score all documents together against every key and name the best one."""
        self._check_fingerprint(fingerprint)
        keys = self._check_keys(keys)
        tuples = self._tuples(documents, prompt_lengths, per_document=False)
        totals, _ = self._score(tuples, keys, per_document=False)
        return attribute_detections(totals)

    def tokenize(self, texts: Sequence[str], tokenizer: _Tokenizer) -> list[npt.NDArray[np.int64]]:
        """Token ids of each text, after checking the tokenizer matches the scheme."""
        expected = self.config.tokenizer_hash
        if expected is not None:
            actual = tokenizer_fingerprint(tokenizer)
            if actual != expected:
                raise VocabularyMismatchError(
                    f"the tokenizer ({actual[:19]}...) is not the one the scheme was bound to "
                    f"({expected[:19]}...)"
                )
        documents = []
        for text in texts:
            if not isinstance(text, str):
                raise InputError(f"expected text, got {type(text).__name__}")
            documents.append(np.asarray(_encode(tokenizer, text), dtype=np.int64))
        return documents

    def detect_text(
        self,
        texts: Sequence[str],
        keys: Sequence[WatermarkKey],
        tokenizer: _Tokenizer,
        *,
        fingerprint: str | None = None,
    ) -> DetectionReport:
        return self.detect(self.tokenize(texts, tokenizer), keys, fingerprint=fingerprint)

    # -- internals ------------------------------------------------------------------------

    def _check_fingerprint(self, fingerprint: str | None) -> None:
        if fingerprint is not None and fingerprint != self.fingerprint:
            raise FingerprintMismatchError(
                f"the recorded scheme fingerprint {fingerprint} does not match this detector's "
                f"{self.fingerprint}: detect with the scheme the key was used with"
            )

    @staticmethod
    def _check_keys(keys: Sequence[WatermarkKey]) -> list[WatermarkKey]:
        if not keys:
            raise InputError("no keys to test")
        return list(keys)

    def _flat_tokens(
        self, documents: Sequence[TokenDocument]
    ) -> tuple[npt.NDArray[np.uint32], npt.NDArray[np.int64]]:
        """Every document's token ids, checked and concatenated, and each document's length."""
        if len(documents) == 0:
            raise InputError("nothing to score: no documents")
        arrays = [np.asarray(document) for document in documents]
        for array in arrays:
            if array.ndim != 1 or (array.size and array.dtype.kind not in "iu"):
                raise InputError("each document must be a flat sequence of integer token ids")
        lengths = np.array([array.size for array in arrays], dtype=np.int64)
        flat = np.concatenate(arrays) if len(arrays) > 1 else arrays[0]
        if flat.size == 0:
            raise InputError("nothing to score: the documents are empty")
        if flat.dtype.kind == "i" and int(flat.min()) < 0:
            raise VocabularyMismatchError("negative token id")
        self.config.check_token_ids(int(flat.max()))
        return flat.astype(np.uint32), lengths

    def _tuples(
        self,
        documents: Sequence[TokenDocument],
        prompt_lengths: Sequence[int] | None,
        *,
        per_document: bool = True,
    ) -> _Tuples:
        tokens, lengths = self._flat_tokens(documents)
        width = self.config.context_width
        seeding = self.config.seeding
        if seeding is Seeding.LEFT_HASH:
            lookback = width
        elif seeding is Seeding.SELF_HASH:
            lookback = width - 1
        else:  # pragma: no cover - Seeding is closed
            raise ValueError(f"unknown seeding {seeding}")

        if tokens.size <= lookback:
            raise InputError(
                "nothing to score: every document is shorter than the scheme's context "
                f"({width} tokens)"
            )
        # Position i of the flat array is scored when its local index clears both the context
        # and the prompt. Windows never cross documents because local >= lookback.
        ends = np.cumsum(lengths)
        starts = ends - lengths
        first_scored = np.full(len(lengths), lookback, dtype=np.int64)
        if prompt_lengths is not None:
            if len(prompt_lengths) != len(lengths):
                raise InputError("prompt_lengths must give one length per document")
            first_scored = np.maximum(first_scored, np.asarray(prompt_lengths, dtype=np.int64))
        head_ends = np.minimum(starts + first_scored, ends)
        scored_mask = np.ones(tokens.size, dtype=bool)
        for start, head_end in zip(starts.tolist(), head_ends.tolist(), strict=True):
            scored_mask[start:head_end] = False
        # Context columns as shifted slices over positions lookback.. (cheaper than gathers);
        # the mask then keeps only scored positions.
        scored_mask = scored_mask[lookback:]
        candidates = tokens[lookback:][scored_mask]
        if seeding is Seeding.LEFT_HASH:
            columns = [tokens[j : tokens.size - width + j] for j in range(width)]
            digests = hashing.context_digest(columns)[scored_mask]
        else:
            digests = hashing.context_digest([_anchors(tokens, width)[scored_mask]])

        packed = _pack(digests, candidates)
        if not per_document or len(lengths) == 1:
            unique = _sorted_unique(np.sort(packed))
            return _Tuples(*_unpack(unique), lengths)

        document_ids = np.repeat(np.arange(len(lengths), dtype=np.int64), lengths)[lookback:][
            scored_mask
        ]
        sorted_packed = np.sort(packed)
        unique = _sorted_unique(sorted_packed)
        if unique.size == packed.size:
            # No tuple occurs twice in the whole call, so none does within a document: each
            # document scores all its positions, and no argsort is needed.
            positions = _Positions(digests, candidates, document_ids)
            return _Tuples(*_unpack(unique), lengths, positions)
        # Repeats: deduplicate (document, tuple) pairs through each tuple's rank.
        order = np.argsort(packed)
        is_first = _first_of_runs(packed[order])
        inverse = np.empty(packed.size, dtype=np.int64)
        inverse[order] = np.cumsum(is_first) - 1
        pairs = _sorted_unique(np.sort(document_ids * unique.size + inverse))
        pair_documents, pair_tuples = np.divmod(pairs, unique.size)
        unique_digests, unique_candidates = _unpack(unique)
        positions = _Positions(
            unique_digests[pair_tuples], unique_candidates[pair_tuples], pair_documents
        )
        return _Tuples(unique_digests, unique_candidates, lengths, positions)

    def _score(
        self, tuples: _Tuples, keys: list[WatermarkKey], *, per_document: bool = True
    ) -> tuple[list[Detection], list[list[Detection]]]:
        config = self.config
        document_count = len(tuples.document_lengths)
        scored_total = int(tuples.candidates.size)
        if scored_total == 0:
            raise InputError(
                "nothing to score: every document is shorter than the scheme's context "
                f"({config.context_width} tokens) or entirely prompt"
            )
        words = key_word_array(keys)
        positions = tuples.positions if per_document else None
        cells = max(scored_total, positions.candidates.size if positions is not None else 0)
        chunk = max(1, _CELLS_PER_CHUNK // cells)
        totals: list[Detection] = []
        per_document_lists: list[list[Detection]] = [[] for _ in range(document_count)]
        if positions is not None:
            scored_per_document = np.bincount(positions.documents, minlength=document_count)

        for first in range(0, len(keys), chunk):
            block = words[first : first + chunk, None, :]  # (K, 1, 4) against (N,)
            values = self._token_scores(
                hashing.keyed_uniform(block, tuples.digests, tuples.candidates)
            )  # (K, unique tuples)
            sums = values.sum(axis=1, dtype=np.float64)
            position_values = None
            if positions is not None:
                position_values = self._token_scores(
                    hashing.keyed_uniform(block, positions.digests, positions.candidates)
                )  # (K, scored positions)
            for offset, key in enumerate(keys[first : first + chunk]):
                totals.append(self._detection(key, scored_total, float(sums[offset])))
                if not per_document:
                    continue
                if positions is None or position_values is None:
                    per_document_lists[0].append(totals[-1])
                    continue
                document_sums = np.bincount(
                    positions.documents, weights=position_values[offset], minlength=document_count
                )
                for index in range(document_count):
                    per_document_lists[index].append(
                        self._detection(
                            key, int(scored_per_document[index]), float(document_sums[index])
                        )
                    )
        return totals, per_document_lists

    def _token_scores(
        self, uniforms: npt.NDArray[np.uint32]
    ) -> npt.NDArray[np.float64] | npt.NDArray[np.bool_]:
        scheme = self.config.scheme
        if scheme is Scheme.GREEN_LIST:
            return uniforms < np.uint32(self.config.green_threshold)
        if scheme is Scheme.GUMBEL:
            # r = (u + 1/2) / 2**32 is strictly inside (0, 1); -log(1 - r) ~ Exp(1) under H0.
            r = (uniforms.astype(np.float64) + 0.5) / _TWO_POW_32
            return -np.log1p(-r)
        raise ValueError(f"unknown scheme {scheme}")

    def _detection(self, key: WatermarkKey, scored: int, score: float) -> Detection:
        config = self.config
        if config.scheme is Scheme.GREEN_LIST:
            gamma = config.effective_gamma
            green = round(score)
            p_value, log10_p = stats.binomial_upper_tail(green, scored, gamma)
            return Detection(
                key_id=key.key_id,
                tenant=key.tenant,
                scheme=config.scheme,
                fingerprint=self.fingerprint,
                scored_tokens=scored,
                score=float(green),
                expected_score=gamma * scored,
                p_value=p_value,
                log10_p=log10_p,
                gamma=gamma,
            )
        p_value, log10_p = stats.gamma_upper_tail(scored, score)
        return Detection(
            key_id=key.key_id,
            tenant=key.tenant,
            scheme=config.scheme,
            fingerprint=self.fingerprint,
            scored_tokens=scored,
            score=score,
            expected_score=float(scored),
            p_value=p_value,
            log10_p=log10_p,
        )


def attribute_detections(totals: Sequence[Detection]) -> Attribution:
    """Rank detections of the same tokens under several keys, with Holm-Bonferroni control."""
    if not totals:
        raise InputError("no detections to attribute")
    adjusted = stats.holm([detection.log10_p for detection in totals])
    order = sorted(range(len(totals)), key=lambda index: (totals[index].log10_p, index))
    ranking = tuple(
        RankedKey(totals[index], 10.0 ** adjusted[index], adjusted[index]) for index in order
    )
    best = ranking[0]
    return Attribution(
        keys_tested=len(totals),
        best=best.detection,
        corrected_p_value=best.adjusted_p_value,
        corrected_log10_p=best.adjusted_log10_p,
        ranking=ranking,
    )


def _anchors(tokens: npt.NDArray[np.uint32], width: int) -> npt.NDArray[np.uint32]:
    """Self-hash anchor for positions width - 1 .. end: the lowest-ranked window token.

    The window is the previous width - 1 tokens and the candidate itself; ties cannot happen
    between different tokens because the rank is a bijection.
    """
    lookback = width - 1
    ranks = hashing.anchor_rank(tokens)
    best_rank = ranks[lookback:].copy()
    best_token = tokens[lookback:].copy()
    for back in range(1, width):
        rank = ranks[lookback - back : tokens.size - back]
        lower = rank < best_rank
        best_rank[lower] = rank[lower]
        best_token[lower] = tokens[lookback - back : tokens.size - back][lower]
    return best_token


def _first_of_runs(sorted_values: npt.NDArray[np.generic]) -> npt.NDArray[np.bool_]:
    is_first = np.empty(sorted_values.size, dtype=bool)
    if sorted_values.size:
        is_first[0] = True
        np.not_equal(sorted_values[1:], sorted_values[:-1], out=is_first[1:])
    return is_first


def _sorted_unique(sorted_values: npt.NDArray[np.generic]) -> npt.NDArray[np.generic]:
    # np.unique on uint64 is an order of magnitude slower than sort + mask in numpy 2.x.
    return sorted_values[_first_of_runs(sorted_values)]


def _pack(
    digests: npt.NDArray[np.uint32], candidates: npt.NDArray[np.uint32]
) -> npt.NDArray[np.uint64]:
    """(digest << 32) | candidate, written as two 32-bit halves (no 64-bit temporaries)."""
    packed = np.empty(digests.size, dtype=np.uint64)
    halves = packed.view(np.uint32).reshape(-1, 2)
    low, high = (0, 1) if sys.byteorder == "little" else (1, 0)
    halves[:, high] = digests
    halves[:, low] = candidates
    return packed


def _unpack(
    packed: npt.NDArray[np.generic],
) -> tuple[npt.NDArray[np.uint32], npt.NDArray[np.uint32]]:
    halves = np.ascontiguousarray(packed, dtype=np.uint64).view(np.uint32).reshape(-1, 2)
    low, high = (0, 1) if sys.byteorder == "little" else (1, 0)
    return np.ascontiguousarray(halves[:, high]), np.ascontiguousarray(halves[:, low])


def _encode(tokenizer: _Tokenizer, text: str) -> list[int]:
    """Token ids without special tokens, for `tokenizers.Tokenizer` or a transformers tokenizer."""
    encode = getattr(tokenizer, "encode", None)
    if encode is None:
        raise InputError("the tokenizer has no encode method")
    try:
        encoded = encode(text, add_special_tokens=False)
    except TypeError:
        encoded = encode(text)
    ids = getattr(encoded, "ids", encoded)
    return [int(token) for token in ids]


def log10_to_text(log10_p: float) -> str:
    """A p-value as text that stays readable far below 1e-300 (e.g. ``1.2e-1034``)."""
    if log10_p == 0.0:
        return "1"
    if not math.isfinite(log10_p):
        return "0"
    exponent = math.floor(log10_p)
    mantissa = 10.0 ** (log10_p - exponent)
    if mantissa >= 9.995:
        mantissa, exponent = 1.0, exponent + 1
    if exponent >= -3:
        return f"{10.0**log10_p:.4f}"
    return f"{mantissa:.2f}e{exponent}"
