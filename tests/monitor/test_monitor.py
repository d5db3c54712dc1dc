from __future__ import annotations

import time

from distillguard.monitor.features import FEATURES
from distillguard.monitor.links import LINKS, LinkModel
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


def reasoning_model(**changes: object) -> RiskModel:
    """Scores on reasoning requests alone; a ring needs less than an account to be acted on."""
    names = tuple(signal.name for signal in FEATURES)
    fields: dict[str, object] = {
        "features": names,
        "weights": tuple(8.0 if name == "reasoning" else 0.0 for name in names),
        "bias": -4.0,
        "means": tuple(0.0 for _ in names),
        "scales": tuple(1.0 for _ in names),
        "watch": 0.3,
        "flag": 0.6,
        "block": 0.99,
        "min_requests": 10,
        "block_min_requests": 10_000,
        "links": LinkModel(
            tuple(2.0 if link.name == "network" else 0.0 for link in LINKS), -1.5, 0.5
        ),
        "ring_member_floor": 0.3,
        "ring_flag": 0.35,
    }
    return RiskModel(**(fields | changes))  # type: ignore[arg-type]


def nat_traffic(reasoning_every: dict[str, int], count: int = 60) -> list:  # type: ignore[type-arg]
    """Accounts behind one NAT; account -> every how many requests asks for reasoning (0: never)."""
    items = []
    for index in range(count):
        for number, (account, every) in enumerate(reasoning_every.items()):
            text = f"question {index} from {account}"
            if every and index % every == 0:
                text = "Think step by step: " + text
            items.append(
                event(100.0 * index + number, text, account=account, network="nat", address="a")
            )
    return items


def test_a_ring_flags_its_core_and_not_the_honest_accounts_behind_the_same_nat() -> None:
    harvesters = {f"h{i}": 2 for i in range(5)}  # half their prompts: not enough alone
    honest = {f"p{i}": 0 for i in range(5)}
    monitor = Monitor(reasoning_model(), ring_every=10**9)
    for item in nat_traffic(harvesters | honest):
        monitor.process(item)
    assert all(monitor.tier_of(a) == "watch" for a in harvesters)  # on their own
    monitor.regroup()
    (ring,) = monitor.rings()
    assert set(ring.accounts) == set(harvesters)
    assert ring.reasons[0].startswith("share a /24 or /64 network")
    assert all(monitor.tier_of(a) == "throttle" for a in harvesters)
    assert all(monitor.tier_of(a) == "normal" for a in honest)


def test_a_group_that_is_mostly_honest_is_no_ring() -> None:
    harvesters = {f"h{i}": 2 for i in range(3)}
    honest = {f"p{i}": 0 for i in range(7)}
    monitor = Monitor(reasoning_model(), ring_every=10**9)
    for item in nat_traffic(harvesters | honest):
        monitor.process(item)
    monitor.regroup()
    assert monitor.rings() == []
    assert all(monitor.tier_of(a) == "watch" for a in harvesters)


def test_events_without_origin_or_metadata_still_score() -> None:
    monitor = Monitor(eager_model())
    for item in harvest(20):
        assert item.network == "" and item.created_at is None
        monitor.process(item)
    monitor.regroup()
    assert monitor.tier_of("k1") == "throttle"


def test_an_account_that_went_quiet_forgets_its_identity_tokens_too() -> None:
    """Retention must not depend on the account sending again: a sweep reaches every account."""
    day = 86_400.0
    monitor = Monitor(eager_model(), identity_retention=day)
    monitor.process(event(0.0, "hello", account="quiet", address="addr-q", network="net-q"))
    for hour in range(1, 30):  # another account keeps the clock moving for over a day
        monitor.process(event(3600.0 * hour, f"q {hour}", account="busy", address="addr-b"))
        monitor.regroup()
    quiet = monitor._accounts["quiet"].state
    assert not quiet.addresses.counts and not quiet.networks.counts
    assert set(monitor._accounts["busy"].state.addresses.counts) == {"addr-b"}
