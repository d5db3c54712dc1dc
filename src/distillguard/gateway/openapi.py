"""The gateway's OpenAPI 3.0 description (served at /openapi.json; fuzzed by schemathesis)."""

from __future__ import annotations

from typing import Any

__all__ = ["openapi_document"]

_ERROR = {"$ref": "#/components/schemas/Error"}
_ERRORS = {
    str(status): {"description": text, "content": {"application/json": {"schema": _ERROR}}}
    for status, text in (
        (400, "invalid request"),
        (401, "bad API key"),
        (403, "the key is blocked (harvest monitor)"),
        (404, "unknown model"),
        (413, "body too large"),
        (429, "rate limited"),
    )
}
_STOP = {
    "oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}, "maxItems": 4}]
}
_COMMON: dict[str, Any] = {
    "model": {"type": "string"},
    "max_tokens": {"type": "integer", "minimum": 1},
    "temperature": {"type": "number", "minimum": 0, "maximum": 2},
    "top_p": {"type": "number", "minimum": 0, "exclusiveMinimum": True, "maximum": 1},
    "n": {"type": "integer", "minimum": 1, "maximum": 16},
    "stop": _STOP,
    "seed": {"type": "integer"},
    "stream": {"type": "boolean"},
    "stream_options": {"type": "object", "properties": {"include_usage": {"type": "boolean"}}},
    "user": {"type": "string"},
    "ignore_eos": {"type": "boolean"},  # vLLM's extension
}


def openapi_document(model_names: tuple[str, ...]) -> dict[str, Any]:
    """The description of the routes the gateway serves, for these model names."""
    model = {"type": "string", "enum": list(model_names)}
    return {
        "openapi": "3.0.3",
        "info": {"title": "distillguard gateway", "version": "1"},
        "paths": {
            "/v1/models": {
                "get": {
                    "summary": "served models",
                    "security": [{"bearer": []}],
                    "responses": {
                        "200": {
                            "description": "model list",
                            "content": {"application/json": {"schema": {"type": "object"}}},
                        },
                        "401": _ERRORS["401"],
                    },
                }
            },
            "/v1/chat/completions": _post("chat completion", _chat_request(model)),
            "/v1/completions": _post("text completion", _completion_request(model)),
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {
                        "error": {
                            "type": "object",
                            "required": ["message", "type", "param", "code"],
                        }
                    },
                }
            },
        },
    }


def _chat_request(model: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["model", "messages"],
        "properties": _COMMON
        | {
            "model": model,
            "messages": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "required": ["role", "content"],
                    "properties": {
                        "role": {
                            "type": "string",
                            "enum": ["system", "developer", "user", "assistant"],
                        },
                        "content": {"type": "string"},
                    },
                },
            },
            "max_completion_tokens": {"type": "integer", "minimum": 1},
            "logprobs": {"type": "boolean"},
            "top_logprobs": {"type": "integer", "minimum": 0, "maximum": 20},
            "safety_identifier": {"type": "string"},
        },
    }


def _completion_request(model: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["model", "prompt"],
        "properties": _COMMON
        | {
            "model": model,
            "prompt": {
                "oneOf": [
                    {"type": "string"},
                    {"type": "array", "items": {"type": "integer", "minimum": 0}, "minItems": 1},
                ]
            },
            "logprobs": {"type": "integer", "minimum": 0, "maximum": 5},
        },
    }


def _post(summary: str, schema: dict[str, Any]) -> dict[str, Any]:
    """A POST route taking `schema` as its JSON body."""
    ok = {
        "description": "the completion (JSON, or server-sent events when stream is true)",
        "content": {
            "application/json": {"schema": {"type": "object"}},
            "text/event-stream": {"schema": {"type": "string"}},
        },
    }
    return {
        "post": {
            "summary": summary,
            "security": [{"bearer": []}],
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": schema}},
            },
            "responses": {"200": ok} | _ERRORS,
        }
    }
