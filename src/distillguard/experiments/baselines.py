"""Baselines the monitor is compared with, each fitted like the monitor on the fitting
simulations' benign accounts (at most `fpr_target` of them flagged):

- a rate threshold: requests in any sliding hour;
- PRADA (Juuti et al., EuroS&P 2019): each new query's distance to the nearest earlier query of
  the same account, and a Shapiro-Wilk test of those distances; flagged when W falls below a
  threshold;
- the distribution detector (after arXiv 2606.05725): a two-sample test of an account's prompt
  embeddings against the benign fleet's, the unbiased MMD^2 under a Gaussian kernel (the
  monitor's `distribution_shift` signal: shrunk toward 0 for few prompts), with the threshold
  set from benign-against-fleet comparisons; it reads nothing but the prompts.
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

from distillguard.experiments.evaluate import DetectorRun
from distillguard.experiments.fitting import Trace
from distillguard.experiments.simulate import Simulation
from distillguard.monitor.events import MonitorEvent
from distillguard.monitor.features import FEATURE_INDEX
from distillguard.monitor.text import embed, words

__all__ = ["DistributionBaseline", "PradaBaseline", "RateBaseline"]


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


@dataclass
class DistributionBaseline:
    """Flag an account once its prompts' MMD^2 against the fleet exceeds `threshold`, after at
    least `min_prompts` prompts. Reads the signal from a replay's trace of signals."""

    threshold: float = math.inf
    min_prompts: int = 20

    def _walk(self, recorded: Trace) -> dict[str, list[tuple[int, float]]]:
        column = FEATURE_INDEX["distribution_shift"]
        found: dict[str, list[tuple[int, float]]] = {}
        for account, count, row in zip(
            recorded.accounts, recorded.counts, recorded.rows, strict=True
        ):
            if count >= self.min_prompts:
                found.setdefault(account, []).append((count, float(row[column])))
        return found

    def fit(self, traces: Sequence[Trace], fpr_target: float = 0.0025) -> DistributionBaseline:
        peaks = []
        for recorded in traces:
            walked = self._walk(recorded)
            peaks += [
                max((v for _, v in walked.get(a, [])), default=-math.inf)
                for a, t in recorded.truth.items()
                if not t.harvester
            ]
        ordered = sorted(peaks)
        allowed = math.floor(fpr_target * len(ordered))
        self.threshold = float(ordered[len(ordered) - 1 - allowed])
        return self

    def replay(self, recorded: Trace) -> DetectorRun:
        flagged: dict[str, int] = {}
        for account, values in self._walk(recorded).items():
            for count, value in values:
                if value > self.threshold:
                    flagged[account] = count
                    break
        return DetectorRun(flagged, [])
