"""The upstream backend: keys, limits, metering and audit in front of any OpenAI-compatible
server.

The body sent upstream is built from the fields the gateway knows (`gateway/fields.py`), as the
client sent them, never the client's body as it came. The tier's max_tokens cap is made
explicit when the client leaves it out (the upstream would default to its maximum). The
outputs are not watermarked here: sampling happens upstream, and a watermark cannot be added
to text after the fact; responses say so in `x-distillguard-watermark: unavailable`.

Token reservation needs the prompt's size before the upstream has counted it; without the
upstream's tokenizer the gateway estimates one token per 4 bytes of prompt text (rounded up)
and settles to the upstream's reported usage afterwards.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncGenerator
from dataclasses import dataclass, replace
from typing import Any, Protocol

from distillguard.errors import ApiError, UpstreamError
from distillguard.gateway.backends.base import Failure, Finish, Reply
from distillguard.gateway.backends.client import UpstreamReply, estimate_tokens
from distillguard.gateway.metering import Call
from distillguard.gateway.policy import Tier
from distillguard.gateway.protocol import ParsedRequest

__all__ = ["UpstreamBackend", "UpstreamClient"]


class UpstreamClient(Protocol):
    """What the backend needs of an HTTP client (`Upstream`, or a simulator's stand-in)."""

    async def post(self, path: str, body: dict[str, Any]) -> UpstreamReply: ...

    def stream(self, path: str, body: dict[str, Any]) -> AsyncGenerator[tuple[int, str], None]: ...

    async def close(self) -> None: ...


@dataclass(frozen=True)
class UpstreamJob:
    path: str  # "/chat/completions" or "/completions"
    body: dict[str, Any]


class UpstreamBackend:
    """Serves `models` from `client`; `max_tokens` is the most a completion is assumed to take
    when the client sets no max_tokens (for reservation and the monitor)."""

    def __init__(
        self, client: UpstreamClient, models: tuple[str, ...], *, max_tokens: int = 4096
    ) -> None:
        self.client = client
        self._models = models
        self.max_tokens = max_tokens

    @property
    def model_names(self) -> tuple[str, ...]:
        return self._models

    @property
    def max_tokens_cap(self) -> int:
        return self.max_tokens

    def begin(self, call: Call) -> None:
        call.watermark_header = "unavailable"

    def render_chat(self, messages: list[dict[str, str]]) -> str:
        """No template here: the messages' JSON is what the estimate counts."""
        return json.dumps(messages, ensure_ascii=False)

    def prepare(
        self, call: Call, body: dict[str, Any], parsed: ParsedRequest, tier: Tier, keep_text: bool
    ) -> tuple[UpstreamJob, int]:
        """The upstream's body is built from the allow-listed fields the client sent
        (`parsed.sent`), never from `body` as it came: a field the gateway does not know and
        govern cannot reach the upstream. Subclasses add their own fields to the job's body."""
        upstream_body = dict(parsed.sent)
        if tier.max_tokens is not None and parsed.max_tokens is None:
            # the upstream would default to its maximum: hold it to the tier's cap
            upstream_body["max_tokens"] = tier.max_tokens
            parsed = replace(parsed, max_tokens=tier.max_tokens)
            call.parsed = parsed
        prompt = parsed.prompt
        call.prompt_tokens = len(prompt) if isinstance(prompt, list) else estimate_tokens(prompt)
        call.prompt_text = prompt if isinstance(prompt, str) else json.dumps(prompt)
        call.max_tokens = parsed.max_tokens or self.max_tokens
        # best_of generates more completions than it returns; each is paid for
        reserved = call.prompt_tokens + call.max_tokens * parsed.generated_choices
        path = "/chat/completions" if parsed.chat else "/completions"
        return UpstreamJob(path, upstream_body), reserved

    async def complete(self, job: UpstreamJob, call: Call) -> Reply:
        reply = await self.client.post(job.path, job.body)
        choices = reply.body.get("choices") if isinstance(reply.body, dict) else None
        call.texts = [[_choice_text(choice)] for choice in _dicts(choices)]
        _read_usage(call, reply.body.get("usage") if isinstance(reply.body, dict) else None)
        outcome = "ok" if reply.status < 400 else "upstream_rejected"
        return Reply(reply.status, outcome, reply.raw)

    async def stream(self, job: UpstreamJob, call: Call) -> AsyncGenerator[str | Finish, None]:
        parsed = call.parsed
        include_usage = parsed is not None and parsed.include_usage
        call.texts = [[] for _ in range(parsed.n if parsed is not None else 1)]
        # the usage chunk settles the reservation, whether or not the client asked for it
        options = job.body.get("stream_options")
        options = options if isinstance(options, dict) else {}
        body = job.body | {"stream_options": options | {"include_usage": True}}
        usage_seen = False
        # closed with this stream: a client that leaves closes the upstream request too
        async with contextlib.aclosing(self.client.stream(job.path, body)) as lines:
            async for code, line in lines:
                if code >= 400:
                    yield Finish(code, "upstream_rejected")
                    yield "data: " + line + "\n\n"
                    return
                if not line.startswith("data: "):
                    continue
                data = line[6:]
                if data == "[DONE]":
                    if not usage_seen:  # an upstream that sent no usage chunk: count it ourselves
                        _read_usage(call, None)
                    yield Finish(200, "ok")
                else:
                    chunk = json.loads(data)
                    usage_seen = usage_seen or isinstance(chunk.get("usage"), dict)
                    if not self._account(call, chunk, include_usage):
                        continue  # the client did not ask for the usage chunk
                yield line + "\n\n"

    @staticmethod
    def _account(call: Call, chunk: dict[str, Any], include_usage: bool) -> bool:
        """Record a chunk's usage and texts in the call; False when it is not for the client."""
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            _read_usage(call, usage)
            if not include_usage and not chunk.get("choices"):
                return False
        for choice in _dicts(chunk.get("choices")):
            index = choice.get("index", 0)
            if isinstance(index, int) and 0 <= index < len(call.texts):
                call.texts[index].append(_choice_text(choice))
        return True

    def failure(self, error: Exception, call: Call) -> Failure | None:
        if not isinstance(error, UpstreamError):
            return None
        message = f"the upstream failed: {error}"
        return Failure(502, "upstream_error", ApiError(502, message, kind="upstream_error"))

    async def aclose(self) -> None:
        await self.client.close()  # pooled connections, inside the serving loop


def _read_usage(call: Call, usage: object) -> None:
    """The upstream's token counts where it reports them; where a count is missing, null or not
    a count, our own: the prompt's estimate made at admission, the completion's estimated from
    its text (`estimate_tokens`). An upstream's malformed usage never fails the call."""
    reported = usage if isinstance(usage, dict) else {}
    prompt_tokens = _count(reported.get("prompt_tokens"))
    if prompt_tokens is not None:
        call.prompt_tokens = prompt_tokens
    completion_tokens = _count(reported.get("completion_tokens"))
    if completion_tokens is not None:
        call.completion_tokens = completion_tokens
    else:
        text = "".join("".join(parts) for parts in call.texts)
        call.completion_tokens = estimate_tokens(text) if text else 0


def _count(value: object) -> int | None:
    """A token count as JSON gives it (a non-negative integer), or None."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return None


def _dicts(items: object) -> list[dict[str, Any]]:
    """The objects of a JSON list (an upstream's `choices`), skipping anything else."""
    return [item for item in items if isinstance(item, dict)] if isinstance(items, list) else []


def _choice_text(choice: dict[str, Any]) -> str:
    """The text of a choice or chunk choice, whatever its shape (chat, delta, completion)."""
    for holder in (choice.get("message"), choice.get("delta")):
        if isinstance(holder, dict) and isinstance(holder.get("content"), str):
            return str(holder["content"])
    text = choice.get("text")
    return text if isinstance(text, str) else ""
