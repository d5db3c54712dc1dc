"""One request on its own: the features the request model reads."""

from __future__ import annotations

import numpy as np
import pytest

from distillguard.errors import ConfigError
from distillguard.monitor.requests import REQUEST_FEATURES, RequestModel, request_features
from distillguard.monitor.text import prompt_features

from .test_features import event

INDEX = {name: i for i, name in enumerate(REQUEST_FEATURES)}


def test_a_long_one_shot_request_reads_as_such() -> None:
    item = event(0.0, "Think step by step: what is 17 * 23?", max_tokens=4096, logprobs=True)
    values = request_features(item, prompt_features(item.prompt), False, None)
    for name in ("one_shot", "long_output", "maximal_max_tokens", "logprobs", "reasoning"):
        assert values[INDEX[name]] == 1.0, name
    assert values[INDEX["fresh_turn"]] == 0.0
    assert values[INDEX["rarity"]] == 0.0  # no fleet reference yet


def test_a_prompt_unlike_the_fleets_is_rare() -> None:
    fleet = [prompt_features(f"what should I cook for dinner tonight, idea {i}") for i in range(20)]
    reference = np.mean([f.distribution for f in fleet], axis=0).astype(np.float64)
    usual = event(0.0, "what should I cook for dinner tonight, idea 99")
    unusual = event(0.0, "A train leaves the station at 3 pm travelling 60 miles per hour")
    rare = [
        request_features(item, prompt_features(item.prompt), False, reference)[INDEX["rarity"]]
        for item in (usual, unusual)
    ]
    assert rare[0] < rare[1]


def test_a_model_without_requests_calls_nothing_collection() -> None:
    never = RequestModel.never()
    assert not never.collects(np.ones(len(REQUEST_FEATURES)))
    with pytest.raises(ConfigError, match="refit"):
        RequestModel((1.0,), 0.0)
