"""Per-request generation parameters and what a request produces."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from distillguard.errors import InputError
from distillguard.watermark.key import WatermarkKey

__all__ = [
    "LOGPROB_FLOOR",
    "Choice",
    "Completion",
    "FinishReason",
    "GenerationRequest",
    "SamplingParams",
    "TokenEvent",
    "TokenLogprob",
    "finite_logprob",
]

FinishReason = Literal["stop", "length"]
MAX_TOP_LOGPROBS = 20
MAX_N = 16
# The logprob of a token the sampler cannot pick (masked by top_p, or end-of-sequence under
# ignore_eos) is -inf, which JSON cannot carry; OpenAI reports such tokens at this floor.
LOGPROB_FLOOR = -9999.0


def finite_logprob(value: float) -> float:
    """`value`, or LOGPROB_FLOOR for -inf, NaN and anything below the floor."""
    if math.isnan(value) or value < LOGPROB_FLOOR:
        return LOGPROB_FLOOR
    return value


@dataclass(frozen=True)
class SamplingParams:
    """What a client may ask for, checked at construction (InputError names the parameter).

    `temperature` 0 means greedy decoding. `seed` makes sampling reproducible: choice i of a
    request draws from its own generator seeded with (seed, i). `ignore_eos` removes the
    end-of-sequence token from the distribution, so the row runs to max_tokens.
    """

    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    n: int = 1
    seed: int | None = None
    logprobs: bool = False
    top_logprobs: int = 0
    ignore_eos: bool = False  # keep going past end-of-sequence (benchmarks, fixed-length samples)

    def __post_init__(self) -> None:
        if isinstance(self.max_tokens, bool) or not isinstance(self.max_tokens, int):
            raise InputError("max_tokens must be an integer")
        if self.max_tokens <= 0:
            raise InputError(f"max_tokens must be at least 1, got {self.max_tokens}")
        if not math.isfinite(self.temperature) or not 0.0 <= self.temperature <= 2.0:
            raise InputError(f"temperature must be between 0 and 2, got {self.temperature}")
        if not math.isfinite(self.top_p) or not 0.0 < self.top_p <= 1.0:
            raise InputError(f"top_p must be in (0, 1], got {self.top_p}")
        if not 1 <= self.n <= MAX_N:
            raise InputError(f"n must be between 1 and {MAX_N}, got {self.n}")
        if not 0 <= self.top_logprobs <= MAX_TOP_LOGPROBS:
            raise InputError(f"top_logprobs must be between 0 and {MAX_TOP_LOGPROBS}")
        if len(self.stop) > 4 or any(not isinstance(item, str) or not item for item in self.stop):
            raise InputError("stop must be up to 4 non-empty strings")


@dataclass(frozen=True)
class GenerationRequest:
    """One prompt (text or token ids), its parameters, and whose watermark to weave in.

    `tenant` is resolved to a key by the engine's keyring; `watermark_key` gives the key
    directly. With neither, the output is not watermarked.
    """

    prompt: str | Sequence[int]
    params: SamplingParams = field(default_factory=SamplingParams)
    tenant: str | None = None
    watermark_key: WatermarkKey | None = None


@dataclass(frozen=True)
class TokenLogprob:
    token_id: int
    token: str
    logprob: float
    top: tuple[tuple[int, str, float], ...] = ()  # (token id, token text, logprob)


@dataclass(frozen=True)
class TokenEvent:
    """One sampled token of one choice: the text it added (possibly empty, held back for a
    stop string or an unfinished UTF-8 character) and, on its last event, why it finished.
    `token_id` is None for the end-of-sequence token, which adds no text."""

    choice: int
    token_id: int | None
    text: str
    logprob: TokenLogprob | None
    finish_reason: FinishReason | None


@dataclass(frozen=True)
class Choice:
    index: int
    text: str
    token_ids: tuple[int, ...]
    finish_reason: FinishReason
    logprobs: tuple[TokenLogprob, ...] | None


@dataclass(frozen=True)
class Completion:
    choices: tuple[Choice, ...]
    prompt_tokens: int
    completion_tokens: int
    watermark_key_id: str | None
    fingerprint: str | None
