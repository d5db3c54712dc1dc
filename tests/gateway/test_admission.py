"""Admission through HTTP: many clients at once on one key get exactly its limit."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx

from distillguard.engine.engine import Engine

from .conftest import make_harness


def test_64_concurrent_http_clients_on_one_key_get_exactly_the_limit(
    tmp_path: Path, shared_engine: Engine
) -> None:
    harness = make_harness(tmp_path, shared_engine, rpm=20, tpm=1_000_000, concurrency=64)
    key = harness.keys["acme"]

    async def fire() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=harness.gateway.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as http:
            return list(
                await asyncio.gather(
                    *(
                        http.post(
                            "/v1/completions",
                            json={"model": harness.model, "prompt": "The", "max_tokens": 3},
                            headers={"authorization": f"Bearer {key}"},
                        )
                        for _ in range(64)
                    )
                )
            )

    responses = asyncio.run(fire())
    statuses = sorted(response.status_code for response in responses)
    assert statuses.count(200) == 20 and statuses.count(429) == 44
    refused = next(response for response in responses if response.status_code == 429)
    assert int(refused.headers["retry-after"]) >= 1
    assert int(refused.headers["retry-after-ms"]) >= 1
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"
    harness.flush()
    harness.audit.close()
