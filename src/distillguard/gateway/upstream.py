"""Upstream mode: the gateway in front of any OpenAI-compatible server instead of a local model.

Keys, limits, metering and audit work as with a local model. The outputs cannot be
watermarked here: sampling happens upstream, and a watermark cannot be added to text after the
fact. Responses say so in `x-distillguard-watermark: unavailable`.

Token reservation needs the prompt's size before the upstream has counted it; without the
upstream's tokenizer the gateway estimates one token per 4 bytes of prompt text (rounded up)
and settles to the upstream's reported usage afterwards.
"""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx

__all__ = ["Upstream", "UpstreamReply", "estimate_tokens"]


def estimate_tokens(text: str) -> int:
    return max(1, math.ceil(len(text.encode("utf-8")) / 4))


@dataclass
class UpstreamReply:
    status: int
    body: dict[str, Any]


class Upstream:
    """A pooled HTTP client for one OpenAI-compatible base URL (``http://host:port/v1``)."""

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        timeout: float = 600.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.AsyncClient(
            base_url=self.base_url,
            headers=headers,
            timeout=timeout,
            limits=httpx.Limits(max_keepalive_connections=64, max_connections=256),
            transport=transport,
        )

    async def post(self, path: str, body: dict[str, Any]) -> UpstreamReply:
        response = await self._client.post(path, json=body)
        try:
            payload = response.json()
        except json.JSONDecodeError:
            payload = {
                "error": {
                    "message": "the upstream answered with a non-JSON body",
                    "type": "upstream_error",
                    "param": None,
                    "code": None,
                }
            }
        return UpstreamReply(response.status_code, payload)

    async def stream(self, path: str, body: dict[str, Any]) -> AsyncIterator[tuple[int, str]]:
        """(status, line) pairs: the upstream's SSE lines, or one JSON error body."""
        async with self._client.stream("POST", path, json=body) as response:
            if response.status_code >= 400:
                yield (
                    response.status_code,
                    (await response.aread()).decode("utf-8", errors="replace"),
                )
                return
            async for line in response.aiter_lines():
                yield response.status_code, line

    async def models(self) -> list[str]:
        response = await self._client.get("/models")
        response.raise_for_status()
        return [item["id"] for item in response.json().get("data", [])]

    async def close(self) -> None:
        await self._client.aclose()
