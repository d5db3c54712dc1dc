"""The console's wiring: its settings, the database it reads, signing in and out, the guard
every page passes (session, role, CSRF), rendering, and its routes.

Pages are plain functions of a `Page` (the console, the request, the operator's session and,
for a change of state, the checked form) in `pages_*.py`. Every database call runs on a worker
thread (`Console.db`), never on the event loop the admin listener shares with the gateway.
"""

from __future__ import annotations

import math
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qsl, quote, urlsplit

import jinja2
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from distillguard.gateway.budgets import Budgets
from distillguard.gateway.console import filters
from distillguard.gateway.console.actions import ActionLog
from distillguard.gateway.console.auth import (
    AuthSettings,
    LoginLimits,
    Session,
    Sessions,
    same_token,
)
from distillguard.gateway.console.jobs import Jobs
from distillguard.gateway.console.page import PREFIX, Handler, Page
from distillguard.gateway.console.snapshot import Snapshot, SnapshotSource
from distillguard.gateway.console.watch import Watch
from distillguard.monitor.model import RiskModel
from distillguard.store.base import Connection
from distillguard.store.chain import ChainKey
from distillguard.store.operators import find_credentials, password_matches, role_allows
from distillguard.watermark.scheme import SchemeConfig

__all__ = ["Console", "ConsoleConfig"]

T = TypeVar("T")
SESSION_COOKIE = "dg_console"
LOGIN_COOKIE = "dg_console_login"
_MAX_FORM_BYTES = 64 * 1024
_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)


@dataclass(frozen=True)
class ConsoleConfig:
    """What the console needs of the gateway it runs in (`build_server` fills it in)."""

    home: Path
    database: str | None = None
    anchor: Path | None = None  # the checkpoints' anchor file (default: in the data directory)
    chain_key: ChainKey | None = None  # operator actions are chained with it
    model: Path | None = None  # the served model's directory: audits tokenize with it
    scheme: SchemeConfig = field(default_factory=SchemeConfig)
    risk_model: RiskModel | None = None  # for signal contributions and tier thresholds
    store_text: bool = True  # whether prompts and outputs are kept (previews)
    webhook: str | None = None  # alerts are POSTed here as JSON
    secure_cookies: bool = False  # Secure cookies even when the request came over plain http
    review: tuple[str, ...] = ()  # tiers that wait for an operator's confirmation
    auth: AuthSettings = field(default_factory=AuthSettings)
    snapshot_age: float = 10.0  # seconds a snapshot of the accounts is served before a new one
    watch_seconds: float = 60.0  # how often risk is sampled and alerts are looked for


