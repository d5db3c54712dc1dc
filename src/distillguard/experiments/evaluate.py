"""Scoring detectors on simulated traffic.

A detector replays a simulation's events in order and says, for each account, after how many
of its requests it first flagged it (or never), and which accounts it grouped together.
Metrics follow from the ground truth:

- tpr: harvester accounts flagged; fpr: benign accounts flagged (ever, over the whole run);
- queries to flag: a harvester's requests when first flagged; the median counts a harvester
  never flagged as infinitely many queries;
- ring_ari: adjusted Rand index between the detector's groups and the true campaigns of one
  kind of many-account campaign (rings by default), over every account except those of other
  many-account campaigns (an account in no group is a group of one).

Fitting is in `experiments.fitting`, the baselines in `experiments.baselines`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from distillguard.experiments.fitting import Trace, prompt_cache, replay
from distillguard.experiments.population import Truth
from distillguard.monitor.events import MonitorEvent
from distillguard.monitor.model import RiskModel
from distillguard.monitor.monitor import Monitor
from distillguard.monitor.rings import RingRules, adjusted_rand_index
from distillguard.monitor.text import PromptFeatures

__all__ = [
    "GROUP_KINDS",
    "DetectorRun",
    "Metrics",
    "group_ari",
    "metrics",
    "prompt_cache",
    "replay_monitor",
    "ring_ari",
]

GROUP_KINDS = ("ring", "hydra", "burst")  # shapes whose campaigns span many accounts


@dataclass(frozen=True)
class DetectorRun:
    flagged_at: dict[str, int]  # account -> its requests when first flagged
    groups: list[list[str]]
    seconds: float = 0.0  # processing time of the replay
    trace: Trace | None = None  # signals after every event, when recorded


@dataclass(frozen=True)
class Metrics:
    tpr: float
    fpr: float
    median_queries_to_flag: float  # inf when fewer than half the harvesters are flagged
    ring_ari: float
    harvesters: int
    benign: int
    false_positives: int
    by_kind: dict[str, dict[str, float]]


def _median(values: Sequence[float]) -> float:
    return float(np.median(values)) if values else math.nan


def metrics(run: DetectorRun, truth: dict[str, Truth]) -> Metrics:
    harvesters = [a for a, t in truth.items() if t.harvester]
    benign = [a for a, t in truth.items() if not t.harvester]
    flagged_benign = [a for a in benign if a in run.flagged_at]
    by_kind: dict[str, dict[str, float]] = {}
    for kind in sorted({t.kind for t in truth.values()}):
        members = [a for a, t in truth.items() if t.kind == kind]
        flagged = [run.flagged_at[a] for a in members if a in run.flagged_at]
        queries = [float(run.flagged_at.get(a, math.inf)) for a in members]
        by_kind[kind] = {
            "accounts": len(members),
            "flagged": len(flagged) / len(members),
            "median_queries_to_flag": _median(queries),
            "max_queries_to_flag": max(queries) if queries else math.nan,
        }
    queries = [float(run.flagged_at.get(a, math.inf)) for a in harvesters]
    return Metrics(
        tpr=sum(a in run.flagged_at for a in harvesters) / max(len(harvesters), 1),
        fpr=len(flagged_benign) / max(len(benign), 1),
        median_queries_to_flag=_median(queries),
        ring_ari=ring_ari(run.groups, truth),
        harvesters=len(harvesters),
        benign=len(benign),
        false_positives=len(flagged_benign),
        by_kind=by_kind,
    )


def ring_ari(groups: list[list[str]], truth: dict[str, Truth]) -> float:
    """ARI of the detector's groups against the rings' campaigns."""
    return group_ari(groups, truth, lambda t: t.kind == "ring")


def group_ari(
    groups: list[list[str]], truth: dict[str, Truth], chosen: Callable[[Truth], bool]
) -> float:
    """ARI of the detector's groups against the campaigns of the `chosen` accounts, over every
    account but those of other many-account campaigns (grouping them right or wrong is another
    figure's business)."""
    accounts = sorted(
        a for a, t in truth.items() if chosen(t) or t.kind not in GROUP_KINDS or not t.harvester
    )
    predicted = {a: a for a in accounts}
    for number, group in enumerate(groups):
        for account in group:
            if account in predicted:
                predicted[account] = f"group-{number}"
    true_labels = [(truth[a].campaign or a) if chosen(truth[a]) else a for a in accounts]
    return adjusted_rand_index(true_labels, [predicted[a] for a in accounts])


def replay_monitor(
    model: RiskModel,
    events: Sequence[MonitorEvent],
    rules: RingRules | None = None,
    *,
    features: Sequence[PromptFeatures] | None = None,
    truth: dict[str, Truth] | None = None,
) -> DetectorRun:
    """The monitor over the events, in order; with `truth`, its signals after every event are
    kept too (the distribution baseline reads them)."""
    recorded = Trace(truth) if truth is not None else None

    monitor = Monitor(model, ring_rules=rules, trace=recorded.on_event if recorded else None)
    started = time.perf_counter()
    replay(monitor, events, features)
    seconds = time.perf_counter() - started
    flagged = {r.account: r.flagged_at for r in monitor.accounts() if r.flagged_at is not None}
    groups = [list(ring.accounts) for ring in monitor.rings()]
    return DetectorRun(
        {a: n for a, n in flagged.items() if n is not None}, groups, seconds, recorded
    )
