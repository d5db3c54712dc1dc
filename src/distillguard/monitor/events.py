"""What the monitor sees of one request: a row of the usage stream, plus the shape of the
conversation (how many user turns), which the usage row does not keep."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

__all__ = ["MonitorEvent", "MonitorHook"]


@dataclass(frozen=True, slots=True)
class MonitorEvent:
    time: float  # seconds since the epoch (the gateway's clock)
    account: str  # the API key id: the unit the gateway limits and acts on
    tenant: str
    prompt: str  # the last user message (chat) or the prompt (completions)
    turns: int  # user messages in the request; 1 = a one-shot request
    prompt_tokens: int
    completion_tokens: int
    max_tokens: int | None  # as requested; None = not set
    max_tokens_cap: int  # the most the model could have been asked for
    n: int
    logprobs: bool  # logprobs or top_logprobs requested
    status: int


class MonitorHook(Protocol):
    """What the gateway needs of a monitor on the request path."""

    def observe(self, event: MonitorEvent) -> None: ...

    def tier_of(self, account: str) -> str: ...
