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

Layers. With a provider layer (`SchemeConfig.layering`) every keyed row also carries the
provider's key, one per processor: SPLIT swaps the row's key for the provider's at the steps
whose context coin says so (one pass, as before); STACKED adds the provider's green list after
the tenant's (two passes). Rows without a tenant key stay untouched either way.

Order in `generate`. transformers runs processors passed as `logits_processor=` before its own
temperature and top-p warpers. The green list adds delta to the raw logits, as Kirchenbauer et
al. do. Gumbel-max must see the final distribution, so it takes `temperature` and `top_p` itself
and returns a one-hot row (0 for the chosen token, -inf elsewhere) that later warpers keep.
"""

from __future__ import annotations

import importlib.util
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal, cast

from distillguard.errors import InputError, SchemeError, require

require("torch", "model")
require("transformers", "model")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from transformers import LogitsProcessor  # noqa: E402

from distillguard.watermark import hashing_torch  # noqa: E402
from distillguard.watermark.key import WatermarkKey  # noqa: E402
from distillguard.watermark.layers import coin_key  # noqa: E402
from distillguard.watermark.scheme import Layering, Scheme, SchemeConfig, Seeding  # noqa: E402

__all__ = ["Backend", "TenantWatermarkProcessor"]

Backend = Literal["auto", "kernel", "torch"]

_TWO_POW_32 = 1 << 32
_CACHE_KEYS = 256
_KERNEL_DTYPES = (torch.float32, torch.float64)
_HAVE_NUMBA = importlib.util.find_spec("numba") is not None
# The kernels run their rows in parallel. numba's fallback threading layer (workqueue) aborts on
# concurrent launches from two threads, so calls are serialized; they would compete for the same
# cores anyway.
_KERNEL_LOCK = threading.Lock()


def _as_uint64(tensor: torch.Tensor) -> np.ndarray:
    """Zero-copy uint64 view of an int64 CPU tensor holding 32-bit values."""
    return tensor.numpy().view(np.uint64)


def _int64_array(tensor: torch.Tensor) -> np.ndarray:
    """A contiguous int64 numpy array of token ids (zero-copy when already so)."""
    return np.ascontiguousarray(tensor.to(torch.int64).numpy())


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
        self.generation = 0  # bumped when a slot is reused, so cached row plans go stale
        vocabulary = torch.arange(vocab, dtype=torch.int64, device=device)
        self.vocabulary = vocabulary
        self.vocab_ranks = hashing_torch.anchor_rank(vocabulary)
        self._vocab_digests = hashing_torch.context_digest([vocabulary])
        self._refresh_arrays()

    def _refresh_arrays(self) -> None:
        """numpy views of the tables for the CPU kernels (none on other devices)."""
        if self.device.type == "cpu":
            self._arrays: tuple[np.ndarray, ...] = tuple(
                _as_uint64(table)
                for table in (self.token_values, self.anchor_seeds, self.vocab_ranks)
            )

    def arrays(self) -> tuple[np.ndarray, ...]:
        """(token_values, anchor_seeds, vocab_ranks) as uint64 views, for the CPU kernels."""
        return self._arrays

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
            self.generation += 1
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
        self._refresh_arrays()


@dataclass(frozen=True)
class _Plan:
    """Which rows of a batch are marked, with which key slot: fixed for a whole generation."""

    active: list[int]
    index: torch.Tensor  # (A,) int64
    index_array: np.ndarray
    slot: torch.Tensor  # (A,) int64
    slot_array: np.ndarray
    words: torch.Tensor  # (A, 4) int64 holding 32-bit words
    words_array: np.ndarray  # (A, 4) uint64
    generation: int
    provider: _Plan | None = None  # the same rows under the provider key (layered schemes)


@dataclass(frozen=True)
class _Rows:
    """Torch backend: per marked row, (A,) int64 tensors holding 32-bit values."""

    seed: torch.Tensor  # left-hash seed, or the self-hash context anchor's seed
    context_rank: torch.Tensor  # self-hash: rank of the context anchor (2**32 if none)


class TenantWatermarkProcessor(LogitsProcessor):
    """Watermark each row of a batch with that row's tenant key.

    `row_keys` gives one key (or None for an unwatermarked row) per prompt; when the batch is a
    multiple of it (num_return_sequences, beams), each key covers consecutive rows, as
    transformers expands them. `backend` picks the fused CPU kernel or torch ops; "auto" uses
    the kernel for float32/float64 logits on a CPU when numba is installed. `provider_key` is
    the provider layer's key, required when the scheme has one.
    """

    def __init__(
        self,
        config: SchemeConfig,
        row_keys: Sequence[WatermarkKey | None],
        *,
        temperature: float = 1.0,
        top_p: float = 1.0,
        backend: Backend = "auto",
        provider_key: WatermarkKey | None = None,
    ) -> None:
        if not row_keys:
            raise InputError("row_keys must name a key (or None) for each row")
        if temperature <= 0.0 or not 0.0 < top_p <= 1.0:
            raise SchemeError("temperature must be > 0 and top_p in (0, 1]")
        if backend not in ("auto", "kernel", "torch"):
            raise SchemeError(f"unknown backend {backend!r}")
        if backend == "kernel" and not _HAVE_NUMBA:
            raise SchemeError("the kernel backend needs numba: pip install 'distillguard[model]'")
        if config.has_provider_layer and provider_key is None:
            raise SchemeError(f"the {config.layering.value} layering needs a provider key")
        self.config = config
        self.provider_key = provider_key if config.has_provider_layer else None
        self._coin_words: dict[str, torch.Tensor] = {}
        self.row_keys = list(row_keys)
        self.temperature = temperature
        self.top_p = top_p
        self.backend = backend
        self._tables: dict[tuple[int, str], _KeyTables] = {}
        self._plans: dict[tuple[int, int], _Plan] = {}
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
        tables = self._tables_for(scores.shape[-1], scores.device)
        plan = self._plan(batch, tables)
        if not plan.active:
            return scores
        use_kernel = self.backend == "kernel" or (
            self.backend == "auto"
            and _HAVE_NUMBA
            and scores.device.type == "cpu"
            and scores.dtype in _KERNEL_DTYPES
        )
        context = input_ids[:, length - self._lookback :]
        if len(plan.active) != batch:
            context = context[plan.index]
        scheme = self.config.scheme
        if scheme is Scheme.GREEN_LIST:
            return cast(
                torch.FloatTensor, self._green_layers(scores, context, plan, tables, use_kernel)
            )
        if scheme is Scheme.GUMBEL:
            log_probs = self._log_probs(scores[plan.index])
            if use_kernel:
                chosen = self._gumbel_kernel(log_probs, context, plan, tables)
            else:
                chosen = self._gumbel_torch(log_probs, context, plan, tables)
            out = scores.clone()
            out[plan.index] = float("-inf")
            out[plan.index, chosen] = 0.0
            return cast(torch.FloatTensor, out)
        raise SchemeError(f"unknown scheme {scheme}")

    @property
    def lookback(self) -> int:
        """Tokens a row needs before it is watermarked (context_width; self-hash: one less)."""
        return self._lookback

    def reset_rows(self, row_keys: Sequence[WatermarkKey | None]) -> None:
        """Reuse this processor (and its cached key tables) for a new batch of rows."""
        if not row_keys:
            raise InputError("row_keys must name a key (or None) for each row")
        self.row_keys = list(row_keys)
        self._plans.clear()

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

    def _plan(self, batch: int, tables: _KeyTables) -> _Plan:
        cache_key = (batch, id(tables))
        plan = self._plans.get(cache_key)
        if plan is not None and plan.generation == tables.generation:
            return plan
        keys = self._expand_rows(batch)
        active = [index for index, key in enumerate(keys) if key is not None]
        marked = [key for key in keys if key is not None]
        device = tables.device
        # the provider's slot first, so that the tenants' (most recently used) never evict it
        provider_slot = tables.slot(self.provider_key) if self.provider_key is not None else None
        slots = [tables.slot(key) for key in marked]
        words = np.array([key.words for key in marked], dtype=np.uint64).reshape(-1, 4)
        plan = _Plan(
            active=active,
            index=torch.tensor(active, dtype=torch.int64, device=device),
            index_array=np.array(active, dtype=np.int64),
            slot=torch.tensor(slots, dtype=torch.int64, device=device),
            slot_array=np.array(slots, dtype=np.int64),
            words=torch.from_numpy(words.view(np.int64).copy()).to(device),
            words_array=words,
            generation=tables.generation,
        )
        if self.provider_key is not None and provider_slot is not None:
            provider_words = np.tile(
                np.array(self.provider_key.words, dtype=np.uint64), (len(active), 1)
            )
            provider_slots = np.full(len(active), provider_slot, dtype=np.int64)
            plan = replace(
                plan,
                provider=replace(
                    plan,
                    slot=torch.from_numpy(provider_slots.copy()).to(device),
                    slot_array=provider_slots,
                    words=torch.from_numpy(provider_words.view(np.int64).copy()).to(device),
                    words_array=provider_words,
                ),
            )
        self._plans[cache_key] = plan
        return plan

    def _rows_torch(self, context: torch.Tensor, plan: _Plan) -> _Rows:
        ids = context.to(torch.int64)
        k0 = plan.words[:, 0]
        no_rank = torch.full_like(k0, _TWO_POW_32)
        if not self._self_hash:
            columns = [ids[:, j] for j in range(ids.shape[1])]
            seed = hashing_torch.keyed_seed(hashing_torch.context_digest(columns), k0)
            return _Rows(seed, no_rank)
        if self._lookback == 0:  # the window is the candidate alone
            return _Rows(torch.zeros_like(k0), no_rank)
        window_ranks = hashing_torch.anchor_rank(ids)
        best = window_ranks.argmin(dim=1, keepdim=True)
        anchor = ids.gather(1, best).squeeze(1)
        context_rank = window_ranks.gather(1, best).squeeze(1)
        seed = hashing_torch.keyed_seed(hashing_torch.context_digest([anchor]), k0)
        return _Rows(seed, context_rank)

    # -- layers ----------------------------------------------------------------------------

    def _green_layers(
        self,
        scores: torch.Tensor,
        context: torch.Tensor,
        plan: _Plan,
        tables: _KeyTables,
        use_kernel: bool,
    ) -> torch.Tensor:
        green = self._green_kernel if use_kernel else self._green_torch
        config = self.config
        layering = config.layering
        if layering is Layering.TENANT:
            return green(scores, context, plan, tables, config.delta)
        if plan.provider is None:  # pragma: no cover - __init__ requires the provider key
            raise SchemeError("the provider layer has no key")
        if layering is Layering.STACKED:
            marked = green(scores, context, plan, tables, config.delta)
            return green(marked, context, plan.provider, tables, config.provider_delta)
        if layering is Layering.SPLIT:
            on_provider = self._provider_rows(context)
            chosen = _choose(on_provider, plan.provider, plan)
            return green(scores, context, chosen, tables, config.delta)
        raise SchemeError(f"unknown layering {layering}")  # pragma: no cover - closed enum

    def _provider_rows(self, context: torch.Tensor) -> torch.Tensor:
        """SPLIT: (A,) bool, True where the row's context coin gives the step to the provider."""
        device = context.device
        words = self._coin_words.get(str(device))
        if words is None:
            if self.provider_key is None:  # pragma: no cover - checked in __init__
                raise SchemeError("the provider layer has no key")
            words = torch.tensor(coin_key(self.provider_key).words, dtype=torch.int64)
            words = self._coin_words[str(device)] = words.to(device)
        ids = context.to(torch.int64)
        digests = hashing_torch.context_digest([ids[:, j] for j in range(ids.shape[1])])
        return hashing_torch.position_coin(words, digests) < self.config.provider_threshold

    # -- torch backend ----------------------------------------------------------------------

    def _uniforms_torch(
        self, context: torch.Tensor, plan: _Plan, tables: _KeyTables
    ) -> torch.Tensor:
        """Uniform values (A, V), bit-identical to `hashing.keyed_uniform`."""
        rows = self._rows_torch(context, plan)
        token_values = tables.token_values[plan.slot]
        seed = rows.seed.unsqueeze(1)
        if self._self_hash:
            candidate_wins = tables.vocab_ranks.unsqueeze(0) < rows.context_rank.unsqueeze(1)
            seed = torch.where(candidate_wins, tables.anchor_seeds[plan.slot], seed)
        return hashing_torch.combine(seed, token_values, plan.words[:, 3].unsqueeze(1))

    def _green_torch(
        self,
        scores: torch.Tensor,
        context: torch.Tensor,
        plan: _Plan,
        tables: _KeyTables,
        delta: float,
    ) -> torch.Tensor:
        green = self._uniforms_torch(context, plan, tables) < self.config.green_threshold
        out = scores.clone()
        out[plan.index] += green.to(scores.dtype) * delta
        return out

    def _gumbel_torch(
        self, log_probs: torch.Tensor, context: torch.Tensor, plan: _Plan, tables: _KeyTables
    ) -> torch.Tensor:
        uniforms = self._uniforms_torch(context, plan, tables)
        r = (uniforms.to(torch.float64) + 0.5) / float(_TWO_POW_32)
        return torch.argmax(log_probs - torch.log(-torch.log(r)), dim=-1)

    # -- fused CPU kernel backend ---------------------------------------------------------

    def _green_kernel(
        self,
        scores: torch.Tensor,
        context: torch.Tensor,
        plan: _Plan,
        tables: _KeyTables,
        delta: float,
    ) -> torch.Tensor:
        source = scores.contiguous()
        out = torch.empty_like(source)
        if len(plan.active) != source.shape[0]:  # rows without a key keep their logits
            out.copy_(source)
        kernels = _kernels()
        parallel = len(plan.active) * source.shape[1] >= kernels.PARALLEL_MIN_CELLS
        step = kernels.green_list_step if parallel else kernels.green_list_step_serial
        with _KERNEL_LOCK:
            step(
                source.numpy(),
                out.numpy(),
                plan.index_array,
                _int64_array(context),
                plan.words_array,
                plan.slot_array,
                *tables.arrays(),
                self._self_hash,
                np.uint64(self.config.green_threshold),
                float(delta),
            )
        return out

    def _gumbel_kernel(
        self, log_probs: torch.Tensor, context: torch.Tensor, plan: _Plan, tables: _KeyTables
    ) -> torch.Tensor:
        kernels = _kernels()
        parallel = log_probs.shape[0] * log_probs.shape[1] >= kernels.PARALLEL_MIN_CELLS
        step = kernels.gumbel_step if parallel else kernels.gumbel_step_serial
        with _KERNEL_LOCK:
            chosen = step(
                log_probs.contiguous().numpy(),
                _int64_array(context),
                plan.words_array,
                plan.slot_array,
                *tables.arrays(),
                self._self_hash,
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


def _choose(on_provider: torch.Tensor, provider: _Plan, tenant: _Plan) -> _Plan:
    """The rows' plan for one SPLIT step: the provider's key where `on_provider` (A,) is set."""
    mask = on_provider.cpu().numpy()
    return replace(
        tenant,
        slot=torch.where(on_provider, provider.slot, tenant.slot),
        slot_array=np.where(mask, provider.slot_array, tenant.slot_array),
        words=torch.where(on_provider.unsqueeze(1), provider.words, tenant.words),
        words_array=np.where(mask[:, None], provider.words_array, tenant.words_array),
        provider=None,
    )
