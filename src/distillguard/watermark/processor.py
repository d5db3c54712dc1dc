"""The watermark inside sampling: a batched `transformers.LogitsProcessor`.

Each row of the batch carries its own tenant key (or none), so requests from different tenants
share one forward pass. The vocabulary is the width of the logits. Per key the processor caches
the keyed value of every candidate token (shape (V,)); per step it computes one context seed
per row and evaluates the hash over (B, V): on a CPU in one fused pass (`kernels`, numba), on
other devices with whole-tensor torch ops (`hashing_torch`). Both are bit-identical to the numpy
twin the detector uses. No RNG is reseeded and nothing is permuted.

Seeding of the first tokens. The candidate at position i of prompt + completion is seeded by
positions i - context_width .. i - 1 (left-hash) or i - context_width + 1 .. i (self-hash), the
prompt included. While the sequence is shorter than that, the row is left unwatermarked.
Detection reproduces this exactly from prompt + completion; given the completion alone it uses
its first context_width tokens as context only. With left padding (batched prompts of unequal
length) a prompt shorter than the context seeds the first tokens with pad ids; those tokens are
exactly the ones a completion-only detection does not score.

Order in `generate`. transformers runs processors passed as `logits_processor=` before its own
temperature and top-p warpers. The green list adds delta to the raw logits, as Kirchenbauer et
al. do. Gumbel-max must see the final distribution, so it takes `temperature` and `top_p` itself
and returns a one-hot row (0 for the chosen token, -inf elsewhere) that later warpers keep.
"""

from __future__ import annotations

import importlib.util
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, cast

from distillguard.errors import InputError, SchemeError, require

require("torch", "model")
require("transformers", "model")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from transformers import LogitsProcessor  # noqa: E402

from distillguard.watermark import hashing_torch  # noqa: E402
from distillguard.watermark.key import WatermarkKey  # noqa: E402
from distillguard.watermark.scheme import Scheme, SchemeConfig, Seeding  # noqa: E402

__all__ = ["Backend", "TenantWatermarkProcessor"]

Backend = Literal["auto", "kernel", "torch"]

_TWO_POW_32 = 1 << 32
_CACHE_KEYS = 256
_KERNEL_DTYPES = (torch.float32, torch.float64)
_HAVE_NUMBA = importlib.util.find_spec("numba") is not None


def _as_uint64(tensor: torch.Tensor) -> np.ndarray:
    """Zero-copy uint64 view of an int64 CPU tensor holding 32-bit values."""
    return tensor.numpy().view(np.uint64)


def _as_int64_tensor(array: np.ndarray) -> torch.Tensor:
    """Zero-copy int64 tensor over a uint64 array holding values below 2**63."""
    return torch.from_numpy(np.ascontiguousarray(array).view(np.int64))


def _kernels() -> Any:
    """The numba kernels module, imported on first use (compiling takes a moment)."""
    from distillguard.watermark import kernels

    return kernels


class _KeyTables:
    """Per-key candidate tables for one (vocabulary, device), in LRU slots.

    `token_values[slot]` = mix32(v ^ k2) and `anchor_seeds[slot]` = the self-hash seed of
    anchor v, both (V,) int64 holding 32-bit values. One preallocated matrix, so a step with
    many tenants indexes slots instead of stacking tables.
    """

    def __init__(self, vocab: int, device: torch.device) -> None:
        self.vocab = vocab
        self.device = device
        self.capacity = 8
        self.token_values = torch.empty(self.capacity, vocab, dtype=torch.int64, device=device)
        self.anchor_seeds = torch.empty_like(self.token_values)
        self.slots: OrderedDict[bytes, int] = OrderedDict()
        vocabulary = torch.arange(vocab, dtype=torch.int64, device=device)
        self.vocabulary = vocabulary
        self.vocab_ranks = hashing_torch.anchor_rank(vocabulary)
        self._vocab_digests = hashing_torch.context_digest([vocabulary])

    def slot(self, key: WatermarkKey) -> int:
        found = self.slots.get(key.secret)
        if found is not None:
            self.slots.move_to_end(key.secret)
            return found
        if len(self.slots) < self.capacity:
            index = len(self.slots)
        elif self.capacity < _CACHE_KEYS:
            self._grow()
            index = len(self.slots)
        else:
            _, index = self.slots.popitem(last=False)
        k0, k1, k2, _ = key.words
        self.token_values[index] = hashing_torch.token_value(self.vocabulary, k1, k2)
        self.anchor_seeds[index] = hashing_torch.keyed_seed(self._vocab_digests, k0)
        self.slots[key.secret] = index
        return index

    def _grow(self) -> None:
        self.capacity = min(self.capacity * 2, _CACHE_KEYS)
        for name in ("token_values", "anchor_seeds"):
            old = getattr(self, name)
            new = torch.empty(self.capacity, self.vocab, dtype=torch.int64, device=self.device)
            new[: old.shape[0]] = old
            setattr(self, name, new)


