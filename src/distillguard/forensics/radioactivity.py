"""Radioactivity tests: did a suspect model learn from our watermarked outputs?

Following Sander et al., "Watermarking Makes Language Models Radioactive" (NeurIPS 2024):

- Black-box: the suspect's outputs to our prompts are scored like any text, with two
  precautions. Each (context, token) tuple counts once across all outputs. Tuples whose
  context also occurs in the prompts are dropped: a watermarked prompt echoed back would
  otherwise make a clean model look radioactive.
- Open weights: our logged watermarked outputs are fed to the suspect (teacher forcing). At
  each position the suspect's top-1 next-token prediction is scored under each key. A model
  that learned the watermark predicts green tokens more often than gamma. Each distinct
  (context, prediction) pair counts once; the p-value is the exact binomial tail, as for
  text. Two statistics read more of the logits, with Chernoff-bound p-values (valid, a little
  conservative): the probability mass the suspect puts on green tokens, and, given a
  reference model, the shift of that mass away from the reference's. The shift is the
  strongest when the reference is close to where the suspect started (its public base): it
  cancels what both models would predict anyway and keeps what the suspect learned since.
  Predictions of a tuple that already occurred earlier in the model's input are not scored:
  the text is watermarked and a model can copy from its input.

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
    "OpenWeightsResults",
    "RadioactivityResult",
    "black_box_focused_test",
    "black_box_test",
    "open_weights_test",
]

_CELLS_PER_CHUNK = 1 << 22


@dataclass(frozen=True)
class RadioactivityResult:
    """One radioactivity test of one suspect against every tested key."""

    mode: str  # "black-box" or "open-weights"
    statistic: str  # "green tuples" (black-box); "top-1 green", "green mass", "green mass shift"
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
    *,
    allow_empty: bool = False,
) -> RadioactivityResult:
    """Exact binomial tails per key. With `allow_empty`, no tuple gives p = 1 for every key
    (a selection that kept nothing found no evidence) instead of an error."""
    if tokens.size == 0 and not allow_empty:
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
        curve=_curve(best, digests, tokens, config) if tokens.size else (),
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


@dataclass(frozen=True)
class _KeptTuples:
    """The suspect's output tuples that a black-box test may score."""

    windows: list[npt.NDArray[np.uint32]]  # per query: the end of the prompt, then the output
    positions: list[npt.NDArray[np.int64]]  # per query: token positions of the kept tuples
    packed: npt.NDArray[np.uint64]  # every kept (context digest, token), once each
    dropped: int  # repeats, and contexts seen in the query's prompt


