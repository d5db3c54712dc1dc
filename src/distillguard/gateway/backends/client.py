"""A pooled HTTP client for one OpenAI-compatible upstream (what `UpstreamBackend` talks to).

The client is aiohttp with a pooled keep-alive connector, and a lean HTTP/1.1 pool
(`http1.py`) for plain-http upstreams: on this path httpx spent about 1.3 ms of Python per
request, more than the whole gateway's budget. `estimate_tokens` counts a prompt before the
upstream has: one token per 4 bytes of text, rounded up.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any

import aiohttp

from distillguard.errors import UpstreamError
from distillguard.gateway.backends.http1 import Http1Pool

__all__ = ["Upstream", "UpstreamReply", "estimate_tokens"]


def estimate_tokens(text: str) -> int:
    return max(1, math.ceil(len(text.encode("utf-8")) / 4))


@dataclass
class UpstreamReply:
    status: int
    body: dict[str, Any]
    raw: bytes  # the body as received, passed through to the client unchanged


class Upstream:
    """A pooled HTTP client for one OpenAI-compatible base URL (``http://host:port/v1``).

    The session is created on first use, inside the event loop that serves requests.
    """

    def __init__(
        self, base_url: str, *, api_key: str | None = None, timeout: float = 600.0
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._fast: Http1Pool | None = None
        self._fast_loop: asyncio.AbstractEventLoop | None = None
        self._timeout_seconds = timeout

    def _client(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        if self._session is None or self._session.closed or self._loop is not loop:
            # a session belongs to one event loop; a new loop (tests, a restart) gets a new one
            self._loop = loop
            self._session = aiohttp.ClientSession(
                headers=self._headers,
                timeout=self._timeout,
                connector=aiohttp.TCPConnector(limit=256, keepalive_timeout=60),
            )
        return self._session

    def _pool(self) -> Http1Pool | None:
        """The fast HTTP/1.1 pool for plain-http upstreams (None for https: aiohttp does TLS)."""
        if not self.base_url.startswith("http://"):
            return None
        loop = asyncio.get_running_loop()
        if self._fast is None or self._fast_loop is not loop:
            self._fast = Http1Pool(self.base_url, self._headers)
            self._fast_loop = loop
        return self._fast

    async def post(self, path: str, body: dict[str, Any]) -> UpstreamReply:
        encoded = json.dumps(body, separators=(",", ":")).encode()
        pool = self._pool()
        try:
            if pool is not None:
                response = await pool.post(path, encoded, timeout=self._timeout_seconds)
                status, raw = response.status, response.body
            else:
                async with self._client().post(
                    self.base_url + path, data=encoded, headers={"content-type": "application/json"}
                ) as reply:
                    raw = await reply.read()
                    status = reply.status
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
            raise UpstreamError(type(exc).__name__) from None
        try:
            payload = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            payload = None
        if not isinstance(payload, dict):
            payload = {
                "error": {
                    "message": "the upstream answered with a non-JSON body",
                    "type": "upstream_error",
                    "param": None,
                    "code": None,
                }
            }
            raw = json.dumps(payload).encode()
        return UpstreamReply(status, payload, raw)

    async def stream(
        self, path: str, body: dict[str, Any]
    ) -> AsyncGenerator[tuple[int, str], None]:
        """(status, line) pairs: the upstream's SSE lines, or one error body."""
        try:
            async with self._client().post(self.base_url + path, json=body) as response:
                if response.status >= 400:
                    yield response.status, (await response.read()).decode("utf-8", errors="replace")
                    return
                async for raw in response.content:
                    line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
                    if line:
                        yield response.status, line
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise UpstreamError(type(exc).__name__) from None

    async def close(self) -> None:
        if self._fast is not None:
            self._fast.close()
        if self._session is not None:
            await self._session.close()
