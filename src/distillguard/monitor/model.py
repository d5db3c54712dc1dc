"""The risk model: a logistic score in [0, 1] over the standardized signals, its tier
thresholds, the reasons behind a score in words, and the link model that groups accounts into
rings (`monitor.links`), fitted with it.

Weights and thresholds are fitted (`experiments.fitting.fit_monitor`) on simulated traffic
from one fold of the prompt sources and evaluated on another (benchmarks/monitor.py). The
shipped `default_risk_model.json` is such a fit; `distillguard serve --policy` can point at
another.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from distillguard.errors import ConfigError
from distillguard.monitor.features import FEATURES, describe
from distillguard.monitor.links import LinkModel
from distillguard.monitor.requests import RequestModel

__all__ = ["TIERS", "RiskModel", "fit_logistic"]

TIERS = ("normal", "watch", "throttle", "block")
DEFAULT_MODEL_FILE = "default_risk_model.json"


@dataclass(frozen=True)
class RiskModel:
    features: tuple[str, ...]
    weights: tuple[float, ...]
    bias: float
    means: tuple[float, ...]
    scales: tuple[float, ...]
    watch: float  # score thresholds of the tiers
    flag: float  # "throttle": the tier the evaluation counts as flagged
    block: float
    min_requests: int = 10  # no tier above normal before this many requests
    block_min_requests: int = 200
    fitted_on: str = ""
    links: LinkModel = field(default_factory=LinkModel.default)
    requests: RequestModel = field(default_factory=RequestModel.never)
    # a ring lifts a member only when the member's own highest score reaches this
    ring_member_floor: float = 0.0
    # a group is a ring when its core's pooled score reaches this (None: `flag`); its core
    # is then flagged. Fitted on honest groups (a campus cohort pools to more than a person)
    ring_flag: float | None = None

    def __post_init__(self) -> None:
        names = tuple(signal.name for signal in FEATURES)
        if self.features != names:
            raise ConfigError(
                f"risk model is for signals {list(self.features)}, this version computes "
                f"{list(names)}; refit it (benchmarks/monitor.py --write-model)"
            )
        if not 0.0 <= self.watch <= self.flag <= self.block <= 1.0:
            raise ConfigError("risk model thresholds must satisfy 0 <= watch <= flag <= block <= 1")

    def standardized(self, signals: NDArray[np.float64]) -> NDArray[np.float64]:
        standardized: NDArray[np.float64] = (signals - np.asarray(self.means)) / np.asarray(
            self.scales
        )
        return standardized

    def deviation(self, signals: NDArray[np.float64]) -> NDArray[np.float64]:
        """How far the signals are from an ordinary account's (the signals' priors), in
        standard deviations: the direction of an account's behaviour, for linking."""
        priors = np.asarray([signal.prior for signal in FEATURES])
        deviation: NDArray[np.float64] = (signals - priors) / np.asarray(self.scales)
        return deviation

    def logit(self, signals: NDArray[np.float64]) -> float:
        return float(self.standardized(signals) @ np.asarray(self.weights)) + self.bias

    def score(self, signals: NDArray[np.float64]) -> float:
        return _sigmoid(self.logit(signals))

    def scores(self, signals: NDArray[np.float64]) -> NDArray[np.float64]:
        """Scores of many signal rows at once; shape (rows,)."""
        standardized = (signals - np.asarray(self.means)) / np.asarray(self.scales)
        logits = standardized @ np.asarray(self.weights) + self.bias
        scores: NDArray[np.float64] = 1.0 / (1.0 + np.exp(-np.clip(logits, -60, 60)))
        return scores

    def tier(self, score: float, requests: int) -> str:
        if requests < self.min_requests:
            return "normal"
        if score >= self.block and requests >= self.block_min_requests:
            return "block"
        if score >= self.flag:
            return "throttle"
        if score >= self.watch:
            return "watch"
        return "normal"

    def reasons(self, signals: NDArray[np.float64], top: int = 3) -> list[str]:
        """The signals that push this score up most, against an ordinary account, in words."""
        weights = np.asarray(self.weights)
        scales = np.asarray(self.scales)
        priors = np.asarray([signal.prior for signal in FEATURES])
        contributions = weights * (signals - priors) / scales
        order = np.argsort(-contributions)
        return [
            describe(FEATURES[i].name, float(signals[i]))
            for i in order[:top]
            if contributions[i] > 0.25
        ]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> RiskModel:
        try:
            data = json.loads(text)
            return cls(
                features=tuple(data["features"]),
                weights=tuple(float(w) for w in data["weights"]),
                bias=float(data["bias"]),
                means=tuple(float(m) for m in data["means"]),
                scales=tuple(float(s) for s in data["scales"]),
                watch=float(data["watch"]),
                flag=float(data["flag"]),
                block=float(data["block"]),
                min_requests=int(data.get("min_requests", 10)),
                block_min_requests=int(data.get("block_min_requests", 200)),
                fitted_on=str(data.get("fitted_on", "")),
                links=_links_from(data.get("links")),
                requests=_requests_from(data.get("requests")),
                ring_member_floor=float(data.get("ring_member_floor", 0.0)),
                ring_flag=None if data.get("ring_flag") is None else float(data["ring_flag"]),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"not a risk model file: {exc}") from None

    @classmethod
    def load(cls, path: Path | None = None) -> RiskModel:
        """The model in `path`, or the shipped default."""
        if path is None:
            text = resources.files("distillguard.monitor").joinpath(DEFAULT_MODEL_FILE)
            return cls.from_json(text.read_text())
        try:
            return cls.from_json(Path(path).read_text())
        except OSError as exc:
            raise ConfigError(f"cannot read risk model {path}: {exc.strerror}") from None

    @property
    def ring_threshold(self) -> float:
        return self.flag if self.ring_flag is None else self.ring_flag

    def with_thresholds(self, **thresholds: float | int | None) -> RiskModel:
        changes: dict[str, Any] = dict(thresholds)
        return replace(self, **changes)

    def with_links(self, links: LinkModel) -> RiskModel:
        return replace(self, links=links)

    def with_requests(self, requests: RequestModel) -> RiskModel:
        return replace(self, requests=requests)


