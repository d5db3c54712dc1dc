"""The watermark inside sampling: a batched `transformers.LogitsProcessor`.

Each row of the batch carries its own tenant key (or none), so requests from different tenants
share one forward pass. The vocabulary is the width of the logits. Per key the processor caches
the keyed value of every candidate token (shape (V,)); per step it computes one context seed
per row and one vectorized hash over (B, V). No RNG is reseeded and nothing is permuted.

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

from collections import OrderedDict
from collections.abc import Sequence
from typing import cast

from distillguard.errors import InputError, SchemeError, require

require("torch", "model")
require("transformers", "model")

import torch  # noqa: E402
from transformers import LogitsProcessor  # noqa: E402

from distillguard.watermark import hashing_torch  # noqa: E402
from distillguard.watermark.key import WatermarkKey  # noqa: E402
from distillguard.watermark.scheme import Scheme, SchemeConfig, Seeding  # noqa: E402

__all__ = ["TenantWatermarkProcessor"]

_TWO_POW_32 = float(1 << 32)
_CACHE_SIZE = 256


class TenantWatermarkProcessor(LogitsProcessor):
    """Watermark each row of a batch with that row's tenant key.

    `row_keys` gives one key (or None for an unwatermarked row) per prompt; when the batch is a
    multiple of it (num_return_sequences, beams), each key covers consecutive rows, as
    transformers expands them.
    """

    def __init__(
        self,
        config: SchemeConfig,
        row_keys: Sequence[WatermarkKey | None],
        *,
        temperature: float = 1.0,
        top_p: float = 1.0,
    ) -> None:
        if not row_keys:
            raise InputError("row_keys must name a key (or None) for each row")
        if temperature <= 0.0 or not 0.0 < top_p <= 1.0:
            raise SchemeError("temperature must be > 0 and top_p in (0, 1]")
        self.config = config
        self.row_keys = list(row_keys)
        self.temperature = temperature
        self.top_p = top_p
        self._tables: OrderedDict[tuple[bytes, int, str], tuple[torch.Tensor, torch.Tensor]] = (
            OrderedDict()
        )
        self._lookback = (
            config.context_width
            if config.seeding is Seeding.LEFT_HASH
            else config.context_width - 1
        )

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        batch, length = input_ids.shape
        if length < self._lookback:
            return scores
        rows = self._expand_rows(batch)
        active = [index for index, key in enumerate(rows) if key is not None]
        if not active:
            return scores
        active_keys = [key for key in rows if key is not None]
        active_ids = input_ids if len(active) == batch else input_ids[active]
        uniforms = self._uniforms(active_ids.to(torch.int64), active_keys, scores)
        return cast(torch.FloatTensor, self._apply(scores, active, uniforms))

    # -- the keyed values over the vocabulary -------------------------------------------

    def _expand_rows(self, batch: int) -> list[WatermarkKey | None]:
        given = len(self.row_keys)
        if batch == given:
            return self.row_keys
        if batch % given:
            raise InputError(f"batch of {batch} rows does not match {given} row keys")
        repeat = batch // given
        return [key for key in self.row_keys for _ in range(repeat)]

    def _key_tables(
        self, key: WatermarkKey, vocab: int, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per key and vocabulary: candidate values mix32(v ^ k2) and self-hash anchor seeds."""
        cache_key = (key.secret, vocab, str(device))
        cached = self._tables.get(cache_key)
        if cached is not None:
            self._tables.move_to_end(cache_key)
            return cached
        k0, k1, k2, _ = key.words
        vocabulary = torch.arange(vocab, dtype=torch.int64, device=device)
        token_values = hashing_torch.mix32(vocabulary ^ k2)
        anchor_seeds = hashing_torch.mix32(
            hashing_torch.mix32(hashing_torch.context_digest([vocabulary]) ^ k0) ^ k1
        )
        self._tables[cache_key] = (token_values, anchor_seeds)
        if len(self._tables) > _CACHE_SIZE:
            self._tables.popitem(last=False)
        return token_values, anchor_seeds

    def _uniforms(
        self, ids: torch.Tensor, keys: list[WatermarkKey], scores: torch.Tensor
    ) -> torch.Tensor:
        """Uniform 32-bit values, shape (active rows, V), bit-identical to the numpy twin."""
        vocab = scores.shape[-1]
        device = scores.device
        index_of: dict[bytes, int] = {}
        tables: list[tuple[torch.Tensor, torch.Tensor]] = []
        row_table: list[int] = []
        for key in keys:
            if key.secret not in index_of:
                index_of[key.secret] = len(tables)
                tables.append(self._key_tables(key, vocab, device))
            row_table.append(index_of[key.secret])
        words = torch.tensor([key.words for key in keys], dtype=torch.int64, device=device)
        k0, k1, k3 = words[:, 0:1], words[:, 1:2], words[:, 3:4]  # (B, 1)
        if len(tables) == 1:
            token_values = tables[0][0].unsqueeze(0)  # (1, V), broadcast over rows
        else:
            stacked = torch.stack([table[0] for table in tables])
            token_values = stacked[torch.tensor(row_table, device=device)]  # (B, V)

        width = self.config.context_width
        seeding = self.config.seeding
        if seeding is Seeding.LEFT_HASH:
            columns = [ids[:, ids.shape[1] - width + j] for j in range(width)]
            digest = hashing_torch.context_digest(columns).unsqueeze(1)  # (B, 1)
            seed = hashing_torch.mix32(hashing_torch.mix32(digest ^ k0) ^ k1)  # (B, 1)
        elif seeding is Seeding.SELF_HASH:
            seed = self._self_hash_seeds(ids, tables, row_table, k0, k1, vocab)  # (B, V)
        else:  # pragma: no cover - Seeding is closed
            raise SchemeError(f"unknown seeding {seeding}")
        return hashing_torch.seed_and_mix(seed, token_values, k3)

    def _self_hash_seeds(
        self,
        ids: torch.Tensor,
        tables: list[tuple[torch.Tensor, torch.Tensor]],
        row_table: list[int],
        k0: torch.Tensor,
        k1: torch.Tensor,
        vocab: int,
    ) -> torch.Tensor:
        """Seed of each candidate's anchor: the lowest-ranked of the window and the candidate."""
        device = ids.device
        if len(tables) == 1:
            anchor_seeds = tables[0][1].unsqueeze(0)
        else:
            anchor_seeds = torch.stack([table[1] for table in tables])[
                torch.tensor(row_table, device=device)
            ]
        lookback = self._lookback
        if lookback == 0:
            return anchor_seeds.expand(ids.shape[0], vocab)
        window = ids[:, ids.shape[1] - lookback :]  # (B, h-1)
        window_ranks = hashing_torch.anchor_rank(window)
        best = window_ranks.argmin(dim=1, keepdim=True)
        context_anchor = window.gather(1, best)  # (B, 1)
        context_rank = window_ranks.gather(1, best)
        context_seed = hashing_torch.mix32(
            hashing_torch.mix32(hashing_torch.context_digest([context_anchor]) ^ k0) ^ k1
        )  # (B, 1)
        vocabulary_ranks = hashing_torch.anchor_rank(
            torch.arange(vocab, dtype=torch.int64, device=device)
        )
        candidate_wins = vocabulary_ranks.unsqueeze(0) < context_rank  # (B, V)
        return torch.where(candidate_wins, anchor_seeds, context_seed)

    # -- applying the scheme --------------------------------------------------------------

    def _apply(
        self, scores: torch.Tensor, active: list[int], uniforms: torch.Tensor
    ) -> torch.Tensor:
        scheme = self.config.scheme
        all_rows = len(active) == scores.shape[0]
        if scheme is Scheme.GREEN_LIST:
            green = uniforms < self.config.green_threshold  # (B, V) bool
            bias = green.to(scores.dtype) * self.config.delta
            if all_rows:
                return scores + bias
            out = scores.clone()
            out[active] = scores[active] + bias
            return out
        if scheme is Scheme.GUMBEL:
            chosen = self._gumbel_choice(scores[active] if not all_rows else scores, uniforms)
            out = scores.clone()
            rows = torch.tensor(active, device=scores.device)
            out[rows] = float("-inf")
            out[rows, chosen] = 0.0
            return out
        raise SchemeError(f"unknown scheme {scheme}")

    def _gumbel_choice(self, scores: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
        """argmax_v r_v ** (1 / p_v) (Aaronson 2022), as argmax log p_v - log(-log r_v)."""
        log_probs = torch.log_softmax(scores.to(torch.float64) / self.temperature, dim=-1)
        if self.top_p < 1.0:
            sorted_log_probs, order = log_probs.sort(dim=-1, descending=True)
            cumulative = sorted_log_probs.exp().cumsum(dim=-1)
            drop_sorted = cumulative - sorted_log_probs.exp() >= self.top_p  # keep the first always
            drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
            log_probs = log_probs.masked_fill(drop, float("-inf"))
        r = (uniforms.to(torch.float64) + 0.5) / _TWO_POW_32
        return torch.argmax(log_probs - torch.log(-torch.log(r)), dim=-1)
