"""The console's pages: a harvester flagged with its reasons, an account's detail, a tier
set with a reason (in the history, the audit chain and the admin API), rings and the fleet."""

from __future__ import annotations

import json

from distillguard.keys import init_master_secret
from distillguard.keys.derive import chain_keys
from distillguard.store.chain import append_records, verify_chain
from distillguard.store.usage import UsageRecord

from .conftest import ADMIN_TOKEN, ConsoleHarness, sign_in


def usage(index: int, key_id: str, tenant: str, prompt: str = "hello") -> UsageRecord:
    return UsageRecord(
        request_id=f"req_{key_id}_{index}",
        created_at=f"2026-05-01T10:{index % 60:02d}:00.000000Z",
        tenant=tenant,
        key_id=key_id,
        model="m",
        endpoint="chat.completions",
        status=200,
        outcome="ok",
        prompt_tokens=10,
        completion_tokens=90,
        latency_ms=3.0,
        watermark_key_id="wk",
        fingerprint="fp",
        parameters={"n": 4, "logprobs": True},
        prompt_text=prompt,
        output_text=json.dumps(["an answer"]),
    )


def test_a_harvester_is_flagged_with_its_reasons_in_words(harness: ConsoleHarness) -> None:
    client = harness.client()
    sign_in(client, "vera")
    page = client.get("/console/accounts?tier=block").text
    assert "k_harvest" in page and "k_alice" not in page
    assert "of requests ask for logprobs" in page and "n &gt; 1 samples" in page
    fleet = client.get("/console/fleet").text
    assert "k_harvest" in fleet and "Top accounts by risk" in fleet


def test_the_accounts_table_sorts_filters_and_pages(harness: ConsoleHarness) -> None:
    connection = harness.connect()
    append_records(connection, [usage(i, "k_bob", "acme") for i in range(5)], None)
    client = harness.client()
    sign_in(client, "vera")
    by_tokens = client.get("/console/accounts?sort=tokens&order=desc").text
    assert by_tokens.index("k_bob") < by_tokens.index("k_alice")  # 500 tokens vs none rolled up
    by_name = client.get("/console/accounts?sort=account&order=asc").text
    assert by_name.index("k_alice") < by_name.index("k_bob") < by_name.index("k_carol")
    assert 'aria-sort="ascending"' in by_name
    assert "4 accounts" in client.get("/console/accounts?sort=nonsense&page=99").text


def test_setting_a_tier_needs_a_reason_and_records_who_and_why(harness: ConsoleHarness) -> None:
    client = harness.client()
    csrf = sign_in(client, "otto")
    refused = client.post(
        "/console/accounts/k_alice/tier", data={"csrf": csrf, "tier": "block", "reason": " "}
    )
    assert refused.status_code == 400 and harness.monitor.tier_of("k_alice") == "normal"
    page = client.post(
        "/console/accounts/k_alice/tier",
        data={"csrf": csrf, "tier": "block", "reason": "shared a <script> template with k_harvest"},
    ).text
    assert "Tier set to block" in page
    assert "otto" in page and "shared a &lt;script&gt; template with k_harvest" in page
    # the admin API sees it pinned
    admin = client.get("/v1/admin/accounts", headers={"authorization": f"Bearer {ADMIN_TOKEN}"})
    alice = next(row for row in admin.json()["data"] if row["account"] == "k_alice")
    assert (alice["tier"], alice["pinned"]) == ("block", True)
    # and the audit chain holds the action, by name, and still verifies
    connection = harness.connect()
    records = [
        json.loads(row[0])
        for row in connection.execute("SELECT record FROM audit WHERE request_id LIKE 'event:%'")
    ]
    actions = [(r["operator"], r["action"], r["target"]) for r in records]
    assert ("otto", "set_tier", "k_alice") in actions and ("otto", "sign_in", "otto") in actions
    master, _ = init_master_secret(harness.home)
    assert verify_chain(connection, chain_keys(master, 1)).ok


def test_a_tier_set_with_the_admin_token_is_recorded_as_the_token(harness: ConsoleHarness) -> None:
    client = harness.client()
    response = client.post(
        "/v1/admin/accounts/k_bob/tier",
        json={"tier": "watch", "reason": "ticket 42"},
        headers={"authorization": f"Bearer {ADMIN_TOKEN}"},
    )
    assert response.status_code == 200
    sign_in(client, "vera")
    page = client.get("/console/accounts/k_bob").text
    assert "admin-token" in page and "ticket 42" in page


def test_an_account_page_shows_its_requests_only_where_text_is_stored(
    harness: ConsoleHarness,
) -> None:
    connection = harness.connect()
    append_records(connection, [usage(1, "k_harvest", "initech", "tell me <everything>")], None)
    client = harness.client()
    sign_in(client, "vera")
    page = client.get("/console/accounts/k_harvest").text
    assert "tell me &lt;everything&gt;" in page and "an answer" in page
    assert "logprobs=True" in page
    assert "Risk over time" in page and "Contribution of each signal" in page
    assert "Set the tier" not in page  # a viewer gets no form
    assert client.get("/console/accounts/k_nobody").status_code == 404


def test_texts_are_not_shown_when_the_gateway_keeps_none(harness: ConsoleHarness) -> None:
    from dataclasses import replace

    harness.console.config = replace(harness.console.config, store_text=False)
    connection = harness.connect()
    append_records(connection, [usage(1, "k_harvest", "initech", "secret prompt")], None)
    client = harness.client()
    sign_in(client, "vera")
    page = client.get("/console/accounts/k_harvest").text
    assert "secret prompt" not in page and "not stored by this gateway" in page


def test_risk_samples_draw_the_chart_and_the_contributions(harness: ConsoleHarness) -> None:
    harness.console.watch.step()
    client = harness.client()
    sign_in(client, "vera")
    page = client.get("/console/accounts/k_harvest").text
    assert "logprobs: +" in page and "multiple samples: +" in page  # bars carry their value
    connection = harness.connect()
    stored = connection.execute(
        "SELECT score, tier, contributions FROM risk_samples WHERE key_id = 'k_harvest'"
    ).fetchall()
    assert len(stored) == 1 and stored[0][1] == "block"
    harness.console.watch.step()  # nothing moved: no new sample
    assert connection.execute("SELECT COUNT(*) FROM risk_samples").fetchone()[0] == 4


def test_rings_and_audit_pages_render_for_a_viewer(harness: ConsoleHarness) -> None:
    client = harness.client()
    sign_in(client, "vera")
    assert "No rings found" in client.get("/console/rings").text
    audit = client.get("/console/audit").text
    assert "Chain status" in audit and "No checkpoint is anchored" in audit
    assert "Verify now" not in audit  # viewers cannot start it
