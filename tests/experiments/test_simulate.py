"""The simulator drives the real gateway; the evaluation scores detectors on its traffic."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import replace

import numpy as np
import pytest

from distillguard.experiments.baselines import DistributionBaseline, PradaBaseline, RateBaseline
from distillguard.experiments.evaluate import DetectorRun, group_ari, metrics, replay_monitor
from distillguard.experiments.fitting import (
    Trace,
    calibrate_rings,
    fit_monitor,
    fit_request_model,
    trace,
)
from distillguard.experiments.population import Planner, Population, Truth
from distillguard.experiments.simulate import Simulation, simulate
from distillguard.experiments.sources import BENIGN_SOURCES, HARVEST_SOURCES, PromptSources
from distillguard.monitor.features import FEATURE_INDEX, FEATURES
from distillguard.monitor.model import RiskModel
from distillguard.monitor.monitor import Monitor
from distillguard.monitor.requests import RequestModel

HONEST = {"casual", "power", "developer", "batch", "campus", "carrier", "enterprise", "eval"}
SHAPES = {"fast", "slow", "ring", "mixed", "stealth", "hydra", "router", "burst"}


@pytest.fixture(scope="module")
def traced(fitting_simulation: Simulation) -> Trace:
    return trace(fitting_simulation)


def test_the_fleet_has_every_kind_and_every_request_reached_the_gateway(
    fitting_simulation: Simulation,
) -> None:
    kinds = {truth.kind for truth in fitting_simulation.truth.values()}
    assert kinds == HONEST | SHAPES | {"reseller"}
    assert set(fitting_simulation.statuses) == {200}
    assert len(fitting_simulation.events) == sum(fitting_simulation.statuses.values())
    assert {e.account for e in fitting_simulation.events} == set(fitting_simulation.truth)
    times = [e.time for e in fitting_simulation.events]
    assert times == sorted(times)
    slow = [a for a, t in fitting_simulation.truth.items() if t.kind == "slow"]
    assert all(sum(e.account == a for e in fitting_simulation.events) == 1500 for a in slow)


def test_every_event_carries_its_origin_and_its_accounts_signup(
    fitting_simulation: Simulation,
) -> None:
    events = fitting_simulation.events
    assert all(e.address and e.network and e.agent and e.header_fingerprint for e in events)
    assert all(e.created_at is not None for e in events)
    truth = fitting_simulation.truth
    orgs = {e.org for e in events if truth[e.account].kind == "enterprise"}
    assert len(orgs) == 1 and "" not in orgs  # one company's keys, its name a token
    programs = {e.signup_program for e in events if truth[e.account].kind == "campus"}
    assert "education" in programs
    campus = Counter(e.network for e in events if truth[e.account].kind == "campus")
    assert campus.most_common(1)[0][1] > 0.6 * campus.total()  # most from the campus /24


def plan(layout: str, seed: int = 3) -> Planner:
    benign = [f"How do I bake bread, take {i}?" for i in range(40)]
    harvest = [f"Problem {i}: a farmer has {i} sheep and buys {i + 3} more." for i in range(80)]
    planner = Planner(
        np.random.default_rng(seed),
        replace(Population.small(), network=layout),
        benign,
        harvest,
        fold=0,
    )
    planner.plan()
    return planner


def networks_of(planner: Planner, kind: str) -> set[str]:
    accounts = {a for a, t in planner.truth.items() if t.kind == kind}
    return {r.client.address.rsplit(".", 1)[0] for r in planner.requests if r.account in accounts}


def test_proxy_layouts_decide_where_campaigns_come_from() -> None:
    assert len(networks_of(plan("subnets"), "ring")) <= 5
    assert len(networks_of(plan("rotating"), "ring")) > 100
    assert len(networks_of(plan("spread"), "ring")) >= 12
    riding = plan("shared-nat")
    nats = {address for nat in riding.pool.nats for address in nat}
    ring = {a for a, t in riding.truth.items() if t.kind == "ring"}
    assert {r.client.address for r in riding.requests if r.account in ring} <= nats
    with pytest.raises(ValueError, match="layout"):
        plan("carrier-pigeons")


def test_raw_campaigns_send_the_harvest_prompts_bare() -> None:
    planner = plan("subnets")
    raw = {a for a, t in planner.truth.items() if t.harvester and t.raw}
    templated = {a for a, t in planner.truth.items() if t.kind == "fast" and not t.raw}
    assert raw and templated
    harvest = set(planner.harvest)
    for request in planner.requests:
        text = request.body["messages"][-1]["content"]
        if request.account in templated:
            assert text not in harvest  # wrapped in a distiller template
        elif request.account in raw and planner.truth[request.account].kind in ("fast", "slow"):
            assert text in harvest


def test_ring_accounts_stay_under_their_limits(fitting_simulation: Simulation) -> None:
    ring = {a for a, t in fitting_simulation.truth.items() if t.kind == "ring"}
    assert ring and not ring & set(fitting_simulation.refused)


def test_the_request_path_cost_is_measured(fitting_simulation: Simulation) -> None:
    assert 0 < fitting_simulation.request_path_ms < 1.0


def test_a_monitor_fitted_on_one_fold_finds_harvesters_on_the_other(
    fitting_simulation: Simulation, held_out_simulation: Simulation, traced: Trace
) -> None:
    model = calibrate_rings(fit_monitor([traced], description="test"), [fitting_simulation])
    assert model.flag >= 0.5 and model.ring_threshold <= model.flag
    assert any(w > 0 for w in model.links.weights) and any(w > 0 for w in model.requests.weights)
    run = replay_monitor(model, held_out_simulation.events)
    found = metrics(run, held_out_simulation.truth)
    # a fleet this small fits a weak link model: rings and hydras are benchmarks/monitor.py's
    for kind in ("slow", "ring", "mixed", "burst"):
        assert found.by_kind[kind]["flagged"] == 1.0, kind
    assert found.false_positives <= 1
    for baseline in (RateBaseline(), PradaBaseline()):
        fitted = baseline.fit([fitting_simulation])
        other = metrics(fitted.replay(held_out_simulation.events), held_out_simulation.truth)
        assert other.tpr < found.tpr


def test_a_ring_lifts_only_members_as_odd_as_the_allowed_few_honest_accounts(
    traced: Trace,
) -> None:
    """Regression: the member floor was the honest accounts' 98th percentile, capped at
    "watch". Honest resellers (one key, many users, round the clock) sat at watch on their own,
    linked to harvesting routers by shape and hours, and were blocked with the routers' ring.
    The floor is now the flag threshold's quantile of honest peaks, without its margin."""
    model = fit_monitor([traced], fpr_target=0.0025)
    assert model.flag > 0.5
    quantile = 1.0 / (1.0 + math.exp(-(math.log(model.flag / (1.0 - model.flag)) - 1.0)))
    assert model.ring_member_floor == pytest.approx(quantile, rel=1e-9)
    assert model.ring_member_floor > model.watch


