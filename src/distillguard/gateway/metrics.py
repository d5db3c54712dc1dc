"""Prometheus metrics for the gateway, in the text exposition format (no extra dependency).

Counters: requests by endpoint and status class, outcomes, prompt and completion tokens, rate
limit refusals by reason, monitor events dropped; a histogram of request latency. Labels never
carry keys or tenants' secrets; tenant ids are not used as labels either (unbounded
cardinality).
"""

from __future__ import annotations

import threading
from collections import defaultdict

__all__ = ["Metrics"]

_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: defaultdict[tuple[str, str, str], int] = defaultdict(int)
        self._tokens: defaultdict[str, int] = defaultdict(int)
        self._refusals: defaultdict[str, int] = defaultdict(int)
        self._limiter_unavailable = 0
        self._audit_write_failures = 0
        self._monitor_dropped = 0
        self._latency_counts = [0] * len(_BUCKETS)
        self._latency_sum = 0.0
        self._latency_total = 0

    def observe(
        self,
        endpoint: str,
        status: int,
        outcome: str,
        seconds: float,
        prompt_tokens: int,
        completion_tokens: int,
    ) -> None:
        with self._lock:
            self._requests[(endpoint, f"{status // 100}xx", outcome)] += 1
            self._tokens["prompt"] += prompt_tokens
            self._tokens["completion"] += completion_tokens
            self._latency_sum += seconds
            self._latency_total += 1
            for index, bound in enumerate(_BUCKETS):
                if seconds <= bound:
                    self._latency_counts[index] += 1

    def refused(self, reason: str) -> None:
        with self._lock:
            self._refusals[reason] += 1

    def set_limiter_unavailable(self, total: int) -> None:
        """The shared limiter's count of decisions taken without Redis (it keeps the count)."""
        with self._lock:
            self._limiter_unavailable = total

    def set_audit_write_failures(self, total: int) -> None:
        """The audit log's count of batches whose write failed and was retried."""
        with self._lock:
            self._audit_write_failures = total

    def set_monitor_dropped(self, total: int) -> None:
        """The monitor's count of events dropped (its queue full, or Redis unreachable)."""
        with self._lock:
            self._monitor_dropped = total

    def render(self) -> str:
        with self._lock:
            lines = [
                "# HELP distillguard_requests_total Requests by endpoint, status, outcome.",
                "# TYPE distillguard_requests_total counter",
            ]
            for (endpoint, status, outcome), count in sorted(self._requests.items()):
                labels = f'endpoint="{endpoint}",status="{status}",outcome="{outcome}"'
                lines.append(f"distillguard_requests_total{{{labels}}} {count}")
            lines += [
                "# HELP distillguard_tokens_total Tokens metered.",
                "# TYPE distillguard_tokens_total counter",
            ]
            for kind in ("prompt", "completion"):
                lines.append(f'distillguard_tokens_total{{kind="{kind}"}} {self._tokens[kind]}')
            lines += [
                "# HELP distillguard_rate_limited_total Requests refused by a limit, by reason.",
                "# TYPE distillguard_rate_limited_total counter",
            ]
            for reason, count in sorted(self._refusals.items()):
                lines.append(f'distillguard_rate_limited_total{{reason="{reason}"}} {count}')
            lines += [
                "# HELP distillguard_limiter_unavailable_total Requests decided without the shared "
                "limiter (Redis unreachable): refused with 503, or admitted when failing open.",
                "# TYPE distillguard_limiter_unavailable_total counter",
                f"distillguard_limiter_unavailable_total {self._limiter_unavailable}",
                "# HELP distillguard_audit_write_failures_total Batches of usage rows whose write "
                "failed (each is retried until it is written).",
                "# TYPE distillguard_audit_write_failures_total counter",
                f"distillguard_audit_write_failures_total {self._audit_write_failures}",
                "# HELP distillguard_monitor_dropped_total Monitor events dropped before the "
                "monitor saw them: the oldest, when its bounded queue was full, or unpublished "
                "while Redis was unreachable.",
                "# TYPE distillguard_monitor_dropped_total counter",
                f"distillguard_monitor_dropped_total {self._monitor_dropped}",
            ]
            lines += [
                "# HELP distillguard_request_seconds Seconds to answer (streams: last byte).",
                "# TYPE distillguard_request_seconds histogram",
            ]
            for bound, count in zip(_BUCKETS, self._latency_counts, strict=True):
                lines.append(f'distillguard_request_seconds_bucket{{le="{bound}"}} {count}')
            lines.append(f'distillguard_request_seconds_bucket{{le="+Inf"}} {self._latency_total}')
            lines.append(f"distillguard_request_seconds_sum {self._latency_sum}")
            lines.append(f"distillguard_request_seconds_count {self._latency_total}")
        return "\n".join(lines) + "\n"
