"""The black-box tests: a suspect's outputs to our prompts, scored like any text.

Each (context, token) tuple counts once across all outputs, and tuples whose context also
occurs in the query's prompt are dropped: a watermarked prompt echoed back would otherwise
make a clean model look radioactive. The focused test scores, of those, only the tuples our
own model explains better than a reference does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from distillguard.errors import InputError
from distillguard.forensics.radioactivity.scoring import (
    RadioactivityResult,
    binomial_result,
    check_scheme,
    check_vocabulary,
    pack,
    window_digests,
)
from distillguard.forensics.radioactivity.teacher_forcing import (
    context_length,
    token_log_probabilities,
)
from distillguard.watermark.detector import Detector
from distillguard.watermark.key import WatermarkKey
from distillguard.watermark.scheme import SchemeConfig

__all__ = [
    "ScoredTuples",
    "black_box_focused_test",
    "black_box_test",
    "black_box_tuples",
    "focused_tuples",
]


@dataclass(frozen=True)
class ScoredTuples:
    """The distinct (context digest, token) tuples a black-box test scores, packed."""

    packed: npt.NDArray[np.uint64]
    dropped: int  # repeats, contexts seen in the prompts, and (focused) tuples not selected


def black_box_tuples(
    config: SchemeConfig, prompts: Sequence[Sequence[int]], outputs: Sequence[Sequence[int]]
) -> ScoredTuples:
    """The tuples `black_box_test` scores: kept after deduplication and the prompt filter."""
    check_scheme(config)
    kept = _kept_tuples(config, prompts, outputs)
    return ScoredTuples(kept.packed, kept.dropped)


def black_box_test(
    config: SchemeConfig,
    keys: Sequence[WatermarkKey],
    prompts: Sequence[Sequence[int]],
    outputs: Sequence[Sequence[int]],
) -> RadioactivityResult:
    """Score a suspect's outputs (token ids, one per prompt) against every key."""
    check_scheme(config)
    Detector(config)  # the same checks a detection makes
    if not keys:
        raise InputError("no keys to test")
    kept = black_box_tuples(config, prompts, outputs)
    if kept.packed.size == 0:
        raise InputError("nothing to score: the outputs are empty or shorter than the context")
    return binomial_result("black-box", "green tuples", keys, kept.packed, kept.dropped, config)


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
    if not keys:
        raise InputError("no keys to test")
    focused = focused_tuples(config, prompts, outputs, ours, reference, batch_size=batch_size)
    return binomial_result(
        "black-box",
        "green tuples, focused",
        keys,
        focused.packed,
        focused.dropped,
        config,
        allow_empty=True,
    )


def focused_tuples(
    config: SchemeConfig,
    prompts: Sequence[Sequence[int]],
    outputs: Sequence[Sequence[int]],
    ours: Any,
    reference: Any,
    *,
    batch_size: int = 16,
) -> ScoredTuples:
    """The tuples `black_box_focused_test` scores (see there): key-independent, so a layered
    test may score them under any key."""
    check_scheme(config)
    Detector(config)
    width = config.context_width
    check_vocabulary(ours, "our model", config)
    check_vocabulary(reference, "reference", config)
    # the windows fit both models' context
    limit = min(context_length(ours), context_length(reference))
    found = _kept_tuples(config, prompts, outputs, limit)
    if found.packed.size == 0:
        raise InputError("nothing to score: the outputs are empty or shorter than the context")
    windows, kept, dropped = found.windows, found.positions, found.dropped
    ours_logp = token_log_probabilities(ours, windows, kept, batch_size)
    reference_logp = token_log_probabilities(reference, windows, kept, batch_size)
    packed = []
    for window, scored, mine, theirs in zip(windows, kept, ours_logp, reference_logp, strict=True):
        focus = scored[mine > theirs]
        dropped += int(scored.size - focus.size)
        digests = window_digests(window[:-1], width)[focus - width]
        packed.append(pack(digests, window[focus]))
    return ScoredTuples(np.concatenate(packed), dropped)


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
        digests = window_digests(window[:-1], width)[first - width :]
        in_prompt = np.isin(digests, window_digests(prompt_ids, width))
        in_prompt_total += int(in_prompt.sum())
        candidates.append(np.flatnonzero(~in_prompt) + first)
        packed_parts.append(pack(digests[~in_prompt], window[first:][~in_prompt]))
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
