"""Local models over token windows: what a suspect (and a reference) predicts on given text.

Teacher forcing runs a causal LM (transformers) over a window and reads its next-token
distribution at every position. Two readers: `token_log_probabilities`, a model's log
probability of listed tokens of each window (the focused black-box test), and `read`, the
suspect's top-k candidates at every position of our documents, with their probabilities and,
given a reference, the shift between the two (the open-weights tests). torch is imported
when a model is read.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from distillguard.errors import InputError
from distillguard.forensics.radioactivity.scoring import pack, window_digests
from distillguard.watermark.scheme import SchemeConfig

__all__ = ["Readings", "context_length", "read", "right_padded", "token_log_probabilities"]


def context_length(model: Any) -> int:
    """The most positions the model reads at once."""
    return int(getattr(model.config, "n_positions", 0) or model.config.max_position_embeddings)


def right_padded(batch: Sequence[Sequence[int] | npt.NDArray[np.uint32]]) -> tuple[Any, Any]:
    """The windows as one (batch, longest) tensor of token ids, padded with 0 on the right,
    and its attention mask."""
    import torch

    longest = max(max(len(window) for window in batch), 1)
    ids = torch.zeros((len(batch), longest), dtype=torch.long)
    mask = torch.zeros((len(batch), longest), dtype=torch.long)
    for row, window in enumerate(batch):
        ids[row, : len(window)] = torch.from_numpy(np.asarray(window, dtype=np.int64))
        mask[row, : len(window)] = 1
    return ids, mask


def token_log_probabilities(
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
            ids, mask = right_padded(batch)
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
class Readings:
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


def read(
    model: Any,
    reference: Any,
    documents: Sequence[Sequence[int]],
    config: SchemeConfig,
    *,
    max_contexts: int,
    top_k: int,
    batch_size: int,
) -> Readings:
    """Teacher-force the documents through the suspect (and the reference) until
    `max_contexts` contexts are read."""
    import torch

    width = config.context_width
    limit = context_length(model)
    if reference is not None:
        limit = min(limit, context_length(reference))
    windows = _windows(documents, width, limit)
    collector = _Collector(width, max_contexts, shift=[] if reference is not None else None)
    model.eval()
    if reference is not None:
        reference.eval()
    with torch.no_grad():
        for first in range(0, len(windows), batch_size):
            if collector.full:
                break
            batch = windows[first : first + batch_size]
            candidates = _candidates(model, reference, batch, top_k)
            for row, window in enumerate(batch):
                if collector.full:
                    break
                collector.add(window, candidates, row)
    if collector.contexts == 0:
        raise InputError("nothing to score: the documents are shorter than the scheme's context")
    return collector.readings()


def _windows(documents: Sequence[Sequence[int]], width: int, limit: int) -> list[list[int]]:
    """Each document as windows of at most `limit` tokens, each overlapping the one before by
    the context width; windows no longer than the context are left out."""
    return [
        list(document[start : start + limit])
        for document in documents
        for start in range(0, max(len(document) - width, 0), limit - width)
        if len(document[start : start + limit]) > width
    ]


@dataclass(frozen=True)
class _Candidates:
    """One batch's candidate tokens at every position; each (batch, positions, candidates)."""

    tokens: Any  # the suspect's top-k, then (with a reference) the reference's top-k
    mass: Any  # the suspect's probability of each of its own top-k; 0 for the reference's
    shift: Any | None  # suspect - reference probability; 0 for a repeated reference candidate


def _probabilities(model: Any, ids: Any, mask: Any) -> Any:
    import torch

    logits = model(input_ids=ids, attention_mask=mask).logits.float()
    return torch.softmax(logits, dim=-1)


def _candidates(model: Any, reference: Any, batch: list[list[int]], top_k: int) -> _Candidates:
    import torch

    ids, mask = right_padded(batch)
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
    return _Candidates(tokens=tokens, mass=mass, shift=shift)


@dataclass
class _Collector:
    """Gathers the windows' candidate tuples, up to `max_contexts` contexts in all."""

    width: int
    max_contexts: int
    shift: list[npt.NDArray[np.float64]] | None  # None without a reference
    contexts: int = 0
    copied_top1: int = 0
    top1: list[npt.NDArray[np.uint64]] = field(default_factory=list)
    candidates: list[npt.NDArray[np.uint64]] = field(default_factory=list)
    mass: list[npt.NDArray[np.float64]] = field(default_factory=list)

    @property
    def full(self) -> bool:
        return self.contexts >= self.max_contexts

    def add(self, window: list[int], candidates: _Candidates, row: int) -> None:
        """The candidates of one window (row `row` of its batch) that do not copy the input."""
        import torch

        width = self.width
        sequence = np.asarray(window, dtype=np.uint32)
        digests = window_digests(sequence, width)  # context ending at t = i + width - 1
        keep = min(digests.size, self.max_contexts - self.contexts)
        self.contexts += keep
        positions = np.arange(keep) + width - 1
        at = torch.from_numpy(positions)
        row_tokens = candidates.tokens[row, at].numpy().astype(np.uint32)  # (keep, candidates)
        packed = pack(np.repeat(digests[:keep], row_tokens.shape[1]), row_tokens.ravel())
        packed = packed.reshape(row_tokens.shape)
        # tuple (context ending at j, token j + 1) is in the input at every t > j
        earlier = pack(digests[: sequence.size - width], sequence[width:])
        copied = _first_index(earlier, packed) < positions[:, None] - (width - 1)
        top1 = packed[:, 0]
        self.copied_top1 += int(copied[:, 0].sum())
        self.top1.append(top1[~copied[:, 0]])
        live = ~copied
        self.candidates.append(packed[live])
        self.mass.append(candidates.mass[row, at].double().numpy()[live])
        if self.shift is not None and candidates.shift is not None:
            self.shift.append(candidates.shift[row, at].double().numpy()[live])

    def readings(self) -> Readings:
        # the same (context, token) tuple shares one hash value: sum its weights over positions
        candidates, inverse = np.unique(np.concatenate(self.candidates), return_inverse=True)

        def summed(parts: list[npt.NDArray[np.float64]]) -> npt.NDArray[np.float64]:
            total = np.bincount(inverse, weights=np.concatenate(parts), minlength=candidates.size)
            return total.astype(np.float64)

        return Readings(
            contexts=self.contexts,
            top1=np.unique(np.concatenate(self.top1)),
            copied_top1=self.copied_top1,
            candidates=candidates,
            suspect_mass=summed(self.mass),
            shift=summed(self.shift) if self.shift is not None else None,
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
