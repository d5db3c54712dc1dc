"""A streamed answer that settles its admission however the stream ends.

A stream outlives the request handler that admitted it, so the handler hands the admission
(the call's exit stack, `Call.held`) to the response. When the response ends, finished,
failed, cut off by the client or never started, it first closes the stream (whose own
`finally` settles with the tokens counted so far), then releases the admission (which charges
the whole reservation if nothing settled it).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import TypeVar

from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from distillguard.errors import ClientDisconnected

__all__ = ["SettledStream", "until_disconnected"]

T = TypeVar("T")


class SettledStream(StreamingResponse):
    def __init__(
        self,
        content: AsyncIterator[str],
        held: contextlib.AsyncExitStack,
        *,
        headers: Mapping[str, str] | None = None,
        media_type: str | None = None,
        on_close: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(content, headers=headers, media_type=media_type)
        self._stream = content
        self._held = held
        self._on_close = on_close  # after the stream closed: e.g. record one that never began

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            try:
                aclose = getattr(self._stream, "aclose", None)  # an async generator's
                if aclose is not None:
                    await aclose()
                if self._on_close is not None:
                    self._on_close()
            finally:
                await self._held.aclose()


async def until_disconnected(request: Request, work: Awaitable[T]) -> T:
    """The result of `work`, or ClientDisconnected as soon as the client disconnects, with `work`
    cancelled (the engine stops generating; an upstream request is closed, which stops it
    there too)."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnect(request))
    try:
        await asyncio.wait((task, watcher), return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        watcher.cancel()
    if task.cancelled():
        raise ClientDisconnected("the client disconnected before its answer was ready")
    return task.result()


async def _disconnect(request: Request) -> None:
    """Returns once the client has disconnected (the body was read already: the server's
    next message is the disconnect; a server that sends anything else is not watched)."""
    if (await request.receive())["type"] != "http.disconnect":
        await asyncio.Event().wait()  # cancelled once the work is done