def test_the_distribution_baseline_reads_the_shift_with_a_benign_threshold(
    traced: Trace, held_out_simulation: Simulation
) -> None:
    baseline = DistributionBaseline().fit([traced])
    assert math.isfinite(baseline.threshold)
    run = replay_monitor(
        fit_monitor([traced]), held_out_simulation.events, truth=held_out_simulation.truth
    )
    assert run.trace is not None
    found = metrics(baseline.replay(run.trace), held_out_simulation.truth)
    assert found.false_positives <= 2
    column = FEATURE_INDEX["distribution_shift"]
    assert all(row[column] <= baseline.threshold for row in run.trace.rows[:10])


def test_leaving_every_pure_shape_out_leaves_the_request_model_nothing(traced: Trace) -> None:
    pure = ("fast", "slow", "ring", "stealth", "burst")
    assert fit_request_model([traced], exclude_kinds=pure) == RequestModel.never()
    assert fit_request_model([traced]) != RequestModel.never()
    without = fit_monitor([traced], exclude_kinds=("hydra",))
    assert len(without.weights) == len(FEATURES)


def rate_model() -> RiskModel:
    """Flags an account sending 30 times the fleet's median rate; blocks it at 60 requests."""
    names = tuple(signal.name for signal in FEATURES)
    return RiskModel(
        features=names,
        weights=tuple(2.0 if name == "rate_vs_fleet" else 0.0 for name in names),
        bias=-8.0,
        means=tuple(0.0 for _ in names),
        scales=tuple(1.0 for _ in names),
        watch=0.5,
        flag=0.6,
        block=0.6,
        min_requests=20,
        block_min_requests=60,
    )


def test_a_live_monitor_throttles_and_blocks_harvesters_through_the_gateway(
    prompt_sources: PromptSources,
) -> None:
    benign, harvest = prompt_sources.select(BENIGN_SOURCES, HARVEST_SOURCES, fold=1)
    # no batch jobs: they run as fast as harvesters, and this model reads nothing but rate
    population = Population(benign=20, batch_share=0.0, fast=2, slow=0, rings=0, mixed=0, days=1.0)
    monitor = Monitor(rate_model())
    simulation = simulate(benign, harvest, seed=5, population=population, monitor=monitor)
    fast = [a for a, t in simulation.truth.items() if t.kind == "fast"]
    assert set(fast) <= set(simulation.blocked)  # each stopped by a 403
    assert simulation.statuses.get(403, 0) == len(fast)
    benign_accounts = [a for a, t in simulation.truth.items() if not t.harvester]
    assert not set(benign_accounts) & set(simulation.blocked)


def test_metrics_count_flags_queries_and_groups() -> None:
    truth = {
        "b1": Truth("casual", None),
        "b2": Truth("casual", None),
        "h1": Truth("fast", "c1"),
        "h2": Truth("fast", "c2"),
        "r1": Truth("ring", "ring-0"),
        "r2": Truth("ring", "ring-0"),
        "y1": Truth("hydra", "hydra-0", raw=True),
        "y2": Truth("hydra", "hydra-0", raw=True),
    }
    flagged = {"b1": 30, "h1": 100, "r1": 20, "r2": 40, "y1": 50}
    run = DetectorRun(flagged, [["r1", "r2"], ["y1", "y2"]])
    found = metrics(run, truth)
    assert found.tpr == 4 / 6
    assert found.fpr == 0.5
    assert found.median_queries_to_flag == 75.0  # 20, 40, 50, 100, never, never
    assert found.ring_ari == 1.0
    assert group_ari(run.groups, truth, lambda t: t.kind == "hydra") == 1.0
    assert group_ari([["r1", "y1"]], truth, lambda t: t.kind == "hydra") < 0.5
    assert math.isinf(found.by_kind["fast"]["max_queries_to_flag"])
    assert group_ari([], truth, lambda t: t.kind == "ring") == 0.0
