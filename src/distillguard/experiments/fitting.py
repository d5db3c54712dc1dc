"""Fitting the monitor on simulated traffic: the risk model, the link model, the thresholds.

One replay of each fitting simulation with an inert model (`trace`) records every account's
signals after every event and a sample of the candidate pairs the ring finder compared, with
their links. The fleet's reference distribution leaves the harvesters out, as the monitor's
does once it has flagged them (its own reference leaves out whom it suspects); nothing else in
the signals and links depends on the model, so everything is fitted from these traces, and a
leave-one-behaviour-out fit is the same fit with one kind's rows left out.

- The request model: does one request look like collection (`monitor.requests`); fitted on
  pure harvesters' requests against honest ones. It feeds the `collection_share` signal.
- The risk model: a logistic regression with non-negative weights on snapshots of every
  account (`SNAPSHOTS` requests), each kind weighing the same within its class.
- Its flag threshold: one logit above the benign accounts' highest score over their whole run
  at the allowed false-positive rate (`fpr_target`).
- The link model: a logistic regression with non-negative weights on the traced pairs, labelled
  by whether one campaign runs both accounts; each campaign weighs the same among the positives.
- The ring member floor: the own peak a ring member needs for its ring to lift it, the same
  quantile of honest accounts' own peaks as the flag threshold's (without its margin), so that
  a ring's verdict reaches an honest account (behind the same NAT, or a reseller that resembles
  a harvesting router) only when it looks as odd on its own as the allowed few honest ones.
- The ring threshold (`calibrate_rings`): a second replay of the fitting simulations with the
  fitted monitor, reading the pooled scores that groups of honest accounts reach.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from distillguard.experiments.population import Truth
from distillguard.experiments.simulate import Simulation
from distillguard.monitor.events import MonitorEvent
from distillguard.monitor.features import FEATURE_INDEX, FEATURES, PRIOR_WEIGHT
from distillguard.monitor.links import BEHAVIOUR_SCALE, LINK_INDEX, LINKS, LinkModel
from distillguard.monitor.model import RiskModel, fit_logistic
from distillguard.monitor.monitor import Monitor
from distillguard.monitor.requests import RequestModel
from distillguard.monitor.text import PromptFeatures, prompt_features

__all__ = [
    "SNAPSHOTS",
    "Trace",
    "calibrate_rings",
    "fit_link_model",
    "fit_monitor",
    "fit_request_model",
    "inert_model",
    "prompt_cache",
    "replay",
    "trace",
]

SNAPSHOTS = (20, 30, 40, 60, 80, 120, 160, 240, 320, 480, 640, 960, 1280, 1920)
MIN_REQUESTS = 20
PAIRS_PER_CALL = 2000  # candidate pairs kept per class from each batch the finder compares


def inert_model() -> RiskModel:
    """Scores nothing and links nothing: a replay that only computes signals."""
    names = tuple(signal.name for signal in FEATURES)
    zeros = tuple(0.0 for _ in names)
    ones = tuple(1.0 for _ in names)
    no_links = LinkModel(tuple(0.0 for _ in LINKS), -50.0, 0.5)
    return RiskModel(names, zeros, -50.0, zeros, ones, 1.0, 1.0, 1.0, links=no_links)


@dataclass
class Trace:
    """What one replay of a simulation recorded."""

    truth: dict[str, Truth]
    accounts: list[str] = field(default_factory=list)  # per event: its account
    counts: list[int] = field(default_factory=list)  # per event: the account's requests so far
    rows: list[NDArray[np.float64]] = field(default_factory=list)  # per event: its signals
    requests: list[NDArray[np.float64]] = field(default_factory=list)  # request features
    # candidate pairs: the two accounts, their requests when compared, links, sampling weight
    pair_names: list[tuple[str, str]] = field(default_factory=list)
    pair_counts: list[tuple[int, int]] = field(default_factory=list)
    pair_links: list[NDArray[np.float32]] = field(default_factory=list)
    pair_weights: list[float] = field(default_factory=list)

    def on_event(
        self,
        account: str,
        requests: int,
        signals: NDArray[np.float64],
        _: float,
        request: NDArray[np.float64],
    ) -> None:
        self.accounts.append(account)
        self.counts.append(requests)
        self.rows.append(signals.copy())
        self.requests.append(request)

    def same_campaign(self, left: str, right: str) -> bool:
        a, b = self.truth.get(left), self.truth.get(right)
        return a is not None and b is not None and a.harvester and a.campaign == b.campaign

    def record_pairs(
        self,
        rng: np.random.Generator,
        left: list[str],
        right: list[str],
        links: NDArray[np.float32],
        left_counts: NDArray[np.int64],
        right_counts: NDArray[np.int64],
    ) -> None:
        """Keep a random sample of the pairs of each class (one campaign, or not)."""
        positive = np.asarray([self.same_campaign(a, b) for a, b in zip(left, right, strict=True)])
        for mask in (positive, ~positive):
            candidates = np.flatnonzero(mask)
            if not len(candidates):
                continue
            keep = rng.choice(candidates, size=min(len(candidates), PAIRS_PER_CALL), replace=False)
            weight = len(candidates) / len(keep)
            for index in keep.tolist():
                self.pair_names.append((left[index], right[index]))
                self.pair_counts.append((int(left_counts[index]), int(right_counts[index])))
                self.pair_links.append(links[index].copy())
                self.pair_weights.append(weight)


def trace(
    simulation: Simulation,
    features: Sequence[PromptFeatures] | None = None,
    seed: int = 0,
) -> Trace:
    """Replay a simulation with the inert model, recording signals and candidate pairs."""
    recorded = Trace(simulation.truth)
    rng = np.random.default_rng(seed)

    def on_pairs(
        left: list[str],
        right: list[str],
        links: NDArray[np.float32],
        left_counts: NDArray[np.int64],
        right_counts: NDArray[np.int64],
    ) -> None:
        recorded.record_pairs(rng, left, right, links, left_counts, right_counts)

    # the reference the monitor converges to: the fleet without the accounts it flags
    truth = simulation.truth
    monitor = Monitor(
        inert_model(),
        trace=recorded.on_event,
        pair_trace=on_pairs,
        reference_excludes=lambda account: account in truth and truth[account].harvester,
    )
    replay(monitor, simulation.events, features)
    return recorded


def replay(
    monitor: Monitor,
    events: Sequence[MonitorEvent],
    features: Sequence[PromptFeatures] | None = None,
) -> None:
    """Every event through `monitor.process`, then a last regrouping."""
    for index, event in enumerate(events):
        monitor.process(event, features[index] if features is not None else None)
    monitor.regroup()


def prompt_cache(events: Sequence[MonitorEvent]) -> list[PromptFeatures]:
    """Each event's prompt features, computed once per distinct prompt (replays of the same
    traffic with other models need not recompute them)."""
    cache: dict[str, PromptFeatures] = {}
    result = []
    for event in events:
        found = cache.get(event.prompt)
        if found is None:
            found = cache[event.prompt] = prompt_features(event.prompt)
        result.append(found)
    return result


def fit_monitor(
    traces: Sequence[Trace],
    *,
    fpr_target: float = 0.0025,
    description: str = "",
    exclude_kinds: tuple[str, ...] = (),
    l2: float = 0.01,
    margin: float = 1.0,
) -> RiskModel:
    """The request model, the risk model and its thresholds, the link model and the ring
    member floor, from the traces of the fitting simulations, leaving out `exclude_kinds`."""
    requests = fit_request_model(traces, exclude_kinds)
    rows = [_with_collection(recorded, requests) for recorded in traces]
    model = _fit_account_model(traces, rows, exclude_kinds, description, l2)
    model = model.with_requests(requests)
    peaks = _benign_peaks(model, traces, rows)
    ordered = np.sort(np.asarray(peaks))
    allowed = math.floor(fpr_target * len(ordered))
    # the flag threshold sits just above the (allowed+1)-th highest benign peak, plus a margin
    # of one logit for traffic unlike the fitting traffic
    quantile = float(ordered[len(ordered) - 1 - allowed])
    flag = max(_sigmoid(_logit(quantile) + margin), 0.5)
    watch = max(float(np.quantile(ordered, 0.98)), 0.2)
    block = float(min(1.0 - (1.0 - max(flag, float(ordered[-1]))) / 4.0, 1.0))
    model = model.with_thresholds(watch=min(watch, flag), flag=flag, block=max(block, flag))
    # a ring's verdict lifts only members that score as high on their own as all but the
    # allowed share of honest accounts ever did: an honest reseller or an enterprise's
    # accounts, odd enough to reach "watch", must not be swept in by harvesters they resemble
    floor = quantile
    links = fit_link_model(traces, rows, model, exclude_kinds)
    return model.with_links(links).with_thresholds(ring_member_floor=floor)


PURE_KINDS = ("fast", "slow", "ring", "stealth", "burst")  # every request a harvest request
REQUEST_FPR = 0.05  # share of honest requests (kinds weighing the same) called collection


def fit_request_model(traces: Sequence[Trace], exclude_kinds: tuple[str, ...] = ()) -> RequestModel:
    """Requests of pure harvesters against honest accounts' requests, each kind weighing the
    same within its class; the bias then moved so that `REQUEST_FPR` of honest requests are
    called collection."""
    rows, labels, kinds = [], [], []
    for recorded in traces:
        for account, request in zip(recorded.accounts, recorded.requests, strict=True):
            truth = recorded.truth[account]
            if truth.kind in exclude_kinds or (truth.harvester and truth.kind not in PURE_KINDS):
                continue
            rows.append(request)
            labels.append(1.0 if truth.harvester else 0.0)
            kinds.append(truth.kind)
    if not rows or all(labels) or not any(labels):
        return RequestModel.never()
    kind_array = np.asarray(kinds)
    label_array = np.asarray(labels)
    weights = np.zeros(len(rows))
    for value in (0.0, 1.0):
        names = sorted(set(kind_array[label_array == value].tolist()))
        for name in names:
            members = kind_array == name
            weights[members] = 0.5 / (len(names) * members.sum())
    design = np.asarray(rows)
    coefficients, _, _, scales = fit_logistic(design, label_array, weights, l2=0.01)
    raw = coefficients / scales
    logits = design @ raw
    honest = label_array == 0
    order = np.argsort(-logits[honest])
    cumulative = np.cumsum(weights[honest][order]) / weights[honest].sum()
    cut = logits[honest][order][min(np.searchsorted(cumulative, REQUEST_FPR), honest.sum() - 1)]
    return RequestModel(weights=tuple(float(w) for w in raw), bias=float(-cut - 1e-9))


def _with_collection(recorded: Trace, requests: RequestModel) -> NDArray[np.float64]:
    """The trace's signal rows with `collection_share` as `requests` would have made it."""
    rows = np.asarray(recorded.rows)
    collects = (np.asarray(recorded.requests) @ np.asarray(requests.weights) + requests.bias) >= 0
    column = FEATURE_INDEX["collection_share"]
    prior = FEATURES[column].prior
    counts: dict[str, int] = {}
    for index, (account, requests_so_far) in enumerate(
        zip(recorded.accounts, recorded.counts, strict=True)
    ):
        counts[account] = counts.get(account, 0) + int(collects[index])
        rows[index, column] = (counts[account] + PRIOR_WEIGHT * prior) / (
            requests_so_far + PRIOR_WEIGHT
        )
    return rows


