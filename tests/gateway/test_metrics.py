"""The Prometheus endpoint shows what operators need to see, including the audit log's health."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import httpx
import pytest

from distillguard.engine.engine import Engine
from distillguard.monitor.inbox import EventQueue
from distillguard.monitor.monitor import Monitor
from distillguard.store import Connection, connect
from distillguard.store.audit import AuditLog

from .conftest import make_harness, monitored_gateway


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


def test_monitor_events_dropped_from_a_full_queue_reach_the_metrics(tmp_path: Path) -> None:
    from distillguard.experiments.simulate import MODEL

    monitor = Monitor(queue=EventQueue(limit=2))  # not started: it falls behind at once
    gateway, audit, key, _ = monitored_gateway(tmp_path, monitor, "admin-token-0123456789abcdef")

    async def run() -> str:
        transport = httpx.ASGITransport(app=gateway.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as http:
            for _ in range(5):
                response = await http.post(
                    "/v1/completions",
                    json={"model": MODEL, "prompt": "The", "max_tokens": 2},
                    headers={"authorization": f"Bearer {key}"},
                )
                assert response.status_code == 200
            return (await http.get("/metrics")).text

    metrics = asyncio.run(run())
    assert "distillguard_monitor_dropped_total 3" in metrics
    assert monitor.drain() == 2  # the newest two
    audit.close()
