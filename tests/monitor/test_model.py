from __future__ import annotations

import json

import numpy as np
import pytest

from distillguard.errors import ConfigError
from distillguard.monitor.features import FEATURES
from distillguard.monitor.links import LINKS, LinkModel
from distillguard.monitor.model import TIERS, RiskModel, fit_logistic
from distillguard.monitor.requests import REQUEST_FEATURES, RequestModel


def model(**changes: object) -> RiskModel:
    names = tuple(signal.name for signal in FEATURES)
    fields: dict[str, object] = {
        "features": names,
        "weights": tuple(1.0 for _ in names),
        "bias": 0.0,
        "means": tuple(0.0 for _ in names),
        "scales": tuple(1.0 for _ in names),
        "watch": 0.5,
        "flag": 0.8,
        "block": 0.95,
        "min_requests": 10,
        "block_min_requests": 100,
    }
    return RiskModel(**(fields | changes))  # type: ignore[arg-type]


def test_fit_separates_classes_with_non_negative_weights() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, size=4000).astype(float)
    informative = labels * 2.0 + rng.normal(size=4000)
    anti = -labels * 0.5 + rng.normal(size=4000)  # points the wrong way: must be held at zero
    noise = rng.normal(size=4000)
    signals = np.column_stack([informative, anti, noise])
    weights, bias, means, scales = fit_logistic(signals, labels, np.ones(4000))
    assert weights[0] > 1.0
    assert weights[1] == 0.0
    assert (weights >= 0).all()
    logits = ((signals - means) / scales) @ weights + bias
    accuracy = float(((logits > 0) == (labels == 1)).mean())
    assert accuracy > 0.8


def test_tiers_follow_thresholds_and_evidence() -> None:
    risk = model()
    assert risk.tier(0.99, requests=5) == "normal"  # too few requests to act on
    assert risk.tier(0.3, 50) == "normal"
    assert risk.tier(0.6, 50) == "watch"
    assert risk.tier(0.9, 50) == "throttle"
    assert risk.tier(0.99, 50) == "throttle"  # block needs block_min_requests
    assert risk.tier(0.99, 100) == "block"
    assert TIERS == ("normal", "watch", "throttle", "block")


def test_json_round_trip_and_the_shipped_model_loads() -> None:
    risk = model(fitted_on="test")
    assert RiskModel.from_json(risk.to_json()) == risk
    shipped = RiskModel.load()
    assert shipped.features == tuple(signal.name for signal in FEATURES)
    assert 0 < shipped.watch <= shipped.flag <= shipped.block <= 1


def test_a_model_for_other_signals_or_bad_thresholds_is_refused() -> None:
    with pytest.raises(ConfigError, match="refit"):
        model(features=("rate_vs_fleet",))
    with pytest.raises(ConfigError, match="thresholds"):
        model(watch=0.9, flag=0.5)
    with pytest.raises(ConfigError, match="not a risk model"):
        RiskModel.from_json('{"weights": 1}')


def test_reasons_name_the_signals_that_push_the_score_up() -> None:
    names = [signal.name for signal in FEATURES]
    weights = tuple(5.0 if name == "reasoning" else 0.0 for name in names)
    risk = model(weights=weights)
    signals = np.asarray([signal.prior for signal in FEATURES])
    signals[names.index("reasoning")] = 0.9
    reasons = risk.reasons(signals)
    assert reasons == ["90% of prompts ask for step-by-step reasoning"]
    assert risk.reasons(np.asarray([signal.prior for signal in FEATURES])) == []


def test_links_requests_and_ring_thresholds_travel_with_the_model() -> None:
    links = LinkModel(tuple(float(i) for i in range(len(LINKS))), -3.0, 0.7)
    requests = RequestModel(tuple(0.5 for _ in REQUEST_FEATURES), -1.0)
    risk = model(links=links, requests=requests, ring_member_floor=0.4, ring_flag=0.6)
    loaded = RiskModel.from_json(risk.to_json())
    assert loaded == risk
    assert loaded.ring_threshold == 0.6
    assert model().ring_threshold == model().flag  # no ring threshold: the flag's


def test_a_model_file_from_before_links_loads_with_defaults() -> None:
    data = json.loads(model().to_json())
    for name in ("links", "requests", "ring_member_floor", "ring_flag"):
        del data[name]
    loaded = RiskModel.from_json(json.dumps(data))
    assert loaded.links == LinkModel.default()
    assert loaded.requests == RequestModel.never()
    with pytest.raises(ConfigError, match="refit"):
        RiskModel.from_json(
            json.dumps(data | {"links": {"weights": [1.0], "bias": 0, "threshold": 0.5}})
        )
