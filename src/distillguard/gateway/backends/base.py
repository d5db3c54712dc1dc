"""What the request flow needs of a backend: the local engine or an upstream server.

The flow (`gateway/app.py`) authenticates, parses, checks the model and the tier, asks the
backend to `prepare` the request (counting its prompt and choosing its watermark), admits it
under the rate limits, then asks the backend to `complete` or `stream` it, and meters the
call. The backend writes what the usage row needs (tokens, texts, watermark) into the `Call`.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from distillguard.errors import ApiError
from distillguard.gateway.metering import Call
from distillguard.gateway.policy import Tier
from distillguard.gateway.protocol import ParsedRequest

__all__ = ["Backend", "Failure", "Finish", "Reply"]

JobT = TypeVar("JobT")


@dataclass(frozen=True)
class Reply:
    """A whole answer: `body` is JSON to encode, or bytes to pass through unchanged."""

    status: int
    outcome: str  # "ok", "upstream_rejected", ...
    body: dict[str, Any] | bytes


@dataclass(frozen=True)
class Finish:
    """Yielded by a stream before its last chunks: the call ends with this status and
    outcome, and its usage row is committed before the stream goes on."""

    status: int
    outcome: str


@dataclass(frozen=True)
class Failure:
    """How a backend's exception ends the call, and the error the client gets."""

    status: int
    outcome: str
    error: ApiError


class Backend(Protocol[JobT]):
    """One way of producing completions behind the gateway's single request flow."""

    @property
    def model_names(self) -> tuple[str, ...]: ...

    @property
    def max_tokens_cap(self) -> int:
        """The largest completion it can be asked for (what the monitor compares against)."""
        ...

    def begin(self, call: Call) -> None:
        """Mark a new call before anything is known of it (e.g. its watermark header)."""

    def render_chat(self, messages: list[dict[str, str]]) -> str:
        """The text a chat request's messages count as (the model's chat template)."""
        ...

    def prepare(
        self, call: Call, body: dict[str, Any], parsed: ParsedRequest, tier: Tier, keep_text: bool
    ) -> tuple[JobT, int]:
        """The job to run and the tokens to reserve for it; raises `ApiError` for the client.
        Sets the call's prompt tokens, max_tokens, watermark and (with `keep_text`) prompt."""
        ...

    async def complete(self, job: JobT, call: Call) -> Reply: ...

    def stream(self, job: JobT, call: Call) -> AsyncGenerator[str | Finish, None]:
        """Server-sent event text for the client, with one `Finish` before the last chunks."""
        ...

    def failure(self, error: Exception, call: Call) -> Failure | None:
        """How `error`, raised while completing, ends the call; None to let it propagate."""
        ...

    async def aclose(self) -> None: ...
