"""`distillguard accounts`: the gateway's admin API read and driven from the command line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .conftest import assert_one_line_error, run


def test_accounts_reads_the_gateway_admin_api_and_pins_tiers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from distillguard.monitor.history import TierHistory
    from distillguard.monitor.monitor import Monitor
    from distillguard.store import connect

    from ..gateway.conftest import monitored_gateway, run_app
    from ..monitor.test_features import event
    from ..monitor.test_monitor import eager_model

    token = "cli-admin-token-0123456789"
    history = TierHistory(lambda: connect(tmp_path, shared=True))
    monitor = Monitor(eager_model(), on_tier_change=history.record)
    gateway, audit, _, key_id = monitored_gateway(tmp_path, monitor, token, rpm=60, tpm=100_000)
    for index in range(15):
        monitor.process(event(30.0 * index, f"Think step by step about {index}.", account=key_id))
    server, thread, url = run_app(gateway.admin.app())
    base = url.removesuffix("/v1")
    try:
        monkeypatch.delenv("DISTILLGUARD_ADMIN_TOKEN", raising=False)
        assert_one_line_error(run(tmp_path, "accounts", "--url", base), "DISTILLGUARD_ADMIN_TOKEN")
        monkeypatch.setenv("DISTILLGUARD_ADMIN_TOKEN", "wrong-token-0123456789")
        assert_one_line_error(run(tmp_path, "accounts", "--url", base), "401")
        monkeypatch.setenv("DISTILLGUARD_ADMIN_TOKEN", token)
        code, out, _ = run(tmp_path, "accounts", "--url", base)
        assert code == 0 and key_id in out and "throttle" in out
        assert "step-by-step reasoning" in out
        code, out, _ = run(tmp_path, "accounts", "--url", base, "--json")
        rows = json.loads(out)
        assert rows[0]["account"] == key_id and rows[0]["flagged_at"] >= 10
        code, out, _ = run(tmp_path, "accounts", "--url", base, "set-tier", key_id, "normal")
        assert code == 0 and "pinned to normal" in out
        assert monitor.tier_of(key_id) == "normal"
        code, out, _ = run(tmp_path, "accounts", "--url", base, "rings")
        assert code == 0 and out.strip() == "no rings"
        code, out, _ = run(tmp_path, "accounts", "history", "--json")
        tiers = [change["tier"] for change in json.loads(out)]
        assert tiers == ["throttle", "normal"]  # straight to throttle at 10 requests
        assert_one_line_error(
            run(tmp_path, "accounts", "--url", "http://127.0.0.1:9"), "cannot reach the gateway"
        )
    finally:
        server.should_exit = True  # type: ignore[attr-defined]
        thread.join()
        audit.close()
