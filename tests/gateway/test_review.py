"""The review queue: a tier the policy reviews is not in force until an operator confirms it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("starlette")

from distillguard.errors import ConfigError
from distillguard.gateway.policy import load_policy
from distillguard.gateway.review import ReviewedMonitor
from distillguard.store import connect


class Stub:
    """A monitor that proposes `block` for k1."""

    def __init__(self) -> None:
        self.tiers = {"k1": "block", "k2": "throttle"}
        self.pinned: set[str] = set()

    def observe(self, event: object) -> None: ...

    def tier_of(self, account: str) -> str:
        return self.tiers.get(account, "normal")

    def set_tier(self, account: str, tier: str) -> None:
        self.tiers[account] = tier
        self.pinned.add(account)

    def accounts(self) -> list[object]:
        return []

    def rings(self) -> list[object]:
        return []


def test_a_reviewed_block_is_served_as_throttle_until_confirmed(tmp_path: Path) -> None:
    stub = Stub()
    reviewed = ReviewedMonitor(stub, ["block"], lambda: connect(tmp_path, shared=True))
    reviewed.start()
    assert reviewed.tier_of("k1") == "throttle" and reviewed.tier_of("k2") == "throttle"
    assert reviewed.pending("k1", "block", False) and not reviewed.pending("k2", "throttle", False)
    reviewed.set_tier("k1", "block")
    assert reviewed.tier_of("k1") == "block"
    assert not reviewed.pending("k1", "block", True)
    reviewed.close()


def test_a_confirmation_made_on_another_replica_is_read_from_the_store(tmp_path: Path) -> None:
    connection = connect(tmp_path)
    with connection:
        connection.execute(
            "INSERT INTO operator_actions (acted_at, operator, action, target, detail, event_id) "
            "VALUES ('t', 'otto', 'set_tier', 'k1', ?, 'event:x')",
            (json.dumps({"tier": "block"}),),
        )
    reviewed = ReviewedMonitor(Stub(), ["block"], lambda: connect(tmp_path, shared=True))
    reviewed.start()
    assert reviewed.tier_of("k1") == "block"
    reviewed.close()


def test_the_policy_names_the_reviewed_tiers(tmp_path: Path) -> None:
    policy = tmp_path / "policy.toml"
    policy.write_text('[review]\ntiers = ["block"]\n')
    assert load_policy(policy).review == ("block",)
    assert load_policy(None).review == ()
    policy.write_text('[review]\ntiers = ["normal"]\n')
    with pytest.raises(ConfigError, match="not a tier above normal"):
        load_policy(policy)
