"""What identifies a person reaches the monitor only as keyed tokens."""

from __future__ import annotations

import pytest

from distillguard.keys.derive import journal_key, monitor_identity_key
from distillguard.keys.secret import MasterSecret
from distillguard.monitor.identity import (
    IdentityHasher,
    IdentityKind,
    header_order,
    identity_token,
    network_of,
)

KEY = bytes(range(32))


def test_tokens_depend_on_the_key_the_kind_and_the_value() -> None:
    token = identity_token(KEY, IdentityKind.ADDRESS, "203.0.113.7")
    assert token == identity_token(KEY, IdentityKind.ADDRESS, "203.0.113.7")
    assert len(token) == 16 and "203" not in token
    assert token != identity_token(bytes(32), IdentityKind.ADDRESS, "203.0.113.7")
    assert token != identity_token(KEY, IdentityKind.NETWORK, "203.0.113.7")
    assert token != identity_token(KEY, IdentityKind.ADDRESS, "203.0.113.8")
    assert identity_token(KEY, IdentityKind.AGENT, "") == ""  # unknown stays unknown


def test_a_short_key_is_refused() -> None:
    with pytest.raises(ValueError):
        identity_token(b"short", IdentityKind.ORG, "acme")
    with pytest.raises(ValueError):
        IdentityHasher(b"short")


def test_networks_are_the_slash_24_or_slash_64() -> None:
    assert network_of("203.0.113.7") == "203.0.113.0/24"
    assert network_of("2001:db8:1:2:3:4:5:6") == "2001:db8:1:2::/64"
    assert network_of("[2001:db8::1]") == "2001:db8::/64"
    assert network_of("::ffff:198.51.100.9") == "198.51.100.0/24"  # IPv4-mapped
    assert network_of("not an address") == ""


def test_header_order_is_the_names_in_order_lowercased() -> None:
    assert header_order(["Host", "User-Agent", "Accept"]) == "host,user-agent,accept"
    assert header_order(["accept", "host"]) != header_order(["host", "accept"])


def test_the_hasher_gives_a_request_its_tokens() -> None:
    hasher = IdentityHasher(KEY, cache_size=2)
    first = hasher.request("203.0.113.7", "curl/8.5.0", ["host", "user-agent"])
    neighbour = hasher.request("203.0.113.99", "curl/8.5.0", ["host", "user-agent"])
    assert first.address == identity_token(KEY, IdentityKind.ADDRESS, "203.0.113.7")
    assert first.network == neighbour.network != first.address
    assert first.address != neighbour.address
    assert first.agent == identity_token(KEY, IdentityKind.AGENT, "curl/8.5.0")
    assert first.header_fingerprint == identity_token(KEY, IdentityKind.HEADERS, "host,user-agent")
    for index in range(5):  # past the cache's size: it starts over, tokens do not change
        hasher.request(f"198.51.100.{index}")
    assert hasher.request("203.0.113.7", "curl/8.5.0", ["host", "user-agent"]) == first


def test_the_identity_key_is_derived_from_the_master_secret_and_its_own() -> None:
    master = MasterSecret(b"m" * 32, "test")
    key = monitor_identity_key(master)
    assert key == monitor_identity_key(MasterSecret(b"m" * 32, "test"))
    assert key != monitor_identity_key(MasterSecret(b"n" * 32, "test"))
    assert key != journal_key(master)
    assert len(key) == 32
