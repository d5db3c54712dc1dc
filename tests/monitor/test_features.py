from __future__ import annotations

import numpy as np

from distillguard.monitor.events import MonitorEvent
from distillguard.monitor.features import (
    FEATURE_INDEX,
    FEATURES,
    AccountState,
    account_signals,
    describe,
    pooled_signals,
)
from distillguard.monitor.text import prompt_features


def event(time: float, prompt: str, **changes: object) -> MonitorEvent:
    fields: dict[str, object] = {
        "time": time,
        "account": "k1",
        "tenant": "t1",
        "prompt": prompt,
        "turns": 1,
        "prompt_tokens": 20,
        "completion_tokens": 200,
        "max_tokens": None,
        "max_tokens_cap": 4096,
        "n": 1,
        "logprobs": False,
        "status": 200,
    }
    fields |= changes
    return MonitorEvent(**fields)  # type: ignore[arg-type]


def feed(state: AccountState, events: list[MonitorEvent]) -> None:
    for item in events:
        state.update(item, prompt_features(item.prompt))


def test_one_request_says_little_signals_stay_near_their_priors() -> None:
    state = AccountState("k1", "t1")
    feed(state, [event(0.0, "Think step by step: what is 2 + 2?", logprobs=True, n=4)])
    signals = account_signals(state, fleet_rate=1.0)
    for name in ("reasoning", "logprobs", "multiple_samples"):
        assert signals[FEATURE_INDEX[name]] < 0.2, name


def test_fractions_approach_what_the_account_does() -> None:
    state = AccountState("k1", "t1")
    feed(
        state,
        [
            event(
                60.0 * i,
                f"Think step by step: what is {i} times {i + 7}?",
                max_tokens=4096,
                logprobs=True,
            )
            for i in range(200)
        ],
    )
    signals = account_signals(state, fleet_rate=1.0)
    for name in ("reasoning", "logprobs", "maximal_max_tokens", "long_outputs", "one_shot"):
        assert signals[FEATURE_INDEX[name]] > 0.9, name
    assert signals[FEATURE_INDEX["template_reuse"]] > 0.9
    assert signals[FEATURE_INDEX["multiple_samples"]] < 0.05
    # one request a minute, exactly: as regular as it gets
    assert signals[FEATURE_INDEX["timing_regularity"]] > 0.9


def test_conversations_are_not_one_shot() -> None:
    state = AccountState("k1", "t1")
    feed(state, [event(30.0 * i, f"follow up {i}", turns=3) for i in range(100)])
    assert account_signals(state, 1.0)[FEATURE_INDEX["one_shot"]] < 0.1


def test_a_ring_of_one_pools_to_the_account_itself() -> None:
    state = AccountState("k1", "t1")
    feed(
        state,
        [event(45.0 * i, f"Solve carefully please now: item {i} of the list") for i in range(50)],
    )
    alone = account_signals(state, fleet_rate=2.0)
    pooled = pooled_signals([state], fleet_rate=2.0)
    assert np.allclose(alone, pooled)


def test_every_signal_reads_in_words() -> None:
    for signal in FEATURES:
        text = describe(signal.name, 0.5)
        assert text and "{" not in text
