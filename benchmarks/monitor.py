"""Harvest monitor: detection quality against three baselines, generalization, and cost.

Each protocol fits on simulations of one set of prompt sources, distiller templates and proxy
layout, and reports on simulations of another, with other seeds:

- split:     fit on fold 0 of every source (by prompt hash), template fold 0, fixed subnets;
             report on fold 1, template fold 1, rotating residential proxies.
- swap:      fit on Open-Assistant (benign) + GSM8K (harvest), templates 0, fixed subnets;
             report on awesome-chatgpt-prompts + self-instruct, templates 1, every account on
             its own /24.
- swap-back: the other way round; report with the harvest riding honest users' NATs.

Every fleet mixes honest users and look-alikes (campuses and carrier NATs, enterprise proxies,
CI and evaluation harnesses, batch jobs, honest resellers) with harvesting campaigns (fast,
slow, rings, mixed, stealth, a 1,000-account hydra cluster, routers, sign-up bursts); of each
harvesting shape, half the campaigns send raw prompts (no distiller template). The monitor
(request, risk and link models, ring threshold), a rate threshold, PRADA and the distribution
(MMD) detector are fitted on the same fitting simulations to at most 0.25% benign flags, then
scored on the same held-out traffic. Leave-one-behaviour-out refits the monitor without one
harvesting shape and reports that shape (amid the honest fleet) on the held-out simulations
of the split protocol (`--lobo-protocols` for more). Every simulation drives the real gateway
in-process (distillguard.experiments.simulate).

Cost: the time the gateway's request path spends handing an event to a real, threaded monitor
(and reading the account's tier), and how many events per second the monitor processes.

    .venv/bin/python benchmarks/monitor.py [--seeds 1] [--json] [--write-model PATH]
        [--protocols split,swap,swap-back] [--lobo-protocols split] [--quick]

The full run is long on 2 cores (each protocol simulates about 345,000 requests and replays
them several times); `--protocols` runs a subset, and its JSON carries the same keys.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from _common import data_dir, print_table
from distillguard.experiments.baselines import DistributionBaseline, PradaBaseline, RateBaseline
from distillguard.experiments.evaluate import DetectorRun, group_ari, replay_monitor
from distillguard.experiments.fitting import calibrate_rings, fit_monitor, prompt_cache, trace
from distillguard.experiments.population import NAT_KINDS, Population, Truth
from distillguard.experiments.simulate import Simulation, simulate
from distillguard.experiments.sources import BENIGN_SOURCES, HARVEST_SOURCES, PromptSources
from distillguard.monitor.model import RiskModel
from distillguard.monitor.monitor import Monitor
from distillguard.monitor.text import PromptFeatures

Spec = tuple[tuple[str, ...], tuple[str, ...], int | None, int, str]
PROTOCOLS: dict[str, tuple[Spec, Spec]] = {
    # name: ((benign, harvest, prompt fold, template fold, proxy layout) to fit, (...) to report)
    "split": (
        (BENIGN_SOURCES, HARVEST_SOURCES, 0, 0, "subnets"),
        (BENIGN_SOURCES, HARVEST_SOURCES, 1, 1, "rotating"),
    ),
    "swap": (
        (("open-assistant",), ("gsm8k",), None, 0, "subnets"),
        (("awesome-chatgpt",), ("self-instruct",), None, 1, "spread"),
    ),
    "swap-back": (
        (("awesome-chatgpt",), ("self-instruct",), None, 1, "subnets"),
        (("open-assistant",), ("gsm8k",), None, 0, "shared-nat"),
    ),
}
KINDS = ("fast", "slow", "ring", "mixed")  # the shapes issue 5's targets are about
RAW_KINDS = ("fast", "slow", "ring", "mixed", "hydra")  # issue 18's named shapes, raw
SHAPES = ("fast", "slow", "ring", "mixed", "stealth", "hydra", "router", "burst")
BENIGN_KINDS = (
    "casual",
    "power",
    "developer",
    "batch",
    "campus",
    "carrier",
    "enterprise",
    "eval",
    "reseller",
)
HYDRA_WITHIN = 50  # hydra accounts must be flagged within this many of their own requests
FPR_TARGET = 0.0025
QUICK = Population(  # --quick: a fleet a third the size, for trying things out
    benign=200,
    fast=4,
    slow=4,
    mixed=4,
    stealth=8,
    rings=2,
    ring_size=40,
    hydra=1,
    hydra_size=300,
    routers=4,
    bursts=1,
    burst_size=20,
    campuses=2,
    campus_size=80,
    carriers=1,
    carrier_size=100,
    enterprises=1,
    enterprise_size=20,
    eval_harnesses=4,
    resellers=2,
    raw_share=0.5,
    slow_budget=600,
)
POPULATION = Population(
    benign=600,
    stealth=16,
    rings=2,
    hydra=1,
    hydra_size=1000,
    routers=6,
    bursts=1,
    burst_size=40,
    campuses=3,
    campus_size=150,
    carriers=1,
    carrier_size=250,
    enterprises=2,
    enterprise_size=25,
    eval_harnesses=6,
    resellers=3,
    raw_share=0.5,
)


def run_simulation(
    sources: PromptSources, spec: Spec, seed: int, population: Population
) -> Simulation:
    benign_names, harvest_names, prompt_fold, template_fold, layout = spec
    benign, harvest = sources.select(benign_names, harvest_names, fold=prompt_fold)
    fleet = replace(population, network=layout)
    return simulate(benign, harvest, seed=seed, population=fleet, fold=template_fold)


def _finite(value: float) -> float | None:
    return None if math.isinf(value) or math.isnan(value) else value


def _rate(flags: list[bool]) -> float | None:
    return sum(flags) / len(flags) if flags else None


def figures(runs: list[tuple[DetectorRun, Simulation]]) -> dict[str, Any]:
    """A detector's figures pooled over held-out simulations."""

    def accounts(chosen: Any) -> list[tuple[DetectorRun, str, Truth]]:
        return [
            (run, account, truth)
            for run, simulation in runs
            for account, truth in simulation.truth.items()
            if chosen(truth)
        ]

    def flagged(chosen: Any, within: float = math.inf) -> list[bool]:
        return [
            a in run.flagged_at and run.flagged_at[a] <= within for run, a, _ in accounts(chosen)
        ]

    benign = flagged(lambda t: not t.harvester)
    templated = accounts(lambda t: t.kind in KINDS and not t.raw)
    queries = [float(run.flagged_at.get(a, math.inf)) for run, a, _ in templated]
    result: dict[str, Any] = {
        "tpr": _rate(flagged(lambda t: t.kind in KINDS and not t.raw)),
        "tpr_raw": _rate(flagged(lambda t: t.kind in RAW_KINDS and t.raw)),
        "fpr": _rate(benign),
        "false_positives": sum(benign),
        "benign_accounts": len(benign),
        "harvester_accounts": len(accounts(lambda t: t.harvester)),
        "median_queries_to_flag": _finite(statistics.median(queries)) if queries else None,
        "nat_fpr": _rate(flagged(lambda t: t.kind in NAT_KINDS)),
        "nat_accounts": len(flagged(lambda t: t.kind in NAT_KINDS)),
        "hydra_tpr": _rate(flagged(lambda t: t.kind == "hydra", HYDRA_WITHIN)),
        "stealth_tpr": _rate(flagged(lambda t: t.kind == "stealth" and t.raw)),
    }
    groupings: tuple[tuple[str, Callable[[Truth], bool]], ...] = (
        ("ring_ari", lambda t: t.kind == "ring" and not t.raw),
        ("ring_ari_raw", lambda t: t.kind == "ring" and t.raw),
        ("hydra_ari", lambda t: t.kind == "hydra"),
    )
    for name, chosen in groupings:
        scores = [
            group_ari(run.groups, simulation.truth, chosen)
            for run, simulation in runs
            if any(chosen(t) for t in simulation.truth.values())
        ]
        result[name] = statistics.mean(scores) if scores else None
        result[f"{name}_min"] = min(scores) if scores else None
    for kind in SHAPES:
        everyone = _rate(flagged(lambda t, k=kind: t.kind == k))
        if everyone is not None:
            result.setdefault(f"{kind}_tpr", everyone)  # stealth_tpr, hydra_tpr: set above
        for raw in (False, True):
            rate = _rate(flagged(lambda t, k=kind, r=raw: t.kind == k and t.raw == r))
            if rate is not None:
                result[f"{kind}_{'raw' if raw else 'templated'}_tpr"] = rate
        kind_queries = [
            float(run.flagged_at.get(a, math.inf))
            for run, a, _ in accounts(lambda t, k=kind: t.kind == k)
        ]
        if kind_queries:
            result[f"{kind}_median_queries_to_flag"] = _finite(statistics.median(kind_queries))
            result[f"{kind}_max_queries_to_flag"] = _finite(max(kind_queries))
    for kind in BENIGN_KINDS:
        result[f"{kind}_fpr"] = _rate(flagged(lambda t, k=kind: t.kind == k))
    return result


