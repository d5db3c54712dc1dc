"""The tenant watermark over a serving engine's persistent batch (no engine imported here).

A serving engine keeps a batch whose rows come and go; each row is one request with its own
tenant key (or none), its prompt and its live, growing list of output tokens. At every step
the candidate tokens of row i are seeded by the row's last `context_width` tokens (prompt
then output), exactly as the engine's processor seeds them, so text a serving engine marks is
detected like text the embedded engine marks. Rows without a key, and rows whose text is still
shorter than the context, keep their logits bit for bit.

The hash runs in the engine's own `TenantWatermarkProcessor`: on a CPU its fused numba kernel
over the logits' memory, elsewhere the torch twin. Key tables are cached per key, so a step
costs one pass over (keyed rows x vocabulary).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from distillguard.errors import SchemeError
from distillguard.watermark.key import WatermarkKey
from distillguard.watermark.processor import TenantWatermarkProcessor
from distillguard.watermark.scheme import Scheme, SchemeConfig

__all__ = ["BatchRow", "BatchWatermark"]


@dataclass
class BatchRow:
    """One request in the batch: its key, its prompt, and its live output token list."""

    key: WatermarkKey | None
    prompt_ids: list[int]
    output_ids: list[int]  # the engine's own list, which grows as it decodes

    def context(self, width: int) -> list[int] | None:
        """The row's last `width` tokens, or None while it has fewer."""
        if width == 0:
            return []
        output = self.output_ids
        if len(output) >= width:
            return output[-width:]
        needed = width - len(output)
        if len(self.prompt_ids) < needed:
            return None
        return self.prompt_ids[len(self.prompt_ids) - needed :] + output


class BatchWatermark:
    """Rows by batch index; `apply` marks the keyed rows of one step's logits (rows, vocab).

    With a layered scheme, `provider_key` is the provider layer's key (one per engine)."""

    def __init__(self, config: SchemeConfig, provider_key: WatermarkKey | None = None) -> None:
        if config.scheme is not Scheme.GREEN_LIST:
            # a serving engine applies processors before its own temperature and top-p, which
            # Gumbel-max sampling must see (docs/vllm.md)
            raise SchemeError("only the green-list scheme can run inside a serving engine")
        self.config = config
        self.rows: dict[int, BatchRow] = {}
        self._processor = TenantWatermarkProcessor(config, [None], provider_key=provider_key)
        self._width = self._processor.lookback
        self._signature: tuple[bytes | None, ...] = ()

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        if not self.rows:
            return logits
        batch = logits.shape[0]
        keys: list[WatermarkKey | None] = [None] * batch
        context = [[0] * self._width for _ in range(batch)]
        for index, row in self.rows.items():
            if row.key is None or index >= batch:
                continue
            tokens = row.context(self._width)
            if tokens is None:
                continue
            keys[index] = row.key
            context[index] = tokens
        if all(key is None for key in keys):
            return logits
        signature = tuple(key.secret if key is not None else None for key in keys)
        if signature != self._signature:  # re-plan only when the keyed rows change
            self._processor.reset_rows(keys)
            self._signature = signature
        ids = torch.tensor(context, dtype=torch.int64).reshape(batch, self._width)
        if ids.device != logits.device:
            ids = ids.to(logits.device)
        return self._processor(ids, logits)  # type: ignore[arg-type]
