"""The allow-list: exactly OpenAI's documented fields and the vLLM extensions the gateway
governs; anything else refused by name; what the local engine and the usage row make of each."""

from __future__ import annotations

from typing import Any

import pytest
from openai.types import completion_create_params
from openai.types.chat import completion_create_params as chat_create_params

from distillguard.errors import ApiError
from distillguard.gateway.fields import (
    FIELDS,
    audit_parameters,
    known_fields,
    schema_properties,
    unsupported_locally,
)

VLLM_EXTENSIONS = {"ignore_eos", "min_tokens", "prompt_logprobs"}


def _openai_fields(params: Any) -> set[str]:
    fields = set()
    for name in ("CompletionCreateParamsNonStreaming", "CompletionCreateParamsStreaming"):
        typed = getattr(params, name)
        fields |= typed.__required_keys__ | typed.__optional_keys__
    return fields


def _allowed(chat: bool) -> set[str]:
    names = {name for name, spec in FIELDS.items() if spec.endpoints.serves(chat)}
    return names | {"logprobs"}  # completions' integer logprobs has a spec of its own


def test_the_allow_list_is_openais_fields_and_the_governed_vllm_extensions() -> None:
    # the installed openai client's own request types: what a standard client can send
    assert _allowed(chat=True) == _openai_fields(chat_create_params) | VLLM_EXTENSIONS
    # safety_identifier: the gateway has always recorded it on both endpoints
    assert _allowed(chat=False) == _openai_fields(completion_create_params) | VLLM_EXTENSIONS | {
        "safety_identifier"
    }


def test_unknown_field_is_refused_and_named() -> None:
    for body in ({"model": "m", "top_k": 4}, {"vllm_xargs": {"a": 1}}, {"watermarking": None}):
        name = next(name for name in body if name != "model")
        with pytest.raises(ApiError) as raised:
            known_fields(body, chat=True)
        error = raised.value
        assert error.status == 400 and error.param == name
        assert error.message == f"Unrecognized request argument supplied: {name}"


def test_a_field_of_one_endpoint_is_unknown_on_the_other() -> None:
    with pytest.raises(ApiError, match="suffix"):
        known_fields({"suffix": "x"}, chat=True)
    with pytest.raises(ApiError, match="tools"):
        known_fields({"tools": []}, chat=False)
    with pytest.raises(ApiError, match="top_logprobs"):
        known_fields({"top_logprobs": 2}, chat=False)


def test_null_fields_count_as_not_sent() -> None:
    assert known_fields({"model": "m", "tools": None, "seed": None}, chat=True) == {"model": "m"}


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"logit_bias": {"the": 5}}, "logit_bias"),
        ({"logit_bias": {"12": 101}}, "logit_bias"),
        ({"logit_bias": {"12": True}}, "logit_bias"),
        ({"logit_bias": [1, 2]}, "logit_bias"),
        ({"frequency_penalty": 2.5}, "frequency_penalty"),
        ({"presence_penalty": "0"}, "presence_penalty"),
        ({"min_tokens": -1}, "min_tokens"),
        ({"prompt_logprobs": -1}, "prompt_logprobs"),  # vLLM: -1 is the whole vocabulary
        ({"metadata": {"a": 1}}, "metadata"),
        ({"tools": [{"type": "function"}, "f"]}, "tools"),
        ({"tool_choice": 3}, "tool_choice"),
        ({"store": "yes"}, "store"),
        ({"modalities": "text"}, "modalities"),
        (
            {"stream_options": {"continuous_usage_stats": True}},
            "stream_options.continuous_usage_stats",
        ),
        ({"stream_options": {"include_usage": 1}}, "stream_options.include_usage"),
    ],
)
def test_a_wrongly_typed_field_is_refused_by_name(fields: dict[str, Any], param: str) -> None:
    with pytest.raises(ApiError) as raised:
        known_fields(fields, chat=True)
    assert raised.value.status == 400 and raised.value.param == param


def test_the_local_engine_names_the_first_field_it_cannot_honour() -> None:
    assert unsupported_locally({"temperature": 0.5, "user": "u", "store": True}, chat=True) is None
    assert unsupported_locally({"n": 2, "best_of": 2}, chat=False) is None
    assert unsupported_locally({"n": 2, "best_of": 3}, chat=False) == "best_of"
    assert unsupported_locally({"seed": 1, "tools": [{}], "suffix": "x"}, chat=True) == "tools"


def test_the_usage_row_records_tools_by_name_and_formats_by_type() -> None:
    tool = {"type": "function", "function": {"name": "lookup", "parameters": {"big": "x" * 999}}}
    schema = {"type": "json_schema", "json_schema": {"name": "answer", "schema": {"x": "y" * 999}}}
    sent = {
        "model": "m",
        "messages": [{"role": "user", "content": "secret"}],
        "tools": [tool, tool],
        "response_format": schema,
        "prediction": {"type": "content", "content": "z" * 40},
        "logit_bias": {"13": -100},
        "metadata": {"team": "a"},
    }
    assert audit_parameters(sent, chat=True) == {
        "tools": {"count": 2, "names": ["lookup", "lookup"]},
        "response_format": {"type": "json_schema", "name": "answer"},
        "prediction": {"type": "content", "chars": 40},
        "logit_bias": {"13": -100},
        "metadata": {"team": "a"},
    }


def test_the_schema_documents_each_endpoints_fields() -> None:
    assert set(schema_properties(chat=True)) == _allowed(chat=True)
    assert set(schema_properties(chat=False)) == _allowed(chat=False)
    assert schema_properties(chat=False)["logprobs"]["type"] == "integer"
    assert schema_properties(chat=True)["logprobs"]["type"] == "boolean"
