"""An instant OpenAI-compatible upstream, for tests and benchmarks (like httpx's MockTransport).

It answers every completion with the same short text at once, streaming or not, with usage;
`GET /v1/models` lists one model, "mock".
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

__all__ = ["MOCK_MODEL", "MOCK_TEXT", "mock_upstream_app"]

MOCK_MODEL = "mock"
MOCK_TEXT = "This is the mock upstream's answer."
_USAGE = {"prompt_tokens": 7, "completion_tokens": 8, "total_tokens": 15}


def mock_upstream_app() -> Starlette:
    async def models(request: Request) -> Response:
        return JSONResponse(
            {
                "object": "list",
                "data": [{"id": MOCK_MODEL, "object": "model", "created": 0, "owned_by": "mock"}],
            }
        )

    async def answer(request: Request, *, chat: bool) -> Response:
        body = await request.json()
        if body.get("stream"):
            return StreamingResponse(_chunks(body, chat=chat), media_type="text/event-stream")
        choice: dict[str, Any] = {"index": 0, "logprobs": None, "finish_reason": "stop"}
        if chat:
            choice["message"] = {"role": "assistant", "content": MOCK_TEXT}
        else:
            choice["text"] = MOCK_TEXT
        return JSONResponse(
            {
                "id": "chatcmpl-mock" if chat else "cmpl-mock",
                "object": "chat.completion" if chat else "text_completion",
                "created": 0,
                "model": MOCK_MODEL,
                "choices": [choice],
                "usage": _USAGE,
            }
        )

    async def chat(request: Request) -> Response:
        return await answer(request, chat=True)

    async def completions(request: Request) -> Response:
        return await answer(request, chat=False)

    return Starlette(
        routes=[
            Route("/v1/models", models, methods=["GET"]),
            Route("/v1/chat/completions", chat, methods=["POST"]),
            Route("/v1/completions", completions, methods=["POST"]),
        ]
    )


async def _chunks(body: dict[str, Any], *, chat: bool) -> AsyncIterator[str]:
    kind = "chat.completion.chunk" if chat else "text_completion"
    for word in MOCK_TEXT.split(" "):
        choice: dict[str, Any] = {"index": 0, "finish_reason": None, "logprobs": None}
        if chat:
            choice["delta"] = {"content": word + " "}
        else:
            choice["text"] = word + " "
        yield (
            "data: "
            + json.dumps(
                {
                    "id": "mock",
                    "object": kind,
                    "created": 0,
                    "model": MOCK_MODEL,
                    "choices": [choice],
                }
            )
            + "\n\n"
        )
    if (body.get("stream_options") or {}).get("include_usage"):
        yield (
            "data: "
            + json.dumps(
                {
                    "id": "mock",
                    "object": kind,
                    "created": 0,
                    "model": MOCK_MODEL,
                    "choices": [],
                    "usage": _USAGE,
                }
            )
            + "\n\n"
        )
    yield "data: [DONE]\n\n"
