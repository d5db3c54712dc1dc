"""The admin API: the monitor's view of accounts and rings, and operators' tier decisions.

Off unless an admin token is configured; every request carries it as a bearer token, compared
in constant time. It is served on its own listener (`serve --admin-host/--admin-port`, by
default 127.0.0.1:8001), never on the public one. An address that fails to present the token
`MAX_FAILURES` times within `FAILURE_WINDOW` seconds is refused (429, even with the right
token) until its failures age out, so the token cannot be guessed at speed.
"""

from __future__ import annotations

import hmac
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route

from distillguard.errors import ApiError
from distillguard.gateway.policy import TIER_RANK
from distillguard.gateway.protocol import error_body
from distillguard.gateway.reading import read_json
from distillguard.monitor.events import MonitorHook
from distillguard.monitor.monitor import AccountReport, RingReport

if TYPE_CHECKING:
    from distillguard.gateway.console import Console

log = logging.getLogger("distillguard.gateway")

__all__ = ["FAILURE_WINDOW", "MAX_FAILURES", "AdminApi", "FailedAttempts", "MonitorAdmin"]

_MAX_BODY_BYTES = 1 << 16  # {"tier": ...}: far less
MAX_FAILURES = 10  # failed admin attempts per address...
FAILURE_WINDOW = 60.0  # ...within this many seconds, before the address is refused


class FailedAttempts:
    """Failed attempts per client address in a sliding window (this process's memory)."""

    def __init__(
        self,
        limit: int = MAX_FAILURES,
        window: float = FAILURE_WINDOW,
        clock: Callable[[], float] = time.monotonic,
        max_addresses: int = 100_000,
    ) -> None:
        self.limit = limit
        self.window = window
        self._clock = clock
        self._max_addresses = max_addresses
        self._failures: dict[str, deque[float]] = {}

    def retry_after(self, address: str) -> float:
        """Seconds until `address` may try again (0: it may now)."""
        failures = self._failures.get(address)
        if failures is None:
            return 0.0
        now = self._clock()
        while failures and failures[0] <= now - self.window:
            failures.popleft()
        if not failures:
            del self._failures[address]
            return 0.0
        if len(failures) < self.limit:
            return 0.0
        return failures[len(failures) - self.limit] + self.window - now

    def failed(self, address: str) -> None:
        if address not in self._failures and len(self._failures) >= self._max_addresses:
            self._failures.pop(next(iter(self._failures)))  # the oldest address: bounded memory
        failures = self._failures.setdefault(address, deque())
        failures.append(self._clock())
        while len(failures) > self.limit:
            failures.popleft()


@runtime_checkable
class MonitorAdmin(Protocol):
    """What the admin API needs of a monitor (`Monitor`, or `SharedMonitor` for replicas)."""

    def accounts(self) -> list[AccountReport]: ...

    def rings(self) -> list[RingReport]: ...

    def set_tier(self, account: str, tier: str) -> None: ...


class AdminApi:
    """The admin routes over the gateway's monitor (read at each request: it can change)."""

    def __init__(
        self,
        token: str | None,
        monitor: Callable[[], MonitorHook | None],
        failures: FailedAttempts | None = None,
    ) -> None:
        self.token = token
        self._monitor = monitor
        self.failures = failures or FailedAttempts()
        self.console: Console | None = None

    def mount(self, console: Console) -> None:
        """Serve the operator console at /console, and record the token's tier decisions as
        operator actions (by "admin-token") in the audit chain."""
        self.console = console

    def app(self) -> Starlette:
        """The admin listener's app: these routes (and the console's, when mounted), and a
        404 in OpenAI's format elsewhere."""
        routes: list[BaseRoute] = list(self.routes())
        if self.console is not None:
            routes.append(Mount("/console", app=self.console.app()))
        return Starlette(routes=routes, exception_handlers={HTTPException: _http_error})

    def routes(self) -> list[Route]:
        return [
            Route("/v1/admin/accounts", self.accounts, methods=["GET"]),
            Route("/v1/admin/rings", self.rings, methods=["GET"]),
            Route("/v1/admin/accounts/{account}/tier", self.set_tier, methods=["POST"]),
        ]

    def _authorize(self, request: Request) -> MonitorAdmin:
        """The monitor, when the request carries the admin token; else the error to answer."""
        if self.token is None:
            raise ApiError(
                403,
                "the admin API is disabled; set DISTILLGUARD_ADMIN_TOKEN to enable it",
                kind="permission_denied",
            )
        address = request.client.host if request.client is not None else ""
        wait = self.failures.retry_after(address)
        if wait > 0:
            raise ApiError(
                429,
                f"too many failed admin attempts from this address; retry in {math.ceil(wait)} s",
                kind="rate_limit_exceeded",
                code="admin_attempts_exceeded",
            )
        header = request.headers.get("authorization", "")
        presented = header[7:].strip() if header.lower().startswith("bearer ") else ""
        if not hmac.compare_digest(presented.encode(), self.token.encode()):
            self.failures.failed(address)
            log.warning("failed admin attempt from %s", address)
            raise ApiError(401, "Incorrect admin token", code="invalid_api_key")
        monitor = self._monitor()
        if not isinstance(monitor, MonitorAdmin):
            raise ApiError(404, "the harvest monitor is off", code="monitor_off")
        return monitor

    async def accounts(self, request: Request) -> Response:
        try:
            monitor = self._authorize(request)
        except ApiError as error:
            return _error(error)
        tier = request.query_params.get("tier")
        accounts = [asdict(a) for a in monitor.accounts() if tier is None or a.tier == tier]
        return JSONResponse({"object": "list", "data": accounts})

    async def rings(self, request: Request) -> Response:
        try:
            monitor = self._authorize(request)
        except ApiError as error:
            return _error(error)
        return JSONResponse({"object": "list", "data": [asdict(r) for r in monitor.rings()]})

    async def set_tier(self, request: Request) -> Response:
        try:
            monitor = self._authorize(request)
        except ApiError as error:
            return _error(error)
        try:
            body = await read_json(request, _MAX_BODY_BYTES)
        except ApiError:
            body = {}  # the answer names what the body must hold
        tier = body.get("tier")
        if tier not in TIER_RANK:
            return _error(
                ApiError(400, f"'tier' must be one of: {', '.join(TIER_RANK)}", param="tier")
            )
        account = request.path_params["account"]
        if self.console is not None:
            await self.console.record_token_decision(account, tier, body.get("reason"))
        monitor.set_tier(account, tier)
        return JSONResponse({"account": account, "tier": tier, "pinned": True})


def _error(error: ApiError) -> JSONResponse:
    headers = {}
    if error.status == 429:  # "retry in N s" -> the header clients read
        seconds = error.message.rsplit("retry in ", 1)[-1].split()[0]
        headers["retry-after"] = seconds if seconds.isdigit() else str(int(FAILURE_WINDOW))
    return JSONResponse(error_body(error), status_code=error.status, headers=headers)


async def _http_error(request: Request, exc: Exception) -> Response:
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    detail = exc.detail if isinstance(exc, HTTPException) else "internal error"
    kind = "invalid_request_error" if status < 500 else "server_error"
    return _error(ApiError(status, str(detail), kind=kind))
