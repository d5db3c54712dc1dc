"""The Prometheus endpoint shows what operators need to see, including the audit log's health."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import httpx
import pytest

from distillguard.engine.engine import Engine
from distillguard.store import Connection, connect
from distillguard.store.audit import AuditLog

from .conftest import make_harness


def test_audit_write_failures_reach_the_metrics(
    tmp_path: Path, shared_engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    harness = make_harness(tmp_path, shared_engine)
    attempts = 0

    def flaky_connect() -> Connection:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            raise OSError("the database is not there yet")
        return connect(tmp_path)

    with caplog.at_level(logging.CRITICAL, logger="distillguard.audit"):
        audit = AuditLog(flaky_connect)
        harness.gateway.audit = audit

        async def scrape() -> str:
            transport = httpx.ASGITransport(app=harness.gateway.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as http:
                response = await http.post(
                    "/v1/completions",
                    json={"model": harness.model, "prompt": "The", "max_tokens": 2},
                    headers={"authorization": f"Bearer {harness.keys['acme']}"},
                )
                assert response.status_code == 200  # answered once the retried write landed
                return (await http.get("/metrics")).text

        metrics = asyncio.run(scrape())
    assert "distillguard_audit_write_failures_total 1" in metrics
    audit.close()
    harness.audit.close()
