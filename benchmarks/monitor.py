"""Harvest monitor: detection quality against two baselines, generalization, and cost.

Each protocol fits on simulations of one set of prompt sources and distiller templates and
reports on simulations of another, with other seeds:

- split:     fit on fold 0 of every source (by prompt hash) and template fold 0;
             report on fold 1 and template fold 1.
- swap:      fit on Open-Assistant (benign) + GSM8K (harvest), templates 0;
             report on awesome-chatgpt-prompts + self-instruct, templates 1.
- swap-back: the other way round.

The monitor (risk model + rings), a rate threshold and PRADA are all fitted on the same fitting
simulations to at most 0.25% benign flags, then scored on the same held-out traffic. Every
simulation drives the real gateway in-process (distillguard.experiments.simulate).

Cost: the time the gateway's request path spends handing an event to a real, threaded monitor
(and reading the account's tier), and how many events per second the monitor processes.

    .venv/bin/python benchmarks/monitor.py [--seeds 3] [--json] [--write-model PATH]
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import statistics
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from _common import data_dir, print_table
from distillguard.experiments.evaluate import (
    DetectorRun,
    Metrics,
    PradaBaseline,
    RateBaseline,
    fit_risk_model,
    metrics,
    replay_monitor,
)
from distillguard.experiments.population import Population
from distillguard.experiments.simulate import Simulation, simulate
from distillguard.experiments.sources import BENIGN_SOURCES, HARVEST_SOURCES, PromptSources
from distillguard.monitor.model import RiskModel
from distillguard.monitor.monitor import Monitor

PROTOCOLS: dict[str, tuple[tuple[tuple[str, ...], tuple[str, ...], int | None, int], ...]] = {
    # name: ((benign, harvest, prompt fold, template fold) to fit, (...) to report)
    "split": ((BENIGN_SOURCES, HARVEST_SOURCES, 0, 0), (BENIGN_SOURCES, HARVEST_SOURCES, 1, 1)),
    "swap": (
        (("open-assistant",), ("gsm8k",), None, 0),
        (("awesome-chatgpt",), ("self-instruct",), None, 1),
    ),
    "swap-back": (
        (("awesome-chatgpt",), ("self-instruct",), None, 1),
        (("open-assistant",), ("gsm8k",), None, 0),
    ),
}
KINDS = ("fast", "slow", "ring", "mixed")  # the shapes the targets are about
STRESS = ("stealth",)  # reported on its own row: a harvester mimicking a person
FPR_TARGET = 0.0025


def run_simulations(
    sources: PromptSources,
    spec: tuple[tuple[str, ...], tuple[str, ...], int | None, int],
    seeds: list[int],
    population: Population,
) -> list[Simulation]:
    benign_names, harvest_names, prompt_fold, template_fold = spec
    benign, harvest = sources.select(benign_names, harvest_names, fold=prompt_fold)
    return [
        simulate(benign, harvest, seed=seed, population=population, fold=template_fold)
        for seed in seeds
    ]


def pooled(runs: list[tuple[DetectorRun, Simulation]]) -> dict[str, Any]:
    """Figures pooled over several held-out simulations."""
    per_run: list[Metrics] = [metrics(run, simulation.truth) for run, simulation in runs]
    harvest_queries: list[float] = []
    by_kind: dict[str, list[float]] = {kind: [] for kind in KINDS + STRESS}
    for run, simulation in runs:
        for account, truth in simulation.truth.items():
            if truth.harvester:
                queries = float(run.flagged_at.get(account, math.inf))
                by_kind[truth.kind].append(queries)
                if truth.kind in KINDS:
                    harvest_queries.append(queries)
    harvesters = len(harvest_queries)
    benign = sum(m.benign for m in per_run)
    flagged = sum(q < math.inf for q in harvest_queries)
    false_positives = sum(m.false_positives for m in per_run)
    result: dict[str, Any] = {
        "tpr": flagged / harvesters,
        "fpr": false_positives / benign,
        "false_positives": false_positives,
        "benign_accounts": benign,
        "harvester_accounts": harvesters,
        "median_queries_to_flag": _finite(statistics.median(harvest_queries)),
        "ring_ari": statistics.mean(m.ring_ari for m in per_run),
        "ring_ari_min": min(m.ring_ari for m in per_run),
    }
    for kind, kind_queries in by_kind.items():
        if kind_queries:
            flagged_kind = sum(q < math.inf for q in kind_queries)
            result[f"{kind}_tpr"] = flagged_kind / len(kind_queries)
            result[f"{kind}_median_queries_to_flag"] = _finite(statistics.median(kind_queries))
            result[f"{kind}_max_queries_to_flag"] = _finite(max(kind_queries))
    for kind in ("casual", "power", "developer", "batch"):
        accounts = [
            (run, a)
            for run, simulation in runs
            for a, t in simulation.truth.items()
            if t.kind == kind
        ]
        if accounts:
            result[f"{kind}_fpr"] = sum(a in run.flagged_at for run, a in accounts) / len(accounts)
    return result


def _finite(value: float) -> float | None:
    return None if math.isinf(value) or math.isnan(value) else value


def request_path_cost(sources: PromptSources, model: RiskModel) -> dict[str, float]:
    """A real threaded monitor behind the gateway, on one small simulated fleet: the request
    path's time per event, and the monitor's lag behind the gateway."""
    benign, harvest = sources.select(BENIGN_SOURCES, HARVEST_SOURCES)
    monitor = Monitor(model)
    monitor.start()
    started = time.perf_counter()
    simulation = simulate(benign, harvest, seed=7, population=Population.small(), hook=monitor)
    served = time.perf_counter() - started
    while monitor.processed < len(simulation.events):
        time.sleep(0.01)
    caught_up = time.perf_counter() - started
    monitor.close()
    return {
        "request_path_ms": simulation.request_path_ms,
        "gateway_requests_per_s": len(simulation.events) / served,
        "monitor_lag_s": caught_up - served,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=3, help="simulations per fold")
    parser.add_argument("--benign", type=int, default=600, help="benign accounts per simulation")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--protocols", default=",".join(PROTOCOLS))
    parser.add_argument(
        "--stealth", type=int, default=8, help="stealth harvesters per simulation (stress row)"
    )
    parser.add_argument("--write-model", type=Path, help="write the split protocol's model here")
    parser.add_argument("--save", type=Path, help="also write the JSON object to this file")
    args = parser.parse_args()
    logging.getLogger("distillguard.monitor").setLevel(logging.ERROR)  # tier changes: thousands
    sources = PromptSources.from_dir(data_dir())
    population = replace(Population(), benign=args.benign, stealth=args.stealth)

    def log(message: str) -> None:
        if not args.json:
            print(message, file=sys.stderr, flush=True)

    results: dict[str, dict[str, Any]] = {}
    detectors_out: dict[str, list[tuple[DetectorRun, Simulation]]] = {
        "monitor": [],
        "rate_threshold": [],
        "prada": [],
    }
    events_per_s: list[float] = []
    split_model: RiskModel | None = None
    for number, name in enumerate(args.protocols.split(",")):
        fit_spec, report_spec = PROTOCOLS[name]
        fit_seeds = [1000 * (number + 1) + s for s in range(args.seeds)]
        report_seeds = [1000 * (number + 1) + 500 + s for s in range(args.seeds)]
        started = time.perf_counter()
        fitting = run_simulations(sources, fit_spec, fit_seeds, population)
        held_out = run_simulations(sources, report_spec, report_seeds, population)
        log(
            f"{name}: simulated {sum(len(s.events) for s in fitting + held_out)} requests "
            f"in {time.perf_counter() - started:.0f} s"
        )
        model = fit_risk_model(fitting, fpr_target=FPR_TARGET, description=f"{name} fit")
        if name == "split":
            split_model = model
        rate = RateBaseline().fit(fitting, FPR_TARGET)
        prada = PradaBaseline().fit(fitting, FPR_TARGET)
        runs: dict[str, list[tuple[DetectorRun, Simulation]]] = {k: [] for k in detectors_out}
        for simulation in held_out:
            monitor_run = replay_monitor(model, simulation.events)
            events_per_s.append(len(simulation.events) / monitor_run.seconds)
            runs["monitor"].append((monitor_run, simulation))
            runs["rate_threshold"].append((rate.replay(simulation.events), simulation))
            runs["prada"].append((prada.replay(simulation.events), simulation))
        results[name] = {detector: pooled(found) for detector, found in runs.items()}
        for detector, found in runs.items():
            detectors_out[detector] += found
        log(f"{name}: done in {time.perf_counter() - started:.0f} s")
    overall = {detector: pooled(found) for detector, found in detectors_out.items()}
    cost = request_path_cost(sources, split_model or RiskModel.load())
    ring_refused = sum(
        simulation.refused.get(account, 0)
        for _, simulation in detectors_out["monitor"]
        for account, truth in simulation.truth.items()
        if truth.kind == "ring"
    )
    report: dict[str, Any] = dict(overall["monitor"])
    report |= {
        "request_path_ms": cost["request_path_ms"],
        "monitor_events_per_s": min(events_per_s),
        "gateway_requests_per_s": cost["gateway_requests_per_s"],
        "monitor_lag_s": cost["monitor_lag_s"],
        "ring_requests_refused": ring_refused,
        "baselines": {name: overall[name] for name in ("rate_threshold", "prada")},
        "protocols": results,
        "seeds": args.seeds,
        "population": asdict(population),
        "fpr_target": FPR_TARGET,
    }
    if args.write_model is not None and split_model is not None:
        args.write_model.write_text(split_model.to_json())
    if args.save is not None:
        args.save.write_text(json.dumps(report, indent=2) + "\n")
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    for name, by_detector in [("all protocols", overall), *list(results.items())]:
        rows = []
        for detector, figures in by_detector.items():
            kinds = " ".join(
                f"{k}={figures.get(f'{k}_tpr', 0):.2f}/"
                f"{_q(figures.get(f'{k}_median_queries_to_flag'))}"
                for k in KINDS + STRESS
            )
            rows.append(
                (
                    detector,
                    f"tpr {figures['tpr']:.3f}  fpr {figures['fpr']:.4f} "
                    f"({figures['false_positives']}/{figures['benign_accounts']})  "
                    f"median q {_q(figures['median_queries_to_flag'])}  "
                    f"slow max q {_q(figures.get('slow_max_queries_to_flag'))}  "
                    f"ring ARI {figures['ring_ari']:.3f}  | {kinds}",
                )
            )
        print_table(f"Held-out detection, {name} (kind=tpr/median queries)", rows)
    print_table(
        "Cost",
        [
            ("request path per request", f"{cost['request_path_ms'] * 1000:.2f} us"),
            ("monitor events/s (replay, 1 core)", f"{min(events_per_s):,.0f}"),
            (
                "gateway requests/s with the threaded monitor",
                f"{cost['gateway_requests_per_s']:,.0f}",
            ),
            ("monitor lag behind the gateway", f"{cost['monitor_lag_s']:.2f} s"),
            ("ring requests refused by limits", str(ring_refused)),
        ],
    )
    return 0


def _q(value: float | None) -> str:
    return "never" if value is None else f"{value:.0f}"


if __name__ == "__main__":
    sys.exit(main())
