"""The gateway's OpenAPI 3.0 description (served at /openapi.json; fuzzed by schemathesis).

The request bodies' fields come from the gateway's allow-list (`fields.py`), so the document
and what the gateway accepts cannot drift apart.
"""

from __future__ import annotations

from typing import Any

from distillguard.gateway.fields import schema_properties

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
    return _request(model, "messages", schema_properties(chat=True))


def _completion_request(model: dict[str, Any]) -> dict[str, Any]:
    return _request(model, "prompt", schema_properties(chat=False))


def _request(model: dict[str, Any], what: str, properties: dict[str, Any]) -> dict[str, Any]:
    """A request body: the allow-list's fields for the endpoint and nothing else (any other
    field is answered with 400 naming it)."""
    return {
        "type": "object",
        "required": ["model", what],
        "properties": properties | {"model": model},
        "additionalProperties": False,
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
