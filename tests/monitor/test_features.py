from __future__ import annotations

import numpy as np

from distillguard.monitor.events import MonitorEvent
from distillguard.monitor.features import (
    FEATURE_INDEX,
    FEATURES,
    Fleet,
    account_signals,
    describe,
    pooled_signals,
)
from distillguard.monitor.state import AccountState
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
    signals = account_signals(state, Fleet())
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
    signals = account_signals(state, Fleet())
    for name in ("reasoning", "logprobs", "maximal_max_tokens", "long_outputs", "one_shot"):
        assert signals[FEATURE_INDEX[name]] > 0.9, name
    assert signals[FEATURE_INDEX["template_reuse"]] > 0.9
    assert signals[FEATURE_INDEX["multiple_samples"]] < 0.05
    # one request a minute, exactly: as regular as it gets
    assert signals[FEATURE_INDEX["timing_regularity"]] > 0.9


def test_conversations_are_not_one_shot() -> None:
    state = AccountState("k1", "t1")
    feed(state, [event(30.0 * i, f"follow up {i}", turns=3) for i in range(100)])
    assert account_signals(state, Fleet())[FEATURE_INDEX["one_shot"]] < 0.1


def test_a_ring_of_one_pools_to_the_account_itself() -> None:
    state = AccountState("k1", "t1")
    feed(
        state,
        [event(45.0 * i, f"Solve carefully please now: item {i} of the list") for i in range(50)],
    )
    alone = account_signals(state, Fleet(rate=2.0))
    pooled = pooled_signals([state], Fleet(rate=2.0))
    assert np.allclose(alone, pooled)


def test_every_signal_reads_in_words() -> None:
    for signal in FEATURES:
        text = describe(signal.name, 0.5)
        assert text and "{" not in text


def test_distribution_shift_is_near_zero_against_its_own_source_and_not_another() -> None:
    cooking = [f"how long should I roast vegetables for dinner, batch {i}" for i in range(40)]
    maths = [
        f"A train leaves at {i} pm at 60 miles per hour; how far has it gone?" for i in range(40)
    ]
    reference = np.mean([prompt_features(text).distribution for text in cooking], axis=0).astype(
        np.float64
    )
    fleet = Fleet(reference=reference)
    same, other = AccountState("a", "t"), AccountState("b", "t")
    feed(same, [event(60.0 * i, text) for i, text in enumerate(cooking[:20])])
    feed(other, [event(60.0 * i, text) for i, text in enumerate(maths[:20])])
    index = FEATURE_INDEX["distribution_shift"]
    assert abs(account_signals(same, fleet)[index]) < 0.02
    assert account_signals(other, fleet)[index] > 5 * abs(account_signals(same, fleet)[index])
    assert account_signals(other, Fleet())[index] == 0.0  # no reference, no test


def test_made_up_conversations_are_fresh_turns_and_real_ones_are_not() -> None:
    made_up, real = AccountState("a", "t"), AccountState("b", "t")
    feed(made_up, [event(60.0 * i, f"question {i}", turns=2) for i in range(40)])
    conversation = [event(60.0 * i, f"question {i}", turns=1 + i % 4) for i in range(40)]
    feed(real, conversation)
    index = FEATURE_INDEX["fresh_turns"]
    assert account_signals(made_up, Fleet())[index] > 0.8
    assert account_signals(real, Fleet())[index] < 0.2


def test_rotating_addresses_show_as_network_churn() -> None:
    rotating, home = AccountState("a", "t"), AccountState("b", "t")
    feed(rotating, [event(60.0 * i, f"q {i}", network=f"net-{i}") for i in range(40)])
    feed(home, [event(60.0 * i, f"q {i}", network=f"net-{i % 2}") for i in range(40)])
    index = FEATURE_INDEX["network_churn"]
    assert account_signals(rotating, Fleet())[index] > 0.8
    assert account_signals(home, Fleet())[index] < 0.1


def test_identity_tokens_are_forgotten_after_their_retention() -> None:
    state = AccountState("a", "t")
    feed(state, [event(0.0, "q", network="old-net", address="old-addr")])
    feed(state, [event(100.0, "q", network="new-net", address="new-addr")])
    state.forget_before(50.0)
    assert set(state.networks.counts) == {"new-net"}
    assert set(state.addresses.counts) == {"new-addr"}
