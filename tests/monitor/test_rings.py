from __future__ import annotations

import numpy as np
import pytest

from distillguard.monitor.features import FEATURES, Fleet, account_signals
from distillguard.monitor.links import LINK_INDEX, LINKS, LinkModel
from distillguard.monitor.rings import RingFinder, RingRules, adjusted_rand_index
from distillguard.monitor.state import AccountState
from distillguard.monitor.text import prompt_features

from .test_features import event


def account(
    name: str, template: str, hours: list[int], topic: str, **origin: object
) -> AccountState:
    state = AccountState(name, "t")
    for index, hour in enumerate(hours):
        item = event(
            hour * 3600.0 + index, template.format(q=f"{topic} question {index}"), **origin
        )
        state.update(item, prompt_features(item.prompt))
    return state


def only(**weights: float) -> LinkModel:
    """A link model that reads the named links, each needed (bias: all but a half of them)."""
    values = tuple(weights.get(link.name, 0.0) for link in LINKS)
    return LinkModel(values, -(sum(weights.values()) - 0.5), 0.5)


def find(states: list[AccountState], model: LinkModel, **rules: int) -> list[list[str]]:
    finder = RingFinder(RingRules(**rules), model, len(FEATURES))
    fleet = Fleet()
    for state in states:
        signals = account_signals(state, fleet)
        finder.update(state, signals, 0.5)
    return [list(ring.accounts) for ring in finder.find(fleet)]


def test_adjusted_rand_index_known_values() -> None:
    assert adjusted_rand_index(["a", "a", "b", "b"], ["x", "x", "y", "y"]) == 1.0
    # by hand: index 2, expected 6 * 3 / 15 = 1.2, maximum (6 + 3) / 2 = 4.5
    truth = ["a", "a", "a", "b", "b", "b"]
    predicted = ["x", "x", "y", "y", "z", "z"]
    assert adjusted_rand_index(truth, predicted) == pytest.approx(0.8 / 3.3)
    assert adjusted_rand_index(["a", "a", "b", "b"], ["x", "y", "x", "y"]) < 0
    with pytest.raises(ValueError):
        adjusted_rand_index(["a"], ["x", "y"])


def test_accounts_sharing_template_and_timing_form_a_ring() -> None:
    template = "Solve the following carefully and show every step please: {q}"
    members = [account(f"r{i}", template, list(range(12)) * 2, "arithmetic") for i in range(5)]
    # the same public template, but its own hours: an unrelated batch job
    loner = account("batch", template, [40, 41] * 12, "arithmetic")
    stranger = account("s", "Tell me about {q} in a friendly tone", list(range(12)) * 2, "cats")
    rings = find([*members, loner, stranger], only(template=1.0, timing=1.0))
    assert rings == [sorted(m.account for m in members)]


def test_a_shared_network_links_accounts_without_any_template() -> None:
    subnet = {"network": "net-a", "address": "addr-1"}
    members = [
        account(f"h{i}", "{q}", list(range(i, i + 12)), f"topic{i}", **subnet) for i in range(4)
    ]
    elsewhere = account("x", "{q}", list(range(12)), "other", network="net-b")
    rings = find([*members, elsewhere], only(network=1.0))
    assert rings == [sorted(m.account for m in members)]
    assert find([*members, elsewhere], only(network=1.0, template=1.0)) == []


def test_too_few_linked_accounts_are_not_a_ring() -> None:
    template = "Solve the following carefully and show every step please: {q}"
    pair = [account(f"r{i}", template, list(range(12)) * 2, "arithmetic") for i in range(2)]
    assert find(pair, only(template=1.0), min_size=3) == []


def test_each_account_keeps_only_its_strongest_edges() -> None:
    subnet = {"network": "net-a"}
    members = [account(f"h{i}", "{q}", list(range(12)), f"t{i}", **subnet) for i in range(30)]
    finder = RingFinder(RingRules(neighbours=3), only(network=1.0), len(FEATURES))
    fleet = Fleet()
    for state in members:
        signals = account_signals(state, fleet)
        finder.update(state, signals, 0.5)
    rings = finder.find(fleet)
    assert len(rings) == 1 and len(rings[0].accounts) == 30
    assert rings[0].edges <= 30 * 3
    assert rings[0].links[LINK_INDEX["network"]] == pytest.approx(1.0)


def test_ring_reasons_name_the_links_that_hold_it() -> None:
    subnet = {"network": "net-a"}
    members = [account(f"h{i}", "{q}", list(range(12)), f"t{i}", **subnet) for i in range(4)]
    model = only(network=1.0)
    finder = RingFinder(RingRules(), model, len(FEATURES))
    for state in members:
        signals = account_signals(state, Fleet())
        finder.update(state, signals, 0.5)
    (ring,) = finder.find(Fleet())
    assert ring.reasons(model) == ["share a /24 or /64 network (1.00)"]


def test_links_are_symmetric_and_bounded() -> None:
    subnet = {"network": "net-a", "agent": "ua", "header_fingerprint": "fp", "created_at": 0.0}
    states = [account(f"h{i}", "{q} now", list(range(12)), f"t{i}", **subnet) for i in range(3)]
    finder = RingFinder(RingRules(), only(network=1.0), len(FEATURES))
    for state in states:
        signals = account_signals(state, Fleet())
        finder.update(state, signals, 0.5)
    left, right = np.repeat(np.arange(3), 3), np.tile(np.arange(3), 3)
    region = finder.roster.region(None)
    links = finder.roster.features(left, right, region).reshape(3, 3, -1)
    assert np.allclose(links, links.transpose(1, 0, 2), atol=1e-6)
    assert links.min() >= 0.0 and links.max() <= 1.0 + 1e-6
