"""Reading a request: the API key it presents, and its JSON body within the size limit."""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import ClientDisconnect, Request

from distillguard.errors import ApiError, AuthenticationError
from distillguard.gateway.apikeys import ApiKey, KeyStore

__all__ = ["authenticate", "read_json"]


def authenticate(keys: KeyStore, request: Request) -> ApiKey:
    """The key of the request's bearer token, or the 401 to answer."""
    header = request.headers.get("authorization", "")
    presented = header[7:].strip() if header.lower().startswith("bearer ") else None
    try:
        return keys.authenticate(presented)
    except AuthenticationError as exc:
        raise ApiError(401, f"Incorrect API key provided: {exc}", code="invalid_api_key") from None


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
    try:
        body = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ApiError(
            400, f"We could not parse the JSON body of your request: {exc.msg}"
        ) from None
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    return body
