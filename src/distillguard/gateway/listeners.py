"""Serving the gateway's two listeners in one process: the public API and the admin API.

The admin API (and the operator console) listens on its own address, by default on
127.0.0.1 only, so that a gateway exposed to the internet does not expose its operators'
door with it. Both run on one event loop; SIGINT or SIGTERM stops the public listener
gracefully (its lifespan closes the backend and the limiter), then the admin one.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import uvicorn

from distillguard.errors import ConfigError

__all__ = ["Listener", "run_listeners"]


@dataclass(frozen=True)
class Listener:
    """An ASGI app and where it listens: a host and port, or an already bound socket."""

    app: Any
    host: str = "127.0.0.1"
    port: int = 0
    sock: socket.socket | None = None


class _Follower(uvicorn.Server):
    """A server that leaves the process's signals to the public one, which stops it."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _server(listener: Listener, *, follower: bool) -> uvicorn.Server:
    config = uvicorn.Config(
        listener.app,
        host=listener.host,
        port=listener.port,
        log_level="warning",
        access_log=False,
        lifespan="on" if not follower else "off",
    )
    return _Follower(config) if follower else uvicorn.Server(config)


def run_listeners(public: Listener, admin: Listener | None) -> None:
    """Serve `public` (and `admin`, when given) until SIGINT or SIGTERM. Both addresses are
    bound first, so that a taken port is one ConfigError line, before anything is served."""
    public = _bound(public)
    admin = _bound(admin) if admin is not None else None
    # the event loop uvicorn would run (uvloop when installed)
    loop_factory = uvicorn.Config(public.app).get_loop_factory()
    try:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            runner.run(_serve(public, admin))
    except KeyboardInterrupt:  # uvicorn re-raises the SIGINT it stopped on: a normal stop
        pass
    finally:
        for listener in (public, admin):
            if listener is not None and listener.sock is not None:
                listener.sock.close()


def _bound(listener: Listener) -> Listener:
    if listener.sock is not None:
        return listener
    family = socket.AF_INET6 if ":" in listener.host else socket.AF_INET
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY on accepted connections only then (without
    # it, keep-alive answers stall 40 ms on delayed ACKs)
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((listener.host, listener.port))
    except OSError as exc:
        sock.close()
        raise ConfigError(
            f"cannot listen on {listener.host}:{listener.port}: {exc.strerror}"
        ) from None
    return Listener(listener.app, listener.host, listener.port, sock)


async def _serve(public: Listener, admin: Listener | None) -> None:
    main = _server(public, follower=False)
    sockets = [public.sock] if public.sock is not None else None
    if admin is None:
        await main.serve(sockets=sockets)
        return
    second = _server(admin, follower=True)
    admin_task = asyncio.create_task(
        second.serve(sockets=[admin.sock] if admin.sock is not None else None)
    )
    try:
        await main.serve(sockets=sockets)
    finally:
        second.should_exit = True
        await admin_task
