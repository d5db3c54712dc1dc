"""Reading a request: the API key it presents, and its JSON body within the size and depth
limits."""

from __future__ import annotations

import json
import re
from itertools import accumulate
from typing import Any

from starlette.requests import ClientDisconnect, Request

from distillguard.errors import ApiError, AuthenticationError, ServiceUnavailableError
from distillguard.gateway.apikeys import ApiKey, KeyStore

__all__ = ["MAX_JSON_DEPTH", "authenticate", "read_json"]

# Arrays and objects nested deeper than this are refused. No OpenAI request needs more (a
# tool's JSON schema is the deepest part), and the parser, the usage row's encoder and every
# check that walks a value recurse: a body of 100,000 brackets would raise RecursionError.
MAX_JSON_DEPTH = 64
# a string, or an unterminated one to the end of the text: every match succeeds, and the
# possessive loops never backtrack, so the scan stays linear whatever the text holds
_JSON_STRING = re.compile(r'"[^"\\]*+(?:\\.[^"\\]*+)*+(?:"|\\?\Z)', re.DOTALL)
_BRACKET = re.compile(r"[\[\]{}]")
_DEPTH_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}


async def authenticate(keys: KeyStore, request: Request) -> ApiKey:
    """The key of the request's bearer token, or the 401 (503 while the key store cannot
    answer) to answer."""
    header = request.headers.get("authorization", "")
    presented = header[7:].strip() if header.lower().startswith("bearer ") else None
    try:
        return await keys.authenticate_async(presented)
    except AuthenticationError as exc:
        raise ApiError(401, f"Incorrect API key provided: {exc}", code="invalid_api_key") from None
    except ServiceUnavailableError as exc:
        raise ApiError(503, str(exc), kind="server_error", code="key_store_unavailable") from None


async def read_json(request: Request, max_bytes: int) -> dict[str, Any]:
    """The body as a JSON object; 413 past `max_bytes` (declared or streamed), else 400."""
    too_large = ApiError(413, f"request body exceeds {max_bytes} bytes", code="request_too_large")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise too_large
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_bytes:
                raise too_large
            chunks.append(chunk)
    except ClientDisconnect:
        raise ApiError(400, "the client disconnected while sending the body") from None
    try:
        text = b"".join(chunks).decode("utf-8")
    except UnicodeDecodeError:
        raise ApiError(400, "the request body is not valid UTF-8") from None
    too_deep = ApiError(
        400, f"the request body nests arrays and objects deeper than {MAX_JSON_DEPTH} levels"
    )
    if _nesting_depth(text) > MAX_JSON_DEPTH:
        raise too_deep
    try:
        body = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ApiError(
            400, f"We could not parse the JSON body of your request: {exc.msg}"
        ) from None
    except RecursionError:  # the depth check reads malformed text its own way
        raise too_deep from None
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    return body


def _nesting_depth(text: str) -> int:
    """How deep the JSON text nests arrays and objects, brackets inside strings aside; 0 when
    it has too few brackets to pass MAX_JSON_DEPTH.

    Each step runs in C (count, regular expressions, accumulate): no Python loop over a
    megabyte of body."""
    if text.count("[") + text.count("{") <= MAX_JSON_DEPTH:
        return 0  # it cannot nest deeper than it has brackets
    outside_strings = _JSON_STRING.sub("", text)
    steps = map(_DEPTH_STEP.__getitem__, _BRACKET.findall(outside_strings))
    return max(accumulate(steps), default=0)
