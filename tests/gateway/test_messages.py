"""Chat messages: tool conversations and content parts parse; the monitor still reads the
last user message's text; unknown keys and malformed parts are refused by name."""

from __future__ import annotations

from typing import Any

import pytest

from distillguard.errors import ApiError
from distillguard.gateway.messages import parse_messages

CALL = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}


def test_a_multi_turn_tool_conversation_parses() -> None:
    conversation = parse_messages(
        [
            {"role": "developer", "content": "Use tools."},
            {"role": "user", "content": "What is 6 x 7?"},
            {"role": "assistant", "content": None, "tool_calls": [CALL]},
            {"role": "tool", "tool_call_id": "call_1", "content": "42"},
            {"role": "assistant", "content": "It is 42."},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "And 6 x 8? "},
                    {"type": "image_url", "image_url": {"url": "https://example.com/x.png"}},
                    {"type": "text", "text": "Show working."},
                ],
            },
        ]
    )
    assert conversation.turns == 2
    assert conversation.last_user == "And 6 x 8? Show working."
    assert conversation.messages[0] == {"role": "system", "content": "Use tools."}
    assert conversation.messages[2] == {"role": "assistant", "content": ""}
    assert conversation.messages[3] == {"role": "tool", "content": "42"}
    assert conversation.upstream_only == ("messages[2].tool_calls", "messages[5].content[1]")


def test_plain_text_conversations_have_nothing_upstream_only() -> None:
    conversation = parse_messages(
        [
            {"role": "user", "content": [{"type": "text", "text": "Hi"}], "name": "ann"},
            {"role": "assistant", "content": "Hello", "tool_calls": []},
        ]
    )
    assert conversation.upstream_only == ()
    assert conversation.last_user == "Hi"


@pytest.mark.parametrize(
    ("message", "param"),
    [
        (
            {"role": "user", "content": "hi", "chat_template": "{{ x }}"},
            "messages[0].chat_template",
        ),
        ({"role": "user", "content": None}, "messages[0].content"),
        ({"role": "assistant", "content": None}, "messages[0].content"),
        ({"role": "user", "content": 3}, "messages[0].content"),
        ({"role": "user", "content": [{"type": "video", "video": "x"}]}, "messages[0].content[0]"),
        ({"role": "user", "content": ["hi"]}, "messages[0].content[0]"),
        ({"role": "user", "content": [{"type": "text"}]}, "messages[0].content[0].text"),
        ({"role": "tool", "content": "x", "tool_call_id": 5}, "messages[0].tool_call_id"),
        ({"role": "assistant", "content": "x", "tool_calls": ["f"]}, "messages[0].tool_calls"),
        ({"role": "robot", "content": "x"}, "messages[0].role"),
    ],
)
def test_malformed_messages_are_refused_by_name(message: dict[str, Any], param: str) -> None:
    with pytest.raises(ApiError) as raised:
        parse_messages([message])
    assert raised.value.status == 400 and raised.value.param == param


def test_a_legacy_function_message_is_upstream_only() -> None:
    conversation = parse_messages(
        [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": None, "function_call": {"name": "f"}},
            {"role": "function", "name": "f", "content": "done"},
        ]
    )
    assert conversation.upstream_only == ("messages[1].function_call", "messages[2].role")
