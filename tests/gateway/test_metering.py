"""The usage row records every field the client sent: the sampling values, tools by name;
the keys older rows have keep their meaning."""

from __future__ import annotations

import json
from typing import Any

from distillguard.gateway.apikeys import ApiKey
from distillguard.gateway.metering import Call, usage_record
from distillguard.gateway.protocol import parse_body

KEY = ApiKey("k1", "acme", 60, 1000, None, 4, "normal", "2025-01-01T00:00:00Z", None)
# what every row has carried since the first release, with these defaults
LEGACY_KEYS = {
    "max_tokens": 16,
    "temperature": 1.0,
    "top_p": 1.0,
    "n": 1,
    "stop": [],
    "seed": None,
    "logprobs": False,
    "top_logprobs": 0,
    "stream": False,
    "user": None,
}


def parameters(body: dict[str, Any], *, chat: bool) -> dict[str, Any]:
    call = Call.start("chat.completions" if chat else "completions")
    call.parsed = parse_body(body, chat=chat, render_chat=json.dumps)
    return usage_record(call, KEY, 200, "ok", "m", store_text=True).parameters


def test_a_plain_request_records_exactly_the_legacy_keys() -> None:
    assert parameters({"model": "m", "prompt": "hi"}, chat=False) == LEGACY_KEYS


def test_every_sampling_field_sent_is_recorded() -> None:
    tool = {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}
    body = {
        "model": "m",
        "messages": [{"role": "user", "content": "a private question"}],
        "max_completion_tokens": 40,
        "frequency_penalty": 0.5,
        "presence_penalty": 0.25,
        "logit_bias": {"13": -100},
        "ignore_eos": True,
        "min_tokens": 8,
        "prompt_logprobs": 2,
        "tools": [tool],
        "tool_choice": "auto",
        "response_format": {"type": "json_object"},
        "safety_identifier": "hashed",
        "metadata": {"team": "a"},
        "reasoning_effort": "low",
    }
    recorded = parameters(body, chat=True)
    assert recorded == LEGACY_KEYS | {
        "max_tokens": 40,
        "user": "hashed",
        "max_completion_tokens": 40,
        "frequency_penalty": 0.5,
        "presence_penalty": 0.25,
        "logit_bias": {"13": -100},
        "ignore_eos": True,
        "min_tokens": 8,
        "prompt_logprobs": 2,
        "tools": {"count": 1, "names": ["lookup"]},
        "tool_choice": "auto",
        "response_format": {"type": "json_object"},
        "safety_identifier": "hashed",
        "metadata": {"team": "a"},
        "reasoning_effort": "low",
    }
    assert "a private question" not in json.dumps(recorded)  # the text has its own column


def test_completions_fields_are_recorded_with_the_legacy_keys_unchanged() -> None:
    body = {"model": "m", "prompt": "hi", "logprobs": 3, "echo": True, "best_of": 2, "n": 2}
    recorded = parameters(body, chat=False)
    assert recorded["logprobs"] is True and recorded["top_logprobs"] == 3  # as rows always had
    assert (recorded["echo"], recorded["best_of"], recorded["n"]) == (True, 2, 2)
