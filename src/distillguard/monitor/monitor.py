"""The harvest monitor: per-account state and risk, rings, and the tier the gateway acts on.

The gateway calls `observe(event)` once per request it meters: that puts the event on a
bounded queue (`monitor/inbox.py`: the oldest events are dropped, and counted, when the
monitor falls behind) and returns (the request path's whole cost). A background thread, or
`drain()` in tests and simulations, updates the account's state, rescores it, and every
`ring_every` events relinks the accounts that changed (`monitor.rings`), refreshes the fleet's
reference distribution, and scores each group of linked accounts on its members' pooled counts.

A group is scored on its core: the members whose own highest score reaches
`RiskModel.ring_member_floor`. When the core is most of the group and its pooled score reaches
the ring threshold (fitted on honest groups: a campus cohort pools to more than one person
does), the group is a ring and its core is flagged. An account's tier is the higher of what its
own score and its ring's verdict reach; a ring lifts only its core, so an honest user behind
the same NAT as a harvesting ring is linked to it by the address, not made a member of it.
Tiers only go up on their own, and an operator can set one (`set_tier`), which pins it.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
from numpy.typing import NDArray

from distillguard.monitor.events import MonitorEvent
from distillguard.monitor.features import FEATURES, Fleet, account_signals, pooled_signals
from distillguard.monitor.inbox import EventQueue
from distillguard.monitor.model import TIERS, RiskModel
from distillguard.monitor.requests import request_features
from distillguard.monitor.rings import PairTrace, RingFinder, RingRules
from distillguard.monitor.state import AccountState
from distillguard.monitor.text import PromptFeatures, prompt_features

__all__ = ["AccountReport", "Monitor", "RingReport", "TierChange"]

log = logging.getLogger("distillguard.monitor")

_RANK = {tier: rank for rank, tier in enumerate(TIERS)}
_LINGER = 0.02  # seconds the thread lets events gather after a quiet spell (inbox.take)
_REFERENCE_TRIM = 0.2  # the fleet's reference drops this share of accounts at each end
_REFERENCE_MIN_TEXTS = 3  # prompts an account needs to count in the fleet's reference
_PROMPT_CACHE = 4096  # prompts whose features are kept (about 2 KB each)
RETENTION_SWEEP = 3600.0  # seconds of monitor time between sweeps of every account's tokens


@dataclass(frozen=True)
class AccountReport:
    account: str
    tenant: str
    requests: int
    score: float  # the account's own score
    ring: int | None  # index into `Monitor.rings()` when the account is in a ring
    ring_score: float | None
    tier: str
    pinned: bool  # set by an operator
    flagged_at: int | None  # requests the account had made when it first reached "throttle"
    reasons: tuple[str, ...]


@dataclass(frozen=True)
class TierChange:
    account: str
    tenant: str
    previous: str
    tier: str
    pinned: bool  # an operator's decision
    score: float
    requests: int
    reasons: tuple[str, ...]


@dataclass(frozen=True)
class RingReport:
    ring: int
    accounts: tuple[str, ...]
    requests: int
    score: float
    reasons: tuple[str, ...]


@dataclass
class _Account:
    state: AccountState
    signals: NDArray[np.float64] | None = None  # as of the last event
    score: float = 0.0
    peak: float = 0.0  # the highest score so far: tiers follow it (thresholds are fitted on peaks)
    ring: int | None = None
    ring_score: float = 0.0
    ring_peak: float = 0.0
    tier: str = "normal"
    pinned: bool = False
    flagged_at: int | None = None


class Monitor:
    """Consumes the usage stream; `tier_of` is what the gateway reads on the request path."""

    def __init__(
        self,
        model: RiskModel | None = None,
        *,
        ring_rules: RingRules | None = None,
        ring_every: int = 2000,
        fleet_every: int = 500,
        identity_retention: float = 30 * 86_400.0,
        on_tier_change: Callable[[TierChange], None] | None = None,
        trace: Callable[[str, int, NDArray[np.float64], float, NDArray[np.float64]], None]
        | None = None,
        pair_trace: PairTrace | None = None,
        reference_excludes: Callable[[str], bool] | None = None,
        group_trace: Callable[[tuple[str, ...], list[str], float], None] | None = None,
        queue: EventQueue | None = None,
    ) -> None:
        self.model = model or RiskModel.load()
        self.ring_rules = ring_rules or RingRules()
        self.ring_every = ring_every
        self.fleet_every = fleet_every
        self.identity_retention = identity_retention  # seconds identity tokens are kept
        self._last_sweep = -math.inf  # monitor time of the last sweep of every account
        self.on_tier_change = on_tier_change
        # after each event: (account, requests, signals, score, request features), for fitting
        self.trace = trace
        # which accounts the fleet's reference leaves out; by default the ones the monitor
        # suspects (above normal, or in a ring). A fit passes the ground truth instead.
        self.reference_excludes = reference_excludes
        self.group_trace = group_trace  # (group, its core, the core's pooled score): for fitting
        self._accounts: dict[str, _Account] = {}
        self._tiers: dict[str, str] = {}  # account -> tier, read without a lock (one dict get)
        self._rings: list[RingReport] = []
        self._finder = RingFinder(self.ring_rules, self.model.links, len(FEATURES), pair_trace)
        self._changed: set[str] = set()  # accounts with events since the last regrouping
        self._fleet = Fleet()
        # features of recent prompts: follow-ups, evaluation runs and retries repeat verbatim
        self._prompts: dict[str, PromptFeatures] = {}
        self._now = 0.0
        self._processed = 0
        self._queue = queue if queue is not None else EventQueue()
        self._lock = threading.Lock()  # state changes vs. reports
        self._thread: threading.Thread | None = None

    # -- the request path ----------------------------------------------------------------------

    def observe(self, event: MonitorEvent) -> None:
        self._queue.put(event)

    @property
    def dropped(self) -> int:
        """Events dropped unprocessed: the oldest, while the queue was full."""
        return self._queue.dropped

    def tier_of(self, account: str) -> str:
        return self._tiers.get(account, "normal")

    # -- processing ---------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is None:
            self._queue.reopen()
            self._thread = threading.Thread(
                target=self._run, name="distillguard-monitor", daemon=True
            )
            self._thread.start()

    def close(self) -> None:
        if self._thread is not None:
            self._queue.close()  # the thread processes what is queued, then stops
            self._thread.join(timeout=10)
            self._thread = None

    def _run(self) -> None:
        while batch := self._queue.take(256, linger=_LINGER):
            for event in batch:
                try:
                    self.process(event)
                except Exception:  # one bad event must not stop the monitor
                    log.exception("monitor failed on an event of %s", event.account)

    def drain(self) -> int:
        """Process everything queued, in the calling thread (no background thread running)."""
        count = 0
        while batch := self._queue.take(1024, timeout=0):
            for event in batch:
                self.process(event)
                count += 1
        return count

    @property
    def processed(self) -> int:
        return self._processed

    def process(self, event: MonitorEvent, prompt: PromptFeatures | None = None) -> None:
        """Take in one event; `prompt` is its prompt's features when the caller already has
        them (a replay that scores the same traffic several times)."""
        if prompt is None:
            prompt = self._prompts.get(event.prompt)
            if prompt is None:
                prompt = prompt_features(event.prompt)
                if len(self._prompts) >= _PROMPT_CACHE:
                    self._prompts.clear()
                self._prompts[event.prompt] = prompt
        with self._lock:
            entry = self._accounts.get(event.account)
            if entry is None:
                entry = self._accounts[event.account] = _Account(
                    AccountState(event.account, event.tenant)
                )
            if not entry.state.tenant:  # restored before its first request
                entry.state.tenant = event.tenant
            entry.state.update(event, prompt)
            request = request_features(event, prompt, entry.state.last_fresh, self._fleet.reference)
            entry.state.collection += self.model.requests.collects(request)
            signals = entry.signals = account_signals(entry.state, self._fleet)
            entry.score = self.model.score(signals)
            if entry.state.requests >= self.model.min_requests:
                entry.peak = max(entry.peak, entry.score)
            if self.trace is not None:
                self.trace(event.account, entry.state.requests, signals, entry.score, request)
            self._retier(entry)
            self._changed.add(event.account)
            self._now = max(self._now, event.time)
            self._processed += 1
            if self._processed % self.fleet_every == 0:
                self._update_fleet_rate()
            if self._processed % self.ring_every == 0:
                self._regroup()

    def _update_fleet_rate(self) -> None:
        rates = [a.state.rate_per_hour for a in self._accounts.values() if a.state.requests >= 3]
        if rates:
            self._fleet = replace(self._fleet, rate=float(np.median(rates)))

    def _update_fleet_reference(self) -> None:
        """The benign fleet's prompts, as the monitor can know them: the mean of every account
        it does not suspect, each account weighing the same, trimmed per coordinate so that a
        minority pulling one way (a ring it has not found yet) moves it little."""
        excluded = self.reference_excludes or self._suspected
        states = [
            a.state
            for a in self._accounts.values()
            if a.state.texts >= _REFERENCE_MIN_TEXTS and not excluded(a.state.account)
        ]
        if len(states) < 10:
            return
        means = np.stack([s.distribution_mean for s in states])
        centroids = np.stack([s.centroid / s.texts for s in states])
        self._fleet = replace(
            self._fleet,
            reference=_trimmed_mean(means, _REFERENCE_TRIM),
            centroid=_trimmed_mean(centroids, _REFERENCE_TRIM),
        )

    def _suspected(self, account: str) -> bool:
        entry = self._accounts[account]
        return entry.tier != "normal" or entry.ring is not None

    def _retier(self, entry: _Account) -> None:
        if entry.pinned:
            return
        score = max(entry.peak, entry.ring_peak)
        requests = entry.state.requests
        if entry.ring is not None:  # a ring's evidence is its pooled requests
            requests = max(requests, self._rings[entry.ring].requests)
        tier = self.model.tier(score, requests)
        if _RANK[tier] <= _RANK[entry.tier]:
            return
        previous, entry.tier = entry.tier, tier
        self._tiers[entry.state.account] = tier
        if _RANK[tier] >= _RANK["throttle"] and entry.flagged_at is None:
            entry.flagged_at = entry.state.requests
        self._announce(entry, previous, score)

    def _announce(self, entry: _Account, previous: str, score: float) -> None:
        reasons = self.model.reasons(account_signals(entry.state, self._fleet))
        if entry.ring is not None:
            ring = self._rings[entry.ring]
            reasons.insert(0, f"in ring {ring.ring} of {len(ring.accounts)} accounts")
        change = TierChange(
            account=entry.state.account,
            tenant=entry.state.tenant,
            previous=previous,
            tier=entry.tier,
            pinned=entry.pinned,
            score=score,
            requests=entry.state.requests,
            reasons=tuple(reasons),
        )
        log.warning(
            "account %s (tenant %s): %s -> %s, score %.3f after %d requests: %s",
            change.account,
            change.tenant,
            previous,
            change.tier,
            score,
            change.requests,
            "; ".join(change.reasons) or "operator decision",
        )
        if self.on_tier_change is not None:
            try:
                self.on_tier_change(change)
            except Exception:  # recording must not stop the monitor
                log.exception("could not record the tier change of %s", change.account)

    def regroup(self) -> None:
        with self._lock:
            self._regroup()

    def _regroup(self) -> None:
        self._update_fleet_reference()
        forget = self._now - self.identity_retention
        if self._now - self._last_sweep >= RETENTION_SWEEP:
            # accounts that went quiet forget their tokens too, and the finder its copy of them
            self._last_sweep = self._now
            self._changed.update(self._accounts)
        for account in self._changed:
            entry = self._accounts[account]
            entry.state.forget_before(forget)
            if entry.signals is not None:
                self._finder.update(entry.state, self.model.deviation(entry.signals), entry.score)
        self._changed.clear()
        for entry in self._accounts.values():
            entry.ring = None
        rings: list[RingReport] = []
        for group in self._finder.find(self._fleet):
            # the ring's verdict reads its core: members that look odd on their own. Honest
            # accounts linked to it (the rest of a NAT it rides) neither dilute it nor pay.
            core = [
                account
                for account in group.accounts
                if self._accounts[account].peak >= self.model.ring_member_floor
            ]
            if len(core) < self.ring_rules.min_size or 2 * len(core) < len(group.accounts):
                continue
            states = [self._accounts[account].state for account in core]
            signals = pooled_signals(states, self._fleet)
            score = self.model.score(signals)
            if self.group_trace is not None:
                self.group_trace(group.accounts, core, score)
            if score < self.model.ring_threshold:
                continue  # linked, but not harvesting: a campus, a company, a cohort
            number = len(rings)
            reasons = group.reasons(self.model.links) + self.model.reasons(signals)
            rings.append(
                RingReport(
                    ring=number,
                    accounts=tuple(core),  # the rest are linked, not members
                    requests=sum(s.requests for s in states),
                    score=score,
                    reasons=tuple(reasons),
                )
            )
            verdict = max(score, self.model.flag)  # a ring's core is flagged
            for account in core:
                entry = self._accounts[account]
                entry.ring, entry.ring_score = number, score
                entry.ring_peak = max(entry.ring_peak, verdict)
        self._rings = rings
        for entry in self._accounts.values():
            if entry.ring is not None:
                self._retier(entry)

    # -- operators ----------------------------------------------------------------------------

    def set_tier(self, account: str, tier: str) -> None:
        """Pin an account's tier: an operator's decision ("normal" clears a false alarm), which
        the monitor leaves alone from then on."""
        self._set(account, tier, pinned=True, announce=True)

    def _set(self, account: str, tier: str, *, pinned: bool, announce: bool) -> None:
        if tier not in _RANK:
            raise ValueError(f"unknown tier {tier!r}; tiers are {', '.join(TIERS)}")
        with self._lock:
            entry = self._accounts.get(account)
            if entry is None:
                entry = self._accounts[account] = _Account(AccountState(account, ""))
            previous = entry.tier
            entry.tier, entry.pinned = tier, pinned
            if _RANK[tier] >= _RANK["throttle"] and entry.flagged_at is None:
                entry.flagged_at = entry.state.requests
            self._tiers[account] = tier
            if announce:
                self._announce(entry, previous, entry.score)

    def restore(self, tiers: dict[str, tuple[str, bool]]) -> None:
        """Put accounts back in the tiers recorded before a restart (pinned ones stay pinned;
        the others can still rise)."""
        for account, (tier, pinned) in tiers.items():
            if tier in _RANK:
                self._set(account, tier, pinned=pinned, announce=False)

    def signals(self, account: str) -> NDArray[np.float64]:
        with self._lock:
            return account_signals(self._accounts[account].state, self._fleet)

    def accounts(self) -> list[AccountReport]:
        """Every account seen, riskiest first."""
        with self._lock:
            reports = []
            for entry in self._accounts.values():
                signals = account_signals(entry.state, self._fleet)
                reasons = self.model.reasons(signals)
                if entry.ring is not None:
                    ring = self._rings[entry.ring]
                    reasons.insert(0, f"in ring {ring.ring} of {len(ring.accounts)} accounts")
                reports.append(
                    AccountReport(
                        account=entry.state.account,
                        tenant=entry.state.tenant,
                        requests=entry.state.requests,
                        score=entry.score,
                        ring=entry.ring,
                        ring_score=entry.ring_score if entry.ring is not None else None,
                        tier=entry.tier,
                        pinned=entry.pinned,
                        flagged_at=entry.flagged_at,
                        reasons=tuple(reasons),
                    )
                )
        return sorted(reports, key=lambda r: (-_RANK[r.tier], -r.score, r.account))

    def rings(self) -> list[RingReport]:
        with self._lock:
            return list(self._rings)


def _trimmed_mean(rows: NDArray[np.float64], trim: float) -> NDArray[np.float64]:
    """Per column, the mean of the rows between the `trim` and 1 - `trim` quantiles."""
    cut = int(trim * len(rows))
    ordered = np.sort(rows, axis=0)
    kept = ordered[cut : len(rows) - cut] if len(rows) - 2 * cut > 0 else ordered
    mean: NDArray[np.float64] = kept.mean(axis=0)
    return mean