def nat_addresses(simulations: list[Simulation]) -> int:
    """Distinct client addresses the honest NAT accounts used."""
    found: set[tuple[int, str]] = set()
    for number, simulation in enumerate(simulations):
        nat = {a for a, t in simulation.truth.items() if t.kind in NAT_KINDS}
        found |= {(number, e.address) for e in simulation.events if e.account in nat}
    return len(found)


def leave_one_out(
    traces: list[Any],
    full: RiskModel,
    held_out: list[tuple[Simulation, list[PromptFeatures]]],
    log: Callable[[str], None],
) -> dict[str, float]:
    """TPR of each shape when the monitor was fitted without it (ring threshold kept from the
    full fit), reported amid the honest accounts of the held-out simulations."""
    result: dict[str, float] = {}
    for shape in SHAPES:
        model = fit_monitor(traces, fpr_target=FPR_TARGET, exclude_kinds=(shape,))
        model = model.with_thresholds(ring_flag=full.ring_flag)
        flags: list[bool] = []
        for simulation, features in held_out:
            keep = [
                i
                for i, e in enumerate(simulation.events)
                if not simulation.truth[e.account].harvester
                or simulation.truth[e.account].kind == shape
            ]
            events = [simulation.events[i] for i in keep]
            run = replay_monitor(model, events, features=[features[i] for i in keep])
            flags += [a in run.flagged_at for a, t in simulation.truth.items() if t.kind == shape]
        if flags:
            result[shape] = sum(flags) / len(flags)
            log(f"leave-one-out {shape}: tpr {result[shape]:.3f}")
    return result


