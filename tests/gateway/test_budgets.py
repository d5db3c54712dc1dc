"""Monthly token budgets: kept in the store, read from memory on the request path, and
enforced by the limiter over the calendar month."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

pytest.importorskip("starlette")

from distillguard.errors import InputError
from distillguard.gateway.admission import month_scope, refusal_error, scopes_for
from distillguard.gateway.apikeys import ApiKey
from distillguard.gateway.budgets import Budgets, read_budgets, write_budget
from distillguard.gateway.policy import DEFAULT_TIERS
from distillguard.gateway.ratelimit import MemoryRateLimiter, Refusal
from distillguard.gateway.settings import GatewaySettings
from distillguard.store import connect

KEY = ApiKey("k1", "acme", 1000, 1_000_000, None, 8, "normal", "2026-01-01T00:00:00Z", None)


def test_a_tenant_past_its_monthly_budget_is_refused_with_the_month_named() -> None:
    limiter = MemoryRateLimiter()
    budgets = {"acme": 100}
    settings = GatewaySettings(monthly_budget=budgets.get)
    scopes = scopes_for(KEY, DEFAULT_TIERS["normal"], settings)
    assert scopes[-1].name == f"month:acme:{datetime.now(UTC):%Y-%m}"
    first = limiter.admit(scopes, 60)
    assert not isinstance(first, Refusal)
    limiter.settle(first, 60)
    refused = limiter.admit(scopes, 60)
    assert isinstance(refused, Refusal) and refused.scope.startswith("month:acme:")
    assert "monthly token budget of tenant acme" in refusal_error(refused).message
    other = ApiKey("k2", "globex", 1000, 1_000_000, None, 8, "normal", "", None)
    assert len(scopes_for(other, DEFAULT_TIERS["normal"], settings)) == 1


def test_the_month_scope_counts_the_whole_calendar_month() -> None:
    february = datetime(2026, 2, 27, tzinfo=UTC).timestamp()
    scope = month_scope("acme", 5, february)
    assert scope.name == "month:acme:2026-02" and scope.window == 28 * 86_400.0
    assert month_scope("acme", 5, datetime(2026, 3, 1, tzinfo=UTC).timestamp()).name.endswith(
        "2026-03"
    )


def test_budgets_set_in_the_store_reach_the_request_path(tmp_path: Path) -> None:
    connection = connect(tmp_path)
    budgets = Budgets(lambda: connect(tmp_path, shared=True), refresh=0.05)
    budgets.start()
    assert budgets.monthly_tokens("acme") is None
    with connection:
        write_budget(connection, "acme", 5000, "ada")
    deadline = time.monotonic() + 5
    while budgets.monthly_tokens("acme") is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert budgets.monthly_tokens("acme") == 5000
    assert read_budgets(connection)["acme"].updated_by == "ada"
    with connection:
        write_budget(connection, "acme", None, "ada")
    budgets.reload(connection)
    assert budgets.monthly_tokens("acme") is None
    with pytest.raises(InputError):
        write_budget(connection, "acme", 0, "ada")
    budgets.close()
    connection.close()
