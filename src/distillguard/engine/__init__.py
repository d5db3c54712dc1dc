"""Generation: any local Hugging Face causal LM, watermarked per request, batched.

`distillguard.engine.corpus` and `distillguard.engine.train` build the embedded default model;
importing this package does not import torch until an engine or model is used.
"""

from distillguard.engine.params import (
    Choice,
    Completion,
    GenerationRequest,
    SamplingParams,
    TokenEvent,
    TokenLogprob,
)

__all__ = [
    "Choice",
    "Completion",
    "Engine",
    "GenerationRequest",
    "PreparedRequest",
    "SamplingParams",
    "TokenEvent",
    "TokenLogprob",
]


def __getattr__(name: str) -> object:
    # Engine needs torch; load it only when asked for.
    if name in ("Engine", "PreparedRequest"):
        from distillguard.engine import engine

        return getattr(engine, name)
    raise AttributeError(name)
