"""One request on its own: does it look like collection?

An account that blends a harvest into ordinary traffic (a reseller's key with a harvesting
customer, a hydra account that also chats) has averages that look ordinary: a tenth of its
requests asking for long outputs moves no fraction far. Its harvest requests still look like
harvest requests one by one: one-shot or with made-up history, asking for long outputs, on a
prompt unlike the fleet's. `RequestModel` scores each request on `REQUEST_FEATURES` (a logistic
model with non-negative weights, fitted on requests of pure harvesters against honest ones),
and the account signal `collection_share` is the share of requests it calls collection.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from distillguard.errors import ConfigError
from distillguard.monitor.events import MonitorEvent
from distillguard.monitor.text import PromptFeatures

__all__ = ["REQUEST_FEATURES", "RequestModel", "request_features"]

REQUEST_FEATURES = (
    "one_shot",
    "fresh_turn",  # earlier turns the account never sent
    "long_output",
    "maximal_max_tokens",
    "logprobs",
    "multiple_samples",
    "reasoning",
    "rarity",  # how far the prompt is from the fleet's (1 - its kernel density, relative)
)
# Not the output ratio: it follows the prompt's length, which follows the prompt set, and a
# request model that read it called an honest fleet of short questions a harvest.
LONG_OUTPUT = 1024


@dataclass(frozen=True)
class RequestModel:
    """collection = sigmoid(weights . features + bias) >= 0.5."""

    weights: tuple[float, ...]
    bias: float

    def __post_init__(self) -> None:
        if len(self.weights) != len(REQUEST_FEATURES):
            raise ConfigError(
                f"request model has {len(self.weights)} weights for {len(REQUEST_FEATURES)} "
                "request features; refit it"
            )

    @classmethod
    def never(cls) -> RequestModel:
        """Calls nothing collection (a risk model fitted before requests were scored)."""
        return cls(tuple(0.0 for _ in REQUEST_FEATURES), -50.0)

    def collects(self, features: NDArray[np.float64]) -> bool:
        return float(features @ np.asarray(self.weights)) + self.bias >= 0.0


def request_features(
    event: MonitorEvent,
    prompt: PromptFeatures,
    fresh_turn: bool,
    reference: NDArray[np.float64] | None,
) -> NDArray[np.float64]:
    """The request's values of REQUEST_FEATURES; `reference` is the fleet's kernel mean."""
    long_output = min(LONG_OUTPUT, event.max_tokens_cap // 2)
    rarity = 0.0
    if reference is not None:
        typical = float(reference @ reference)
        if typical > 0:
            rarity = min(max(1.0 - float(prompt.distribution @ reference) / typical, -1.0), 1.0)
    return np.asarray(
        [
            float(event.turns <= 1),
            float(fresh_turn),
            float(event.max_tokens is not None and event.max_tokens >= long_output),
            float(event.max_tokens is not None and event.max_tokens >= 0.9 * event.max_tokens_cap),
            float(event.logprobs),
            float(event.n > 1),
            float(prompt.reasoning),
            rarity,
        ]
    )