def request_path_cost(sources: PromptSources, model: RiskModel) -> dict[str, float]:
    """A real threaded monitor behind the gateway, on one small simulated fleet: the request
    path's time per event (the identity hashing included), and the monitor's lag."""
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


def run_protocol(
    sources: PromptSources,
    name: str,
    number: int,
    args: argparse.Namespace,
    log: Callable[[str], None],
) -> dict[str, Any]:
    fit_spec, report_spec = PROTOCOLS[name]
    population = QUICK if args.quick else replace(POPULATION, benign=args.benign)
    started = time.perf_counter()
    fitting = [
        run_simulation(sources, fit_spec, 1000 * (number + 1) + s, population)
        for s in range(args.seeds)
    ]
    held_out = [
        run_simulation(sources, report_spec, 1000 * (number + 1) + 500 + s, population)
        for s in range(args.seeds)
    ]
    log(
        f"{name}: simulated {sum(len(s.events) for s in fitting + held_out)} requests "
        f"in {time.perf_counter() - started:.0f} s"
    )
    fit_features = [prompt_cache(s.events) for s in fitting]
    traces = [trace(s, f) for s, f in zip(fitting, fit_features, strict=True)]
    model = fit_monitor(traces, fpr_target=FPR_TARGET, description=f"{name} fit")
    model = calibrate_rings(model, fitting, fit_features)
    rate = RateBaseline().fit(fitting, FPR_TARGET)
    prada = PradaBaseline().fit(fitting, FPR_TARGET)
    distribution = DistributionBaseline().fit(traces, FPR_TARGET)
    runs: dict[str, list[tuple[DetectorRun, Simulation]]] = {
        "monitor": [],
        "rate_threshold": [],
        "prada": [],
        "distribution": [],
    }
    speeds, report_features = [], []
    for simulation in held_out:
        features = prompt_cache(simulation.events)
        report_features.append((simulation, features))
        monitor_run = replay_monitor(model, simulation.events, truth=simulation.truth)
        # speed: features computed in the replay, as in production (not from the cache)
        speeds.append(len(simulation.events) / monitor_run.seconds)
        runs["monitor"].append((monitor_run, simulation))
        runs["rate_threshold"].append((rate.replay(simulation.events), simulation))
        runs["prada"].append((prada.replay(simulation.events), simulation))
        if monitor_run.trace is None:
            raise RuntimeError("the replay kept no trace")
        runs["distribution"].append((distribution.replay(monitor_run.trace), simulation))
    log(f"{name}: fitted and replayed in {time.perf_counter() - started:.0f} s")
    wanted = args.lobo and name in args.lobo_protocols.split(",")
    lobo = leave_one_out(traces, model, report_features, log) if wanted else {}
    log(f"{name}: done in {time.perf_counter() - started:.0f} s")
    return {
        "model": model,
        "runs": runs,
        "speeds": speeds,
        "lobo": lobo,
        "layout": report_spec[4],
        "held_out": held_out,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=1, help="simulations per fold")
    parser.add_argument("--benign", type=int, default=600, help="benign users per simulation")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--protocols", default=",".join(PROTOCOLS))
    parser.add_argument("--no-lobo", dest="lobo", action="store_false", help="skip leave-one-out")
    parser.add_argument(
        "--lobo-protocols",
        default="split",
        help="protocols that also run leave-one-behaviour-out (8 refits each; comma-separated)",
    )
    parser.add_argument("--quick", action="store_true", help="smaller fleets (not the figures)")
    parser.add_argument("--write-model", type=Path, help="write the split protocol's model here")
    parser.add_argument("--save", type=Path, help="also write the JSON object to this file")
    args = parser.parse_args()
    logging.getLogger("distillguard.monitor").setLevel(logging.ERROR)  # tier changes: thousands
    sources = PromptSources.from_dir(data_dir())

    def log(message: str) -> None:
        if not args.json:
            print(message, file=sys.stderr, flush=True)

    protocols = {
        name: run_protocol(sources, name, number, args, log)
        for number, name in enumerate(args.protocols.split(","))
    }
    pooled: dict[str, list[tuple[DetectorRun, Simulation]]] = {}
    for result in protocols.values():
        for detector, found in result["runs"].items():
            pooled.setdefault(detector, []).extend(found)
    overall = {detector: figures(found) for detector, found in pooled.items()}
    split_model = protocols["split"]["model"] if "split" in protocols else None
    cost = request_path_cost(sources, split_model or RiskModel.load())
    lobo: dict[str, list[float]] = {}
    for result in protocols.values():
        for shape, rate in result["lobo"].items():
            lobo.setdefault(shape, []).append(rate)
    lobo_mean = {shape: statistics.mean(rates) for shape, rates in lobo.items()}
    held_out = [s for result in protocols.values() for s in result["held_out"]]
    report: dict[str, Any] = dict(overall["monitor"])
    report |= {
        "lobo_tpr_min": min(lobo_mean.values()) if lobo_mean else None,
        "lobo": lobo_mean,
        "nat_addresses": nat_addresses(held_out),
        "request_path_ms": cost["request_path_ms"],
        "monitor_events_per_s": min(s for r in protocols.values() for s in r["speeds"]),
        "gateway_requests_per_s": cost["gateway_requests_per_s"],
        "monitor_lag_s": cost["monitor_lag_s"],
        "ring_requests_refused": sum(
            simulation.refused.get(account, 0)
            for simulation in held_out
            for account, truth in simulation.truth.items()
            if truth.kind == "ring"
        ),
        "baselines": {name: overall[name] for name in ("rate_threshold", "prada", "distribution")},
        "protocols": {
            name: {"layout": result["layout"]}
            | {detector: figures(found) for detector, found in result["runs"].items()}
            for name, result in protocols.items()
        },
        "seeds": args.seeds,
        "population": asdict(QUICK if args.quick else replace(POPULATION, benign=args.benign)),
        "fpr_target": FPR_TARGET,
    }
    if args.write_model is not None and split_model is not None:
        args.write_model.write_text(split_model.to_json())
    if args.save is not None:
        args.save.write_text(json.dumps(report, indent=2) + "\n")
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_report(report)
    return 0


