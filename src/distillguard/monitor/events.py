"""What the monitor sees of one request: a row of the usage stream, plus the shape of the
conversation (how many user turns), which the usage row does not keep, and who sent it.

Who sent it comes in two parts, each with a default so that a caller that knows neither
(an older gateway, a test) still builds an event:

- the request's origin: the client address, its /24 (IPv4) or /64 (IPv6) network, the user
  agent and the order of the header names. These identify a person, so the event carries
  only keyed-hash tokens of them (`monitor.identity`), never the values;
- the key's account metadata: its organisation (a token too), its sign-up program (a small
  vocabulary such as "education" or "startup", in clear) and when the key was created.
"""

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
    # the request's origin, as tokens of monitor.identity ("" = unknown)
    address: str = ""  # the client address: the socket's, or a trusted proxy's Forwarded
    network: str = ""  # the address's /24 (IPv4) or /64 (IPv6)
    agent: str = ""  # the User-Agent header
    header_fingerprint: str = ""  # the order of the request's header names
    # the key's account metadata
    org: str = ""  # token of the organisation the key was created for ("" = none given)
    signup_program: str = ""  # e.g. "education", "startup" ("" = none), in clear
    created_at: float | None = None  # when the key was created, seconds since the epoch


class MonitorHook(Protocol):
    """What the gateway needs of a monitor on the request path."""

    def observe(self, event: MonitorEvent) -> None: ...

    def tier_of(self, account: str) -> str: ...
