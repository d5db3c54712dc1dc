"""A streamed answer that settles its admission however the stream ends.

A stream outlives the request handler that admitted it, so the handler hands the admission
(the call's exit stack, `Call.held`) to the response. When the response ends, finished,
failed, cut off by the client or never started, it first closes the stream (whose own
`finally` settles with the tokens counted so far), then releases the admission (which charges
the whole reservation if nothing settled it).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping

from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

__all__ = ["SettledStream"]


class SettledStream(StreamingResponse):
    def __init__(
        self,
        content: AsyncIterator[str],
        held: contextlib.AsyncExitStack,
        *,
        headers: Mapping[str, str] | None = None,
        media_type: str | None = None,
    ) -> None:
        super().__init__(content, headers=headers, media_type=media_type)
        self._stream = content
        self._held = held

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            try:
                aclose = getattr(self._stream, "aclose", None)  # an async generator's
                if aclose is not None:
                    await aclose()
            finally:
                await self._held.aclose()
