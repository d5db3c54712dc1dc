"""The request fields the gateway knows: its allow-list.

Every documented field of OpenAI's chat completions and completions requests, plus the vLLM
extensions the gateway governs (`ignore_eos`, `min_tokens`, `prompt_logprobs`). A request
with any other field is refused with 400 naming it, as OpenAI answers
(`Unrecognized request argument supplied: <name>`), and the body an upstream receives is
built from these fields only: a client's `vllm_xargs` (which reaches vLLM's logits
processors), `watermarking` or `custom_logit_processor` never gets past the gateway.

Each field says on which endpoints it exists, what JSON it takes (checked here, or by
`parse_body` for the sampling fields it reads), what the local engine does with it, and how
the usage row records it. The OpenAPI document is built from the same table.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

from distillguard.errors import ApiError
from distillguard.gateway.messages import MESSAGES_SCHEMA

__all__ = [
    "FIELDS",
    "Audit",
    "Endpoint",
    "FieldSpec",
    "Local",
    "audit_parameters",
    "known_fields",
    "schema_properties",
    "unsupported_locally",
]


class Endpoint(Enum):
    CHAT = "chat"
    COMPLETIONS = "completions"
    BOTH = "both"

    def serves(self, chat: bool) -> bool:
        if self is Endpoint.BOTH:
            return True
        if self is Endpoint.CHAT:
            return chat
        if self is Endpoint.COMPLETIONS:
            return not chat
        raise ValueError(f"unknown endpoint {self!r}")


class Local(Enum):
    """What the local engine does with a field."""

    HONOURED = "honoured"  # the engine applies it
    ADVISORY = "advisory"  # changes nothing in the output (a tag, a cache hint): recorded only
    NEUTRAL_ONLY = "neutral_only"  # refused unless its value asks for nothing (a 0 penalty)
    UPSTREAM = "upstream"  # only an upstream can honour it (tools, images): refused locally


class Audit(Enum):
    """How the usage row's `parameters` record a field the client sent."""

    VALUE = "value"  # as sent
    NAMES = "names"  # tools and functions: their count and names, not their JSON schemas
    SHAPE = "shape"  # response_format and prediction: their type and size, not their content
    NONE = "none"  # the prompt, the messages and the model have columns of their own


@dataclass(frozen=True)
class Kind:
    """The JSON a field takes: its OpenAPI schema and the check of a value (not null)."""

    schema: dict[str, Any]
    check: Callable[[str, Any], None]


@dataclass(frozen=True)
class FieldSpec:
    name: str
    kind: Kind
    endpoints: Endpoint = Endpoint.BOTH
    local: Local = Local.HONOURED
    audit: Audit = Audit.VALUE
    # for NEUTRAL_ONLY: whether the value (given every field sent) asks for nothing
    neutral: Callable[[Any, Mapping[str, Any]], bool] | None = None


# -- kinds ------------------------------------------------------------------------------------


def _invalid(name: str, expected: str) -> ApiError:
    return ApiError(400, f"'{name}' must be {expected}", param=name, code="invalid_type")


def _typed(schema: dict[str, Any], kinds: tuple[type, ...], expected: str) -> Kind:
    def check(name: str, value: Any) -> None:
        # JSON true is a Python int: a boolean passes only where booleans are wanted
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            raise _invalid(name, expected)

    return Kind(schema, check)


def _parsed(schema: dict[str, Any]) -> Kind:
    """A field `parse_body` reads and checks itself (with the messages it always gave)."""
    return Kind(schema, lambda name, value: None)


