"""Usage rows: what one answered request cost, and reading them back.

Each row holds tenant, key, model, token counts, status, latency, the watermark key id and
scheme fingerprint, the parameters, and the prompt and output text (zlib-compressed). The
audit chain (`store/audit.py`) writes them; forensics and reports read them here.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass, field
from typing import Any

from distillguard.store.base import Connection

__all__ = ["USAGE_COLUMNS", "UsageRecord", "read_usage"]

USAGE_COLUMNS = (
    "request_id",
    "created_at",
    "tenant",
    "key_id",
    "model",
    "endpoint",
    "status",
    "outcome",
    "prompt_tokens",
    "completion_tokens",
    "latency_ms",
    "watermark_key_id",
    "fingerprint",
    "parameters",
    "prompt_text",
    "output_text",
)


@dataclass(frozen=True)
class UsageRecord:
    request_id: str
    created_at: str
    tenant: str
    key_id: str
    model: str
    endpoint: str
    status: int
    outcome: str  # "ok", "error", "rate_limited", "client_disconnected", ...
    prompt_tokens: int
    completion_tokens: int
    latency_ms: float
    watermark_key_id: str | None
    fingerprint: str | None
    parameters: dict[str, Any] = field(default_factory=dict)
    prompt_text: str = ""
    output_text: str = ""


def read_usage(
    connection: Connection, *, tenant: str | None = None, key_id: str | None = None
) -> list[UsageRecord]:
    """Usage rows in the order they were written, texts decompressed (empty once purged);
    `output_text` is the JSON array of the choices' texts."""
    query = f"SELECT {', '.join(USAGE_COLUMNS)} FROM usage"  # noqa: S608 - fixed column names
    clauses, arguments = [], []
    if tenant is not None:
        clauses.append("tenant = ?")
        arguments.append(tenant)
    if key_id is not None:
        clauses.append("key_id = ?")
        arguments.append(key_id)
    if clauses:
        query += " WHERE " + " AND ".join(clauses)
    # the order they were written: the audit chain's
    query += " ORDER BY (SELECT seq FROM audit WHERE audit.request_id = usage.request_id)"
    records = []
    for values in connection.execute(query, arguments):
        row = dict(zip(USAGE_COLUMNS, values, strict=True))
        for name in ("prompt_text", "output_text"):
            blob = row[name]
            row[name] = zlib.decompress(blob).decode() if blob else ""
        row["parameters"] = json.loads(row["parameters"])
        records.append(UsageRecord(**row))
    return records