@dataclass(frozen=True)
class _Rows:
    """Per marked row, all (A,) int64 tensors holding 32-bit values (slot: table index)."""

    index: torch.Tensor
    slot: torch.Tensor
    seed: torch.Tensor  # left-hash seed, or the self-hash context anchor's seed
    k3: torch.Tensor
    context_rank: torch.Tensor  # self-hash: rank of the context anchor (2**32 if none)


class TenantWatermarkProcessor(LogitsProcessor):
    """Watermark each row of a batch with that row's tenant key.

    `row_keys` gives one key (or None for an unwatermarked row) per prompt; when the batch is a
    multiple of it (num_return_sequences, beams), each key covers consecutive rows, as
    transformers expands them. `backend` picks the fused CPU kernel or torch ops; "auto" uses
    the kernel for float32/float64 logits on a CPU when numba is installed.
    """

    def __init__(
        self,
        config: SchemeConfig,
        row_keys: Sequence[WatermarkKey | None],
        *,
        temperature: float = 1.0,
        top_p: float = 1.0,
        backend: Backend = "auto",
    ) -> None:
        if not row_keys:
            raise InputError("row_keys must name a key (or None) for each row")
        if temperature <= 0.0 or not 0.0 < top_p <= 1.0:
            raise SchemeError("temperature must be > 0 and top_p in (0, 1]")
        if backend not in ("auto", "kernel", "torch"):
            raise SchemeError(f"unknown backend {backend!r}")
        if backend == "kernel" and not _HAVE_NUMBA:
            raise SchemeError("the kernel backend needs numba: pip install 'distillguard[model]'")
        self.config = config
        self.row_keys = list(row_keys)
        self.temperature = temperature
        self.top_p = top_p
        self.backend = backend
        self._tables: dict[tuple[int, str], _KeyTables] = {}
        self._self_hash = config.seeding is Seeding.SELF_HASH
        if config.seeding is Seeding.LEFT_HASH:
            self._lookback = config.context_width
        elif config.seeding is Seeding.SELF_HASH:
            self._lookback = config.context_width - 1
        else:  # pragma: no cover - Seeding is closed
            raise SchemeError(f"unknown seeding {config.seeding}")

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        batch, length = input_ids.shape
        if length < self._lookback:
            return scores
        keys = self._expand_rows(batch)
        active = [index for index, key in enumerate(keys) if key is not None]
        if not active:
            return scores
        vocab = scores.shape[-1]
        tables = self._tables_for(vocab, scores.device)
        marked = [key for key in keys if key is not None]
        use_kernel = self.backend == "kernel" or (
            self.backend == "auto"
            and _HAVE_NUMBA
            and scores.device.type == "cpu"
            and scores.dtype in _KERNEL_DTYPES
        )
        if use_kernel:
            rows = self._rows_kernel(input_ids, active, marked, tables)
        else:
            rows = self._rows_torch(input_ids, active, marked, tables)
        scheme = self.config.scheme
        if scheme is Scheme.GREEN_LIST:
            marked_scores = self._green_kernel if use_kernel else self._green_torch
            return cast(torch.FloatTensor, marked_scores(scores, rows, tables))
        if scheme is Scheme.GUMBEL:
            choose = self._gumbel_kernel if use_kernel else self._gumbel_torch
            chosen = choose(self._log_probs(scores[rows.index]), rows, tables)
            out = scores.clone()
            out[rows.index] = float("-inf")
            out[rows.index, chosen] = 0.0
            return cast(torch.FloatTensor, out)
        raise SchemeError(f"unknown scheme {scheme}")

    # -- per-row state --------------------------------------------------------------------

    def _expand_rows(self, batch: int) -> list[WatermarkKey | None]:
        given = len(self.row_keys)
        if batch == given:
            return self.row_keys
        if batch % given:
            raise InputError(f"batch of {batch} rows does not match {given} row keys")
        repeat = batch // given
        return [key for key in self.row_keys for _ in range(repeat)]

    def _tables_for(self, vocab: int, device: torch.device) -> _KeyTables:
        cache_key = (vocab, str(device))
        tables = self._tables.get(cache_key)
        if tables is None:
            tables = self._tables[cache_key] = _KeyTables(vocab, device)
        return tables

    def _rows_kernel(
        self,
        input_ids: torch.Tensor,
        active: list[int],
        marked: list[WatermarkKey],
        tables: _KeyTables,
    ) -> _Rows:
        """Row state computed by the kernel from the last tokens: no small torch ops per step."""
        kernels = _kernels()

        index = torch.tensor(active, dtype=torch.int64)
        slots = torch.tensor([tables.slot(key) for key in marked], dtype=torch.int64)
        words = np.array([key.words for key in marked], dtype=np.uint64)
        length = input_ids.shape[1]
        context = input_ids[index, length - self._lookback :].numpy().astype(np.uint64)
        seeds, ranks = kernels.row_seeds(context, words, self._self_hash)
        return _Rows(
            index,
            slots,
            _as_int64_tensor(seeds),
            _as_int64_tensor(words[:, 3]),
            _as_int64_tensor(ranks),
        )

    def _rows_torch(
        self,
        input_ids: torch.Tensor,
        active: list[int],
        marked: list[WatermarkKey],
        tables: _KeyTables,
    ) -> _Rows:
        device = input_ids.device
        slots = torch.tensor([tables.slot(key) for key in marked], dtype=torch.int64, device=device)
        words = torch.tensor([key.words for key in marked], dtype=torch.int64, device=device)
        k0, k3 = words[:, 0], words[:, 3]
        index = torch.tensor(active, dtype=torch.int64, device=device)
        ids = input_ids[index].to(torch.int64)
        width = self.config.context_width
        length = ids.shape[1]
        no_rank = torch.full_like(k0, _TWO_POW_32)
        if not self._self_hash:
            columns = [ids[:, length - width + j] for j in range(width)]
            digest = hashing_torch.context_digest(columns)
            seed = hashing_torch.keyed_seed(digest, k0)
            return _Rows(index, slots, seed, k3, no_rank)
        if self._lookback == 0:  # the window is the candidate alone
            return _Rows(index, slots, torch.zeros_like(k0), k3, no_rank)
        window = ids[:, length - self._lookback :]  # (A, h-1)
        window_ranks = hashing_torch.anchor_rank(window)
        best = window_ranks.argmin(dim=1, keepdim=True)
        anchor = window.gather(1, best).squeeze(1)
        context_rank = window_ranks.gather(1, best).squeeze(1)
        seed = hashing_torch.keyed_seed(hashing_torch.context_digest([anchor]), k0)
        return _Rows(index, slots, seed, k3, context_rank)

    # -- torch backend ----------------------------------------------------------------------

    def _uniforms_torch(self, rows: _Rows, tables: _KeyTables) -> torch.Tensor:
        """Uniform values (A, V), bit-identical to `hashing.keyed_uniform`."""
        token_values = tables.token_values[rows.slot]
        seed = rows.seed.unsqueeze(1)
        if self._self_hash:
            candidate_wins = tables.vocab_ranks.unsqueeze(0) < rows.context_rank.unsqueeze(1)
            seed = torch.where(candidate_wins, tables.anchor_seeds[rows.slot], seed)
        return hashing_torch.combine(seed, token_values, rows.k3.unsqueeze(1))

    def _green_torch(self, scores: torch.Tensor, rows: _Rows, tables: _KeyTables) -> torch.Tensor:
        green = self._uniforms_torch(rows, tables) < self.config.green_threshold
        bias = green.to(scores.dtype) * self.config.delta
        out = scores.clone()
        out[rows.index] += bias
        return out

    def _gumbel_torch(
        self, log_probs: torch.Tensor, rows: _Rows, tables: _KeyTables
    ) -> torch.Tensor:
        r = (self._uniforms_torch(rows, tables).to(torch.float64) + 0.5) / float(_TWO_POW_32)
        return torch.argmax(log_probs - torch.log(-torch.log(r)), dim=-1)

    # -- fused CPU kernel backend ---------------------------------------------------------

    @staticmethod
    def _kernel_arguments(rows: _Rows, tables: _KeyTables) -> tuple[np.ndarray, ...]:
        return (
            _as_uint64(rows.seed),
            _as_uint64(rows.k3),
            _as_uint64(rows.context_rank),
            rows.slot.numpy(),
            _as_uint64(tables.token_values),
            _as_uint64(tables.anchor_seeds),
            _as_uint64(tables.vocab_ranks),
        )

    def _green_kernel(self, scores: torch.Tensor, rows: _Rows, tables: _KeyTables) -> torch.Tensor:
        kernels = _kernels()

        source = scores.contiguous()
        out = torch.empty_like(source)
        if rows.index.numel() != source.shape[0]:  # rows without a key keep their logits
            out.copy_(source)
        kernels.green_list_bias(
            source.numpy(),
            out.numpy(),
            rows.index.numpy(),
            *self._kernel_arguments(rows, tables),
            self._self_hash,
            np.uint64(self.config.green_threshold),
            float(self.config.delta),
        )
        return out

    def _gumbel_kernel(
        self, log_probs: torch.Tensor, rows: _Rows, tables: _KeyTables
    ) -> torch.Tensor:
        kernels = _kernels()

        chosen = kernels.gumbel_choice(
            log_probs.contiguous().numpy(), *self._kernel_arguments(rows, tables), self._self_hash
        )
        return torch.from_numpy(chosen)

    # -- Gumbel sampling distribution -------------------------------------------------------

    def _log_probs(self, scores: torch.Tensor) -> torch.Tensor:
        """log p of the distribution sampled from: temperature, then top-p (A, V) float64."""
        log_probs = torch.log_softmax(scores.to(torch.float64) / self.temperature, dim=-1)
        if self.top_p < 1.0:
            sorted_log_probs, order = log_probs.sort(dim=-1, descending=True)
            probabilities = sorted_log_probs.exp()
            # drop a token once the mass before it reaches top_p; the first always stays
            drop_sorted = probabilities.cumsum(dim=-1) - probabilities >= self.top_p
            drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
            log_probs = log_probs.masked_fill(drop, float("-inf"))
        return log_probs