def _number_in(low: float, high: float) -> Kind:
    def check(name: str, value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _invalid(name, "a number")
        if not low <= value <= high:
            raise ApiError(400, f"'{name}' must be between {low:g} and {high:g}", param=name)

    return Kind({"type": "number", "minimum": low, "maximum": high}, check)


def _integer_from(low: int) -> Kind:
    def check(name: str, value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _invalid(name, "an integer")
        if value < low:
            raise ApiError(400, f"'{name}' must be at least {low}", param=name)

    return Kind({"type": "integer", "minimum": low}, check)


def _check_logit_bias(name: str, value: Any) -> None:
    """Token id (a string of digits) -> bias in [-100, 100], as OpenAI and vLLM take it."""
    if not isinstance(value, dict):
        raise _invalid(name, "an object mapping token ids to biases")
    for token, bias in value.items():
        if not (token.isascii() and token.isdigit()):
            raise ApiError(400, f"'{name}' keys must be token ids, got {token!r}", param=name)
        if isinstance(bias, bool) or not isinstance(bias, (int, float)) or not -100 <= bias <= 100:
            raise ApiError(400, f"'{name}' biases must be numbers in [-100, 100]", param=name)


def _check_metadata(name: str, value: Any) -> None:
    if not isinstance(value, dict) or not all(isinstance(item, str) for item in value.values()):
        raise _invalid(name, "an object of strings")


def _check_strings(name: str, value: Any) -> None:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise _invalid(name, "an array of strings")


def _check_objects(name: str, value: Any) -> None:
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise _invalid(name, "an array of objects")


_STRING = _typed({"type": "string"}, (str,), "a string")
_BOOLEAN = _typed({"type": "boolean"}, (bool,), "a boolean")
_OBJECT = _typed({"type": "object"}, (dict,), "an object")
_STRING_OR_OBJECT = _typed(
    {"oneOf": [{"type": "string"}, {"type": "object"}]}, (str, dict), "a string or an object"
)
_OBJECTS = Kind({"type": "array", "items": {"type": "object"}}, _check_objects)
_STRINGS = Kind({"type": "array", "items": {"type": "string"}}, _check_strings)
_PENALTY = _number_in(-2.0, 2.0)
_LOGIT_BIAS = Kind(
    {"type": "object", "additionalProperties": {"type": "number", "minimum": -100, "maximum": 100}},
    _check_logit_bias,
)
_METADATA = Kind({"type": "object", "additionalProperties": {"type": "string"}}, _check_metadata)


def _check_stream_options(name: str, value: Any) -> None:
    if not isinstance(value, dict):
        raise _invalid(name, "an object")
    for key, option in value.items():
        if key not in ("include_usage", "include_obfuscation"):
            raise ApiError(
                400, f"Unrecognized request argument supplied: {name}.{key}", param=f"{name}.{key}"
            )
        if option is not None and not isinstance(option, bool):
            raise _invalid(f"{name}.{key}", "a boolean")


_STREAM_OPTIONS = Kind(
    {
        "type": "object",
        "properties": {
            "include_usage": {"type": "boolean"},
            "include_obfuscation": {"type": "boolean"},
        },
        "additionalProperties": False,
    },
    _check_stream_options,
)


# -- the table --------------------------------------------------------------------------------


def _equals(neutral: Any) -> Callable[[Any, Mapping[str, Any]], bool]:
    return lambda value, sent: bool(value == neutral)


def _best_of_is_n(value: Any, sent: Mapping[str, Any]) -> bool:
    return bool(value == sent.get("n", 1))


_STOP = {
    "oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}, "maxItems": 4}]
}
_PROMPT = {
    "oneOf": [
        {"type": "string"},
        {"type": "array", "items": {"type": "integer", "minimum": 0}, "minItems": 1},
    ]
}
CHAT, COMPLETIONS = Endpoint.CHAT, Endpoint.COMPLETIONS
ADVISORY, NEUTRAL_ONLY, UPSTREAM = Local.ADVISORY, Local.NEUTRAL_ONLY, Local.UPSTREAM

FIELDS: dict[str, FieldSpec] = {
    spec.name: spec
    for spec in (
        # what to complete, and with which model
        FieldSpec("model", _parsed({"type": "string"}), audit=Audit.NONE),
        FieldSpec("messages", _parsed(MESSAGES_SCHEMA), CHAT, audit=Audit.NONE),
        FieldSpec("prompt", _parsed(_PROMPT), COMPLETIONS, audit=Audit.NONE),
        FieldSpec("suffix", _STRING, COMPLETIONS, UPSTREAM),
        # sampling, read by parse_body
        FieldSpec("max_tokens", _parsed({"type": "integer", "minimum": 1})),
        FieldSpec("max_completion_tokens", _parsed({"type": "integer", "minimum": 1}), CHAT),
        FieldSpec("temperature", _parsed({"type": "number", "minimum": 0, "maximum": 2})),
        FieldSpec(
            "top_p",
            _parsed({"type": "number", "minimum": 0, "exclusiveMinimum": True, "maximum": 1}),
        ),
        FieldSpec("n", _parsed({"type": "integer", "minimum": 1, "maximum": 16})),
        FieldSpec("stop", _parsed(_STOP)),
        FieldSpec("seed", _parsed({"type": "integer"})),
        FieldSpec("stream", _parsed({"type": "boolean"})),
        FieldSpec("stream_options", _STREAM_OPTIONS),
        FieldSpec("logprobs", _parsed({"type": "boolean"}), CHAT),
        FieldSpec("top_logprobs", _parsed({"type": "integer", "minimum": 0, "maximum": 20}), CHAT),
        FieldSpec("ignore_eos", _parsed({"type": "boolean"})),  # vLLM: run to max_tokens
        # sampling an upstream applies; the local engine only when they ask for nothing
        FieldSpec("frequency_penalty", _PENALTY, local=NEUTRAL_ONLY, neutral=_equals(0)),
        FieldSpec("presence_penalty", _PENALTY, local=NEUTRAL_ONLY, neutral=_equals(0)),
        FieldSpec("logit_bias", _LOGIT_BIAS, local=NEUTRAL_ONLY, neutral=_equals({})),
        FieldSpec("best_of", _integer_from(1), COMPLETIONS, NEUTRAL_ONLY, neutral=_best_of_is_n),
        FieldSpec("echo", _BOOLEAN, COMPLETIONS, NEUTRAL_ONLY, neutral=_equals(False)),
        FieldSpec("min_tokens", _integer_from(0), local=NEUTRAL_ONLY, neutral=_equals(0)),  # vLLM
        FieldSpec("prompt_logprobs", _integer_from(0), local=UPSTREAM),  # vLLM
        # tools and structured output
        FieldSpec("tools", _OBJECTS, CHAT, NEUTRAL_ONLY, Audit.NAMES, _equals([])),
        FieldSpec("tool_choice", _STRING_OR_OBJECT, CHAT, NEUTRAL_ONLY, neutral=_equals("none")),
        FieldSpec("parallel_tool_calls", _BOOLEAN, CHAT, ADVISORY),  # moot without tools
        FieldSpec("functions", _OBJECTS, CHAT, NEUTRAL_ONLY, Audit.NAMES, _equals([])),
        FieldSpec("function_call", _STRING_OR_OBJECT, CHAT, NEUTRAL_ONLY, neutral=_equals("none")),
        FieldSpec(
            "response_format",
            _OBJECT,
            CHAT,
            NEUTRAL_ONLY,
            Audit.SHAPE,
            _equals({"type": "text"}),
        ),
        # other outputs and model features
        FieldSpec("modalities", _STRINGS, CHAT, NEUTRAL_ONLY, neutral=_equals(["text"])),
        FieldSpec("audio", _OBJECT, CHAT, UPSTREAM),
        FieldSpec("prediction", _OBJECT, CHAT, UPSTREAM, Audit.SHAPE),
        FieldSpec("reasoning_effort", _STRING, CHAT, UPSTREAM),
        FieldSpec("verbosity", _STRING, CHAT, UPSTREAM),
        FieldSpec("web_search_options", _OBJECT, CHAT, UPSTREAM),
        FieldSpec("moderation", _OBJECT, CHAT, UPSTREAM),
        # tags and hints: recorded, changing nothing in the output
        FieldSpec("user", _parsed({"type": "string"}), local=ADVISORY),
        FieldSpec("safety_identifier", _parsed({"type": "string"}), local=ADVISORY),
        FieldSpec("metadata", _METADATA, CHAT, ADVISORY),
        FieldSpec("store", _BOOLEAN, CHAT, ADVISORY),  # the usage log keeps every completion
        FieldSpec("service_tier", _STRING, CHAT, ADVISORY),
        FieldSpec("prompt_cache_key", _STRING, CHAT, ADVISORY),
        FieldSpec("prompt_cache_retention", _STRING, CHAT, ADVISORY),
        FieldSpec("prompt_cache_options", _OBJECT, CHAT, ADVISORY),
    )
}
# completions' logprobs is an integer (0-5), chat's a boolean: parse_body reads both
_COMPLETIONS_LOGPROBS = FieldSpec(
    "logprobs", _parsed({"type": "integer", "minimum": 0, "maximum": 5}), COMPLETIONS
)


def _spec(name: str, chat: bool) -> FieldSpec | None:
    if name == "logprobs" and not chat:
        return _COMPLETIONS_LOGPROBS
    spec = FIELDS.get(name)
    return spec if spec is not None and spec.endpoints.serves(chat) else None


def known_fields(body: Mapping[str, Any], *, chat: bool) -> dict[str, Any]:
    """The fields of `body` that are set (null means not sent), each checked; ApiError 400
    naming the first field the gateway does not know."""
    sent: dict[str, Any] = {}
    for name, value in body.items():
        spec = _spec(name, chat)
        if spec is None:
            raise ApiError(400, f"Unrecognized request argument supplied: {name}", param=name)
        if value is None:
            continue
        spec.kind.check(name, value)
        sent[name] = value
    return sent


def unsupported_locally(sent: Mapping[str, Any], *, chat: bool) -> str | None:
    """The first field sent that the local engine cannot honour, or None."""
    for name, value in sent.items():
        spec = _spec(name, chat)
        if spec is None:
            return name
        if spec.local is Local.HONOURED or spec.local is Local.ADVISORY:
            continue
        if spec.local is Local.NEUTRAL_ONLY:
            if spec.neutral is not None and spec.neutral(value, sent):
                continue
            return name
        if spec.local is Local.UPSTREAM:
            return name
        raise ValueError(f"unknown local support {spec.local!r}")
    return None


def audit_parameters(sent: Mapping[str, Any], *, chat: bool) -> dict[str, Any]:
    """What the usage row records of each field sent: values, but tools by name and
    response formats by type, not their (possibly huge) JSON."""
    recorded: dict[str, Any] = {}
    for name, value in sent.items():
        spec = _spec(name, chat)
        if spec is None or spec.audit is Audit.NONE:
            continue
        if spec.audit is Audit.VALUE:
            recorded[name] = value
        elif spec.audit is Audit.NAMES:
            recorded[name] = {"count": len(value), "names": [_tool_name(item) for item in value]}
        elif spec.audit is Audit.SHAPE:
            recorded[name] = _shape(value)
        else:
            raise ValueError(f"unknown audit kind {spec.audit!r}")
    return recorded


def _tool_name(tool: dict[str, Any]) -> str | None:
    """`{"type": "function", "function": {"name": ...}}`, or a legacy function's `name`."""
    holder = tool.get("function") if isinstance(tool.get("function"), dict) else tool
    name = holder.get("name") if isinstance(holder, dict) else None
    return name if isinstance(name, str) else tool.get("type")


def _shape(value: dict[str, Any]) -> dict[str, Any]:
    """A response format's type and schema name, or a prediction's type and length."""
    shape: dict[str, Any] = {"type": value.get("type")}
    schema = value.get("json_schema")
    if isinstance(schema, dict) and isinstance(schema.get("name"), str):
        shape["name"] = schema["name"]
    content = value.get("content")
    if content is not None:
        shape["chars"] = len(content) if isinstance(content, str) else len(str(content))
    return shape


def schema_properties(*, chat: bool) -> dict[str, Any]:
    """The OpenAPI schemas of the fields one endpoint takes."""
    names = [name for name, spec in FIELDS.items() if spec.endpoints.serves(chat)]
    properties = {name: FIELDS[name].kind.schema for name in names}
    if not chat:
        properties["logprobs"] = _COMPLETIONS_LOGPROBS.kind.schema
    return properties