class Console:
    """The operator console: `app()` is what the admin listener mounts at /console."""

    def __init__(
        self,
        config: ConsoleConfig,
        monitor: Callable[[], object | None],
        connect: Callable[[], Connection],
        *,
        budgets: Budgets | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.monitor = monitor
        self.budgets = budgets
        self.clock = clock
        self._connect = connect
        self._connection: Connection | None = None
        self._lock = threading.Lock()
        self.sessions = Sessions(config.auth, clock)
        self.limits = LoginLimits(config.auth, clock)
        self.actions = ActionLog(config.chain_key)
        self.jobs = Jobs(config.home, config.database, clock=clock)
        self.watch = Watch(self, connect)
        self.snapshots = SnapshotSource(self.watch.take_snapshot, config.snapshot_age, clock)
        self.templates = jinja2.Environment(
            loader=jinja2.PackageLoader("distillguard.gateway.console", "templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
        )
        filters.install(self.templates)
        self._static = {
            name: resources.files("distillguard.gateway.console")
            .joinpath("static", name)
            .read_bytes()
            for name in ("console.css", "console.js")
        }

    # -- running -------------------------------------------------------------------------------

    def start(self) -> None:
        self.watch.start()

    def close(self) -> None:
        self.snapshots.close()
        self.watch.close()
        with self._lock:
            if self._connection is not None:
                self._connection.close()
                self._connection = None

    def new_connection(self) -> Connection:
        """A connection of its own (for a thread that outlives a request)."""
        return self._connect()

    def call(self, work: Callable[[Connection], T]) -> T:
        """Run `work` on the console's connection (blocking: from a worker thread)."""
        with self._lock:
            if self._connection is None:
                self._connection = self._connect()
            return work(self._connection)

    async def db(self, work: Callable[[Connection], T]) -> T:
        """Run `work` on the console's connection, on a worker thread."""
        return await run_in_threadpool(self.call, work)

    def risk_model(self) -> RiskModel | None:
        """The risk model the monitor scores with (for thresholds and contributions)."""
        if self.config.risk_model is not None:
            return self.config.risk_model
        current = self.monitor()
        for _ in range(5):  # through the wrappers: review, replicas
            model = getattr(current, "model", None)
            if isinstance(model, RiskModel):
                return model
            current = getattr(current, "monitor", None)
        return None

    async def snapshot(self) -> Snapshot:
        """The accounts as of a few seconds ago (the first call waits for them)."""
        current = self.snapshots.current()
        if current is None:
            current = await run_in_threadpool(self.snapshots.refresh)
        return current

    async def fresh_snapshot(self) -> Snapshot:
        """A snapshot taken now (after a change an operator wants to see)."""
        self.snapshots.expire()
        return await run_in_threadpool(self.snapshots.refresh)

    async def record_token_decision(self, account: str, tier: str, reason: object) -> None:
        """A tier set through the admin API's token: an action by "admin-token"."""
        snapshot = self.snapshots.current()
        row = snapshot.by_account.get(account) if snapshot is not None else None
        detail = {
            "tier": tier,
            "previous": row.tier if row is not None else "",
            "reason": str(reason)[:500] if reason else "set through the admin API",
        }

        def record(connection: Connection) -> None:
            with connection:
                self.actions.record(connection, "admin-token", "set_tier", account, detail)

        await self.db(record)
        self.snapshots.expire()

    # -- the app -------------------------------------------------------------------------------

    def app(self) -> ASGIApp:
        from distillguard.gateway.console import pages_accounts, pages_evidence, pages_usage

        routes: list[BaseRoute] = [
            Route("/", self._home, methods=["GET"]),
            Route("/login", self._login_form, methods=["GET"]),
            Route("/login", self._login, methods=["POST"]),
            Route("/logout", self.guard(_logout, "viewer", changes_state=True), methods=["POST"]),
            Route("/static/{name}", self._static_file, methods=["GET"]),
        ]
        for module in (pages_accounts, pages_evidence, pages_usage):
            for path, handler, method, role in module.PAGES:
                guarded = self.guard(handler, role, changes_state=method == "POST")
                routes.append(Route(path, guarded, methods=[method]))
        return Starlette(routes=routes, middleware=[Middleware(_SecurityHeaders)])

    def guard(self, handler: Handler, role: str, *, changes_state: bool) -> Callable[..., Any]:
        """The page behind a live session of at least `role`; a change of state also needs
        the same origin and the session's CSRF token."""

        async def endpoint(request: Request) -> Response:
            token = request.cookies.get(SESSION_COOKIE)
            session = await self.db(lambda c: self.sessions.read(c, token))
            if session is None:
                if request.method == "GET":
                    target = quote(request.url.path + _query(request), safe="/?=&")
                    return RedirectResponse(f"{PREFIX}/login?next={target}", status_code=303)
                return self.problem(request, None, 401, "Your session has ended: sign in again.")
            form: dict[str, str] = {}
            if changes_state:
                if not _same_origin(request):
                    return self.problem(request, session, 403, "Cross-site request refused.")
                form = await read_form(request)
                presented = form.get("csrf") or request.headers.get("x-csrf-token")
                if not same_token(presented, session.csrf):
                    return self.problem(
                        request, session, 403, "Missing or wrong CSRF token: reload the page."
                    )
            if not role_allows(session.role, role):
                return self.problem(
                    request, session, 403, f"This needs the {role} role; yours is {session.role}."
                )
            return await handler(Page(self, request, session, form))

        return endpoint

    # -- rendering -----------------------------------------------------------------------------

    def render(
        self,
        request: Request,
        template: str,
        session: Session | None,
        status: int = 200,
        **values: Any,
    ) -> Response:
        page = self.templates.get_template(template).render(
            session=session,
            prefix=PREFIX,
            path=request.url.path,
            now=self.clock(),
            **values,
        )
        return HTMLResponse(page, status_code=status)

    def problem(
        self, request: Request, session: Session | None, status: int, message: str
    ) -> Response:
        return self.render(request, "problem.html", session, status, message=message)

    def cookie_secure(self, request: Request) -> bool:
        return self.config.secure_cookies or request.url.scheme == "https"

    # -- signing in and out --------------------------------------------------------------------

    async def _home(self, request: Request) -> Response:
        return RedirectResponse(f"{PREFIX}/fleet", status_code=303)

    async def _static_file(self, request: Request) -> Response:
        name = request.path_params["name"]
        body = self._static.get(name)
        if body is None:
            return Response("not found", status_code=404, media_type="text/plain")
        kind = "text/css" if name.endswith(".css") else "text/javascript"
        return Response(body, media_type=kind, headers={"cache-control": "max-age=3600"})

    async def _login_form(self, request: Request, message: str = "", status: int = 200) -> Response:
        token = secrets.token_urlsafe(24)
        response = self.render(
            request,
            "login.html",
            None,
            status,
            login_csrf=token,
            message=message,
            next=_next(request.query_params.get("next")),
        )
        response.set_cookie(
            LOGIN_COOKIE,
            token,
            max_age=3600,
            path=f"{PREFIX}/login",
            httponly=True,
            samesite="strict",
            secure=self.cookie_secure(request),
        )
        return response

    async def _login(self, request: Request) -> Response:
        form = await read_form(request)
        if not _same_origin(request) or not same_token(
            form.get("csrf"), request.cookies.get(LOGIN_COOKIE, "")
        ):
            return await self._login_form(request, "The form expired: sign in again.", 403)
        name, password = form.get("name", "").strip().lower(), form.get("password", "")
        address = request.client.host if request.client is not None else ""
        wait = await self.db(lambda c: self.limits.retry_after(c, address, name))
        if wait > 0:
            response = await self._login_form(
                request, f"Too many failed sign-ins: try again in {math.ceil(wait)} s.", 429
            )
            response.headers["retry-after"] = str(math.ceil(wait))
            return response
        credentials = await self.db(lambda c: find_credentials(c, name))
        # the slow hash is checked off the database lock: sign-ins do not stall the pages
        operator = await run_in_threadpool(password_matches, password, credentials)
        if operator is None:
            await self.db(lambda c: self.limits.failed(c, address, name))
            return await self._login_form(request, "Wrong name or password.", 401)

        def open_session(connection: Connection) -> tuple[str, Session]:
            token, session = self.sessions.open(connection, operator)
            with connection:
                self.actions.record(connection, operator.name, "sign_in", operator.name, {})
            return token, session

        token, _session = await self.db(open_session)
        response = RedirectResponse(_next(form.get("next")), status_code=303)
        response.set_cookie(
            SESSION_COOKIE,
            token,
            max_age=int(self.config.auth.lifetime),
            path=PREFIX,
            httponly=True,
            samesite="strict",
            secure=self.cookie_secure(request),
        )
        response.delete_cookie(LOGIN_COOKIE, path=f"{PREFIX}/login")
        return response


async def _logout(page: Page) -> Response:
    token = page.request.cookies.get(SESSION_COOKIE, "")
    await page.console.db(lambda c: page.console.sessions.close(c, token))
    response = RedirectResponse(f"{PREFIX}/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path=PREFIX)
    return response


async def read_form(request: Request) -> dict[str, str]:
    """A url-encoded form, at most 64 KiB (first value of each name); {} for anything else."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/x-www-form-urlencoded":
        return {}
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > _MAX_FORM_BYTES:
            return {}
    try:
        pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, max_num_fields=200)
    except (UnicodeDecodeError, ValueError):
        return {}
    form: dict[str, str] = {}
    for name, value in pairs:
        form.setdefault(name, value)
    return form


def _query(request: Request) -> str:
    return f"?{request.url.query}" if request.url.query else ""


def _next(target: str | None) -> str:
    """Where to go after signing in: a console path, never another site."""
    if not target or not target.startswith(PREFIX + "/") or target.startswith("//"):
        return f"{PREFIX}/fleet"
    if "\\" in target or urlsplit(target).netloc:
        return f"{PREFIX}/fleet"
    return target


def _same_origin(request: Request) -> bool:
    """A browser's change of state must come from this origin (SameSite=Strict already keeps
    the cookie off cross-site requests; this refuses them even where a browser does not). The
    origin is the Host the request was sent to, or the one a reverse proxy forwarded."""
    origin = request.headers.get("origin")
    if origin is None or origin == "null":
        return origin is None
    hosts = {request.headers.get("host", "")}
    forwarded = request.headers.get("x-forwarded-host")
    if forwarded:
        hosts.add(forwarded.split(",")[0].strip())
    return urlsplit(origin).netloc in hosts


class _SecurityHeaders:
    """Headers every console response carries: no framing, no inline script or style, no
    caching of pages that show accounts."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = str(scope.get("path", ""))

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                names = {name.lower() for name, _ in headers}
                if b"content-security-policy" not in names:
                    headers.append((b"content-security-policy", _CSP.encode()))
                headers += [
                    (b"x-content-type-options", b"nosniff"),
                    (b"referrer-policy", b"same-origin"),
                    (b"x-frame-options", b"DENY"),
                ]
                if "/static/" not in path:
                    headers.append((b"cache-control", b"no-store"))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)
