"""Chat messages: the checked conversation, its text for the chat template and the monitor,
and what in it only an upstream can take (images, audio, tool calls).

A message is an object with a `role` and the keys OpenAI documents for messages; any other key
is refused with 400 naming it, as a top-level field would be. `content` is a string or a list
of content parts; an assistant message that carries `tool_calls` (or the legacy
`function_call`) may leave it null. Text parts are joined into the text the chat template,
the token estimate and the monitor read; every other part is forwarded to an upstream as
sent, and named in `upstream_only` so that the local engine, which reads text only, refuses
it instead of silently dropping it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from distillguard.errors import ApiError

__all__ = ["MESSAGES_SCHEMA", "Conversation", "parse_messages"]

ROLES = ("system", "developer", "user", "assistant", "tool", "function")
PART_TYPES = ("text", "image_url", "input_audio", "file", "refusal")

# key -> the JSON type its value must have, and its name (null counts as absent); the role and
# the content have checks of their own
_MESSAGE_KEYS: dict[str, tuple[type, str] | None] = {
    "role": None,
    "content": None,
    "name": (str, "a string"),
    "tool_call_id": (str, "a string"),
    "tool_calls": (list, "an array"),
    "function_call": (dict, "an object"),
    "refusal": (str, "a string"),
    "audio": (dict, "an object"),
}
# keys the local engine cannot honour: it renders each message's role and text only
_UPSTREAM_ONLY_KEYS = ("tool_calls", "function_call", "refusal", "audio")


@dataclass(frozen=True)
class Conversation:
    """`messages` holds each message's role and text (`developer` read as `system`), what the
    chat template renders; `upstream_only` names the parts only an upstream can take, e.g.
    `messages[1].content[0]` (an image) or `messages[2].tool_calls`."""

    messages: list[dict[str, str]]
    turns: int  # user messages: the monitor reads it
    last_user: str  # the text of the last user message: what the monitor reads
    upstream_only: tuple[str, ...]


def parse_messages(messages: Any) -> Conversation:
    """Check a chat request's `messages` (ApiError 400 naming the first mistake)."""
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "'messages' must be a non-empty array", param="messages")
    texts: list[dict[str, str]] = []
    upstream_only: list[str] = []
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        role = _role(message, where)
        _check_keys(message, where)
        text = _content_text(message, role, where, upstream_only)
        upstream_only.extend(
            f"{where}.{key}"
            for key in _UPSTREAM_ONLY_KEYS
            if message.get(key) not in (None, [])  # an empty tool_calls list asks for nothing
        )
        if role == "function":  # the legacy function result: the tool role's predecessor
            upstream_only.append(f"{where}.role")
        texts.append({"role": "system" if role == "developer" else role, "content": text})
    user_texts = [entry["content"] for entry in texts if entry["role"] == "user"]
    return Conversation(
        messages=texts,
        turns=len(user_texts),
        last_user=user_texts[-1] if user_texts else "",
        upstream_only=tuple(upstream_only),
    )


def _role(message: Any, where: str) -> str:
    if not isinstance(message, dict) or not isinstance(message.get("role"), str):
        raise ApiError(400, f"{where} must be an object with a 'role'", param=where)
    role = str(message["role"])
    if role not in ROLES:
        raise ApiError(400, f"{where}.role {role!r} is not supported", param=f"{where}.role")
    return role


def _check_keys(message: dict[str, Any], where: str) -> None:
    for key, value in message.items():
        if key not in _MESSAGE_KEYS:
            raise ApiError(
                400,
                f"Unrecognized request argument supplied: {where}.{key}",
                param=f"{where}.{key}",
            )
        expected = _MESSAGE_KEYS[key]
        if expected is not None and value is not None and not isinstance(value, expected[0]):
            raise ApiError(
                400,
                f"{where}.{key} must be {expected[1]}",
                param=f"{where}.{key}",
                code="invalid_type",
            )
    calls = message.get("tool_calls")
    if isinstance(calls, list) and not all(isinstance(call, dict) for call in calls):
        raise ApiError(
            400,
            f"{where}.tool_calls must be an array of objects",
            param=f"{where}.tool_calls",
            code="invalid_type",
        )


def _content_text(message: dict[str, Any], role: str, where: str, upstream_only: list[str]) -> str:
    """The message's text; non-text parts are appended to `upstream_only`."""
    content = message.get("content")
    if (
        content is None
        and role == "assistant"
        and (message.get("tool_calls") or message.get("function_call"))
    ):
        return ""  # an assistant turn that only called tools
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise ApiError(
            400,
            f"{where}.content must be a string or an array of content parts",
            param=f"{where}.content",
        )
    texts = []
    for number, part in enumerate(content):
        here = f"{where}.content[{number}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind not in PART_TYPES:
            raise ApiError(
                400,
                f"{here} must be a content part with a 'type' of {', '.join(PART_TYPES)}",
                param=here,
            )
        if kind == "text":
            if not isinstance(part.get("text"), str):
                raise ApiError(400, f"{here}.text must be a string", param=f"{here}.text")
            texts.append(part["text"])
        else:
            upstream_only.append(here)
    return "".join(texts)


_PART_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["type"],
    "properties": {
        "type": {"type": "string", "enum": list(PART_TYPES)},
        "text": {"type": "string"},
    },
}
MESSAGES_SCHEMA: dict[str, Any] = {
    "type": "array",
    "minItems": 1,
    "items": {
        "type": "object",
        "required": ["role"],
        "properties": {
            "role": {"type": "string", "enum": list(ROLES)},
            "content": {
                "oneOf": [{"type": "string"}, {"type": "array", "items": _PART_SCHEMA}],
                "nullable": True,
            },
            "name": {"type": "string"},
            "tool_call_id": {"type": "string"},
            "tool_calls": {"type": "array", "items": {"type": "object"}},
            "function_call": {"type": "object"},
            "refusal": {"type": "string"},
            "audio": {"type": "object"},
        },
        "additionalProperties": False,
    },
}
