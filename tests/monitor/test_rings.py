from __future__ import annotations

import pytest

from distillguard.monitor.features import AccountState
from distillguard.monitor.rings import RingRules, adjusted_rand_index, find_rings
from distillguard.monitor.text import prompt_features

from .test_features import event


def account(name: str, template: str, hours: list[int], topic: str) -> AccountState:
    state = AccountState(name, "t")
    for index, hour in enumerate(hours):
        item = event(hour * 3600.0 + index, template.format(q=f"{topic} question {index}"))
        state.update(item, prompt_features(item.prompt))
    return state


def test_adjusted_rand_index_known_values() -> None:
    assert adjusted_rand_index(["a", "a", "b", "b"], ["x", "x", "y", "y"]) == 1.0
    # by hand: index 2, expected 6 * 3 / 15 = 1.2, maximum (6 + 3) / 2 = 4.5
    truth = ["a", "a", "a", "b", "b", "b"]
    predicted = ["x", "x", "y", "y", "z", "z"]
    assert adjusted_rand_index(truth, predicted) == pytest.approx(0.8 / 3.3)
    assert adjusted_rand_index(["a", "a", "b", "b"], ["x", "y", "x", "y"]) < 0
    with pytest.raises(ValueError):
        adjusted_rand_index(["a"], ["x", "y"])


def test_accounts_sharing_template_timing_and_source_form_a_ring() -> None:
    template = "Solve the following carefully and show every step please: {q}"
    members = [account(f"r{i}", template, list(range(12)) * 2, "arithmetic") for i in range(5)]
    # the same public template, but its own hours: an unrelated batch job
    loner = account("batch", template, [40, 41] * 12, "arithmetic")
    stranger = account("s", "Tell me about {q} in a friendly tone", list(range(12)) * 2, "cats")
    rings = find_rings([*members, loner, stranger], RingRules())
    assert rings == [sorted(m.account for m in members)]


def test_too_few_linked_accounts_are_not_a_ring() -> None:
    template = "Solve the following carefully and show every step please: {q}"
    pair = [account(f"r{i}", template, list(range(12)) * 2, "arithmetic") for i in range(2)]
    assert find_rings(pair, RingRules(min_size=3)) == []