def _kept_tuples(
    config: SchemeConfig,
    prompts: Sequence[Sequence[int]],
    outputs: Sequence[Sequence[int]],
    limit: int | None = None,
) -> _KeptTuples:
    """Each output token with a full context, minus two kinds: a tuple whose context occurs in
    that query's own prompt (it may be the prompt's watermark echoed back; Sander et al.,
    facebookresearch/radioactive-watermark), and a tuple seen before (it counts once, at its
    first occurrence). With `limit`, each window is cut to that many tokens (a model's
    context): the output to limit - width tokens, the prompt from the left."""
    if len(prompts) != len(outputs):
        raise InputError("give one output per prompt")
    width = config.context_width
    windows: list[npt.NDArray[np.uint32]] = []
    candidates: list[npt.NDArray[np.int64]] = []
    packed_parts: list[npt.NDArray[np.uint64]] = []
    in_prompt_total = 0
    for prompt, output in zip(prompts, outputs, strict=True):
        prompt_ids = np.asarray(prompt, dtype=np.uint32)
        output_ids = np.asarray(output, dtype=np.uint32)
        if limit is not None:
            output_ids = output_ids[: limit - width]
            prompt_ids_kept = prompt_ids[max(0, prompt_ids.size - (limit - output_ids.size)) :]
        else:
            prompt_ids_kept = prompt_ids
        window = np.concatenate([prompt_ids_kept, output_ids])
        windows.append(window)
        first = max(window.size - output_ids.size, width)  # output tokens with a full context
        if output_ids.size == 0 or window.size <= first:
            candidates.append(np.zeros(0, dtype=np.int64))
            packed_parts.append(np.zeros(0, dtype=np.uint64))
            continue
        config.check_token_ids(int(window.max()))
        digests = _window_digests(window[:-1], width)[first - width :]
        in_prompt = np.isin(digests, _window_digests(prompt_ids, width))
        in_prompt_total += int(in_prompt.sum())
        candidates.append(np.flatnonzero(~in_prompt) + first)
        packed_parts.append(_pack(digests[~in_prompt], window[first:][~in_prompt]))
    everything = np.concatenate(packed_parts) if packed_parts else np.zeros(0, np.uint64)
    # keep each tuple's first occurrence, in query order
    unique, first_index = np.unique(everything, return_index=True)
    is_first = np.zeros(everything.size, dtype=bool)
    is_first[first_index] = True
    positions = []
    offset = 0
    for query_candidates in candidates:
        positions.append(query_candidates[is_first[offset : offset + query_candidates.size]])
        offset += query_candidates.size
    return _KeptTuples(
        windows=windows,
        positions=positions,
        packed=unique,
        dropped=in_prompt_total + int(everything.size - unique.size),
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
    if not keys:
        raise InputError("no keys to test")
    kept = _kept_tuples(config, prompts, outputs)
    if kept.packed.size == 0:
        raise InputError("nothing to score: the outputs are empty or shorter than the context")
    return _binomial_result(
        "black-box",
        "green tuples",
        keys,
        (kept.packed >> np.uint64(32)).astype(np.uint32),
        (kept.packed & np.uint64(0xFFFFFFFF)).astype(np.uint32),
        kept.dropped,
        config,
    )


def black_box_focused_test(
    config: SchemeConfig,
    keys: Sequence[WatermarkKey],
    prompts: Sequence[Sequence[int]],
    outputs: Sequence[Sequence[int]],
    ours: Any,
    reference: Any,
    *,
    batch_size: int = 16,
) -> RadioactivityResult:
    """The black-box tuples that our model explains better than the reference does.

    The suspect's outputs are filtered and deduplicated as in `black_box_test`. Then only the
    tuples whose token our own model (the served model, without its watermark) finds more
    likely than the reference does, given the same prompt and output so far, are scored. A
    suspect that learned from our outputs writes such tuples when it draws on what it learned
    from us, and those are the tuples that carry the watermark; where the reference (best,
    the model the suspect was fine-tuned from) explains the token at least as well, the token
    says little. Under the null the suspect's outputs and both models are independent of the
    key, so the selection is too: the kept tuples are still independent Bernoulli(gamma), and
    the p-value is the exact binomial tail.
    """
    _check_scheme(config)
    Detector(config)
    if not keys:
        raise InputError("no keys to test")
    width = config.context_width
    for model, role in ((ours, "our model"), (reference, "reference")):
        vocab = int(model.config.vocab_size)
        if config.vocab_size is not None and vocab < config.vocab_size:
            raise InputError(
                f"the {role}'s vocabulary has {vocab} entries, the scheme's "
                f"{config.vocab_size}: it does not share our tokenizer"
            )
    # the windows fit both models' context
    found = _kept_tuples(config, prompts, outputs, min(_positions(ours), _positions(reference)))
    if found.packed.size == 0:
        raise InputError("nothing to score: the outputs are empty or shorter than the context")
    windows, kept, dropped = found.windows, found.positions, found.dropped
    ours_logp = _token_log_probabilities(ours, windows, kept, batch_size)
    reference_logp = _token_log_probabilities(reference, windows, kept, batch_size)
    packed = []
    for window, scored, mine, theirs in zip(windows, kept, ours_logp, reference_logp, strict=True):
        focus = scored[mine > theirs]
        dropped += int(scored.size - focus.size)
        digests = _window_digests(window[:-1], width)[focus - width]
        packed.append(_pack(digests, window[focus]))
    selected = np.concatenate(packed)
    return _binomial_result(
        "black-box",
        "green tuples, focused",
        keys,
        (selected >> np.uint64(32)).astype(np.uint32),
        (selected & np.uint64(0xFFFFFFFF)).astype(np.uint32),
        dropped,
        config,
        allow_empty=True,
    )


def _positions(model: Any) -> int:
    return int(getattr(model.config, "n_positions", 0) or model.config.max_position_embeddings)


def _token_log_probabilities(
    model: Any,
    windows: Sequence[npt.NDArray[np.uint32]],
    positions: Sequence[npt.NDArray[np.int64]],
    batch_size: int,
) -> list[npt.NDArray[np.float64]]:
    """log P(window[i] | window[:i]) under the model, for each window's listed positions."""
    import torch

    found: list[npt.NDArray[np.float64]] = []
    model.eval()
    with torch.no_grad():
        for first in range(0, len(windows), batch_size):
            batch = windows[first : first + batch_size]
            longest = max(max(window.size for window in batch), 1)
            ids = torch.zeros((len(batch), longest), dtype=torch.long)
            mask = torch.zeros((len(batch), longest), dtype=torch.long)
            for row, window in enumerate(batch):
                ids[row, : window.size] = torch.from_numpy(window.astype(np.int64))
                mask[row, : window.size] = 1
            logits = model(input_ids=ids, attention_mask=mask).logits.float()
            log_probabilities = torch.log_softmax(logits, dim=-1)
            for row, window in enumerate(batch):
                wanted = torch.from_numpy(positions[first + row])
                tokens = torch.from_numpy(window.astype(np.int64))[wanted]
                found.append(
                    log_probabilities[row, wanted - 1, tokens].double().numpy()
                    if wanted.numel()
                    else np.zeros(0)
                )
    return found


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


@dataclass(frozen=True)
class _Readings:
    """What teacher forcing read, flattened over every scored context.

    Candidates are the suspect's top-k tokens and, with a reference, the reference's top-k;
    a candidate whose (context, token) tuple already occurred earlier in the window carries
    weight 0 (a model can copy it from its input, and the text is watermarked).
    """

    contexts: int  # positions read
    top1: npt.NDArray[np.uint64]  # unique packed (digest, top-1 token) pairs
    copied_top1: int  # positions whose top-1 was a copy of an earlier tuple, not scored
    candidates: npt.NDArray[np.uint64]  # unique packed (digest, candidate) tuples
    suspect_mass: npt.NDArray[np.float64]  # per candidate: summed suspect probability
    shift: npt.NDArray[np.float64] | None  # per candidate: summed suspect - reference


def _probabilities(model: Any, ids: Any, mask: Any) -> Any:
    import torch

    logits = model(input_ids=ids, attention_mask=mask).logits.float()
    return torch.softmax(logits, dim=-1)


def _read(
    model: Any,
    reference: Any,
    documents: Sequence[Sequence[int]],
    config: SchemeConfig,
    *,
    max_contexts: int,
    top_k: int,
    batch_size: int,
) -> _Readings:
    """Teacher-force the documents through the suspect (and the reference) until
    `max_contexts` contexts are read."""
    import torch

    width = config.context_width
    limit = int(getattr(model.config, "n_positions", 0) or model.config.max_position_embeddings)
    if reference is not None:
        reference_limit = int(
            getattr(reference.config, "n_positions", 0) or reference.config.max_position_embeddings
        )
        limit = min(limit, reference_limit)
    windows = [
        list(document[start : start + limit])
        for document in documents
        for start in range(0, max(len(document) - width, 0), limit - width)
        if len(document[start : start + limit]) > width
    ]
    contexts = 0
    copied_top1 = 0
    top1_parts: list[npt.NDArray[np.uint64]] = []
    candidate_parts: list[npt.NDArray[np.uint64]] = []
    mass_parts: list[npt.NDArray[np.float64]] = []
    shift_parts: list[npt.NDArray[np.float64]] = []
    model.eval()
    if reference is not None:
        reference.eval()
    with torch.no_grad():
        for first in range(0, len(windows), batch_size):
            if contexts >= max_contexts:
                break
            batch = windows[first : first + batch_size]
            longest = max(len(window) for window in batch)
            ids = torch.zeros((len(batch), longest), dtype=torch.long)
            mask = torch.zeros((len(batch), longest), dtype=torch.long)
            for row, window in enumerate(batch):
                ids[row, : len(window)] = torch.tensor(window)
                mask[row, : len(window)] = 1
            suspect = _probabilities(model, ids, mask)  # (batch, positions, vocab)
            suspect_top = torch.topk(suspect, top_k, dim=-1).indices
            if reference is not None:
                against = _probabilities(reference, ids, mask)
                reference_top = torch.topk(against, top_k, dim=-1).indices
                # the union of both top-k lists: a reference candidate already in the
                # suspect's list is dropped (its weight set to 0 below)
                tokens = torch.cat([suspect_top, reference_top], dim=-1)
                repeated = (reference_top[..., :, None] == suspect_top[..., None, :]).any(-1)
                unique = torch.cat([torch.ones_like(suspect_top, dtype=torch.bool), ~repeated], -1)
                shift = (suspect.gather(-1, tokens) - against.gather(-1, tokens)) * unique
            else:
                tokens = suspect_top
                shift = None
            mass = suspect.gather(-1, tokens) * (torch.arange(tokens.shape[-1]) < top_k)
            for row, window in enumerate(batch):
                if contexts >= max_contexts:
                    break
                sequence = np.asarray(window, dtype=np.uint32)
                digests = _window_digests(sequence, width)  # context ending at t = i + width - 1
                keep = min(digests.size, max_contexts - contexts)
                contexts += keep
                positions = np.arange(keep) + width - 1
                at = torch.from_numpy(positions)
                row_tokens = tokens[row, at].numpy().astype(np.uint32)  # (keep, candidates)
                packed = _pack(np.repeat(digests[:keep], row_tokens.shape[1]), row_tokens.ravel())
                packed = packed.reshape(row_tokens.shape)
                # tuple (context ending at j, token j + 1) is in the input at every t > j
                earlier = _pack(digests[: sequence.size - width], sequence[width:])
                copied = _first_index(earlier, packed) < positions[:, None] - (width - 1)
                top1 = packed[:, 0]
                copied_top1 += int(copied[:, 0].sum())
                top1_parts.append(top1[~copied[:, 0]])
                live = ~copied
                candidate_parts.append(packed[live])
                mass_parts.append(mass[row, at].double().numpy()[live])
                if shift is not None:
                    shift_parts.append(shift[row, at].double().numpy()[live])
    if contexts == 0:
        raise InputError("nothing to score: the documents are shorter than the scheme's context")
    # the same (context, token) tuple shares one hash value: sum its weights over positions
    candidates, inverse = np.unique(np.concatenate(candidate_parts), return_inverse=True)

    def summed(parts: list[npt.NDArray[np.float64]]) -> npt.NDArray[np.float64]:
        total = np.bincount(inverse, weights=np.concatenate(parts), minlength=candidates.size)
        return total.astype(np.float64)

    return _Readings(
        contexts=contexts,
        top1=np.unique(np.concatenate(top1_parts)),
        copied_top1=copied_top1,
        candidates=candidates,
        suspect_mass=summed(mass_parts),
        shift=summed(shift_parts) if reference is not None else None,
    )


def _first_index(
    earlier: npt.NDArray[np.uint64], packed: npt.NDArray[np.uint64]
) -> npt.NDArray[np.int64]:
    """Index of each packed tuple's first occurrence in `earlier`; a large number if absent."""
    absent = np.iinfo(np.int64).max
    if earlier.size == 0:
        return np.full(packed.shape, absent, dtype=np.int64)
    unique, first = np.unique(earlier, return_index=True)
    slot = np.minimum(np.searchsorted(unique, packed), unique.size - 1)
    return np.where(unique[slot] == packed, first[slot], absent)


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
    _check_scheme(config)
    if not keys:
        raise InputError("no keys to test")
    for candidate, role in ((model, "suspect"), (reference, "reference")):
        if candidate is None:
            continue
        vocab = int(candidate.config.vocab_size)
        if config.vocab_size is not None and vocab < config.vocab_size:
            raise InputError(
                f"the {role}'s vocabulary has {vocab} entries, the scheme's "
                f"{config.vocab_size}: it does not share our tokenizer, so its predictions "
                "cannot be scored"
            )
    readings = _read(
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
    top1 = _binomial_result(
        "open-weights",
        "top-1 green",
        keys,
        (readings.top1 >> np.uint64(32)).astype(np.uint32),
        (readings.top1 & np.uint64(0xFFFFFFFF)).astype(np.uint32),
        readings.contexts - readings.top1.size,
        config,
    )
    mass = _weighted_result(
        "green mass",
        keys,
        readings.candidates,
        readings.suspect_mass,
        readings.contexts,
        readings.copied_top1,
        config,
    )
    shift = (
        _weighted_result(
            "green mass shift",
            keys,
            readings.candidates,
            readings.shift,
            readings.contexts,
            readings.copied_top1,
            config,
        )
        if readings.shift is not None
        else None
    )
    return OpenWeightsResults(top1=top1, mass=mass, shift=shift)


def _weighted_result(
    statistic: str,
    keys: Sequence[WatermarkKey],
    candidates: npt.NDArray[np.uint64],
    weights: npt.NDArray[np.float64],
    scored: int,
    dropped: int,
    config: SchemeConfig,
) -> RadioactivityResult:
    """S = sum of w * X over distinct (context, token) tuples, against gamma * sum of w.

    Under the null the X are independent Bernoulli(gamma) and the weights w (summed over the
    positions where a tuple was a candidate) are functions of the models and the texts only.
    The p-value is the Chernoff bound
    P(S >= s) <= min over lambda > 0 of exp(-lambda s) prod(1 - gamma + gamma exp(lambda w)),
    valid for weights of either sign and a little conservative.
    """
    gamma = config.effective_gamma
    digests = (candidates >> np.uint64(32)).astype(np.uint32)
    tokens = (candidates & np.uint64(0xFFFFFFFF)).astype(np.uint32)
    words = key_word_array(list(keys))
    threshold = np.uint32(config.green_threshold)
    chunk = max(1, _CELLS_PER_CHUNK // max(tokens.size, 1))
    expected = gamma * float(weights.sum())
    detections = []
    for first in range(0, len(keys), chunk):
        block = words[first : first + chunk, None, :]
        green = hashing.keyed_uniform(block, digests, tokens) < threshold
        scores = green.astype(np.float64) @ weights
        for key, score in zip(keys[first : first + chunk], scores.tolist(), strict=True):
            log10_p = _chernoff_log10(float(score), weights, gamma)
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
        scored=scored,
        dropped=dropped,
        detections=tuple(detections),
        attribution=attribute_detections(detections),
        exact=False,
    )


def _chernoff_log10(observed: float, weights: npt.NDArray[np.float64], gamma: float) -> float:
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
