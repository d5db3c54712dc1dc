"""What reaches the upstream: the allow-listed fields the client sent, unchanged, and nothing
else; tier-governed fields only where the key's tier allows them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from distillguard.gateway.mock import MOCK_MODEL, MOCK_TEXT

from .conftest import Proxy, Recorder, make_proxy

TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
SCHEMA_FORMAT = {
    "type": "json_schema",
    "json_schema": {"name": "answer", "schema": {"type": "object"}, "strict": True},
}

# one valid value of every documented field of OpenAI's chat completions request, and the
# vLLM extensions the gateway governs; allowed on the normal tier one at a time
CHAT_FIELDS: list[dict[str, Any]] = [
    {"frequency_penalty": 0.5},
    {"presence_penalty": -0.5},
    {"logit_bias": {"50256": -100, "13": 2.5}},
    {"logprobs": True},
    {"logprobs": True, "top_logprobs": 3},
    {"max_tokens": 12},
    {"max_completion_tokens": 12},
    {"n": 2},
    {"response_format": SCHEMA_FORMAT},
    {"seed": 7},
    {"service_tier": "auto"},
    {"stop": "\n"},
    {"stop": ["a", "b"]},
    {"stream": True, "stream_options": {"include_usage": True}},
    {"temperature": 0.2},
    {"top_p": 0.9},
    {"tools": [TOOL]},
    {"tools": [TOOL], "tool_choice": "auto"},
    {"tools": [TOOL], "tool_choice": {"type": "function", "function": {"name": "get_weather"}}},
    {"tools": [TOOL], "parallel_tool_calls": False},
    {"user": "user-1234"},
    {"safety_identifier": "hashed-user"},
    {"metadata": {"project": "alpha"}},
    {"store": True},
    {"reasoning_effort": "low"},
    {"verbosity": "low"},
    {"modalities": ["text", "audio"], "audio": {"voice": "alloy", "format": "wav"}},
    {"prediction": {"type": "content", "content": "The weather is"}},
    {"web_search_options": {"search_context_size": "low"}},
    {"functions": [TOOL["function"]]},
    {"functions": [TOOL["function"]], "function_call": "auto"},
    {"functions": [TOOL["function"]], "function_call": {"name": "get_weather"}},
    {"prompt_cache_key": "conversation-9"},
    {"prompt_cache_retention": "24h"},
    {"ignore_eos": True},
    {"min_tokens": 4, "max_tokens": 8},
    {"prompt_logprobs": 2},
]
COMPLETION_FIELDS: list[dict[str, Any]] = [
    {"best_of": 3},
    {"best_of": 3, "n": 2},
    {"echo": True},
    {"echo": True, "logprobs": 2},
    {"frequency_penalty": 1.0},
    {"logit_bias": {"50256": -100}},
    {"logprobs": 0},
    {"logprobs": 5},
    {"max_tokens": 5},
    {"n": 3},
    {"presence_penalty": 1.5},
    {"seed": 11},
    {"stop": ["\n\n"]},
    {"stream": True, "stream_options": {"include_usage": False}},
    {"suffix": " and that is all."},
    {"temperature": 0},
    {"top_p": 0.5},
    {"user": "user-1234"},
    {"ignore_eos": True},
    {"min_tokens": 2},
    {"prompt_logprobs": 1},
]


def _answered(response: httpx.Response) -> None:
    assert response.status_code == 200, response.text
    assert MOCK_TEXT.split(" ")[0] in response.text


def _sent_unchanged(proxy: Proxy, sent: dict[str, Any]) -> None:
    """The upstream got exactly the client's fields (streams: with the usage chunk asked for,
    which settles the reservation)."""
    (received,) = proxy.received
    expected = dict(sent)
    if sent.get("stream"):
        expected["stream_options"] = sent.get("stream_options", {}) | {"include_usage": True}
    assert received == expected


@pytest.mark.parametrize("fields", CHAT_FIELDS, ids=lambda fields: "+".join(fields))
def test_every_documented_chat_field_reaches_the_upstream_unchanged(
    proxy: Proxy, fields: dict[str, Any]
) -> None:
    _answered(proxy.chat(**fields))
    messages = [{"role": "user", "content": "hi"}]
    _sent_unchanged(proxy, {"model": MOCK_MODEL, "messages": messages} | fields)


@pytest.mark.parametrize("fields", COMPLETION_FIELDS, ids=lambda fields: "+".join(fields))
def test_every_documented_completions_field_reaches_the_upstream_unchanged(
    proxy: Proxy, fields: dict[str, Any]
) -> None:
    _answered(proxy.completion(**fields))
    _sent_unchanged(proxy, {"model": MOCK_MODEL, "prompt": "hi"} | fields)


def test_a_multi_turn_tool_conversation_reaches_the_upstream_unchanged(proxy: Proxy) -> None:
    messages: list[dict[str, Any]] = [
        {"role": "developer", "content": "Answer with tools."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is the weather here? "},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
            ],
        },
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "Rain, 8 C."},
        {"role": "user", "content": "Do I need an umbrella?", "name": "ola"},
    ]
    _answered(proxy.chat(messages=messages, tools=[TOOL]))
    _sent_unchanged(proxy, {"model": MOCK_MODEL, "messages": messages, "tools": [TOOL]})


def test_a_streams_own_stream_options_are_kept(proxy: Proxy) -> None:
    options = {"include_usage": False, "include_obfuscation": False}
    _answered(proxy.chat(stream=True, stream_options=options))
    assert proxy.received[0]["stream_options"] == {
        "include_usage": True,
        "include_obfuscation": False,
    }


def test_null_fields_are_left_out(proxy: Proxy) -> None:
    _answered(proxy.chat(temperature=None, tools=None, user=None))
    assert proxy.received == [
        {"model": MOCK_MODEL, "messages": [{"role": "user", "content": "hi"}]}
    ]


def _refused(response: httpx.Response, status: int, param: str, fragment: str) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == param
    assert fragment in error["message"]


def test_unknown_field_is_refused_and_named(proxy: Proxy) -> None:
    _refused(proxy.chat(top_k=5), 400, "top_k", "Unrecognized request argument supplied: top_k")
    _refused(proxy.completion(frobnicate=1), 400, "frobnicate", "frobnicate")
    _refused(proxy.completion(tools=[TOOL]), 400, "tools", "tools")  # a chat field
    _refused(proxy.chat(suffix="x"), 400, "suffix", "suffix")  # a completions field
    assert proxy.received == []


def test_client_vllm_xargs_never_reaches_the_upstream(proxy: Proxy) -> None:
    # vLLM hands vllm_xargs to its logits processors: a client could switch off the
    # watermark, or pose as another tenant
    xargs = {"distillguard_tenant": "globex", "distillguard_watermark": False}
    _refused(proxy.chat(vllm_xargs=xargs), 400, "vllm_xargs", "vllm_xargs")
    _refused(proxy.completion(vllm_xargs=None), 400, "vllm_xargs", "vllm_xargs")
    assert proxy.received == []


def test_client_watermarking_never_reaches_the_upstream(proxy: Proxy) -> None:
    _refused(proxy.chat(watermarking=False), 400, "watermarking", "watermarking")
    _refused(proxy.completion(watermarking={"enabled": False}), 400, "watermarking", "")
    assert proxy.received == []


def test_client_custom_logit_processor_never_reaches_the_upstream(proxy: Proxy) -> None:
    processor = '{"callable": "builtins.exec"}'
    _refused(proxy.chat(custom_logit_processor=processor), 400, "custom_logit_processor", "")
    _refused(proxy.completion(custom_logit_processor=processor), 400, "custom_logit_processor", "")
    assert proxy.received == []


def test_unknown_message_keys_never_reach_the_upstream(proxy: Proxy) -> None:
    messages = [{"role": "user", "content": "hi", "chat_template_kwargs": {"x": 1}}]
    response = proxy.chat(messages=messages)
    _refused(response, 400, "messages[0].chat_template_kwargs", "Unrecognized")
    assert proxy.received == []


def test_logit_bias_with_logprobs_never_reaches_the_upstream_on_the_normal_tier(
    proxy: Proxy,
) -> None:
    bias = {"50256": 100}
    _refused(proxy.chat(logit_bias=bias, logprobs=True), 400, "logit_bias", "logprobs")
    _refused(proxy.completion(logit_bias=bias, logprobs=1), 400, "logit_bias", "logprobs")
    _refused(proxy.completion(logit_bias=bias, prompt_logprobs=0), 400, "logit_bias", "")
    assert proxy.received == []


@pytest.mark.parametrize(
    ("tier", "fields", "param"),
    [
        ("watch", {"logit_bias": {"13": 5}}, "logit_bias"),
        ("throttle", {"logit_bias": {"13": 5}}, "logit_bias"),
        ("throttle", {"echo": True}, "echo"),
        ("throttle", {"best_of": 2}, "best_of"),
        ("throttle", {"ignore_eos": True}, "ignore_eos"),
        ("throttle", {"min_tokens": 3}, "min_tokens"),
        ("throttle", {"prompt_logprobs": 0}, "prompt_logprobs"),
        ("watch", {"prompt_logprobs": 6}, "prompt_logprobs"),
        ("throttle", {"logprobs": 1}, "logprobs"),
    ],
)
def test_tier_governed_fields_never_reach_the_upstream_when_the_tier_refuses_them(
    tmp_path: Path, recorder: Recorder, tier: str, fields: dict[str, Any], param: str
) -> None:
    proxy = make_proxy(tmp_path, recorder, tier=tier)
    try:
        _refused(proxy.completion(**fields), 400, param, "for this key")
        assert proxy.received == []
    finally:
        proxy.audit.close()


def test_best_of_reserves_tokens_for_every_generated_completion(
    tmp_path: Path, recorder: Recorder
) -> None:
    # 1 prompt token + 30 x 4 completions > 100 tokens a minute: refused before the upstream
    proxy = make_proxy(tmp_path, recorder, tpm=100)
    try:
        response = proxy.completion(max_tokens=30, best_of=4)
        assert response.status_code == 429, response.text
        assert proxy.received == []
        _answered(proxy.completion(max_tokens=30))
    finally:
        proxy.audit.close()
