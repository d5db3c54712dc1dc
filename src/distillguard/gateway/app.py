"""The OpenAI-compatible HTTP gateway (Starlette): keys, limits, watermarking engine, metering.

Per request: authenticate the key -> read and validate the body -> check the model and the
key's tier caps -> tokenize and check the context (engine.prepare) -> admit under the rate
limits (tokens reserved as prompt + max_tokens x n) -> generate with the tenant's watermark ->
return or stream -> settle the tokens -> queue the usage row and its audit record. Every
response carries `x-request-id` and the six `x-ratelimit-*` headers once the key is known;
errors use OpenAI's body `{"error": {"message", "type", "param", "code"}}`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import math
import secrets
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Protocol, runtime_checkable

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from distillguard.engine.engine import Engine, PreparedRequest
from distillguard.engine.params import GenerationRequest
from distillguard.errors import (
    ApiError,
    AuthenticationError,
    ConfigError,
    ContextLengthError,
    DistillGuardError,
    InputError,
    LimiterUnavailable,
    UpstreamError,
)
from distillguard.gateway.apikeys import ApiKey, KeyStore
from distillguard.gateway.metrics import Metrics
from distillguard.gateway.openapi import openapi_document
from distillguard.gateway.protocol import (
    ParsedRequest,
    chat_chunk,
    chat_response,
    completion_chunk,
    completion_response,
    error_body,
    parse_body,
)
from distillguard.gateway.ratelimit import (
    Admission,
    Limits,
    MemoryRateLimiter,
    RateLimiter,
    Refusal,
    Scope,
    Snapshot,
    format_duration,
)
from distillguard.gateway.upstream import Upstream, estimate_tokens
from distillguard.monitor.events import MonitorEvent, MonitorHook
from distillguard.monitor.monitor import AccountReport, RingReport
from distillguard.store.audit import AuditLog
from distillguard.store.usage import UsageRecord
from distillguard.watermark.key import WatermarkKey

__all__ = ["Gateway", "Tier"]

log = logging.getLogger("distillguard.gateway")

DAY = 86_400.0


@runtime_checkable
class MonitorAdmin(Protocol):
    """What the admin API needs of a monitor (`Monitor`, or `SharedMonitor` for replicas)."""

    def accounts(self) -> list[AccountReport]: ...

    def rings(self) -> list[RingReport]: ...

    def set_tier(self, account: str, tier: str) -> None: ...


@dataclass(frozen=True)
class Tier:
    """What a key's tier allows; the harvest monitor moves keys up the tiers.

    `rate_factor` scales the key's requests and tokens per minute; `block` refuses every
    request with 403. A tier that only watches keeps serving while evidence accumulates.
    """

    max_n: int = 8
    max_top_logprobs: int = 20
    max_tokens: int | None = None
    rate_factor: float = 1.0
    block: bool = False


DEFAULT_TIERS = {
    "normal": Tier(),
    "watch": Tier(max_n=4, max_top_logprobs=5),
    "throttle": Tier(max_n=1, max_top_logprobs=0, max_tokens=256, rate_factor=0.25),
    "block": Tier(block=True),
}
TIER_RANK = {"normal": 0, "watch": 1, "throttle": 2, "block": 3}


@dataclass
class _Call:
    """What one request has accumulated, for its usage row."""

    request_id: str
    started: float
    endpoint: str
    key: ApiKey | None = None
    parsed: ParsedRequest | None = None
    prepared: PreparedRequest | None = None
    admission: Admission | None = None
    snapshot: Snapshot | None = None
    texts: list[list[str]] = field(default_factory=list)
    completion_tokens: int = 0
    prompt_tokens: int = 0  # reserved estimate, then the actual count
    prompt_text: str = ""
    max_tokens: int | None = None
    watermark_key_id: str | None = None
    watermark_header: str | None = None  # key id, "none", or "unavailable" (upstream mode)
    committed: asyncio.Future[None] | None = None  # the usage row's commit, when durable
    finished: bool = False


class Gateway:
    """Builds the ASGI app around an engine, a key store, a rate limiter and an audit log."""

    def __init__(
        self,
        engine: Engine | None,
        keys: KeyStore,
        audit: AuditLog,
        watermark_key_for: Callable[[str], WatermarkKey | None],
        *,
        limiter: RateLimiter | None = None,
        tenant_limits: Limits | None = None,
        tiers: dict[str, Tier] | None = None,
        max_body_bytes: int = 1 << 20,
        store_text: bool = True,
        minute: float = 60.0,
        upstream: Upstream | None = None,
        upstream_models: tuple[str, ...] = (),
        upstream_max_tokens: int = 4096,
        monitor: MonitorHook | None = None,
        admin_token: str | None = None,
        clock: Callable[[], float] = time.time,
        durable_audit: bool = True,
    ) -> None:
        if (engine is None) == (upstream is None):
            raise ConfigError("the gateway serves either a local engine or an upstream, not both")
        self.upstream = upstream
        self.upstream_models = upstream_models
        self.upstream_max_tokens = upstream_max_tokens
        self._engine = engine
        self.minute = minute  # the per-minute window; tests shorten it
        self.keys = keys
        self.audit = audit
        self.watermark_key_for = watermark_key_for
        self.limiter = limiter or MemoryRateLimiter()
        self.tenant_limits = tenant_limits
        self.tiers = dict(tiers or DEFAULT_TIERS)  # a copy: per-gateway changes stay local
        self.metrics = Metrics()
        self.max_body_bytes = max_body_bytes
        self.store_text = store_text
        self.monitor = monitor
        self.admin_token = admin_token
        self.clock = clock
        # Answer only once the usage row is committed (a killed replica loses no answered
        # request). The traffic simulator turns it off: it has no process to lose.
        self.durable_audit = durable_audit
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
                Route("/v1/admin/accounts", self.admin_accounts, methods=["GET"]),
                Route("/v1/admin/rings", self.admin_rings, methods=["GET"]),
                Route("/v1/admin/accounts/{account}/tier", self.admin_set_tier, methods=["POST"]),
            ],
            exception_handlers={HTTPException: self._http_error},
            lifespan=self._lifespan,
        )

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            raise ConfigError("this gateway proxies an upstream; it has no local engine")
        return self._engine

    @property
    def model_names(self) -> tuple[str, ...]:
        return (self._engine.model_name,) if self._engine is not None else self.upstream_models

    @property
    def model_name(self) -> str:
        return self.model_names[0]

    @contextlib.asynccontextmanager
    async def _lifespan(self, app: Starlette) -> AsyncIterator[None]:
        yield
        if self.upstream is not None:  # close pooled connections inside the serving loop
            await self.upstream.close()
        aclose = getattr(self.limiter, "aclose", None)  # a shared limiter's connections
        if aclose is not None:
            await aclose()

    # -- routes ------------------------------------------------------------------------------

    async def healthz(self, request: Request) -> Response:
        return JSONResponse(
            {"status": "ok", "model": self.model_name}, headers={"x-request-id": _request_id()}
        )

    async def metrics_endpoint(self, request: Request) -> Response:
        self.metrics.set_limiter_unavailable(getattr(self.limiter, "unavailable", 0))
        return PlainTextResponse(
            self.metrics.render(),
            media_type="text/plain; version=0.0.4",
            headers={"x-request-id": _request_id()},
        )

    # -- the admin API: the monitor's view, and operators' tier decisions ------------------------

    def _admin(self, request: Request) -> MonitorAdmin | JSONResponse:
        """The monitor, when the request carries the admin token; else the error to answer."""
        if self.admin_token is None:
            return JSONResponse(
                error_body(
                    ApiError(
                        403,
                        "the admin API is disabled; set DISTILLGUARD_ADMIN_TOKEN to enable it",
                        kind="permission_denied",
                    )
                ),
                status_code=403,
            )
        header = request.headers.get("authorization", "")
        presented = header[7:].strip() if header.lower().startswith("bearer ") else ""
        if not hmac.compare_digest(presented.encode(), self.admin_token.encode()):
            return JSONResponse(
                error_body(ApiError(401, "Incorrect admin token", code="invalid_api_key")),
                status_code=401,
            )
        if not isinstance(self.monitor, MonitorAdmin):
            return JSONResponse(
                error_body(ApiError(404, "the harvest monitor is off", code="monitor_off")),
                status_code=404,
            )
        return self.monitor

    async def admin_accounts(self, request: Request) -> Response:
        monitor = self._admin(request)
        if isinstance(monitor, JSONResponse):
            return monitor
        tier = request.query_params.get("tier")
        accounts = [asdict(a) for a in monitor.accounts() if tier is None or a.tier == tier]
        return JSONResponse({"object": "list", "data": accounts})

    async def admin_rings(self, request: Request) -> Response:
        monitor = self._admin(request)
        if isinstance(monitor, JSONResponse):
            return monitor
        return JSONResponse({"object": "list", "data": [asdict(r) for r in monitor.rings()]})

    async def admin_set_tier(self, request: Request) -> Response:
        monitor = self._admin(request)
        if isinstance(monitor, JSONResponse):
            return monitor
        try:
            body = await request.json()
        except (ValueError, UnicodeDecodeError):
            body = None
        tier = body.get("tier") if isinstance(body, dict) else None
        if tier not in TIER_RANK:
            error = ApiError(400, f"'tier' must be one of: {', '.join(TIER_RANK)}", param="tier")
            return JSONResponse(error_body(error), status_code=400)
        account = request.path_params["account"]
        monitor.set_tier(account, tier)
        return JSONResponse({"account": account, "tier": tier, "pinned": True})

    async def openapi(self, request: Request) -> Response:
        return JSONResponse(
            openapi_document(self.model_names), headers={"x-request-id": _request_id()}
        )

    async def models(self, request: Request) -> Response:
        call = _Call(_request_id(), time.perf_counter(), "models")
        try:
            call.key = self._authenticate(request)
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

    async def _answer(self, request: Request, *, chat: bool) -> Response:
        """Serve the request; the answer leaves once its usage row is committed (a stream
        waits for that before its last chunk)."""
        call = _Call(
            _request_id(), time.perf_counter(), "chat.completions" if chat else "completions"
        )
        if self.upstream is not None:
            response = await self._proxy(request, call, self.upstream, chat=chat)
        else:
            response = await self._generate(request, call, chat=chat)
        if call.committed is not None and not isinstance(response, StreamingResponse):
            await call.committed
        return response

    # -- the request path -----------------------------------------------------------------------

    async def _generate(self, request: Request, call: _Call, *, chat: bool) -> Response:
        try:
            call.key = self._authenticate(request)
            body = await self._read_json(request)
            call.parsed = parse_body(body, chat=chat, render_chat=self._render_chat)
            if call.parsed.model != self.engine.model_name:
                raise ApiError(
                    404,
                    f"The model '{call.parsed.model}' does not exist",
                    param="model",
                    code="model_not_found",
                )
            call.prepared = prepared = self._prepare(call.key, call.parsed)
            key = prepared.watermark_key
            call.prompt_tokens = prepared.prompt_tokens
            call.max_tokens = prepared.params.max_tokens
            call.watermark_key_id = key.key_id if key is not None else None
            call.watermark_header = call.watermark_key_id or "none"
            if self.store_text:
                call.prompt_text = self.engine.loaded.tokenizer.decode(list(prepared.prompt_ids))
            reserved = prepared.prompt_tokens + prepared.params.max_tokens * prepared.params.n
            refused = await self._admit_call(call, call.key, reserved)
            if refused is not None:
                return refused
        except ApiError as error:
            self._record(call, error.status, "rejected")
            return self._error(call, error)
        except Exception:
            log.exception("request %s failed before generation", call.request_id)
            return self._error(call, ApiError(500, "internal error", kind="server_error"))
        if call.parsed.stream:
            stream = self._stream(call, call.parsed, call.prepared)
            return StreamingResponse(
                stream, media_type="text/event-stream", headers=self._headers(call)
            )
        try:
            completion = await self.engine.generate(call.prepared)
        except Exception:
            log.exception("generation failed for %s", call.request_id)
            self._finish(call, 500, "error")
            return self._error(call, ApiError(500, "generation failed", kind="server_error"))
        call.texts = [[choice.text] for choice in completion.choices]
        call.completion_tokens = completion.completion_tokens
        self._finish(call, 200, "ok")
        shape = chat_response if chat else completion_response
        return JSONResponse(
            shape(call.request_id, self.engine.model_name, completion), headers=self._headers(call)
        )

    async def _stream(
        self, call: _Call, parsed: ParsedRequest, prepared: PreparedRequest
    ) -> AsyncIterator[str]:
        created = int(time.time())
        model = self.engine.model_name
        chat = parsed.chat
        call.texts = [[] for _ in range(prepared.params.n)]
        outcome, status = "client_disconnected", 499
        try:
            if chat:
                for index in range(prepared.params.n):
                    yield chat_chunk(call.request_id, model, created, None, role=index)
            async for event in self.engine.stream(prepared):
                call.texts[event.choice].append(event.text)
                call.completion_tokens += 1
                shape = chat_chunk if chat else completion_chunk
                yield shape(call.request_id, model, created, event)
            outcome, status = "ok", 200
            await self._finish_durably(call, status, outcome)
            if parsed.include_usage:
                usage = (prepared.prompt_tokens, call.completion_tokens)
                shape = chat_chunk if chat else completion_chunk
                yield shape(call.request_id, model, created, None, usage=usage)
            yield "data: [DONE]\n\n"
        except Exception:
            log.exception("stream %s failed", call.request_id)
            outcome, status = "error", 500
            await self._finish_durably(call, status, outcome)
            yield (
                "data: "
                + json.dumps(error_body(ApiError(500, "generation failed", kind="server_error")))
                + "\n\n"
            )
        finally:
            if not call.finished:  # the client went away mid-stream
                self._finish(call, status, outcome)

    # -- steps --------------------------------------------------------------------------------

    def _authenticate(self, request: Request) -> ApiKey:
        header = request.headers.get("authorization", "")
        presented = header[7:].strip() if header.lower().startswith("bearer ") else None
        try:
            return self.keys.authenticate(presented)
        except AuthenticationError as exc:
            raise ApiError(
                401, f"Incorrect API key provided: {exc}", code="invalid_api_key"
            ) from None

    async def _read_json(self, request: Request) -> dict[str, Any]:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            raise ApiError(
                413, f"request body exceeds {self.max_body_bytes} bytes", code="request_too_large"
            )
        chunks, size = [], 0
        try:
            async for chunk in request.stream():
                size += len(chunk)
                if size > self.max_body_bytes:
                    raise ApiError(
                        413,
                        f"request body exceeds {self.max_body_bytes} bytes",
                        code="request_too_large",
                    )
                chunks.append(chunk)
        except ClientDisconnect:
            raise ApiError(400, "the client disconnected while sending the body") from None
        raw = b"".join(chunks)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ApiError(400, "the request body is not valid UTF-8") from None
        try:
            body = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ApiError(
                400, f"We could not parse the JSON body of your request: {exc.msg}"
            ) from None
        if not isinstance(body, dict):
            raise ApiError(400, "the request body must be a JSON object")
        return body

    def _render_chat(self, messages: list[dict[str, str]]) -> str:
        tokenizer = self.engine.loaded.tokenizer
        try:
            rendered = tokenizer.apply_chat_template(
                messages, add_generation_prompt=True, tokenize=False
            )
        except Exception as exc:  # templates raise plain exceptions on messages they refuse
            raise ApiError(
                400, f"the chat template refused these messages: {exc}", param="messages"
            ) from None
        return str(rendered)

    def _tier_name(self, key: ApiKey) -> str:
        """The key's configured tier, or the monitor's for it when that one is higher."""
        if self.monitor is None:
            return key.tier
        started = time.perf_counter()
        watched = self.monitor.tier_of(key.key_id)
        self.monitor_seconds += time.perf_counter() - started
        return watched if TIER_RANK.get(watched, 0) > TIER_RANK.get(key.tier, 0) else key.tier

    def _check_tier(self, key: ApiKey, parsed: ParsedRequest) -> Tier:
        tier = self.tiers.get(self._tier_name(key), Tier())
        if tier.block:
            raise ApiError(
                403,
                "This key is blocked: its traffic matches harvesting of model outputs. "
                "Contact the provider to review it.",
                kind="permission_denied",
                code="account_blocked",
            )
        if parsed.n > tier.max_n:
            raise ApiError(400, f"n is limited to {tier.max_n} for this key", param="n")
        if parsed.top_logprobs > tier.max_top_logprobs:
            raise ApiError(
                400,
                f"top_logprobs is limited to {tier.max_top_logprobs} for this key",
                param="top_logprobs",
            )
        if (
            parsed.max_tokens is not None
            and tier.max_tokens is not None
            and parsed.max_tokens > tier.max_tokens
        ):
            raise ApiError(
                400, f"max_tokens is limited to {tier.max_tokens} for this key", param="max_tokens"
            )
        return tier

    def _prepare(self, key: ApiKey, parsed: ParsedRequest) -> PreparedRequest:
        tier = self._check_tier(key, parsed)
        key_for_tenant = self.watermark_key_for(key.tenant)
        try:
            probe = self.engine.prepare(
                GenerationRequest(parsed.prompt, parsed.params(1), watermark_key=key_for_tenant)
            )
            max_tokens = parsed.max_tokens
            if max_tokens is None:  # chat without a limit: the room left in the context
                max_tokens = self.engine.context_length - probe.prompt_tokens
                if tier.max_tokens is not None:
                    max_tokens = min(max_tokens, tier.max_tokens)
                if max_tokens < 1:
                    raise ContextLengthError(
                        f"this model's context is {self.engine.context_length} tokens and the "
                        f"messages take {probe.prompt_tokens}"
                    )
            return self.engine.prepare(
                GenerationRequest(
                    list(probe.prompt_ids), parsed.params(max_tokens), watermark_key=key_for_tenant
                )
            )
        except ContextLengthError as exc:
            raise ApiError(
                400,
                str(exc),
                param="messages" if parsed.chat else "prompt",
                code="context_length_exceeded",
            ) from None
        except InputError as exc:
            raise ApiError(400, str(exc), param="prompt") from None
        except DistillGuardError as exc:
            raise ApiError(400, str(exc)) from None

    async def _admit(self, key: ApiKey, reserved: int) -> Admission | Refusal:
        scopes = [self._key_scope(key)]
        if self.tenant_limits is not None:
            scopes.append(Scope(f"tenant:{key.tenant}", self.tenant_limits, self.minute))
        if key.daily_tokens is not None:
            scopes.append(Scope(f"day:{key.key_id}", Limits(10**12, key.daily_tokens), window=DAY))
        return await self.limiter.admit_async(tuple(scopes), reserved)

    async def _admit_call(self, call: _Call, key: ApiKey, reserved: int) -> Response | None:
        """Admit the call (recording its admission), or return the 429 (or 503) to answer."""
        try:
            decision = await self._admit(key, reserved)
        except LimiterUnavailable as exc:
            raise ApiError(503, str(exc), kind="server_error", code="limiter_unavailable") from None
        if isinstance(decision, Refusal):
            call.snapshot = decision.snapshot
            return self._refuse(call, decision)
        call.admission, call.snapshot = decision, decision.snapshot
        return None

    def _refuse(self, call: _Call, refusal: Refusal) -> Response:
        retry = max(refusal.retry_after, 0.001)
        if refusal.reason == "concurrency":
            message = "Too many requests in flight for this key; retry when one finishes"
        else:
            message = (
                f"Rate limit reached for {refusal.scope} on {refusal.reason}; "
                f"retry in {format_duration(retry)}"
            )
        error = ApiError(429, message, kind=refusal.reason, code="rate_limit_exceeded")
        self.metrics.refused(refusal.reason)
        self._record(call, 429, "rate_limited")
        headers = self._headers(call) | {
            "retry-after": str(max(1, math.ceil(retry))),
            "retry-after-ms": str(max(1, math.ceil(retry * 1000))),
        }
        return JSONResponse(error_body(error), status_code=429, headers=headers)

    # -- bookkeeping --------------------------------------------------------------------------

    def _finish(self, call: _Call, status: int, outcome: str) -> None:
        call.finished = True
        if call.admission is not None:
            self.limiter.settle(call.admission, call.prompt_tokens + call.completion_tokens)
        self._record(call, status, outcome)

    async def _finish_durably(self, call: _Call, status: int, outcome: str) -> None:
        """Finish the call and wait for its usage row's commit (before a stream's last chunk)."""
        self._finish(call, status, outcome)
        if call.committed is not None:
            await call.committed

    def _record(self, call: _Call, status: int, outcome: str) -> None:
        prompt_tokens = call.prompt_tokens if call.admission is not None else 0
        self.metrics.observe(
            call.endpoint,
            status,
            outcome,
            time.perf_counter() - call.started,
            prompt_tokens,
            call.completion_tokens,
        )
        if call.key is None:
            return  # unauthenticated requests are counted, not metered per tenant
        parsed = call.parsed
        if self.monitor is not None and parsed is not None:
            started = time.perf_counter()
            self.monitor.observe(
                MonitorEvent(
                    time=self.clock(),
                    account=call.key.key_id,
                    tenant=call.key.tenant,
                    prompt=parsed.last_user,
                    turns=parsed.turns,
                    prompt_tokens=prompt_tokens,
                    completion_tokens=call.completion_tokens,
                    max_tokens=parsed.max_tokens,
                    max_tokens_cap=self._max_tokens_cap(),
                    n=parsed.n,
                    logprobs=parsed.logprobs,
                    status=status,
                )
            )
            self.monitor_seconds += time.perf_counter() - started
            self.monitor_calls += 1
        parameters: dict[str, Any] = {}
        if parsed is not None:
            parameters = {
                "max_tokens": call.max_tokens if call.max_tokens is not None else parsed.max_tokens,
                "temperature": parsed.temperature,
                "top_p": parsed.top_p,
                "n": parsed.n,
                "stop": list(parsed.stop),
                "seed": parsed.seed,
                "logprobs": parsed.logprobs,
                "top_logprobs": parsed.top_logprobs,
                "stream": parsed.stream,
                "user": parsed.user,
            }
        output_text = (
            json.dumps(["".join(parts) for parts in call.texts]) if self.store_text else ""
        )
        record = UsageRecord(
            request_id=call.request_id,
            created_at=datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z"),
            tenant=call.key.tenant,
            key_id=call.key.key_id,
            model=parsed.model if parsed is not None else self.model_name,
            endpoint=call.endpoint,
            status=status,
            outcome=outcome,
            prompt_tokens=prompt_tokens,
            completion_tokens=call.completion_tokens,
            latency_ms=(time.perf_counter() - call.started) * 1000,
            watermark_key_id=call.watermark_key_id,
            fingerprint=self._engine.scheme.fingerprint
            if self._engine is not None and call.watermark_key_id
            else None,
            parameters=parameters,
            prompt_text=call.prompt_text if self.store_text else "",
            output_text=output_text,
        )
        if self.durable_audit:
            call.committed = self.audit.submit(record)
        else:
            self.audit.append(record)

    def _max_tokens_cap(self) -> int:
        if self._engine is not None:
            return self._engine.context_length
        return self.upstream_max_tokens

    def _headers(self, call: _Call) -> dict[str, str]:
        headers = {"x-request-id": call.request_id}
        snapshot = call.snapshot
        if snapshot is not None:
            headers |= {
                "x-ratelimit-limit-requests": str(snapshot.limit_requests),
                "x-ratelimit-remaining-requests": str(snapshot.remaining_requests),
                "x-ratelimit-reset-requests": format_duration(snapshot.reset_requests),
                "x-ratelimit-limit-tokens": str(snapshot.limit_tokens),
                "x-ratelimit-remaining-tokens": str(snapshot.remaining_tokens),
                "x-ratelimit-reset-tokens": format_duration(snapshot.reset_tokens),
            }
        if call.watermark_header is not None:
            headers["x-distillguard-watermark"] = call.watermark_header
        return headers

    def _error(self, call: _Call, error: ApiError) -> Response:
        if call.snapshot is None and call.key is not None:
            call.snapshot = self.limiter_snapshot(call.key)
        return JSONResponse(
            error_body(error), status_code=error.status, headers=self._headers(call)
        )

    def limiter_snapshot(self, key: ApiKey) -> Snapshot | None:
        return self.limiter.snapshot(self._key_scope(key))

    def _key_scope(self, key: ApiKey) -> Scope:
        factor = self.tiers.get(self._tier_name(key), Tier()).rate_factor
        if factor == 1.0:
            limits = Limits(key.rpm, key.tpm, key.concurrency)
        else:
            limits = Limits(
                max(1, int(key.rpm * factor)), max(1, int(key.tpm * factor)), key.concurrency
            )
        return Scope(f"key:{key.key_id}", limits, self.minute)

    # -- upstream mode -------------------------------------------------------------------------

    async def _proxy(
        self, request: Request, call: _Call, upstream: Upstream, *, chat: bool
    ) -> Response:
        """Keys, limits, metering and audit in front of an OpenAI-compatible upstream."""
        call.watermark_header = "unavailable"
        try:
            call.key = self._authenticate(request)
            body = await self._read_json(request)
            call.parsed = parsed = parse_body(body, chat=chat, render_chat=_messages_json)
            if parsed.model not in self.upstream_models:
                raise ApiError(
                    404,
                    f"The model '{parsed.model}' does not exist",
                    param="model",
                    code="model_not_found",
                )
            tier = self._check_tier(call.key, parsed)
            if tier.max_tokens is not None and parsed.max_tokens is None:
                # the upstream would default to its maximum: hold it to the tier's cap
                body = body | {"max_tokens": tier.max_tokens}
                parsed = replace(parsed, max_tokens=tier.max_tokens)
                call.parsed = parsed
            prompt = parsed.prompt
            call.prompt_tokens = (
                len(prompt) if isinstance(prompt, list) else estimate_tokens(prompt)
            )
            call.prompt_text = prompt if isinstance(prompt, str) else json.dumps(prompt)
            call.max_tokens = parsed.max_tokens or self.upstream_max_tokens
            reserved = call.prompt_tokens + call.max_tokens * parsed.n
            refused = await self._admit_call(call, call.key, reserved)
            if refused is not None:
                return refused
        except ApiError as error:
            self._record(call, error.status, "rejected")
            return self._error(call, error)
        path = "/chat/completions" if chat else "/completions"
        if parsed.stream:
            forwarded = body | {"stream_options": {"include_usage": True}}
            return StreamingResponse(
                self._proxy_stream(call, upstream, path, forwarded, parsed),
                media_type="text/event-stream",
                headers=self._headers(call),
            )
        try:
            reply = await upstream.post(path, body)
        except UpstreamError as exc:
            self._finish(call, 502, "upstream_error")
            return self._error(
                call,
                ApiError(502, f"the upstream failed: {exc}", kind="upstream_error"),
            )
        usage = reply.body.get("usage") if isinstance(reply.body, dict) else None
        if isinstance(usage, dict):
            call.prompt_tokens = int(usage.get("prompt_tokens", call.prompt_tokens))
            call.completion_tokens = int(usage.get("completion_tokens", 0))
        call.texts = [[_choice_text(choice)] for choice in reply.body.get("choices", [])]
        self._finish(call, reply.status, "ok" if reply.status < 400 else "upstream_rejected")
        return Response(
            reply.raw,
            status_code=reply.status,
            headers=self._headers(call),
            media_type="application/json",
        )

    async def _proxy_stream(
        self,
        call: _Call,
        upstream: Upstream,
        path: str,
        body: dict[str, Any],
        parsed: ParsedRequest,
    ) -> AsyncIterator[str]:
        outcome, status = "client_disconnected", 499
        call.texts = [[] for _ in range(parsed.n)]
        try:
            async for code, line in upstream.stream(path, body):
                if code >= 400:
                    outcome, status = "upstream_rejected", code
                    await self._finish_durably(call, status, outcome)
                    yield "data: " + line + "\n\n"
                    return
                if not line.startswith("data: "):
                    continue
                data = line[6:]
                if data == "[DONE]":
                    outcome, status = "ok", 200
                    await self._finish_durably(call, status, outcome)
                else:
                    chunk = json.loads(data)
                    usage = chunk.get("usage")
                    if isinstance(usage, dict):
                        call.prompt_tokens = int(usage.get("prompt_tokens", call.prompt_tokens))
                        call.completion_tokens = int(usage.get("completion_tokens", 0))
                        if not parsed.include_usage and not chunk.get("choices"):
                            continue  # the client did not ask for the usage chunk
                    for choice in chunk.get("choices") or []:
                        index = int(choice.get("index", 0))
                        if 0 <= index < len(call.texts):
                            call.texts[index].append(_choice_text(choice))
                yield line + "\n\n"
            outcome, status = "ok", 200
        except UpstreamError as exc:
            outcome, status = "upstream_error", 502
            await self._finish_durably(call, status, outcome)
            error = ApiError(502, f"the upstream failed: {exc}", kind="upstream_error")
            yield "data: " + json.dumps(error_body(error)) + "\n\n"
        finally:
            if not call.finished:
                self._finish(call, status, outcome)

    async def _http_error(self, request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        message = exc.detail if isinstance(exc, HTTPException) else "internal error"
        error = ApiError(
            status, str(message), kind="invalid_request_error" if status < 500 else "server_error"
        )
        return JSONResponse(
            error_body(error), status_code=status, headers={"x-request-id": _request_id()}
        )


def _messages_json(messages: list[dict[str, str]]) -> str:
    """Upstream mode renders no template: the messages' JSON is what the estimate counts."""
    return json.dumps(messages, ensure_ascii=False)


def _choice_text(choice: dict[str, Any]) -> str:
    """The text of a choice or chunk choice, whatever its shape (chat, delta, completion)."""
    for holder in (choice.get("message"), choice.get("delta")):
        if isinstance(holder, dict) and isinstance(holder.get("content"), str):
            return str(holder["content"])
    text = choice.get("text")
    return text if isinstance(text, str) else ""


def _request_id() -> str:
    return "req_" + secrets.token_hex(12)
