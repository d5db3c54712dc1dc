from __future__ import annotations

import time

from distillguard.monitor.features import FEATURES
from distillguard.monitor.model import RiskModel
from distillguard.monitor.monitor import Monitor, TierChange

from .test_features import event


def eager_model() -> RiskModel:
    """Scores on reasoning requests alone; acts after 10 requests, blocks after 30."""
    names = tuple(signal.name for signal in FEATURES)
    return RiskModel(
        features=names,
        weights=tuple(8.0 if name == "reasoning" else 0.0 for name in names),
        bias=-4.0,
        means=tuple(0.0 for _ in names),
        scales=tuple(1.0 for _ in names),
        watch=0.3,
        flag=0.6,
        block=0.9,
        min_requests=10,
        block_min_requests=30,
    )


def harvest(count: int, start: float = 0.0) -> list:  # type: ignore[type-arg]
    return [event(start + 30.0 * i, f"Think step by step about problem {i}.") for i in range(count)]


def test_a_harvester_climbs_the_tiers_and_each_change_is_reported() -> None:
    changes: list[TierChange] = []
    monitor = Monitor(eager_model(), on_tier_change=changes.append)
    for item in harvest(40):
        monitor.process(item)
    assert monitor.tier_of("k1") == "block"
    assert [c.tier for c in changes][-1] == "block"
    assert all(c.reasons for c in changes)
    report = monitor.accounts()[0]
    assert report.flagged_at is not None and report.flagged_at >= 10
    assert report.tier == "block" and not report.pinned


def test_a_benign_account_stays_normal() -> None:
    monitor = Monitor(eager_model())
    for i in range(50):
        monitor.process(event(100.0 * i, f"What is a good name for a cat, number {i}?", turns=2))
    assert monitor.tier_of("k1") == "normal"
    assert monitor.tier_of("never-seen") == "normal"


def test_an_operator_pin_holds_against_the_score() -> None:
    monitor = Monitor(eager_model())
    for item in harvest(40):
        monitor.process(item)
    monitor.set_tier("k1", "normal")  # a reviewed false alarm
    for item in harvest(20, start=10_000.0):
        monitor.process(item)
    assert monitor.tier_of("k1") == "normal"
    assert monitor.accounts()[0].pinned


def test_restored_tiers_survive_a_restart_and_can_still_rise() -> None:
    monitor = Monitor(eager_model())
    monitor.restore({"k1": ("watch", False), "k2": ("block", True)})
    assert monitor.tier_of("k2") == "block"
    for item in harvest(20):
        monitor.process(item)
    assert monitor.tier_of("k1") == "throttle"
    restored = {report.account: report for report in monitor.accounts()}
    assert restored["k1"].tenant == "t1"
    assert restored["k2"].pinned and not restored["k1"].pinned


def test_the_background_thread_processes_what_the_gateway_hands_over() -> None:
    monitor = Monitor(eager_model())
    monitor.start()
    try:
        for item in harvest(25):
            monitor.observe(item)
        deadline = time.monotonic() + 10
        while monitor.processed < 25 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert monitor.processed == 25
        assert monitor.tier_of("k1") == "throttle"
    finally:
        monitor.close()


def test_drain_processes_the_queue_in_the_calling_thread() -> None:
    monitor = Monitor(eager_model())
    for item in harvest(12):
        monitor.observe(item)
    assert monitor.drain() == 12
    assert monitor.processed == 12
