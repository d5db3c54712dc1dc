"""The simulator drives the real gateway; the evaluation scores detectors on its traffic."""

from __future__ import annotations

import math

from distillguard.experiments.evaluate import (
    DetectorRun,
    PradaBaseline,
    RateBaseline,
    fit_risk_model,
    metrics,
    replay_monitor,
    ring_ari,
)
from distillguard.experiments.population import Population, Truth
from distillguard.experiments.simulate import Simulation, simulate
from distillguard.experiments.sources import BENIGN_SOURCES, HARVEST_SOURCES, PromptSources
from distillguard.monitor.monitor import Monitor


def test_the_fleet_has_every_kind_and_every_request_reached_the_gateway(
    fitting_simulation: Simulation,
) -> None:
    kinds = {truth.kind for truth in fitting_simulation.truth.values()}
    assert kinds == {"casual", "power", "developer", "batch", "fast", "slow", "ring", "mixed"}
    assert set(fitting_simulation.statuses) == {200}
    assert len(fitting_simulation.events) == sum(fitting_simulation.statuses.values())
    assert {e.account for e in fitting_simulation.events} == set(fitting_simulation.truth)
    times = [e.time for e in fitting_simulation.events]
    assert times == sorted(times)
    slow = [a for a, t in fitting_simulation.truth.items() if t.kind == "slow"]
    assert all(sum(e.account == a for e in fitting_simulation.events) == 1500 for a in slow)


def test_ring_accounts_stay_under_their_limits(fitting_simulation: Simulation) -> None:
    ring = {a for a, t in fitting_simulation.truth.items() if t.kind == "ring"}
    assert ring and not ring & set(fitting_simulation.refused)


def test_the_request_path_cost_is_measured(fitting_simulation: Simulation) -> None:
    assert 0 < fitting_simulation.request_path_ms < 1.0


def test_a_model_fitted_on_one_fold_finds_harvesters_on_the_other(
    fitting_simulation: Simulation, held_out_simulation: Simulation
) -> None:
    model = fit_risk_model([fitting_simulation], description="test")
    assert model.flag >= 0.5
    run = replay_monitor(model, held_out_simulation.events)
    found = metrics(run, held_out_simulation.truth)
    assert found.tpr >= 0.9
    assert found.false_positives <= 1
    assert found.median_queries_to_flag <= 300
    assert found.ring_ari >= 0.8
    for baseline in (RateBaseline(), PradaBaseline()):
        fitted = baseline.fit([fitting_simulation])
        other = metrics(fitted.replay(held_out_simulation.events), held_out_simulation.truth)
        assert other.tpr < found.tpr


def test_a_live_monitor_throttles_and_blocks_harvesters_through_the_gateway(
    prompt_sources: PromptSources, fitting_simulation: Simulation
) -> None:
    model = fit_risk_model([fitting_simulation]).with_thresholds(block_min_requests=60)
    benign, harvest = prompt_sources.select(BENIGN_SOURCES, HARVEST_SOURCES, fold=1)
    population = Population(benign=20, fast=2, slow=0, rings=0, mixed=0, days=1.0)
    monitor = Monitor(model)
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
    }
    run = DetectorRun({"b1": 30, "h1": 100, "r1": 20, "r2": 40}, [["r1", "r2"]])
    found = metrics(run, truth)
    assert found.tpr == 0.75
    assert found.fpr == 0.5
    assert found.median_queries_to_flag == 70.0  # 20, 40, 100, never
    assert found.ring_ari == 1.0
    assert math.isinf(found.by_kind["fast"]["max_queries_to_flag"])
    assert ring_ari([], truth) == 0.0
