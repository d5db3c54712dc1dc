"""Scoring detectors on simulated traffic, fitting the risk model, and the two baselines.

A detector replays a simulation's events in order and says, for each account, after how many
of its requests it first flagged it (or never), and which accounts it grouped together.
Metrics follow from the ground truth:

- tpr: harvester accounts flagged; fpr: benign accounts flagged (ever, over the whole run);
- queries to flag: a harvester's requests when first flagged; the median counts a harvester
  never flagged as infinitely many queries;
- ring_ari: adjusted Rand index between the detector's groups and the true campaigns, over all
  accounts (an account in no ring is a group of one).

Baselines: a rate threshold (requests in any sliding hour), and PRADA (Juuti et al., EuroS&P
2019): each new query's distance to the nearest earlier query of the same account, and a
Shapiro-Wilk test of those distances; the account is flagged when W falls below a threshold.
Both thresholds are fitted, like the monitor's, on the fitting fold's benign accounts.
"""

from __future__ import annotations

import functools
import math
import time
import zlib
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy import stats

from distillguard.experiments.population import Truth
from distillguard.experiments.simulate import Simulation
from distillguard.monitor.events import MonitorEvent
from distillguard.monitor.features import FEATURES
from distillguard.monitor.model import RiskModel, fit_logistic
from distillguard.monitor.monitor import Monitor
from distillguard.monitor.rings import RingRules, adjusted_rand_index
from distillguard.monitor.text import embed, words

__all__ = [
    "DetectorRun",
    "Metrics",
    "PradaBaseline",
    "RateBaseline",
    "fit_risk_model",
    "metrics",
    "replay_monitor",
]

SNAPSHOTS = (20, 30, 40, 60, 80, 120, 160, 240, 320, 480, 640, 960, 1280, 1920)


@dataclass(frozen=True)
class DetectorRun:
    flagged_at: dict[str, int]  # account -> its requests when first flagged
    groups: list[list[str]]
    seconds: float = 0.0  # processing time of the replay


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
    accounts = sorted(truth)
    predicted = {a: a for a in accounts}
    for number, group in enumerate(groups):
        for account in group:
            predicted[account] = f"group-{number}"
    true_labels = [(truth[a].campaign or a) if truth[a].kind == "ring" else a for a in accounts]
    return adjusted_rand_index(true_labels, [predicted[a] for a in accounts])


# -- the monitor ---------------------------------------------------------------------------------


def replay_monitor(
    model: RiskModel, events: Sequence[MonitorEvent], rules: RingRules | None = None
) -> DetectorRun:
    monitor = Monitor(model, ring_rules=rules)
    started = time.perf_counter()
    for event in events:
        monitor.process(event)
    monitor.regroup()
    seconds = time.perf_counter() - started
    flagged = {r.account: r.flagged_at for r in monitor.accounts() if r.flagged_at is not None}
    groups = [list(ring.accounts) for ring in monitor.rings()]
    return DetectorRun({a: n for a, n in flagged.items() if n is not None}, groups, seconds)


def _inert_model() -> RiskModel:
    names = tuple(signal.name for signal in FEATURES)
    zeros = tuple(0.0 for _ in names)
    ones = tuple(1.0 for _ in names)
    return RiskModel(names, zeros, -50.0, zeros, ones, 1.0, 1.0, 1.0)


def _trace(
    model: RiskModel, events: Sequence[MonitorEvent], keep: Callable[[int], bool]
) -> tuple[list[str], list[int], NDArray[np.float64], NDArray[np.float64]]:
    accounts: list[str] = []
    counts: list[int] = []
    rows: list[NDArray[np.float64]] = []
    scores: list[float] = []

    def record(account: str, requests: int, signals: NDArray[np.float64], score: float) -> None:
        if keep(requests):
            accounts.append(account)
            counts.append(requests)
            rows.append(signals.copy())
            scores.append(score)

    monitor = Monitor(model, trace=record, ring_every=10**12)
    for event in events:
        monitor.process(event)
    return accounts, counts, np.asarray(rows), np.asarray(scores)


