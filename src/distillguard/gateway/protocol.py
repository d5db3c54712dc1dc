"""The OpenAI wire format: parsing request bodies and shaping responses and errors."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from distillguard.engine.params import Completion, SamplingParams, TokenEvent, TokenLogprob
from distillguard.errors import ApiError, InputError

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
    return {
        "error": {
            "message": error.message,
            "type": error.kind,
            "param": error.param,
            "code": error.code,
        }
    }


@dataclass(frozen=True)
class ParsedRequest:
    """A validated request body. `max_tokens` None means "as much as the context allows"."""

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
    body: dict[str, Any], name: str, kinds: type | tuple[type, ...], default: Any = None
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


def _messages_text(messages: Any) -> list[dict[str, str]]:
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "'messages' must be a non-empty array", param="messages")
    cleaned = []
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise ApiError(
                400,
                f"messages[{index}] must be an object with a 'role'",
                param=f"messages[{index}]",
            )
        role = message["role"]
        if role not in ("system", "developer", "user", "assistant", "tool"):
            raise ApiError(
                400,
                f"messages[{index}].role {role!r} is not supported",
                param=f"messages[{index}].role",
            )
        content = message.get("content")
        if isinstance(content, list):  # content parts: only text is supported
            parts = []
            for part in content:
                if (
                    not isinstance(part, dict)
                    or part.get("type") != "text"
                    or not isinstance(part.get("text"), str)
                ):
                    raise ApiError(
                        400,
                        f"messages[{index}].content: only text parts are supported",
                        param=f"messages[{index}].content",
                    )
                parts.append(part["text"])
            content = "".join(parts)
        if not isinstance(content, str):
            raise ApiError(
                400,
                f"messages[{index}].content must be a string",
                param=f"messages[{index}].content",
            )
        cleaned.append({"role": "system" if role == "developer" else role, "content": content})
    return cleaned


def parse_body(body: dict[str, Any], *, chat: bool, render_chat: Any) -> ParsedRequest:
    """Validate an OpenAI request body (ApiError 400 naming the parameter on any mistake)."""
    model = _field(body, "model", str)
    if not model:
        raise ApiError(400, "'model' is required", param="model")
    if chat:
        messages = _messages_text(body.get("messages"))
        prompt: str | list[int] = render_chat(messages)
        user_messages = [m["content"] for m in messages if m["role"] == "user"]
        turns, last_user = len(user_messages), (user_messages[-1] if user_messages else "")
    else:
        raw = body.get("prompt")
        if isinstance(raw, list) and len(raw) == 1 and isinstance(raw[0], str):
            raw = raw[0]
        if isinstance(raw, str):
            prompt = raw
        elif (
            isinstance(raw, list)
            and raw
            and all(isinstance(t, int) and not isinstance(t, bool) for t in raw)
        ):
            prompt = list(raw)
        else:
            raise ApiError(
                400, "'prompt' must be a string or an array of token ids", param="prompt"
            )
        turns, last_user = 1, prompt if isinstance(prompt, str) else ""
    max_tokens = _field(body, "max_completion_tokens", int) if chat else None
    if max_tokens is None:
        max_tokens = _field(body, "max_tokens", int, None if chat else 16)
    stop = body.get("stop")
    if isinstance(stop, str):
        stop = [stop]
    if stop is not None and (
        not isinstance(stop, list) or not all(isinstance(s, str) for s in stop)
    ):
        raise ApiError(400, "'stop' must be a string or an array of strings", param="stop")
    if chat:
        logprobs = bool(_field(body, "logprobs", bool, False))
        top_logprobs = _field(body, "top_logprobs", int, 0)
        if top_logprobs and not logprobs:
            raise ApiError(400, "'top_logprobs' requires 'logprobs': true", param="top_logprobs")
    else:
        legacy = _field(body, "logprobs", int)
        if legacy is not None and not 0 <= legacy <= 5:
            raise ApiError(400, "'logprobs' must be between 0 and 5", param="logprobs")
        logprobs, top_logprobs = legacy is not None, legacy or 0
    stream_options = _field(body, "stream_options", dict, {})
    parsed = ParsedRequest(
        model=model,
        prompt=prompt,
        max_tokens=max_tokens,
        temperature=float(_field(body, "temperature", (int, float), 1.0)),
        top_p=float(_field(body, "top_p", (int, float), 1.0)),
        stop=tuple(stop or ()),
        n=_field(body, "n", int, 1),
        seed=_field(body, "seed", int),
        logprobs=logprobs,
        top_logprobs=top_logprobs,
        stream=bool(_field(body, "stream", bool, False)),
        include_usage=bool(stream_options.get("include_usage", False)),
        user=_field(body, "safety_identifier", str) or _field(body, "user", str),
        chat=chat,
        ignore_eos=bool(_field(body, "ignore_eos", bool, False)),
        turns=turns,
        last_user=last_user,
    )
    parsed.params(max_tokens if max_tokens is not None else 1)  # validate ranges now
    return parsed


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
    return "data: " + json.dumps(payload, separators=(",", ":")) + "\n\n"


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
    return "data: " + json.dumps(payload, separators=(",", ":")) + "\n\n"
