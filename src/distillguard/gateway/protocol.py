"""The OpenAI wire format: parsing request bodies and shaping responses and errors."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from distillguard.engine.params import Completion, SamplingParams, TokenEvent, TokenLogprob
from distillguard.errors import ApiError, InputError
from distillguard.gateway.fields import known_fields
from distillguard.gateway.messages import Conversation, parse_messages
from distillguard.redact import redact

__all__ = [
    "ParsedRequest",
    "chat_chunk",
    "chat_response",
    "completion_chunk",
    "completion_response",
    "error_body",
    "parse_body",
]


def error_body(error: ApiError) -> dict[str, Any]:
    """OpenAI's error format; the message redacted (it may quote an upstream's URL or a key)."""
    return {
        "error": {
            "message": redact(error.message),
            "type": error.kind,
            "param": error.param,
            "code": error.code,
        }
    }


@dataclass(frozen=True)
class ParsedRequest:
    """A validated request body. `max_tokens` None means "as much as the context allows".

    `sent` holds every field of the allow-list (`fields.py`) the client set, as sent: what an
    upstream's body is built from and what the usage row records. The sampling fields the
    gateway reads or governs also have typed attributes with their defaults.
    """

    model: str
    prompt: str | list[int]
    max_tokens: int | None
    temperature: float
    top_p: float
    stop: tuple[str, ...]
    n: int
    seed: int | None
    logprobs: bool
    top_logprobs: int
    stream: bool
    include_usage: bool
    user: str | None
    chat: bool
    ignore_eos: bool = False  # vLLM's extension: run to max_tokens past end-of-sequence
    turns: int = 1  # user messages in a chat request (1 for completions): the monitor reads it
    last_user: str = ""  # the last user message, or the prompt text; what the monitor reads
    sent: Mapping[str, Any] = field(default_factory=dict)
    logit_bias: Mapping[str, float] = field(default_factory=dict)  # token id -> bias
    best_of: int | None = None  # completions: generate this many, return the best n
    echo: bool = False  # completions: the prompt comes back before the completion
    prompt_logprobs: int | None = None  # vLLM: top logprobs of every prompt token
    min_tokens: int = 0  # vLLM: no end-of-sequence before this many tokens
    upstream_only: tuple[str, ...] = ()  # message parts only an upstream can take (images...)

    @property
    def generated_choices(self) -> int:
        """Completions generated per request: `best_of` when it asks for more than `n`."""
        return max(self.n, self.best_of or 0)

    @property
    def wants_logprobs(self) -> bool:
        """Whether any logprobs come back: of the completion, or (vLLM) of the prompt."""
        return self.logprobs or self.prompt_logprobs is not None

    def params(self, max_tokens: int) -> SamplingParams:
        try:
            return SamplingParams(
                max_tokens=max_tokens,
                temperature=self.temperature,
                top_p=self.top_p,
                stop=self.stop,
                n=self.n,
                seed=self.seed,
                logprobs=self.logprobs,
                top_logprobs=self.top_logprobs,
                ignore_eos=self.ignore_eos,
            )
        except InputError as exc:
            raise ApiError(400, str(exc), param=_param_of(str(exc))) from None


def _field(
    body: Mapping[str, Any], name: str, kinds: type | tuple[type, ...], default: Any = None
) -> Any:
    value = body.get(name, default)
    if value is None:
        return default
    allowed = kinds if isinstance(kinds, tuple) else (kinds,)
    if isinstance(value, bool) and bool not in allowed:
        raise ApiError(
            400, f"'{name}' must be of type {_names(allowed)}", param=name, code="invalid_type"
        )
    if not isinstance(value, allowed):
        raise ApiError(
            400, f"'{name}' must be of type {_names(allowed)}", param=name, code="invalid_type"
        )
    return value


def _names(kinds: tuple[type, ...]) -> str:
    return " or ".join(kind.__name__ for kind in kinds)


def parse_body(body: dict[str, Any], *, chat: bool, render_chat: Any) -> ParsedRequest:
    """Validate an OpenAI request body (ApiError 400 naming the parameter on any mistake):
    every field must be one the gateway knows (`fields.py`), each of the right type."""
    sent = known_fields(body, chat=chat)
    model = _field(sent, "model", str)
    if not model:
        raise ApiError(400, "'model' is required", param="model")
    if chat:
        conversation = parse_messages(sent.get("messages"))
        prompt: str | list[int] = render_chat(conversation.messages)
    else:
        prompt = _completion_prompt(sent.get("prompt"))
        text = prompt if isinstance(prompt, str) else ""
        conversation = Conversation([], turns=1, last_user=text, upstream_only=())
    max_tokens = _field(sent, "max_completion_tokens", int) if chat else None
    if max_tokens is None:
        max_tokens = _field(sent, "max_tokens", int, None if chat else 16)
    logprobs, top_logprobs = _logprobs(sent, chat)
    stream_options = _field(sent, "stream_options", dict, {})
    parsed = ParsedRequest(
        model=model,
        prompt=prompt,
        max_tokens=max_tokens,
        temperature=float(_field(sent, "temperature", (int, float), 1.0)),
        top_p=float(_field(sent, "top_p", (int, float), 1.0)),
        stop=_stop(sent.get("stop")),
        n=_field(sent, "n", int, 1),
        seed=_field(sent, "seed", int),
        logprobs=logprobs,
        top_logprobs=top_logprobs,
        stream=bool(_field(sent, "stream", bool, False)),
        include_usage=bool(stream_options.get("include_usage", False)),
        user=_field(sent, "safety_identifier", str) or _field(sent, "user", str),
        chat=chat,
        ignore_eos=bool(_field(sent, "ignore_eos", bool, False)),
        turns=conversation.turns,
        last_user=conversation.last_user,
        sent=sent,
        logit_bias=sent.get("logit_bias", {}),
        best_of=sent.get("best_of"),
        echo=bool(sent.get("echo", False)),
        prompt_logprobs=sent.get("prompt_logprobs"),
        min_tokens=sent.get("min_tokens", 0),
        upstream_only=conversation.upstream_only,
    )
    parsed.params(max_tokens if max_tokens is not None else 1)  # validate ranges now
    _check_together(parsed)
    return parsed


def _completion_prompt(raw: Any) -> str | list[int]:
    if isinstance(raw, list) and len(raw) == 1 and isinstance(raw[0], str):
        raw = raw[0]
    if isinstance(raw, str):
        return raw
    if (
        isinstance(raw, list)
        and raw
        and all(isinstance(t, int) and not isinstance(t, bool) for t in raw)
    ):
        return list(raw)
    raise ApiError(400, "'prompt' must be a string or an array of token ids", param="prompt")


def _stop(stop: Any) -> tuple[str, ...]:
    if isinstance(stop, str):
        stop = [stop]
    if stop is not None and (
        not isinstance(stop, list) or not all(isinstance(s, str) for s in stop)
    ):
        raise ApiError(400, "'stop' must be a string or an array of strings", param="stop")
    return tuple(stop or ())


def _logprobs(sent: Mapping[str, Any], chat: bool) -> tuple[bool, int]:
    """(whether logprobs come back, how many alternatives per token)."""
    if chat:
        logprobs = bool(_field(sent, "logprobs", bool, False))
        top_logprobs = _field(sent, "top_logprobs", int, 0)
        if top_logprobs and not logprobs:
            raise ApiError(400, "'top_logprobs' requires 'logprobs': true", param="top_logprobs")
        return logprobs, top_logprobs
    legacy = _field(sent, "logprobs", int)  # completions: an integer, the alternatives
    if legacy is not None and not 0 <= legacy <= 5:
        raise ApiError(400, "'logprobs' must be between 0 and 5", param="logprobs")
    return legacy is not None, legacy or 0


def _check_together(parsed: ParsedRequest) -> None:
    """The rules between fields that each passed on their own."""
    if parsed.best_of is not None and parsed.best_of < parsed.n:
        raise ApiError(400, "'best_of' must be greater than or equal to 'n'", param="best_of")
    if parsed.max_tokens is not None and parsed.min_tokens > parsed.max_tokens:
        raise ApiError(400, "'min_tokens' must not exceed 'max_tokens'", param="min_tokens")


def _param_of(message: str) -> str | None:
    first = message.split(" ", 1)[0]
    return first if first.isidentifier() else None


# -- responses ------------------------------------------------------------------------------


def _bytes(text: str) -> list[int]:
    return list(text.encode("utf-8", errors="replace"))


def _chat_logprob(entry: TokenLogprob) -> dict[str, Any]:
    return {
        "token": entry.token,
        "logprob": entry.logprob,
        "bytes": _bytes(entry.token),
        "top_logprobs": [
            {"token": text, "logprob": value, "bytes": _bytes(text)} for _, text, value in entry.top
        ],
    }


def _usage(completion_tokens: int, prompt_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def chat_response(request_id: str, model: str, completion: Completion) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-{request_id}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": completion.fingerprint,
        "choices": [
            {
                "index": choice.index,
                "message": {"role": "assistant", "content": choice.text, "refusal": None},
                "logprobs": (
                    {
                        "content": [_chat_logprob(entry) for entry in choice.logprobs],
                        "refusal": None,
                    }
                    if choice.logprobs is not None
                    else None
                ),
                "finish_reason": choice.finish_reason,
            }
            for choice in completion.choices
        ],
        "usage": _usage(completion.completion_tokens, completion.prompt_tokens),
    }


def _legacy_logprobs(entries: tuple[TokenLogprob, ...] | None) -> dict[str, Any] | None:
    """Legacy completions logprobs: tokens, token_logprobs, top_logprobs, text_offset."""
    if entries is None:
        return None
    offsets, position = [], 0
    for entry in entries:
        offsets.append(position)
        position += len(entry.token)
    return {
        "tokens": [entry.token for entry in entries],
        "token_logprobs": [entry.logprob for entry in entries],
        "top_logprobs": [{text: value for _, text, value in entry.top} for entry in entries],
        "text_offset": offsets,
    }


def completion_response(request_id: str, model: str, completion: Completion) -> dict[str, Any]:
    return {
        "id": f"cmpl-{request_id}",
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": completion.fingerprint,
        "choices": [
            {
                "index": choice.index,
                "text": choice.text,
                "logprobs": _legacy_logprobs(choice.logprobs),
                "finish_reason": choice.finish_reason,
            }
            for choice in completion.choices
        ],
        "usage": _usage(completion.completion_tokens, completion.prompt_tokens),
    }


def _event(payload: dict[str, Any]) -> str:
    """One SSE event. Strict JSON, as JSONResponse writes whole answers: a NaN or infinity
    raises here rather than reaching a client as invalid JSON."""
    return "data: " + json.dumps(payload, separators=(",", ":"), allow_nan=False) + "\n\n"


def chat_chunk(
    request_id: str,
    model: str,
    created: int,
    event: TokenEvent | None,
    *,
    role: int | None = None,
    usage: tuple[int, int] | None = None,
) -> str:
    """One SSE event: a role announcement, a token delta, or (with usage) the final usage chunk."""
    choices: list[dict[str, Any]] = []
    if role is not None:
        choices = [
            {
                "index": role,
                "delta": {"role": "assistant", "content": ""},
                "logprobs": None,
                "finish_reason": None,
            }
        ]
    elif event is not None:
        delta = {"content": event.text} if event.text or event.finish_reason is None else {}
        choices = [
            {
                "index": event.choice,
                "delta": delta,
                "logprobs": {"content": [_chat_logprob(event.logprob)], "refusal": None}
                if event.logprob
                else None,
                "finish_reason": event.finish_reason,
            }
        ]
    payload: dict[str, Any] = {
        "id": f"chatcmpl-{request_id}",
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": choices,
    }
    payload["usage"] = _usage(usage[1], usage[0]) if usage is not None else None
    return _event(payload)


def completion_chunk(
    request_id: str,
    model: str,
    created: int,
    event: TokenEvent | None,
    *,
    usage: tuple[int, int] | None = None,
) -> str:
    choices: list[dict[str, Any]] = []
    if event is not None:
        logprobs = _legacy_logprobs((event.logprob,) if event.logprob is not None else None)
        choices = [
            {
                "index": event.choice,
                "text": event.text,
                "logprobs": logprobs,
                "finish_reason": event.finish_reason,
            }
        ]
    payload: dict[str, Any] = {
        "id": f"cmpl-{request_id}",
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": choices,
    }
    payload["usage"] = _usage(usage[1], usage[0]) if usage is not None else None
    return _event(payload)