def _requests_from(data: object) -> RequestModel:
    """The request model of a risk model file; one that calls nothing when the file has none."""
    if data is None:
        return RequestModel.never()
    if not isinstance(data, dict):
        raise TypeError("requests is not an object")
    return RequestModel(weights=tuple(float(w) for w in data["weights"]), bias=float(data["bias"]))


def _links_from(data: object) -> LinkModel:
    """The link model of a risk model file; the hand-set default when the file has none."""
    if data is None:
        return LinkModel.default()
    if not isinstance(data, dict):
        raise TypeError("links is not an object")
    return LinkModel(
        weights=tuple(float(w) for w in data["weights"]),
        bias=float(data["bias"]),
        threshold=float(data["threshold"]),
    )


def _sigmoid(value: float) -> float:
    if value >= 0:
        return 1.0 / (1.0 + math.exp(-value))
    exp = math.exp(value)
    return exp / (1.0 + exp)


def fit_logistic(
    signals: NDArray[np.float64],
    labels: NDArray[np.float64],
    sample_weights: NDArray[np.float64],
    *,
    l2: float = 0.01,
    iterations: int = 50,
) -> tuple[NDArray[np.float64], float, NDArray[np.float64], NDArray[np.float64]]:
    """L2-regularized logistic regression with non-negative weights, on standardized signals.

    Every signal is oriented so that more of it means more like harvesting; a weight that came
    out negative would only encode an accident of the fitting traffic (a prompt set that
    happens to repeat, say), so such signals are held at zero and the rest refitted (an active
    set). Newton's method (IRLS) fits each set. Rows are weighted so that every account counts
    the same however many snapshots it contributes. Returns (weights, bias, means, scales).
    """
    means = np.average(signals, axis=0, weights=sample_weights)
    scales = np.sqrt(np.average((signals - means) ** 2, axis=0, weights=sample_weights))
    scales = np.where(scales > 1e-9, scales, 1.0)
    standardized = (signals - means) / scales
    active = np.ones(signals.shape[1], dtype=bool)
    while True:
        weights, bias = _newton(
            standardized[:, active], labels, sample_weights, l2=l2, iterations=iterations
        )
        if (weights >= 0).all():
            break
        still = np.flatnonzero(active)
        active[still[weights < 0]] = False
    full = np.zeros(signals.shape[1])
    full[active] = weights
    return full, bias, means, scales


def _newton(
    standardized: NDArray[np.float64],
    labels: NDArray[np.float64],
    sample_weights: NDArray[np.float64],
    *,
    l2: float,
    iterations: int,
) -> tuple[NDArray[np.float64], float]:
    design = np.hstack([standardized, np.ones((len(standardized), 1))])
    theta = np.zeros(design.shape[1])
    penalty = np.full(design.shape[1], l2)
    penalty[-1] = 0.0  # the bias is not shrunk
    total = sample_weights.sum()
    for _ in range(iterations):
        probabilities = 1.0 / (1.0 + np.exp(-np.clip(design @ theta, -60, 60)))
        gradient = design.T @ (sample_weights * (probabilities - labels)) / total
        gradient += penalty * theta / total
        curvature = sample_weights * probabilities * (1.0 - probabilities) / total
        hessian = (design * curvature[:, None]).T @ design + np.diag(penalty / total)
        step = np.linalg.solve(hessian, gradient)
        theta -= step
        if float(np.max(np.abs(step))) < 1e-8:
            break
    return theta[:-1], float(theta[-1])
