"""Fused CPU kernels for the processor (numba), bit-identical to `hashing`.

On a CPU, evaluating the keyed hash over (batch, vocabulary) as a chain of whole-tensor torch
ops costs about 13 passes over memory; at batch 32 and a 50k vocabulary that is 20-60 ms, as
much as the model step itself. These kernels make one pass, keep each value in registers and
touch the logits only where a token is green. All arithmetic is on uint64 holding 32-bit
values, masked after each multiplication and addition, exactly as the definition in
`hashing` says; `tests/watermark/test_processor.py` checks them against the numpy twin.

Arrays: `scores` (B, V) float and `row_index` (A,) int64, the rows to mark; per marked row its
last tokens `context` (A, lookback) int64, its key words `row_words` (A, 4) uint64 and
`row_slot` (A,) int64 indexing `token_values` / `anchor_seeds` (slots, V) uint64;
`vocab_ranks` (V,) uint64. Self-hash rows use the candidate's own anchor seed when its rank
beats the context's.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numba import njit, prange

from distillguard.watermark.hashing import (
    ANCHOR_SALT,
    DIGEST_MULTIPLIER,
    DIGEST_SEED,
    MULTIPLIER_1,
    MULTIPLIER_2,
)

__all__ = [
    "PARALLEL_MIN_CELLS",
    "green_list_step",
    "green_list_step_serial",
    "gumbel_step",
    "gumbel_step_serial",
]

_MASK = np.uint64(0xFFFFFFFF)
_M1 = np.uint64(MULTIPLIER_1)
_M2 = np.uint64(MULTIPLIER_2)
_S16 = np.uint64(16)
_S15 = np.uint64(15)
_DIGEST_START = np.uint64((DIGEST_SEED * DIGEST_MULTIPLIER) & 0xFFFFFFFF)
_DIGEST_MULTIPLIER = np.uint64(DIGEST_MULTIPLIER)
_ANCHOR_SALT = np.uint64(ANCHOR_SALT)
_NO_RANK = np.uint64(1 << 32)
_HALF = 0.5
_TWO_POW_32 = 4294967296.0
# A Gumbel value -log(-log r) with r = (u + 1/2) / 2**32 lies in [-3.1, 22.2], so a token whose
# log-probability is more than 25.5 below the row's best can never win the argmax.
_GUMBEL_REACH = 25.5


@njit(cache=True, inline="always")
def _mix32(x: Any) -> Any:
    x ^= x >> _S16
    x = (x * _M1) & _MASK
    x ^= x >> _S15
    x = (x * _M2) & _MASK
    x ^= x >> _S15
    return x


@njit(cache=True, inline="always")
def _row_seed(context: Any, i: int, k0: Any, self_hash: bool) -> tuple[Any, Any]:
    """(seed, context rank) of row i from its last tokens `context[i]` (int64).

    Left-hash: the keyed seed of digest(context). Self-hash: the context's lowest-ranked token
    is the anchor; its seed and rank (2**32 when the window is empty, so the candidate wins).
    """
    lookback = context.shape[1]
    if not self_hash:
        accumulated = (np.uint64(context[i, 0]) + _DIGEST_START) & _MASK
        for j in range(1, lookback):
            accumulated = ((accumulated * _DIGEST_MULTIPLIER) & _MASK) + np.uint64(context[i, j])
            accumulated &= _MASK
        return _mix32(_mix32(accumulated) ^ k0), _NO_RANK
    if lookback == 0:
        return np.uint64(0), _NO_RANK
    anchor = np.uint64(context[i, 0])
    best_rank = _mix32(anchor ^ _ANCHOR_SALT)
    for j in range(1, lookback):
        token = np.uint64(context[i, j])
        rank = _mix32(token ^ _ANCHOR_SALT)
        if rank < best_rank:
            best_rank = rank
            anchor = token
    digest = _mix32((anchor + _DIGEST_START) & _MASK)
    return _mix32(digest ^ k0), best_rank


def _green_list_step(  # pragma: no cover - compiled; covered through the processor tests
    scores: Any,
    out_scores: Any,
    row_index: Any,
    context: Any,
    row_words: Any,
    row_slot: Any,
    token_values: Any,
    anchor_seeds: Any,
    vocab_ranks: Any,
    self_hash: bool,
    threshold: Any,
    delta: float,
) -> None:
    """`out_scores[row] = scores[row] + delta * green` for the rows in `row_index`.

    `context[i]` holds row i's last tokens (int64); the seed is computed here, so one call
    does a whole step. Writing the result while reading the logits replaces a separate copy;
    rows run in parallel (the model's threads are idle while the processor runs).
    """
    vocab = scores.shape[1]
    for i in prange(row_index.shape[0]):
        # Row values hoisted out of the vocabulary loop, and one loop per seeding, so that the
        # inner loop is branch-light; numba is ~50x slower when they are looked up per element.
        seed, context_rank = _row_seed(context, i, row_words[i, 0], self_hash)
        k3 = row_words[i, 3]
        source = scores[row_index[i]]
        out = out_scores[row_index[i]]
        values = token_values[row_slot[i]]
        own_seeds = anchor_seeds[row_slot[i]]
        if self_hash:
            for v in range(vocab):
                candidate_seed = own_seeds[v] if vocab_ranks[v] < context_rank else seed
                green = _mix32(((candidate_seed ^ values[v]) + k3) & _MASK) < threshold
                out[v] = source[v] + delta if green else source[v]
        else:
            for v in range(vocab):
                green = _mix32(((seed ^ values[v]) + k3) & _MASK) < threshold
                out[v] = source[v] + delta if green else source[v]


def _gumbel_step(  # pragma: no cover - compiled; covered through the processor tests
    log_probs: Any,
    context: Any,
    row_words: Any,
    row_slot: Any,
    token_values: Any,
    anchor_seeds: Any,
    vocab_ranks: Any,
    self_hash: bool,
) -> Any:
    """Per row i, argmax_v of log p_v - log(-log r_v) (Aaronson 2022); returns (A,) int64."""
    rows, vocab = log_probs.shape
    chosen = np.empty(rows, dtype=np.int64)
    for i in prange(rows):
        seed, context_rank = _row_seed(context, i, row_words[i, 0], self_hash)
        k3 = row_words[i, 3]
        row = log_probs[i]
        values = token_values[row_slot[i]]
        own_seeds = anchor_seeds[row_slot[i]]
        floor = np.max(row) - _GUMBEL_REACH
        best = -np.inf
        best_index = 0
        for v in range(vocab):
            log_prob = row[v]
            if log_prob < floor:
                continue
            candidate_seed = seed
            if self_hash and vocab_ranks[v] < context_rank:
                candidate_seed = own_seeds[v]
            value = _mix32(((candidate_seed ^ values[v]) + k3) & _MASK)
            r = (float(value) + _HALF) / _TWO_POW_32
            candidate = log_prob - np.log(-np.log(r))
            if candidate > best:
                best = candidate
                best_index = v
        chosen[i] = best_index
    return chosen


# Rows run in parallel when there is enough work; below PARALLEL_MIN_CELLS (rows x vocabulary)
# waking a thread pool costs more than it saves (batch 1 of a 4k vocabulary takes ~7 us serial).
PARALLEL_MIN_CELLS = 1 << 18
green_list_step = njit(cache=True, parallel=True)(_green_list_step)
green_list_step_serial = njit(cache=True)(_green_list_step)
gumbel_step = njit(cache=True, parallel=True)(_gumbel_step)
gumbel_step_serial = njit(cache=True)(_gumbel_step)
