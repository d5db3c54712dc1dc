"""Metering: what one request accumulates, the usage row and monitor event made of it, the
bounded wait for that row to be safe, and the rate-limit headers every answer carries once
its key is known.

Who sent the request (client address, user agent, header order) reaches the monitor's event
as keyed-hash tokens only (`gateway/origin.py`); the usage row keeps none of it."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import math
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from distillguard.errors import ApiError, AuditUnavailable
from distillguard.gateway.apikeys import ApiKey
from distillguard.gateway.fields import audit_parameters
from distillguard.gateway.protocol import ParsedRequest
from distillguard.gateway.ratelimit import Admission, Refusal, Snapshot, format_duration
from distillguard.monitor.events import MonitorEvent
from distillguard.monitor.identity import RequestIdentity
from distillguard.store.usage import UsageRecord

__all__ = [
    "UNSERVED",
    "Call",
    "monitor_event",
    "new_request_id",
    "record_safe",
    "refusal_headers",
    "response_headers",
    "usage_record",
]

log = logging.getLogger("distillguard.gateway")

# outcomes of requests refused before generation: their rows keep the prompt's hash, not text
UNSERVED = frozenset({"rejected", "rate_limited"})


def new_request_id() -> str:
    return "req_" + secrets.token_hex(12)


@dataclass
class Call:
    """What one request has accumulated, for its usage row. The flow fills in the key, the
    parsed body and the admission; the backend fills in the tokens, texts and watermark."""

    request_id: str
    started: float
    endpoint: str
    key: ApiKey | None = None
    parsed: ParsedRequest | None = None
    admission: Admission | None = None
    snapshot: Snapshot | None = None
    texts: list[list[str]] = field(default_factory=list)
    completion_tokens: int = 0
    prompt_tokens: int = 0  # reserved estimate, then the actual count
    prompt_text: str = ""
    max_tokens: int | None = None
    watermark_key_id: str | None = None
    watermark_header: str | None = None  # key id, "none", or "unavailable" (upstream mode)
    fingerprint: str | None = None  # the watermark scheme's, when a key marked the output
    committed: asyncio.Future[None] | None = None  # its record is safe (AuditLog.submit)
    finished: bool = False
    # the ASGI scope: who sent the request, read (`Origins.of`) only for the monitor's event
    scope: Mapping[str, Any] | None = None
    # the admission, held until the call ends (`ratelimit.admitted`); a stream takes it over
    held: contextlib.AsyncExitStack = field(default_factory=contextlib.AsyncExitStack)

    @classmethod
    def start(cls, endpoint: str) -> Call:
        return cls(new_request_id(), time.perf_counter(), endpoint)

    @property
    def metered_prompt_tokens(self) -> int:
        """Prompt tokens count only once admitted: a refused request consumes nothing."""
        return self.prompt_tokens if self.admission is not None else 0


def monitor_event(
    call: Call,
    key: ApiKey,
    parsed: ParsedRequest,
    status: int,
    now: float,
    max_tokens_cap: int,
    origin: RequestIdentity | None = None,
) -> MonitorEvent:
    """The monitor's event for a call: what was asked and served, the origin's tokens (none
    given: unknown) and the key's account metadata (its organisation as a token already)."""
    origin = origin or RequestIdentity()
    return MonitorEvent(
        time=now,
        account=key.key_id,
        tenant=key.tenant,
        prompt=parsed.last_user,
        turns=parsed.turns,
        prompt_tokens=call.metered_prompt_tokens,
        completion_tokens=call.completion_tokens,
        max_tokens=parsed.max_tokens,
        max_tokens_cap=max_tokens_cap,
        n=parsed.n,
        logprobs=parsed.logprobs,
        status=status,
        address=origin.address,
        network=origin.network,
        agent=origin.agent,
        header_fingerprint=origin.header_fingerprint,
        org=key.org_token,
        signup_program=key.signup_program,
        created_at=key.created_seconds,
    )


def usage_record(
    call: Call, key: ApiKey, status: int, outcome: str, default_model: str, store_text: bool
) -> UsageRecord:
    parsed = call.parsed
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
        # every other field the client sent (older rows simply lack them); the keys above
        # keep their meaning: effective values, with defaults, as rows always had
        sent = audit_parameters(parsed.sent, chat=parsed.chat)
        parameters |= {name: value for name, value in sent.items() if name not in parameters}
    output_text = json.dumps(["".join(parts) for parts in call.texts]) if store_text else ""
    prompt_text = call.prompt_text if store_text else ""
    if outcome in UNSERVED and prompt_text:
        # refusals cost the client nothing: their rows must not store what they sent (a
        # 1-rpm key flooding 1 MB prompts would fill the database); the hash still ties it
        parameters["prompt_sha256"] = hashlib.sha256(prompt_text.encode()).hexdigest()
        prompt_text = ""
    return UsageRecord(
        request_id=call.request_id,
        created_at=datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z"),
        tenant=key.tenant,
        key_id=key.key_id,
        model=parsed.model if parsed is not None else default_model,
        endpoint=call.endpoint,
        status=status,
        outcome=outcome,
        prompt_tokens=call.metered_prompt_tokens,
        completion_tokens=call.completion_tokens,
        latency_ms=(time.perf_counter() - call.started) * 1000,
        watermark_key_id=call.watermark_key_id,
        fingerprint=call.fingerprint if call.watermark_key_id else None,
        parameters=parameters,
        prompt_text=prompt_text,
        output_text=output_text,
    )


def response_headers(call: Call) -> dict[str, str]:
    """`x-request-id`, the six `x-ratelimit-*` headers once the key's limits are known, and
    `x-distillguard-watermark` once the backend has said how the output is marked."""
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


def refusal_headers(call: Call, refusal: Refusal) -> dict[str, str]:
    """The response headers of a 429, with when to retry in seconds and milliseconds."""
    retry = max(refusal.retry_after, 0.001)
    return response_headers(call) | {
        "retry-after": str(max(1, math.ceil(retry))),
        "retry-after-ms": str(max(1, math.ceil(retry * 1000))),
    }


async def record_safe(call: Call, wait: float) -> ApiError | None:
    """Wait, at most `wait` seconds, for the call's usage record to be safe (journaled, or
    committed: `AuditLog.submit`); None when it is, else the 503 to answer instead (the record
    stays queued and journaled, to be committed or replayed later)."""
    future = call.committed
    if future is None:
        return None
    if not future.done():
        timer = asyncio.get_running_loop().call_later(wait, _give_up, future, wait)
        try:
            await future
        except AuditUnavailable:
            pass
        finally:
            timer.cancel()
    failure = future.exception()
    if failure is None:
        return None
    log.warning("request %s answered 503: %s", call.request_id, failure)
    return ApiError(
        503,
        "The audit log could not record this request in time; retry shortly",
        kind="server_error",
        code="audit_unavailable",
    )


def _give_up(future: asyncio.Future[None], seconds: float) -> None:
    """The bound on an answer's wait: fail the wait (not the record, which stays queued)."""
    if not future.done():
        future.set_exception(
            AuditUnavailable(f"the usage record was not safe within {seconds * 1000:.0f} ms")
        )
