"""Tiers govern logit_bias, logprobs, n and best_of, echo, prompt_logprobs, ignore_eos and
min_tokens; each refusal names its parameter; a policy file changes all of it; tier names are
checked, and an unknown one never gets any tier's privileges."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from distillguard.errors import ApiError, ConfigError
from distillguard.gateway.policy import (
    DEFAULT_TIERS,
    Tier,
    check_tier_name,
    enforce_tier,
    load_policy,
)
from distillguard.gateway.protocol import ParsedRequest, parse_body
from distillguard.gateway.settings import GatewaySettings


def chat(**fields: Any) -> ParsedRequest:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]} | fields
    return parse_body(body, chat=True, render_chat=json.dumps)


def completion(**fields: Any) -> ParsedRequest:
    return parse_body({"model": "m", "prompt": "hi"} | fields, chat=False, render_chat=json.dumps)


def refusal(tier: Tier | str, parsed: ParsedRequest) -> ApiError:
    with pytest.raises(ApiError) as raised:
        enforce_tier(DEFAULT_TIERS[tier] if isinstance(tier, str) else tier, parsed)
    return raised.value


def test_logit_bias_with_logprobs_is_refused_on_the_normal_tier() -> None:
    # the logit-extraction attack: bias chosen tokens, read their logprobs back
    # (Carlini et al. 2024)
    bias = {"1234": 100}
    for parsed in (
        chat(logit_bias=bias, logprobs=True),
        chat(logit_bias=bias, logprobs=True, top_logprobs=5),
        completion(logit_bias=bias, logprobs=0),
        completion(logit_bias=bias, prompt_logprobs=1),
        chat(logit_bias=bias, prompt_logprobs=0),
    ):
        error = refusal("normal", parsed)
        assert error.status == 400 and error.param == "logit_bias"
        assert "logprobs" in error.message


def test_logit_bias_alone_and_logprobs_alone_are_allowed_on_the_normal_tier() -> None:
    enforce_tier(DEFAULT_TIERS["normal"], chat(logit_bias={"1234": -100}))
    enforce_tier(DEFAULT_TIERS["normal"], chat(logprobs=True, top_logprobs=20))
    enforce_tier(DEFAULT_TIERS["normal"], chat(logit_bias={}, logprobs=True))  # biases nothing


@pytest.mark.parametrize("tier", ["watch", "throttle"])
def test_watch_and_throttle_tiers_refuse_logit_bias(tier: str) -> None:
    error = refusal(tier, completion(logit_bias={"7": 1}))
    assert error.status == 400 and error.param == "logit_bias"


@pytest.mark.parametrize(
    ("tier", "parsed", "param"),
    [
        ("normal", chat(n=9), "n"),
        ("watch", completion(n=5), "n"),
        ("normal", completion(best_of=9), "best_of"),
        ("watch", completion(best_of=5), "best_of"),
        ("throttle", completion(best_of=2), "best_of"),
        ("watch", chat(logprobs=True, top_logprobs=6), "top_logprobs"),
        ("throttle", completion(logprobs=1), "logprobs"),
        # logprobs themselves, even with no alternatives: the sampled token's logprob is the
        # teacher's confidence, a soft label
        ("throttle", chat(logprobs=True), "logprobs"),
        ("throttle", chat(logprobs=True, top_logprobs=0), "logprobs"),
        ("throttle", completion(logprobs=0), "logprobs"),
        ("watch", completion(prompt_logprobs=6), "prompt_logprobs"),
        ("throttle", chat(prompt_logprobs=0), "prompt_logprobs"),
        ("throttle", completion(echo=True), "echo"),
        ("throttle", completion(ignore_eos=True), "ignore_eos"),
        ("throttle", chat(min_tokens=1), "min_tokens"),
        ("throttle", chat(max_tokens=257), "max_tokens"),
    ],
)
def test_each_tier_refusal_is_a_400_naming_the_parameter(
    tier: str, parsed: ParsedRequest, param: str
) -> None:
    error = refusal(tier, parsed)
    assert error.status == 400 and error.param == param and param in error.message


def test_the_block_tier_refuses_with_403_before_any_field() -> None:
    error = refusal("block", completion(logit_bias={"1": 1}, logprobs=1))
    assert error.status == 403 and error.code == "account_blocked"


def test_echo_with_logprobs_needs_prompt_logprobs() -> None:
    # echo returns the prompt; with logprobs, the prompt's logprobs: the teacher's score of
    # any text the client writes
    tier = Tier(allow_prompt_logprobs=False)
    enforce_tier(tier, completion(echo=True))
    error = refusal(tier, completion(echo=True, logprobs=0))
    assert error.param == "echo"


def test_values_that_ask_for_nothing_pass_every_tier() -> None:
    parsed = completion(
        logit_bias={}, echo=False, ignore_eos=False, min_tokens=0, best_of=1, logprobs=None
    )
    for name in ("normal", "watch", "throttle"):
        enforce_tier(DEFAULT_TIERS[name], parsed)


def test_default_tiers_are_as_documented() -> None:
    normal, watch, throttle, block = (DEFAULT_TIERS[name] for name in TIERS)
    assert normal.allow_logit_bias and not normal.allow_logit_bias_with_logprobs
    assert (normal.max_n, normal.max_best_of, normal.max_top_logprobs) == (8, 8, 20)
    assert normal.allow_echo and normal.allow_prompt_logprobs and normal.allow_ignore_eos
    assert normal.max_min_tokens is None
    assert not watch.allow_logit_bias and (watch.max_n, watch.max_best_of) == (4, 4)
    assert watch.max_top_logprobs == 5 and watch.allow_echo and watch.allow_ignore_eos
    assert not throttle.allow_logit_bias and (throttle.max_n, throttle.max_best_of) == (1, 1)
    assert throttle.max_top_logprobs == 0 and throttle.max_tokens == 256
    assert normal.allow_logprobs and watch.allow_logprobs
    assert not (throttle.allow_logprobs or block.allow_logprobs)
    assert not (throttle.allow_echo or throttle.allow_prompt_logprobs or throttle.allow_ignore_eos)
    assert throttle.max_min_tokens == 0
    assert block.block and not block.allow_logit_bias
    assert not any(tier.allow_logit_bias_with_logprobs for tier in DEFAULT_TIERS.values())


TIERS = ("normal", "watch", "throttle", "block")


def test_a_policy_file_sets_the_new_tier_keys(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_text(
        "[tiers.normal]\nallow_logit_bias_with_logprobs = true\nmax_min_tokens = 64\n"
        "[tiers.watch]\nallow_logit_bias = true\nmax_best_of = 2\n"
        "[tiers.throttle]\nallow_ignore_eos = true\nallow_echo = true\n"
    )
    tiers = load_policy(path).tiers
    enforce_tier(tiers["normal"], chat(logit_bias={"1": 5}, logprobs=True))
    assert refusal(tiers["normal"], chat(min_tokens=65)).param == "min_tokens"
    enforce_tier(tiers["watch"], completion(logit_bias={"1": 5}, best_of=2))
    assert refusal(tiers["watch"], completion(best_of=3)).param == "best_of"
    enforce_tier(tiers["throttle"], completion(ignore_eos=True, echo=True))
    assert tiers["throttle"].max_n == DEFAULT_TIERS["throttle"].max_n  # the rest unchanged


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[tiers.normal]\nallow_logit_bias = 1\n", "true or false"),
        ("[tiers.normal]\nallow_logit_bias_with_logprobs = 'yes'\n", "true or false"),
        ("[tiers.watch]\nallow_echo = 0\n", "true or false"),
        ("[tiers.watch]\nallow_prompt_logprobs = 'no'\n", "true or false"),
        ("[tiers.throttle]\nallow_ignore_eos = 1\n", "true or false"),
        ("[tiers.throttle]\nallow_logprobs = 'no'\n", "true or false"),
        ("[tiers.throttle]\nmax_best_of = -1\n", "non-negative integer"),
        ("[tiers.throttle]\nmax_min_tokens = true\n", "non-negative integer"),
        ("[tiers.throttle]\nmax_min_tokens = 2.5\n", "non-negative integer"),
        ("[tiers.normal]\nallow_top_k = true\n", "unknown key"),
    ],
)
def test_each_new_tier_key_is_validated(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "policy.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_policy(path)


def test_a_policy_file_can_give_the_throttle_tier_its_logprobs_back(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_text("[tiers.throttle]\nallow_logprobs = true\n")
    enforce_tier(load_policy(path).tiers["throttle"], chat(logprobs=True))


@pytest.mark.parametrize("name", ["gold", "Normal", "", "normal "])
def test_an_unknown_tier_name_is_refused_never_given_privileges(name: str) -> None:
    with pytest.raises(ConfigError, match="unknown tier"):
        check_tier_name(name)


def test_the_gateway_refuses_tiers_that_leave_one_out() -> None:
    # a key's tier with no entry fell back to Tier(), the normal tier's privileges
    partial = {name: tier for name, tier in DEFAULT_TIERS.items() if name != "throttle"}
    with pytest.raises(ConfigError, match="throttle"):
        GatewaySettings(tiers=partial)
    with pytest.raises(ConfigError, match="gold"):
        GatewaySettings(tiers=dict(DEFAULT_TIERS) | {"gold": Tier()})