def fit_risk_model(
    simulations: Sequence[Simulation],
    *,
    fpr_target: float = 0.0025,
    description: str = "",
    l2: float = 0.01,
    margin: float = 1.0,
    exclude_kinds: tuple[str, ...] = ("stealth",),
) -> RiskModel:
    """Weights from snapshots of every account; the flag threshold from benign accounts' highest
    score over their whole run, so that at most `fpr_target` of them would have been flagged.

    Kinds in `exclude_kinds` are left out of the fit: the stealth stress shape mimics a person
    in most signals, and fitting on it teaches the model to suspect people (measured: benign
    flags rose from 0.02% to 6.7% held out)."""
    min_requests = 20
    snapshot_set = set(SNAPSHOTS)
    signal_rows, labels, weights = [], [], []
    for simulation in simulations:
        accounts, _counts, rows, _ = _trace(
            _inert_model(), simulation.events, lambda n: n in snapshot_set
        )
        per_account: dict[str, int] = {}
        for account in accounts:
            per_account[account] = per_account.get(account, 0) + 1
        # every kind of account weighs the same within its class, so that rare hard negatives
        # (batch jobs, developers) shape the weights as much as the many casual users do
        kinds: dict[tuple[bool, str], int] = {}
        for truth in simulation.truth.values():
            if truth.kind in exclude_kinds:
                continue
            kinds[(truth.harvester, truth.kind)] = kinds.get((truth.harvester, truth.kind), 0) + 1
        kinds_per_class = {
            harvester: sum(1 for (h, _) in kinds if h == harvester) for harvester in (False, True)
        }
        for account, row in zip(accounts, rows, strict=True):
            truth = simulation.truth[account]
            if truth.kind in exclude_kinds:
                continue
            harvester = truth.harvester
            class_weight = 0.5 / (kinds_per_class[harvester] * kinds[(harvester, truth.kind)])
            signal_rows.append(row)
            labels.append(1.0 if harvester else 0.0)
            weights.append(class_weight / per_account[account])
    coefficients, bias, means, scales = fit_logistic(
        np.asarray(signal_rows), np.asarray(labels), np.asarray(weights), l2=l2
    )
    model = RiskModel(
        features=tuple(signal.name for signal in FEATURES),
        weights=tuple(float(w) for w in coefficients),
        bias=bias,
        means=tuple(float(m) for m in means),
        scales=tuple(float(s) for s in scales),
        watch=1.0,
        flag=1.0,
        block=1.0,
        min_requests=min_requests,
        fitted_on=description,
    )
    peaks: list[float] = []
    for simulation in simulations:
        accounts, _, _, scores = _trace(model, simulation.events, lambda n: n >= min_requests)
        peak: dict[str, float] = {}
        for account, score in zip(accounts, scores, strict=True):
            if not simulation.truth[account].harvester:
                peak[account] = max(peak.get(account, 0.0), float(score))
        benign = [a for a, t in simulation.truth.items() if not t.harvester]
        peaks += [peak.get(a, 0.0) for a in benign]
    ordered = np.sort(np.asarray(peaks))
    allowed = math.floor(fpr_target * len(ordered))
    # the flag threshold sits just above the (allowed+1)-th highest benign peak
    quantile = float(ordered[len(ordered) - 1 - allowed])
    # a margin of one logit above it, for traffic unlike the fitting traffic
    flag = max(_sigmoid(_logit(quantile) + margin), 0.5)
    watch = max(float(np.quantile(ordered, 0.98)), 0.2)
    block = float(min(1.0 - (1.0 - max(flag, float(ordered[-1]))) / 4.0, 1.0))
    return model.with_thresholds(watch=min(watch, flag), flag=flag, block=max(block, flag))


def _logit(p: float) -> float:
    p = min(max(p, 1e-12), 1 - 1e-12)
    return math.log(p / (1 - p))


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


# -- baselines -----------------------------------------------------------------------------------