def calibrate_rings(
    model: RiskModel,
    simulations: Sequence[Simulation],
    features: Sequence[Sequence[PromptFeatures] | None] | None = None,
    margin: float = 1.0,
) -> RiskModel:
    """The ring threshold: one logit above the highest pooled score an honest group's core
    reached while the fitted monitor replayed the fitting simulations (groups whose core is
    mostly honest accounts), between the watch and the flag thresholds."""
    honest: list[float] = []
    for number, simulation in enumerate(simulations):
        truth = simulation.truth

        def on_group(
            accounts: tuple[str, ...],
            core: list[str],
            score: float,
            truth: dict[str, Truth] = truth,
        ) -> None:
            harvesters = sum(1 for a in core if a in truth and truth[a].harvester)
            if 2 * harvesters < len(core):
                honest.append(score)

        monitor = Monitor(model.with_thresholds(ring_flag=1.0), group_trace=on_group)
        replay(monitor, simulation.events, features[number] if features else None)
    if not honest:  # no honest group ever had a core: the core rule holds them all
        return model.with_thresholds(ring_flag=model.watch)
    threshold = _sigmoid(_logit(max(honest)) + margin)
    return model.with_thresholds(ring_flag=min(max(threshold, model.watch), model.flag))


def _fit_account_model(
    traces: Sequence[Trace],
    rows: Sequence[NDArray[np.float64]],
    exclude_kinds: tuple[str, ...],
    description: str,
    l2: float,
) -> RiskModel:
    snapshot_set = set(SNAPSHOTS)
    signal_rows, labels, weights = [], [], []
    for recorded, signals in zip(traces, rows, strict=True):
        per_account: dict[str, int] = {}
        for account, count in zip(recorded.accounts, recorded.counts, strict=True):
            if count in snapshot_set:
                per_account[account] = per_account.get(account, 0) + 1
        # every kind of account weighs the same within its class, so that rare hard negatives
        # (batch jobs, developers, evaluation harnesses) shape the weights as much as the many
        # casual users do
        kinds: dict[tuple[bool, str], int] = {}
        for truth in recorded.truth.values():
            if truth.kind not in exclude_kinds:
                key = (truth.harvester, truth.kind)
                kinds[key] = kinds.get(key, 0) + 1
        kinds_per_class = {h: sum(1 for (k, _) in kinds if k == h) for h in (False, True)}
        for index, (account, count) in enumerate(
            zip(recorded.accounts, recorded.counts, strict=True)
        ):
            truth = recorded.truth[account]
            if count not in snapshot_set or truth.kind in exclude_kinds:
                continue
            harvester = truth.harvester
            class_weight = 0.5 / (kinds_per_class[harvester] * kinds[(harvester, truth.kind)])
            signal_rows.append(signals[index])
            labels.append(1.0 if harvester else 0.0)
            weights.append(class_weight / per_account[account])
    coefficients, bias, means, scales = fit_logistic(
        np.asarray(signal_rows), np.asarray(labels), np.asarray(weights), l2=l2
    )
    return RiskModel(
        features=tuple(signal.name for signal in FEATURES),
        weights=tuple(float(w) for w in coefficients),
        bias=bias,
        means=tuple(float(m) for m in means),
        scales=tuple(float(s) for s in scales),
        watch=1.0,
        flag=1.0,
        block=1.0,
        min_requests=MIN_REQUESTS,
        fitted_on=description,
    )


