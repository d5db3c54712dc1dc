"""The local engine takes the same fields as an upstream, and refuses with a 400 naming it
what it cannot honour, instead of silently dropping it."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest

from distillguard.engine.params import LOGPROB_FLOOR

from ..conftest import Harness

TOOL = {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}


def post(harness: Harness, path: str, fields: dict[str, Any]) -> httpx.Response:
    if path == "/v1/chat/completions":
        body = {"model": harness.model, "messages": [{"role": "user", "content": "Hi"}]}
    else:
        body = {"model": harness.model, "prompt": "The"}
    body |= {"max_tokens": 2} | fields

    async def send() -> httpx.Response:
        transport = httpx.ASGITransport(app=harness.gateway.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as http:
            headers = {"authorization": f"Bearer {harness.keys['acme']}"}
            return await http.post(path, json=body, headers=headers)

    return asyncio.run(send())


CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"


@pytest.mark.parametrize(
    ("path", "fields", "param"),
    [
        (CHAT, {"tools": [TOOL]}, "tools"),
        (CHAT, {"tool_choice": "auto"}, "tool_choice"),
        (CHAT, {"functions": [TOOL["function"]]}, "functions"),
        (CHAT, {"function_call": "auto"}, "function_call"),
        (CHAT, {"response_format": {"type": "json_object"}}, "response_format"),
        (CHAT, {"logit_bias": {"5": 10}}, "logit_bias"),
        (CHAT, {"frequency_penalty": 0.5}, "frequency_penalty"),
        (CHAT, {"presence_penalty": -1}, "presence_penalty"),
        (CHAT, {"modalities": ["text", "audio"]}, "modalities"),
        (CHAT, {"audio": {"voice": "alloy", "format": "wav"}}, "audio"),
        (CHAT, {"prediction": {"type": "content", "content": "x"}}, "prediction"),
        (CHAT, {"reasoning_effort": "high"}, "reasoning_effort"),
        (CHAT, {"verbosity": "low"}, "verbosity"),
        (CHAT, {"web_search_options": {}}, "web_search_options"),
        (CHAT, {"min_tokens": 1}, "min_tokens"),
        (CHAT, {"prompt_logprobs": 0}, "prompt_logprobs"),
        (COMPLETIONS, {"suffix": "."}, "suffix"),
        (COMPLETIONS, {"echo": True}, "echo"),
        (COMPLETIONS, {"best_of": 2}, "best_of"),
        (COMPLETIONS, {"logit_bias": {"5": -100}}, "logit_bias"),
    ],
)
def test_a_field_the_engine_cannot_honour_is_refused_and_named(
    harness: Harness, path: str, fields: dict[str, Any], param: str
) -> None:
    response = post(harness, path, fields)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and error["code"] == "unsupported_parameter"
    assert param in error["message"]


@pytest.mark.parametrize(
    ("path", "fields"),
    [
        (CHAT, {"frequency_penalty": 0, "presence_penalty": 0.0, "logit_bias": {}}),
        (CHAT, {"tool_choice": "none", "response_format": {"type": "text"}}),
        (CHAT, {"modalities": ["text"], "parallel_tool_calls": True, "store": True}),
        (CHAT, {"metadata": {"team": "a"}, "service_tier": "auto", "prompt_cache_key": "k"}),
        (CHAT, {"user": "u", "safety_identifier": "s", "min_tokens": 0}),
        (COMPLETIONS, {"echo": False, "best_of": 1, "logit_bias": {}, "frequency_penalty": 0}),
        (COMPLETIONS, {"n": 2, "best_of": 2, "logprobs": 1, "ignore_eos": True, "seed": 1}),
    ],
)
def test_fields_that_ask_for_nothing_or_only_tag_the_request_are_served(
    harness: Harness, path: str, fields: dict[str, Any]
) -> None:
    response = post(harness, path, fields)
    assert response.status_code == 200, response.text


def test_text_content_parts_are_served_and_other_parts_refused_by_name(
    harness: Harness,
) -> None:
    text_parts = [{"type": "text", "text": "Hi"}, {"type": "text", "text": " there"}]
    messages: list[dict[str, Any]] = [{"role": "user", "content": text_parts}]
    assert post(harness, CHAT, {"messages": messages}).status_code == 200
    image = {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}
    messages = [{"role": "user", "content": [*text_parts, image]}]
    response = post(harness, CHAT, {"messages": messages})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == "messages[0].content[2]" and error["code"] == "unsupported_content"


def test_an_assistant_tool_call_is_refused_by_name(harness: Harness) -> None:
    call = {"id": "c1", "type": "function", "function": {"name": "lookup", "arguments": "{}"}}
    messages = [
        {"role": "user", "content": "Look it up"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "c1", "content": "42"},
    ]
    response = post(harness, CHAT, {"messages": messages})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == "messages[1].tool_calls"


def _strict_json(text: str) -> Any:
    """JSON as RFC 8259 has it: NaN and infinities are not JSON."""

    def refuse(constant: str) -> None:
        raise ValueError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=refuse)


def test_logprobs_under_top_p_are_finite_in_answers_and_streams(harness: Harness) -> None:
    # top_p 0.001 leaves one token: every other has logprob -inf in the sampled distribution,
    # which reached top_logprobs (a 500 after metering, invalid JSON in streams); ignore_eos
    # keeps that one token from being end-of-sequence, which has no logprob entry
    sampling = {"top_p": 0.001, "ignore_eos": True, "seed": 0, "max_tokens": 3}
    chat = sampling | {"logprobs": True, "top_logprobs": 5}
    completions = sampling | {"logprobs": 5}
    answer = post(harness, CHAT, chat)
    assert answer.status_code == 200, answer.text
    content = _strict_json(answer.text)["choices"][0]["logprobs"]["content"]
    tops = [top["logprob"] for entry in content for top in entry["top_logprobs"]]
    assert LOGPROB_FLOOR in tops and all(LOGPROB_FLOOR <= value <= 0.0 for value in tops)
    legacy = post(harness, COMPLETIONS, completions)
    assert legacy.status_code == 200, legacy.text
    alternatives = _strict_json(legacy.text)["choices"][0]["logprobs"]["top_logprobs"]
    assert LOGPROB_FLOOR in [value for top in alternatives for value in top.values()]
    for path, fields in ((CHAT, chat), (COMPLETIONS, completions)):
        streamed = post(harness, path, fields | {"stream": True})
        assert streamed.status_code == 200
        events = [line[6:] for line in streamed.text.split("\n") if line.startswith("data: {")]
        assert events and all(_strict_json(event) for event in events)
        assert any(str(LOGPROB_FLOOR) in event for event in events)
