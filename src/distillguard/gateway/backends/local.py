"""The local backend: the engine in this process, the tenant's watermark inside sampling.

The engine renders text and samples with temperature, top_p, stop, n, seed, logprobs and
ignore_eos. A field it cannot honour (tools, response formats, penalties, logit_bias, best_of,
echo, suffix, min_tokens, prompt_logprobs...) or a message part it cannot read (an image, a
tool call) is refused with 400 naming it, not silently dropped; an upstream takes them all.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncGenerator, Callable
from typing import Any

from distillguard.engine.engine import Engine, PreparedRequest
from distillguard.engine.params import GenerationRequest
from distillguard.errors import ApiError, ContextLengthError, DistillGuardError, InputError
from distillguard.gateway.backends.base import Failure, Finish, Reply
from distillguard.gateway.fields import unsupported_locally
from distillguard.gateway.metering import Call
from distillguard.gateway.policy import Tier
from distillguard.gateway.protocol import (
    ParsedRequest,
    chat_chunk,
    chat_response,
    completion_chunk,
    completion_response,
)
from distillguard.watermark.key import WatermarkKey

__all__ = ["LocalBackend"]

log = logging.getLogger("distillguard.gateway")


class LocalBackend:
    """Generates with `engine`, marking each tenant's outputs with `watermark_key_for(tenant)`
    (None: unmarked)."""

    def __init__(
        self, engine: Engine, watermark_key_for: Callable[[str], WatermarkKey | None]
    ) -> None:
        self.engine = engine
        self.watermark_key_for = watermark_key_for

    @property
    def model_names(self) -> tuple[str, ...]:
        return (self.engine.model_name,)

    @property
    def max_tokens_cap(self) -> int:
        return self.engine.context_length

    def begin(self, call: Call) -> None:
        pass  # the watermark header is known once the tenant is

    def render_chat(self, messages: list[dict[str, str]]) -> str:
        tokenizer = self.engine.loaded.tokenizer
        try:
            rendered = tokenizer.apply_chat_template(
                messages, add_generation_prompt=True, tokenize=False
            )
        except Exception as exc:  # templates raise plain exceptions on messages they refuse
            raise ApiError(
                400, f"the chat template refused these messages: {exc}", param="messages"
            ) from None
        return str(rendered)

    def prepare(
        self, call: Call, body: dict[str, Any], parsed: ParsedRequest, tier: Tier, keep_text: bool
    ) -> tuple[PreparedRequest, int]:
        if call.key is None:
            raise ApiError(401, "Incorrect API key provided", code="invalid_api_key")
        _refuse_what_the_engine_cannot_honour(parsed)
        prepared = self._prepare(call.key.tenant, parsed, tier)
        key = prepared.watermark_key
        call.prompt_tokens = prepared.prompt_tokens
        call.max_tokens = prepared.params.max_tokens
        call.watermark_key_id = key.key_id if key is not None else None
        call.watermark_header = call.watermark_key_id or "none"
        call.fingerprint = self.engine.scheme.fingerprint
        if keep_text:
            call.prompt_text = self.engine.loaded.tokenizer.decode(list(prepared.prompt_ids))
        reserved = prepared.prompt_tokens + prepared.params.max_tokens * prepared.params.n
        return prepared, reserved

    def _prepare(self, tenant: str, parsed: ParsedRequest, tier: Tier) -> PreparedRequest:
        """Tokenize, fix max_tokens (the room left in the context when unset), check the fit."""
        key_for_tenant = self.watermark_key_for(tenant)
        try:
            probe = self.engine.prepare(
                GenerationRequest(parsed.prompt, parsed.params(1), watermark_key=key_for_tenant)
            )
            max_tokens = parsed.max_tokens
            if max_tokens is None:  # chat without a limit: the room left in the context
                max_tokens = self.engine.context_length - probe.prompt_tokens
                if tier.max_tokens is not None:
                    max_tokens = min(max_tokens, tier.max_tokens)
                if max_tokens < 1:
                    raise ContextLengthError(
                        f"this model's context is {self.engine.context_length} tokens and the "
                        f"messages take {probe.prompt_tokens}"
                    )
            return self.engine.prepare(
                GenerationRequest(
                    list(probe.prompt_ids), parsed.params(max_tokens), watermark_key=key_for_tenant
                )
            )
        except ContextLengthError as exc:
            raise ApiError(
                400,
                str(exc),
                param="messages" if parsed.chat else "prompt",
                code="context_length_exceeded",
            ) from None
        except InputError as exc:
            raise ApiError(400, str(exc), param="prompt") from None
        except DistillGuardError as exc:
            raise ApiError(400, str(exc)) from None

    async def complete(self, job: PreparedRequest, call: Call) -> Reply:
        completion = await self.engine.generate(job)
        call.texts = [[choice.text] for choice in completion.choices]
        call.completion_tokens = completion.completion_tokens
        chat = call.parsed is not None and call.parsed.chat
        shape = chat_response if chat else completion_response
        return Reply(200, "ok", shape(call.request_id, self.engine.model_name, completion))

    async def stream(self, job: PreparedRequest, call: Call) -> AsyncGenerator[str | Finish, None]:
        created = int(time.time())
        model = self.engine.model_name
        parsed = call.parsed
        chat = parsed is not None and parsed.chat
        shape = chat_chunk if chat else completion_chunk
        call.texts = [[] for _ in range(job.params.n)]
        if chat:
            for index in range(job.params.n):
                yield chat_chunk(call.request_id, model, created, None, role=index)
        async for event in self.engine.stream(job):
            call.texts[event.choice].append(event.text)
            call.completion_tokens += 1
            yield shape(call.request_id, model, created, event)
        yield Finish(200, "ok")
        if parsed is not None and parsed.include_usage:
            usage = (job.prompt_tokens, call.completion_tokens)
            yield shape(call.request_id, model, created, None, usage=usage)
        yield "data: [DONE]\n\n"

    def failure(self, error: Exception, call: Call) -> Failure:
        log.error("generation failed for %s", call.request_id, exc_info=error)
        return Failure(500, "error", ApiError(500, "generation failed", kind="server_error"))

    async def aclose(self) -> None:
        pass  # the engine belongs to whoever built it


def _refuse_what_the_engine_cannot_honour(parsed: ParsedRequest) -> None:
    name = unsupported_locally(parsed.sent, chat=parsed.chat)
    if name is not None:
        raise ApiError(
            400,
            f"Unsupported parameter: '{name}' is not supported by this model's local engine",
            param=name,
            code="unsupported_parameter",
        )
    if parsed.upstream_only:
        part = parsed.upstream_only[0]
        raise ApiError(
            400,
            f"Unsupported content: {part} is not text; this model's local engine reads the "
            "role and text of each message only",
            param=part,
            code="unsupported_content",
        )
