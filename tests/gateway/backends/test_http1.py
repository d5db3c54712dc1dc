"""The fast upstream client: keep-alive reuse, chunked bodies, a server that hangs up."""

from __future__ import annotations

import asyncio

import pytest

from distillguard.gateway.backends.http1 import Http1Pool


async def serve(
    handler_responses: list[bytes], close_after: bool
) -> tuple[asyncio.AbstractServer, int, list[int]]:
    connections: list[int] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionError):
                writer.close()
                return  # the client hung up
            length = int(
                next(
                    line.split(b":")[1]
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length")
                )
            )
            await reader.readexactly(length)
            writer.write(handler_responses[len(connections) % len(handler_responses)])
            await writer.drain()
            if close_after:
                writer.close()
                return

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, port, connections


def test_keep_alive_connections_are_reused_and_chunked_bodies_read() -> None:
    chunked = (
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    )

    async def run() -> tuple[list[bytes], int]:
        server, port, connections = await serve([chunked], close_after=False)
        pool = Http1Pool(f"http://127.0.0.1:{port}/v1", {"authorization": "Bearer x"})
        bodies = [(await pool.post("/chat", b"{}", timeout=5)).body for _ in range(5)]
        pool.close()
        await asyncio.sleep(0.05)  # let both ends finish closing
        server.close()
        await server.wait_closed()
        return bodies, len(connections)

    bodies, connections = asyncio.run(run())
    assert bodies == [b"hello world"] * 5
    assert connections == 1


def test_a_server_that_closes_each_connection_is_retried_on_a_fresh_one() -> None:
    reply = b"HTTP/1.1 201 Created\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}"

    async def run() -> list[int]:
        server, port, _ = await serve([reply], close_after=True)
        pool = Http1Pool(f"http://127.0.0.1:{port}", {})
        statuses = [(await pool.post("/x", b"{}", timeout=5)).status for _ in range(3)]
        pool.close()
        await asyncio.sleep(0.05)
        server.close()
        await server.wait_closed()
        return statuses

    assert asyncio.run(run()) == [201, 201, 201]


def test_https_is_refused_by_the_fast_path() -> None:
    with pytest.raises(ValueError, match="plain http"):
        Http1Pool("https://example.invalid/v1", {})