def print_report(report: dict[str, Any]) -> None:
    def value(figure: Any) -> str:
        return "-" if figure is None else f"{figure:.3f}"

    names = (
        "tpr",
        "tpr_raw",
        "fpr",
        "nat_fpr",
        "hydra_tpr",
        "stealth_tpr",
        "ring_ari",
        "ring_ari_raw",
        "hydra_ari",
    )
    rows = [("all protocols, monitor", "  ".join(f"{n} {value(report[n])}" for n in names))]
    for detector, figures_ in report["baselines"].items():
        rows.append((detector, "  ".join(f"{n} {value(figures_[n])}" for n in names[:6])))
    for name, result in report["protocols"].items():
        monitor = result["monitor"]
        rows.append(
            (f"{name} ({result['layout']})", "  ".join(f"{n} {value(monitor[n])}" for n in names))
        )
    print_table("Held-out detection", rows)
    shapes = [
        (
            shape,
            f"tpr {value(report.get(f'{shape}_tpr'))}  templated "
            f"{value(report.get(f'{shape}_templated_tpr'))}  raw "
            f"{value(report.get(f'{shape}_raw_tpr'))}  leave-one-out "
            f"{value(report['lobo'].get(shape))}",
        )
        for shape in SHAPES
    ]
    print_table("Harvesting shapes (held out)", shapes)
    honest = [(kind, f"fpr {value(report.get(f'{kind}_fpr'))}") for kind in BENIGN_KINDS]
    print_table("Honest kinds (held out)", honest)
    print_table(
        "Cost",
        [
            ("request path per request", f"{report['request_path_ms'] * 1000:.2f} us"),
            ("monitor events/s (replay, 1 core)", f"{report['monitor_events_per_s']:,.0f}"),
            ("gateway requests/s, threaded monitor", f"{report['gateway_requests_per_s']:,.0f}"),
            ("monitor lag behind the gateway", f"{report['monitor_lag_s']:.2f} s"),
        ],
    )


if __name__ == "__main__":
    sys.exit(main())