def _benign_peaks(
    model: RiskModel, traces: Sequence[Trace], rows: Sequence[NDArray[np.float64]]
) -> list[float]:
    """Every benign account's highest score over its run (after MIN_REQUESTS)."""
    peaks: list[float] = []
    for recorded, signals in zip(traces, rows, strict=True):
        scores = model.scores(signals)
        peak: dict[str, float] = {}
        for account, count, score in zip(recorded.accounts, recorded.counts, scores, strict=True):
            if count >= MIN_REQUESTS and not recorded.truth[account].harvester:
                peak[account] = max(peak.get(account, 0.0), float(score))
        peaks += [peak.get(a, 0.0) for a, t in recorded.truth.items() if not t.harvester]
    return peaks


def fit_link_model(
    traces: Sequence[Trace],
    rows: Sequence[NDArray[np.float64]],
    model: RiskModel,
    exclude_kinds: tuple[str, ...] = (),
) -> LinkModel:
    """Weights of the links from the traced pairs; the two links that read the risk model
    (behaviour, risk) are recomputed with `model` from the accounts' signals at the time.

    Positives are pairs one campaign runs; each campaign weighs the same. What an attacker
    controls it may change on the accounts we have not seen: it can drop its own proxies,
    client software and template (so every positive also counts in copies with those links
    taken away), and it can sit behind an honest NAT or run the commonest SDK (so every
    negative with a harvester in it also counts in copies with those links shared). A link
    model that leaned on them would miss the next campaign or merge it with its neighbours.
    Negatives weigh the same per type (two honest accounts of given kinds, an honest one of a
    given kind and a harvester, two campaigns), so that the rare hard ones (two harvesters of
    different campaigns, honest look-alikes) count."""
    design: list[NDArray[np.float64]] = []
    labels: list[float] = []
    weights: list[float] = []
    groups: list[str] = []  # the campaign of a positive, the type of a negative
    for recorded, signals in zip(traces, rows, strict=True):
        where = {
            key: index
            for index, key in enumerate(zip(recorded.accounts, recorded.counts, strict=True))
        }
        for index, (left, right) in enumerate(recorded.pair_names):
            truth_left, truth_right = recorded.truth[left], recorded.truth[right]
            if {truth_left.kind, truth_right.kind} & set(exclude_kinds):
                continue
            left_count, right_count = recorded.pair_counts[index]
            pair_signals = (
                signals[where[(left, left_count)]],
                signals[where[(right, right_count)]],
            )
            links = _with_model_links(recorded.pair_links[index], pair_signals, model)
            weight = recorded.pair_weights[index]
            positive = recorded.same_campaign(left, right)
            variants: list[tuple[NDArray[np.float64], float]] = [(links, 1.0)]
            if positive:
                group = str(truth_left.campaign)
                copies = [_without(links, names) for names in _ATTACKER_CONTROLS]
                variants = [(variant, 1.0 / (1 + len(copies))) for variant in [links, *copies]]
            else:
                # each kind of honest account weighs the same among the negatives, so that the
                # rare look-alikes (an enterprise's accounts behind one proxy, an honest
                # reseller beside a harvesting router) count as much as casual users do
                honest = sorted(t.kind for t in (truth_left, truth_right) if not t.harvester)
                group = f"negative:{2 - len(honest)}:" + "+".join(honest)
                if truth_left.harvester or truth_right.harvester:
                    # a campaign can sit behind anyone's NAT and run anyone's SDK: a third of
                    # such a pair's weight goes to copies where it does
                    share = SHARED_WEIGHT / len(_SHAREABLE)
                    variants = [(links, 1.0 - SHARED_WEIGHT)]
                    variants += [(_with(links, names), share) for names in _SHAREABLE]
            for variant, fraction in variants:
                design.append(variant)
                labels.append(1.0 if positive else 0.0)
                weights.append(weight * fraction)
                groups.append(group)
    if not any(labels) or all(labels):
        return LinkModel.default()
    weight_array = np.asarray(weights)
    group_array = np.asarray(groups)
    label_array = np.asarray(labels)
    for value in (0.0, 1.0):
        names = sorted(set(group_array[label_array == value].tolist()))
        for name in names:
            members = group_array == name
            weight_array[members] *= 0.5 / (len(names) * weight_array[members].sum())
    coefficients, bias, means, scales = fit_logistic(
        np.asarray(design), label_array, weight_array, l2=0.01
    )
    # back from standardized links to raw ones: w . (x - mean) / scale + b
    raw = coefficients / scales
    return LinkModel(
        weights=tuple(float(w) for w in raw),
        bias=float(bias - raw @ means),
        threshold=0.5,
    )


