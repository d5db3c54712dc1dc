"""The admin API: the monitor's view of accounts and rings, and operators' tier decisions.

Off unless an admin token is configured; every request carries it as a bearer token, compared
in constant time. The routes live here so that the operator console can join them.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from dataclasses import asdict
from typing import Protocol, runtime_checkable

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from distillguard.errors import ApiError
from distillguard.gateway.policy import TIER_RANK
from distillguard.gateway.protocol import error_body
from distillguard.gateway.reading import read_json
from distillguard.monitor.events import MonitorHook
from distillguard.monitor.monitor import AccountReport, RingReport

__all__ = ["AdminApi", "MonitorAdmin"]

_MAX_BODY_BYTES = 1 << 16  # {"tier": ...}: far less


@runtime_checkable
class MonitorAdmin(Protocol):
    """What the admin API needs of a monitor (`Monitor`, or `SharedMonitor` for replicas)."""

    def accounts(self) -> list[AccountReport]: ...

    def rings(self) -> list[RingReport]: ...

    def set_tier(self, account: str, tier: str) -> None: ...


class AdminApi:
    """The admin routes over the gateway's monitor (read at each request: it can change)."""

    def __init__(self, token: str | None, monitor: Callable[[], MonitorHook | None]) -> None:
        self.token = token
        self._monitor = monitor

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
        header = request.headers.get("authorization", "")
        presented = header[7:].strip() if header.lower().startswith("bearer ") else ""
        if not hmac.compare_digest(presented.encode(), self.token.encode()):
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
        monitor.set_tier(account, tier)
        return JSONResponse({"account": account, "tier": tier, "pinned": True})


def _error(error: ApiError) -> JSONResponse:
    return JSONResponse(error_body(error), status_code=error.status)
