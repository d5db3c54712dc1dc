"""Several gateway processes behind one port: `distillguard serve --workers N`.

Each worker is a fresh process (spawned, not forked: the engine's threads do not survive a
fork) that builds its own gateway and binds its own listening socket to the port with
SO_REUSEPORT, so the kernel spreads incoming connections over the workers. They share state
only through the database and Redis, exactly as replicas on several machines do, which is
why more than one worker requires both a PostgreSQL (or SQLite, on one machine) store and
Redis. The parent supervises: a worker that dies (even by SIGKILL) is started again; SIGINT
or SIGTERM stops every worker gracefully (each flushes its audit log).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import socket
import time
from collections.abc import Callable
from multiprocessing.process import BaseProcess
from typing import Any

from distillguard.errors import ConfigError

__all__ = ["reuseport_socket", "serve_workers"]

log = logging.getLogger("distillguard.gateway")


def reuseport_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to (host, port) that other processes may bind too (SO_REUSEPORT)."""
    if not hasattr(socket, "SO_REUSEPORT"):
        raise ConfigError("--workers needs SO_REUSEPORT (Linux or BSD)")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)  # TCP_NODELAY follows
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    return sock


def _worker(
    options: dict[str, Any],
    host: str,
    port: int,
    index: int,
    threads: int,
    admin: tuple[str, int] | None = None,
) -> None:
    """One worker process: build the gateway, serve on a shared-port socket until told to stop."""
    try:  # the cores are shared among the workers: no worker's engine takes them all
        import torch

        torch.set_num_threads(threads)
    except ImportError:
        pass

    from distillguard.gateway.listeners import Listener, run_listeners
    from distillguard.gateway.server import build_server

    logging.basicConfig(level=logging.WARNING, format=f"worker {index}: %(message)s")
    server = build_server(**options, create_demo_key=False)
    sock = reuseport_socket(host, port)
    admin_sock = reuseport_socket(*admin) if admin is not None else None
    try:
        run_listeners(
            Listener(server.gateway.app, sock=sock),
            Listener(server.gateway.admin.app(), sock=admin_sock) if admin_sock else None,
        )
    finally:
        server.close()
        sock.close()
        if admin_sock is not None:
            admin_sock.close()


def serve_workers(
    options: dict[str, Any],
    host: str,
    port: int,
    workers: int,
    *,
    on_started: Callable[[list[int]], None] | None = None,
    restart_delay: float = 1.0,
    admin: tuple[str, int] | None = None,
) -> None:
    """Run `workers` gateway processes on one port until SIGINT/SIGTERM; restart any that die.

    `options` are `build_server`'s keyword arguments (picklable), the same for every worker.
    """
    if workers < 1:
        raise ConfigError("--workers must be at least 1")
    if port == 0:
        raise ConfigError("--workers needs a fixed --port (the workers bind the same one)")
    threads = max(1, (os.cpu_count() or 1) // workers)
    reuseport_socket(host, port).close()  # fail here, in one line, if the port is taken
    if admin is not None:
        reuseport_socket(*admin).close()
    context = multiprocessing.get_context("spawn")
    processes: dict[int, BaseProcess] = {}
    stopping = False

    def start(index: int) -> None:
        process = context.Process(
            target=_worker,
            args=(options, host, port, index, threads, admin),
            name=f"distillguard-worker-{index}",
        )
        process.start()
        processes[index] = process

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        for index in range(workers):
            start(index)
        if on_started is not None:
            on_started([p.pid for p in processes.values() if p.pid is not None])
        while not stopping:
            time.sleep(0.2)
            for index, process in list(processes.items()):
                if not process.is_alive() and not stopping:
                    log.warning(
                        "worker %d (pid %s) exited with %s; starting it again",
                        index,
                        process.pid,
                        process.exitcode,
                    )
                    time.sleep(restart_delay)
                    start(index)
    finally:
        for process in processes.values():
            if process.is_alive() and process.pid is not None:
                process.terminate()  # SIGTERM: uvicorn shuts down, the audit log flushes
        for process in processes.values():
            process.join(timeout=30)
            if process.is_alive():
                process.kill()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
