"""The OpenAI-compatible HTTP gateway (Starlette): the wiring and the one request flow.

Per request: authenticate the key -> read and validate the body -> check the model and the
key's tier caps -> the backend prepares it (tokenizes or estimates the prompt, picks the
watermark) -> admit under the rate limits (tokens reserved as prompt + max_tokens x n) ->
the backend completes or streams it -> settle the tokens -> meter: the usage row and its
audit record, and the monitor's event. The answer leaves once its usage record is safe: in
the audit journal, or committed (a stream waits for that before its last chunk); a record
not safe within `audit_wait` turns the answer into a 503 `audit_unavailable`. Every response
carries `x-request-id` and the six `x-ratelimit-*` headers once the key is known; errors use
OpenAI's body `{"error": {"message", "type", "param", "code"}}`.

The backends (`backends/`: the local engine, an upstream server) differ only in how they
prepare and produce a completion; everything else is this one flow.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from distillguard.errors import ApiError, ClientDisconnected, LimiterUnavailable
from distillguard.gateway.admin import AdminApi
from distillguard.gateway.admission import RecentRefusals, refusal_error, scopes_for
from distillguard.gateway.apikeys import ApiKey, KeyStore
from distillguard.gateway.backends.base import Backend, Finish
from distillguard.gateway.metering import (
    Call,
    monitor_event,
    new_request_id,
    record_safe,
    refusal_headers,
    response_headers,
    usage_record,
)
from distillguard.gateway.metrics import Metrics
from distillguard.gateway.openapi import openapi_document
from distillguard.gateway.origin import Origins
from distillguard.gateway.policy import Tier, enforce_tier, higher_tier
from distillguard.gateway.protocol import error_body, parse_body
from distillguard.gateway.ratelimit import (
    MemoryRateLimiter,
    RateLimiter,
    Refusal,
    Scope,
    Snapshot,
    admitted,
)
from distillguard.gateway.reading import authenticate, read_json
from distillguard.gateway.settings import GatewaySettings
from distillguard.gateway.settled import SettledStream, until_disconnected
from distillguard.monitor.events import MonitorHook
from distillguard.monitor.identity import IdentityHasher
from distillguard.store.audit import AuditLog

__all__ = ["Gateway", "GatewaySettings"]

log = logging.getLogger("distillguard.gateway")


class Gateway:
    """Builds the ASGI app around a backend, a key store, a rate limiter and an audit log.

    With `identity`, the monitor's events carry who sent each request, as its tokens."""

    def __init__(
        self,
        backend: Backend[Any],
        keys: KeyStore,
        audit: AuditLog,
        settings: GatewaySettings | None = None,
        *,
        limiter: RateLimiter | None = None,
        monitor: MonitorHook | None = None,
        identity: IdentityHasher | None = None,
    ) -> None:
        settings = settings or GatewaySettings()
        self.backend = backend
        self.keys = keys
        self.audit = audit
        self.settings = settings
        self.limiter = limiter or MemoryRateLimiter()
        self.monitor = monitor
        self.origins = Origins(settings.trusted_proxies, identity)
        self.tiers = dict(settings.tiers)  # a copy: per-gateway changes stay local
        self.max_body_bytes = settings.max_body_bytes
        self.metrics = Metrics()
        self.admin = AdminApi(settings.admin_token, lambda: self.monitor)  # its own listener
        # on the limiter's clock (tests inject one); shared limiters decide on Redis's clock,
        # whose seconds pass as this process's do
        self.refusals = RecentRefusals(getattr(self.limiter, "_clock", None) or time.monotonic)
        self.monitor_seconds = 0.0  # time the request path spent handing events to the monitor
        self.monitor_calls = 0
        self.app = Starlette(
            routes=[
                Route("/v1/models", self.models, methods=["GET"]),
                Route("/v1/completions", self.completions, methods=["POST"]),
                Route("/v1/chat/completions", self.chat_completions, methods=["POST"]),
                Route("/healthz", self.healthz, methods=["GET"]),
                Route("/metrics", self.metrics_endpoint, methods=["GET"]),
                Route("/openapi.json", self.openapi, methods=["GET"]),
            ],
            exception_handlers={HTTPException: self._http_error},
            lifespan=self._lifespan,
        )

    @property
    def model_names(self) -> tuple[str, ...]:
        return self.backend.model_names

    @property
    def model_name(self) -> str:
        return self.model_names[0]

    @contextlib.asynccontextmanager
    async def _lifespan(self, app: Starlette) -> AsyncIterator[None]:
        yield
        await self.backend.aclose()
        aclose = getattr(self.limiter, "aclose", None)  # a shared limiter's connections
        if aclose is not None:
            await aclose()

    # -- routes ------------------------------------------------------------------------------

    async def healthz(self, request: Request) -> Response:
        return JSONResponse(
            {"status": "ok", "model": self.model_name}, headers={"x-request-id": new_request_id()}
        )

    async def metrics_endpoint(self, request: Request) -> Response:
        self.metrics.set_limiter_unavailable(getattr(self.limiter, "unavailable", 0))
        self.metrics.set_audit_write_failures(self.audit.write_failures)
        self.metrics.set_monitor_dropped(getattr(self.monitor, "dropped", 0))
        return PlainTextResponse(
            self.metrics.render(),
            media_type="text/plain; version=0.0.4",
            headers={"x-request-id": new_request_id()},
        )

    async def openapi(self, request: Request) -> Response:
        return JSONResponse(
            openapi_document(self.model_names), headers={"x-request-id": new_request_id()}
        )

    async def models(self, request: Request) -> Response:
        call = Call.start("models")
        try:
            call.key = await authenticate(self.keys, request)
        except ApiError as error:
            return self._error(call, error)
        body = {
            "object": "list",
            "data": [
                {"id": name, "object": "model", "created": 0, "owned_by": "distillguard"}
                for name in self.model_names
            ],
        }
        return JSONResponse(body, headers={"x-request-id": call.request_id})

    async def completions(self, request: Request) -> Response:
        return await self._answer(request, chat=False)

    async def chat_completions(self, request: Request) -> Response:
        return await self._answer(request, chat=True)

    # -- the request flow ---------------------------------------------------------------------

    async def _answer(self, request: Request, *, chat: bool) -> Response:
        """Serve the request; the answer leaves once its usage record is safe."""
        call = Call.start("chat.completions" if chat else "completions")
        call.scope = request.scope
        self.backend.begin(call)
        async with call.held:  # settles the admission on every way out; a stream takes it over
            response = await self._serve(request, call, chat=chat)
        if call.committed is not None and not isinstance(response, StreamingResponse):
            unsafe = await self._record_safe(call)
            if unsafe is not None:
                return self._error(call, unsafe)
        return response

    async def _serve(self, request: Request, call: Call, *, chat: bool) -> Response:
        try:
            call.key = key = await authenticate(self.keys, request)
            scopes = self._scopes(key)
            early = self.refusals.check(scopes)  # before the body is read or tokenized
            if early is not None:
                return self._refuse(call, early, scopes)
            job, reserved = await self._accept(request, call, key, chat=chat)
            refused = await self._admit_call(call, scopes, reserved)
            if refused is not None:
                return refused
        except ApiError as error:
            self._record(call, error.status, "rejected")
            return self._error(call, error)
        except Exception:
            log.exception("request %s failed before generation", call.request_id)
            return self._error(call, ApiError(500, "internal error", kind="server_error"))
        if call.parsed is not None and call.parsed.stream:
            return SettledStream(
                self._stream(job, call),
                call.held.pop_all(),
                media_type="text/event-stream",
                headers=response_headers(call),
                on_close=lambda: self._disconnected(call),
            )
        try:
            reply = await until_disconnected(request, self.backend.complete(job, call))
        except ClientDisconnected:  # generation (or the upstream request) was cancelled with it
            self._disconnected(call)
            return self._error(call, ApiError(499, "the client closed the request"))
        except Exception as exc:
            failure = self.backend.failure(exc, call)
            if failure is None:
                raise
            self._finish(call, failure.status, failure.outcome)
            return self._error(call, failure.error)
        self._finish(call, reply.status, reply.outcome)
        if isinstance(reply.body, bytes):
            return Response(
                reply.body,
                status_code=reply.status,
                headers=response_headers(call),
                media_type="application/json",
            )
        return JSONResponse(reply.body, status_code=reply.status, headers=response_headers(call))

    async def _accept(
        self, request: Request, call: Call, key: ApiKey, *, chat: bool
    ) -> tuple[Any, int]:
        """Parse, check the model and the tier; the backend's job and the tokens to reserve
        for it."""
        body = await read_json(request, self.max_body_bytes)
        call.parsed = parsed = parse_body(body, chat=chat, render_chat=self.backend.render_chat)
        if parsed.model not in self.model_names:
            raise ApiError(
                404,
                f"The model '{parsed.model}' does not exist",
                param="model",
                code="model_not_found",
            )
        tier = self._tier(key)
        enforce_tier(tier, parsed)
        job, reserved = self.backend.prepare(call, body, parsed, tier, self.settings.store_text)
        return job, reserved

    async def _stream(self, job: Any, call: Call) -> AsyncIterator[str]:
        outcome, status = "client_disconnected", 499
        unsafe: ApiError | None = None
        try:
            # closed at once when the client leaves: generation (or the upstream request) stops
            async with contextlib.aclosing(self.backend.stream(job, call)) as pieces:
                async for piece in pieces:
                    if not isinstance(piece, Finish):
                        yield piece
                        continue
                    outcome, status = piece.outcome, piece.status
                    unsafe = await self._finish_durably(call, status, outcome)
                    if unsafe is not None:
                        break  # the last chunk does not leave: the client sees the 503 error
            outcome, status = "ok", 200
            if unsafe is not None:
                yield "data: " + json.dumps(error_body(unsafe)) + "\n\n"
        except Exception as exc:
            failure = self.backend.failure(exc, call)
            if failure is None:
                raise
            outcome, status = failure.outcome, failure.status
            if not call.finished:
                await self._finish_durably(call, status, outcome)
            yield "data: " + json.dumps(error_body(failure.error)) + "\n\n"
        finally:
            if not call.finished:  # the client went away mid-stream
                self._finish(call, status, outcome)

    # -- steps --------------------------------------------------------------------------------

    def _tier_name(self, key: ApiKey) -> str:
        """The key's configured tier, or the monitor's for it when that one is higher."""
        if self.monitor is None:
            return key.tier
        started = time.perf_counter()
        watched = self.monitor.tier_of(key.key_id)
        self.monitor_seconds += time.perf_counter() - started
        return higher_tier(key.tier, watched)

    def _tier(self, key: ApiKey) -> Tier:
        return self.tiers.get(self._tier_name(key), Tier())

    def _scopes(self, key: ApiKey) -> tuple[Scope, ...]:
        return scopes_for(key, self._tier(key), self.settings)

    async def _admit_call(
        self, call: Call, scopes: tuple[Scope, ...], reserved: int
    ) -> Response | None:
        """Admit the call (recording its admission), or return the 429 (or 503) to answer."""
        try:
            admission = admitted(self.limiter, scopes, reserved)
            decision = await call.held.enter_async_context(admission)
        except LimiterUnavailable as exc:
            raise ApiError(503, str(exc), kind="server_error", code="limiter_unavailable") from None
        if isinstance(decision, Refusal):
            self.refusals.remember(scopes, decision)
            return self._refuse(call, decision, scopes)
        call.admission, call.snapshot = decision, decision.snapshot
        return None

    def _refuse(self, call: Call, refusal: Refusal, scopes: tuple[Scope, ...]) -> Response:
        call.snapshot = refusal.snapshot
        self.metrics.refused(refusal.reason)
        self._record(call, 429, "rate_limited")
        return JSONResponse(
            error_body(refusal_error(refusal)),
            status_code=429,
            headers=refusal_headers(call, refusal),
        )

    def _disconnected(self, call: Call) -> None:
        """The client left before its answer was complete (or before a stream started)."""
        if not call.finished:
            self._finish(call, 499, "client_disconnected")

    # -- metering -----------------------------------------------------------------------------

    def _finish(self, call: Call, status: int, outcome: str) -> None:
        call.finished = True
        if call.admission is not None:
            self.limiter.settle(call.admission, call.prompt_tokens + call.completion_tokens)
        self._record(call, status, outcome)

    async def _finish_durably(self, call: Call, status: int, outcome: str) -> ApiError | None:
        """Finish the call and wait until its record is safe (before a stream's last chunk);
        the 503 to send instead when it is not, in time."""
        self._finish(call, status, outcome)
        return await self._record_safe(call)

    async def _record_safe(self, call: Call) -> ApiError | None:
        """None once the call's record is safe; the 503 to answer when it is not in time."""
        return await record_safe(call, self.settings.audit_wait)

    def _record(self, call: Call, status: int, outcome: str) -> None:
        elapsed = time.perf_counter() - call.started
        self.metrics.observe(
            call.endpoint,
            status,
            outcome,
            elapsed,
            call.metered_prompt_tokens,
            call.completion_tokens,
        )
        key = call.key
        if key is None:
            return  # unauthenticated requests are counted, not metered per tenant
        if self.monitor is not None and call.parsed is not None:
            started = time.perf_counter()
            now = self.settings.clock()
            cap, origin = self.backend.max_tokens_cap, self.origins.of(call.scope)
            self.monitor.observe(monitor_event(call, key, call.parsed, status, now, cap, origin))
            self.monitor_seconds += time.perf_counter() - started
            self.monitor_calls += 1
        record = usage_record(call, key, status, outcome, self.model_name, self.settings.store_text)
        if self.settings.durable_audit:
            call.committed = self.audit.submit(record)
        else:
            self.audit.append(record)

    def _error(self, call: Call, error: ApiError) -> Response:
        if call.snapshot is None and call.key is not None:
            call.snapshot = self.limiter_snapshot(call.key)
        return JSONResponse(
            error_body(error), status_code=error.status, headers=response_headers(call)
        )

    def limiter_snapshot(self, key: ApiKey) -> Snapshot | None:
        """For an error's headers: never waits on Redis (which may be what is failing)."""
        return self.limiter.last_snapshot(self._scopes(key)[0])

    async def _http_error(self, request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        message = exc.detail if isinstance(exc, HTTPException) else "internal error"
        error = ApiError(
            status, str(message), kind="invalid_request_error" if status < 500 else "server_error"
        )
        return JSONResponse(
            error_body(error), status_code=status, headers={"x-request-id": new_request_id()}
        )
