"""The monitor across replicas: every replica's events reach one leader, whose tiers reach
every replica; a new leader picks up what the old one left. Needs DISTILLGUARD_TEST_REDIS_URL.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterator

import pytest

from distillguard.monitor.inbox import EventQueue
from distillguard.monitor.monitor import Monitor, TierChange

from ..conftest import redis_url
from .test_monitor import eager_model, harvest

pytest.importorskip("redis")

import redis

from distillguard.monitor.shared import SharedMonitor


@pytest.fixture
def replicas() -> Iterator[Callable[..., SharedMonitor]]:
    url = redis_url()
    prefix = f"dg:test:{secrets.token_hex(4)}:mon:"
    made: list[SharedMonitor] = []

    def make(monitor: Monitor | None = None, lease: float = 5.0) -> SharedMonitor:
        local = monitor or Monitor(eager_model())
        made.append(SharedMonitor(local, url, prefix=prefix, refresh=0.0, lease=lease))
        return made[-1]

    yield make
    import redis

    client = redis.Redis.from_url(url)
    for key in client.scan_iter(match=prefix + "*"):
        client.delete(key)
    client.close()
    for replica in made:
        replica.close()


def test_one_leader_sees_every_replicas_events_and_all_replicas_get_its_tiers(
    replicas: Callable[..., SharedMonitor],
) -> None:
    first, second = replicas(), replicas()
    for index, item in enumerate(harvest(40)):  # one harvester, spread over two replicas
        (first if index % 2 else second).observe(item)
    first.step()  # first publishes and becomes the leader
    second.step()  # second publishes; it does not lead
    while first.step():
        pass
    assert first.leading and not second.leading
    assert first.monitor.accounts()[0].requests == 40
    second.step()
    assert first.tier_of("k1") == second.tier_of("k1") == "block"


def test_an_operator_pin_applies_on_every_replica_and_is_recorded(
    replicas: Callable[..., SharedMonitor],
) -> None:
    recorded: list[TierChange] = []
    leader = replicas(Monitor(eager_model(), on_tier_change=recorded.append))
    other = replicas()
    leader.step()
    other.set_tier("k9", "block")
    assert other.tier_of("k9") == "block"  # at once, on the replica that was asked
    leader.step()
    assert leader.tier_of("k9") == "block"
    assert [(change.account, change.tier, change.pinned) for change in recorded] == [
        ("k9", "block", True)
    ]
    reports = other.accounts()  # the leader's snapshot, read from Redis
    assert [(r.account, r.tier, r.pinned) for r in reports] == [("k9", "block", True)]


def test_a_new_leader_takes_over_what_the_old_one_left(
    replicas: Callable[..., SharedMonitor],
) -> None:
    old, new = replicas(lease=0.3), replicas(lease=0.3)
    assert old.step() == 0 and old.leading
    for item in harvest(15):
        new.observe(item)
    new.step()  # published
    assert old.step() == 15  # the old leader reads them ...
    old.leading = False  # ... and dies before it can renew (no close: a crash)
    for item in harvest(25, start=1000.0):
        new.observe(item)
    new.step()
    assert not new.leading  # the lease has not expired yet
    time.sleep(0.35)
    consumed = 0
    for _ in range(5):
        consumed += new.step()
    assert new.leading
    assert new.monitor.accounts()[0].requests == 25  # the new events, once each
    assert new.tier_of("k1") in ("throttle", "block")


def test_a_replica_that_cannot_publish_drops_the_oldest_events_and_counts_them() -> None:
    """Redis unreachable and the publisher behind: the outbox stays bounded."""
    replica = SharedMonitor(
        Monitor(eager_model()), "redis://127.0.0.1:1/0", outbox=EventQueue(limit=10)
    )
    for item in harvest(25):
        replica.observe(item)
    assert replica.dropped == 15  # the oldest, while nothing published them
    with pytest.raises(redis.RedisError):  # publishing fails first: the ten left are dropped
        replica.step()
    assert replica.dropped == 25
    replica.close()