@dataclass
class RateBaseline:
    """Flag an account when its requests in any sliding hour exceed `threshold`."""

    threshold: float = math.inf
    window: float = 3600.0

    def peaks(self, events: Sequence[MonitorEvent]) -> dict[str, tuple[int, list[int]]]:
        recent: dict[str, deque[float]] = {}
        peak: dict[str, tuple[int, list[int]]] = {}
        counts: dict[str, int] = {}
        for event in events:
            times = recent.setdefault(event.account, deque())
            times.append(event.time)
            while times[0] <= event.time - self.window:
                times.popleft()
            counts[event.account] = counts.get(event.account, 0) + 1
            best, _at = peak.get(event.account, (0, []))
            if len(times) > best:
                peak[event.account] = (len(times), [counts[event.account]])
        return peak

    def fit(self, simulations: Sequence[Simulation], fpr_target: float = 0.0025) -> RateBaseline:
        peaks = []
        for simulation in simulations:
            found = self.peaks(simulation.events)
            peaks += [
                found[a][0] if a in found else 0
                for a, t in simulation.truth.items()
                if not t.harvester
            ]
        ordered = sorted(peaks)
        allowed = math.floor(fpr_target * len(ordered))
        self.threshold = float(ordered[len(ordered) - 1 - allowed])
        return self

    def replay(self, events: Sequence[MonitorEvent]) -> DetectorRun:
        started = time.perf_counter()
        recent: dict[str, deque[float]] = {}
        counts: dict[str, int] = {}
        flagged: dict[str, int] = {}
        for event in events:
            counts[event.account] = counts.get(event.account, 0) + 1
            times = recent.setdefault(event.account, deque())
            times.append(event.time)
            while times[0] <= event.time - self.window:
                times.popleft()
            if len(times) > self.threshold and event.account not in flagged:
                flagged[event.account] = counts[event.account]
        return DetectorRun(flagged, [], time.perf_counter() - started)


@dataclass
class PradaBaseline:
    """PRADA on the monitor's hashed prompt embeddings (the paper used input-space L2)."""

    threshold: float = 0.0  # flag when Shapiro-Wilk W < threshold
    min_queries: int = 20
    max_queries: int = 5000

    def _walk(
        self, events: Sequence[MonitorEvent], on_w: Callable[[str, int, float], bool]
    ) -> None:
        seen: dict[str, NDArray[np.float32]] = {}
        counts: dict[str, int] = {}
        distances: dict[str, list[float]] = {}
        done: set[str] = set()
        for event in events:
            account = event.account
            counts[account] = count = counts.get(account, 0) + 1
            if account in done:
                continue
            vector = embed_prompt(event.prompt)
            previous = seen.get(account)
            if previous is None:
                previous = seen[account] = np.zeros((64, vector.shape[0]), dtype=np.float32)
            used = min(count - 1, self.max_queries)
            if used:
                # nearest earlier query, L2 between unit vectors
                similarity = float(np.max(previous[:used] @ vector))
                distances.setdefault(account, []).append(math.sqrt(max(2.0 - 2.0 * similarity, 0)))
            if used >= len(previous):
                previous = seen[account] = np.vstack([previous, np.zeros_like(previous)])
            if used < self.max_queries:
                previous[used] = vector
            found = distances.get(account, [])
            if len(found) >= self.min_queries:
                sample = np.asarray(found)
                # all distances equal: as far from normal as it gets
                w = 0.0 if np.ptp(sample) == 0 else float(stats.shapiro(sample).statistic)
                if on_w(account, count, w):
                    done.add(account)

    def fit(self, simulations: Sequence[Simulation], fpr_target: float = 0.0025) -> PradaBaseline:
        lowest: list[float] = []
        for simulation in simulations:
            low: dict[str, float] = {}
            self._walk(simulation.events, functools.partial(_keep_lowest, low))
            lowest += [low.get(a, 1.0) for a, t in simulation.truth.items() if not t.harvester]
        ordered = sorted(lowest)
        allowed = math.floor(fpr_target * len(ordered))
        self.threshold = float(ordered[allowed])  # flag strictly below the allowed-th lowest
        return self

    def replay(self, events: Sequence[MonitorEvent]) -> DetectorRun:
        started = time.perf_counter()
        flagged: dict[str, int] = {}

        def check(account: str, count: int, w: float) -> bool:
            if w < self.threshold:
                flagged[account] = count
                return True
            return False

        self._walk(events, check)
        return DetectorRun(flagged, [], time.perf_counter() - started)


def _keep_lowest(low: dict[str, float], account: str, count: int, w: float) -> bool:
    low[account] = min(low.get(account, 1.0), w)
    return False


def embed_prompt(text: str) -> NDArray[np.float32]:
    return embed([zlib.crc32(word.encode()) for word in words(text)])