# links an attacker can take away on its next campaign: proxies, client software, template
_ATTACKER_CONTROLS = (("network", "address"), ("client",), ("template",))


# identity an attacker can share with accounts that are not its own: a NAT, a common SDK
_SHAREABLE = (("network", "address"), ("client",))
SHARED_WEIGHT = 1.0 / 3.0


def _without(links: NDArray[np.float64], names: tuple[str, ...]) -> NDArray[np.float64]:
    changed = links.copy()
    for name in names:
        changed[LINK_INDEX[name]] = 0.0
    return changed


def _with(links: NDArray[np.float64], names: tuple[str, ...]) -> NDArray[np.float64]:
    changed = links.copy()
    for name in names:
        changed[LINK_INDEX[name]] = 1.0
    return changed


def _with_model_links(
    links: NDArray[np.float32],
    signals: tuple[NDArray[np.float64], NDArray[np.float64]],
    model: RiskModel,
) -> NDArray[np.float64]:
    values = links.astype(np.float64).copy()
    left, right = (model.deviation(s) for s in signals)
    lengths = (float(np.linalg.norm(left)), float(np.linalg.norm(right)))
    if min(lengths) > 0:
        # as the roster computes it: the product of the two shrunk unit deviations
        cosine = float(left @ right) / (lengths[0] * lengths[1])
        gate = math.tanh(lengths[0] / BEHAVIOUR_SCALE) * math.tanh(lengths[1] / BEHAVIOUR_SCALE)
        values[LINK_INDEX["behaviour"]] = min(max(cosine * gate, 0.0), 1.0)
    else:
        values[LINK_INDEX["behaviour"]] = 0.0
    scores = model.scores(np.stack(signals))
    values[LINK_INDEX["risk"]] = float(scores.min())
    return values


def _logit(p: float) -> float:
    p = min(max(p, 1e-12), 1 - 1e-12)
    return math.log(p / (1 - p))


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))
