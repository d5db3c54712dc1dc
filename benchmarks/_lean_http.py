"""A lean HTTP/1.1 load client and mock upstream, for throughput runs on a small machine.

On two cores the load generator and the mock upstream share the CPU with the gateways they
measure; Starlette and aiohttp spend about half a millisecond a request each, which would
cap what several gateway processes can show. These two speak just enough HTTP/1.1 (keep-alive,
Content-Length bodies) at a few tens of microseconds a request, like wrk would.

    python benchmarks/_lean_http.py PORT     # the mock: GET -> /models list, POST -> a chat reply
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

_MODELS = json.dumps(
    {
        "object": "list",
        "data": [{"id": "mock", "object": "model", "created": 0, "owned_by": "mock"}],
    }
).encode()
_CHAT = json.dumps(
    {
        "id": "chatcmpl-mock",
        "object": "chat.completion",
        "created": 0,
        "model": "mock",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "This is the mock upstream's answer."},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 7, "completion_tokens": 8, "total_tokens": 15},
    }
).encode()


def _response(body: bytes) -> bytes:
    head = (
        f"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


_GET_REPLY = _response(_MODELS)
_POST_REPLY = _response(_CHAT)


class _MockProtocol(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            length = _content_length(self.buffer[:end])
            total = end + 4 + length
            if len(self.buffer) < total:
                return
            get = self.buffer.startswith(b"GET")
            self.buffer = self.buffer[total:]
            self.transport.write(_GET_REPLY if get else _POST_REPLY)


def _content_length(head: bytes) -> int:
    lowered = head.lower()
    index = lowered.find(b"content-length:")
    if index < 0:
        return 0
    stop = lowered.find(b"\r\n", index)
    return int(lowered[index + 15 : stop if stop >= 0 else None])


async def serve_mock(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_MockProtocol, "127.0.0.1", port, reuse_address=True)
    async with server:
        await server.serve_forever()


async def lean_load(
    host: str,
    port: int,
    path: str,
    body: dict[str, object],
    token: str,
    clients: int,
    seconds: float,
) -> tuple[int, int, float]:
    """`clients` keep-alive connections posting `body` back to back for `seconds`;
    returns (2xx answers, other answers, elapsed seconds)."""
    payload = json.dumps(body).encode()
    request = (
        f"POST {path} HTTP/1.1\r\nhost: {host}:{port}\r\nauthorization: Bearer {token}\r\n"
        f"content-type: application/json\r\ncontent-length: {len(payload)}\r\n\r\n"
    ).encode() + payload
    ok = other = 0
    deadline = time.monotonic() + seconds

    async def client() -> None:
        nonlocal ok, other
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while time.monotonic() < deadline:
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                if b"transfer-encoding: chunked" in head.lower():
                    raise RuntimeError("the lean client reads Content-Length bodies only")
                await reader.readexactly(_content_length(head))
                if head[9:10] == b"2":
                    ok += 1
                else:
                    other += 1
        finally:
            writer.close()

    started = time.monotonic()
    await asyncio.gather(*(client() for _ in range(clients)))
    return ok, other, time.monotonic() - started


if __name__ == "__main__":
    asyncio.run(serve_mock(int(sys.argv[1])))
