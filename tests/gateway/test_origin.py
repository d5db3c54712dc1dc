"""Who sent a request: the client address only from trusted proxies' forwarding headers, read
from the right; the monitor's event carries tokens of the origin, never its values."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from distillguard.errors import ConfigError
from distillguard.experiments.simulate import MODEL, SimulatedUpstream
from distillguard.gateway.apikeys import KeyStore, create_api_key
from distillguard.gateway.app import Gateway, GatewaySettings
from distillguard.gateway.backends import UpstreamBackend
from distillguard.gateway.origin import (
    Origins,
    ProxyHeader,
    TrustedProxies,
    client_address,
    forwarded_hops,
    parse_hop,
)
from distillguard.monitor.events import MonitorEvent
from distillguard.monitor.identity import IdentityHasher, IdentityKind, header_order
from distillguard.store import connect
from distillguard.store.audit import AuditLog

XFF = TrustedProxies.parse(["10.0.0.0/8", "2001:db8:ffff::/48"])
FORWARDED = TrustedProxies.parse(["10.0.0.0/8", "2001:db8:ffff::/48"], "forwarded")
PROXY = "10.1.2.3"


# -- the walk over the forwarding header ---------------------------------------------------


def test_a_spoofed_header_from_an_untrusted_peer_is_ignored() -> None:
    for proxies in (XFF, FORWARDED):
        header = "1.2.3.4" if proxies is XFF else "for=1.2.3.4"
        assert client_address("198.51.100.9", [header], proxies) == "198.51.100.9"
    # with no trusted proxy configured, even a private peer's header is ignored
    assert client_address(PROXY, ["1.2.3.4"], TrustedProxies()) == PROXY


def test_the_right_most_hop_that_is_not_a_trusted_proxy_is_the_client() -> None:
    # the client wrote "6.6.6.6" itself; the first proxy appended the real peer 203.0.113.7,
    # a second (trusted) proxy appended the first
    assert client_address(PROXY, ["6.6.6.6, 203.0.113.7, 10.9.9.9"], XFF) == "203.0.113.7"
    assert client_address(PROXY, ["6.6.6.6", "203.0.113.7"], XFF) == "203.0.113.7"


def test_hops_left_of_the_client_are_never_read() -> None:
    for junk in ("not an address", '"unbalanced', "for=", "999.1.1.1", "unknown"):
        assert client_address(PROXY, [f"{junk}, 203.0.113.7"], XFF) == "203.0.113.7"


def test_every_hop_a_trusted_proxy_gives_the_left_most() -> None:
    assert client_address(PROXY, ["10.0.0.7, 10.0.0.8"], XFF) == "10.0.0.7"


@pytest.mark.parametrize("header", ["", " ", ",", "garbage", "1.2.3.4.5", "[::1", "[::1]x"])
def test_a_malformed_header_falls_back_to_the_peer(header: str) -> None:
    assert client_address(PROXY, [header], XFF) == PROXY
    assert client_address(PROXY, [header], FORWARDED) == PROXY


@pytest.mark.parametrize(
    ("value", "client"),
    [
        ("for=192.0.2.60;proto=http;by=203.0.113.43", "192.0.2.60"),
        ('For="192.0.2.60:8080"', "192.0.2.60"),
        ('for="[2001:db8:cafe::17]:4711"', "2001:db8:cafe::17"),
        ('for="[2001:db8:cafe::17]"', "2001:db8:cafe::17"),
        ('for="::ffff:192.0.2.1"', "192.0.2.1"),  # an IPv4-mapped address is the IPv4 one
        ("for=192.0.2.43, for=198.51.100.17", "198.51.100.17"),
        ('for="\\"a, b\\"", for=198.51.100.17', "198.51.100.17"),  # escaped quote and comma
        ('for="evil, for=198.51.100.17', "198.51.100.17"),  # the client's unbalanced quote
        ("proto=https;for=198.51.100.17", "198.51.100.17"),  # any order, any case
        ("for=198.51.100.17, for=10.0.0.9", "198.51.100.17"),  # through a second proxy
    ],
)
def test_forwarded_elements_are_read_per_rfc_7239(value: str, client: str) -> None:
    assert client_address(PROXY, [value], FORWARDED) == client


@pytest.mark.parametrize("hop", ["unknown", "_hidden", "_SEVKISEK", '"_gazonk"', "proto=http"])
def test_an_unknown_or_obfuscated_hop_stops_the_walk_at_the_last_trusted_hop(hop: str) -> None:
    element = hop if "=" in hop else f"for={hop}"
    assert client_address(PROXY, [f"for=6.6.6.6, {element}"], FORWARDED) == PROXY
    assert client_address(PROXY, [f"for=6.6.6.6, {element}, for=10.0.0.9"], FORWARDED) == (
        "10.0.0.9"
    )
    assert client_address(PROXY, [f"6.6.6.6, {hop.strip(chr(34))}"], XFF) == PROXY


def test_only_the_configured_header_is_read() -> None:
    # proxies that append X-Forwarded-For pass a client's own Forwarded through untouched
    scope = _scope(PROXY, [("forwarded", "for=6.6.6.6"), ("x-forwarded-for", "203.0.113.7")])
    hasher = IdentityHasher(b"k" * 32)
    assert Origins(XFF, hasher).of(scope).address == hasher.token(
        IdentityKind.ADDRESS, "203.0.113.7"
    )
    assert Origins(FORWARDED, hasher).of(scope).address == hasher.token(
        IdentityKind.ADDRESS, "6.6.6.6"
    )


def test_forwarded_hops_split_outside_quotes_from_the_right() -> None:
    assert list(forwarded_hops('for="a,b";proto=x, for=c')) == ["c", "a,b"]
    assert list(forwarded_hops("by=10.0.0.1")) == [""]


def test_hops_parse_with_ports_brackets_and_zones() -> None:
    assert parse_hop("192.0.2.1:443") == "192.0.2.1"
    assert parse_hop("[2001:db8::1]:443") == "2001:db8::1"
    assert parse_hop("2001:db8::1") == "2001:db8::1"
    assert parse_hop("fe80::1%eth0") == "fe80::1"
    assert parse_hop("unknown") is None and parse_hop("_x") is None and parse_hop("") is None


def test_trusted_proxies_reject_what_is_not_a_network() -> None:
    with pytest.raises(ConfigError, match="not an address or CIDR"):
        TrustedProxies.parse(["10.0.0.0/33"])
    with pytest.raises(ConfigError, match="unknown proxy header"):
        TrustedProxies.parse([], "x-real-ip")
    single = TrustedProxies.parse(["10.0.0.1", "2001:db8::1"])
    assert [network.prefixlen for network in single.networks] == [32, 128]
    assert single.header is ProxyHeader.X_FORWARDED_FOR


def test_an_ipv4_mapped_peer_is_its_ipv4_address() -> None:
    hasher = IdentityHasher(b"k" * 32)
    origins = Origins(TrustedProxies(), hasher)
    assert origins.of(_scope("::ffff:203.0.113.7", [])) == origins.of(_scope("203.0.113.7", []))


def test_no_hasher_or_no_scope_gives_an_unknown_origin() -> None:
    assert Origins(XFF, None).of(_scope(PROXY, [])).address == ""
    assert Origins(XFF, IdentityHasher(b"k" * 32)).of(None).address == ""


def _scope(peer: str, headers: list[tuple[str, str]]) -> dict[str, Any]:
    return {
        "client": (peer, 5000),
        "headers": [(name.encode(), value.encode()) for name, value in headers],
    }


# -- through the gateway ---------------------------------------------------------------------

SECRET_ADDRESS = "203.0.113.77"
SECRET_AGENT = "HarvestBot/9.9 (contact unique-agent-marker@example.org)"
ORG = "Acme Research Ltd"


@dataclass
class Setup:
    gateway: Gateway
    events: list[MonitorEvent]
    hasher: IdentityHasher
    key: str
    org_token: str
    home: Path
    audit: AuditLog


class Recorder:
    def __init__(self) -> None:
        self.events: list[MonitorEvent] = []

    def observe(self, event: MonitorEvent) -> None:
        self.events.append(event)

    def tier_of(self, account: str) -> str:
        return "normal"


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[Setup]:
    hasher = IdentityHasher(hashlib.sha256(b"origin tests").digest())
    org_token = hasher.token(IdentityKind.ORG, ORG.casefold())
    connection = connect(tmp_path, shared=True)
    key, _ = create_api_key(
        connection, "acme", rpm=1000, tpm=10**6, org_token=org_token, signup_program="education"
    )
    audit = AuditLog(lambda: connect(tmp_path))
    recorder = Recorder()
    gateway = Gateway(
        UpstreamBackend(SimulatedUpstream(), (MODEL,)),
        KeyStore(connection),
        audit,
        GatewaySettings(trusted_proxies=XFF),
        monitor=recorder,
        identity=hasher,
    )
    yield Setup(gateway, recorder.events, hasher, key, org_token, tmp_path, audit)
    audit.close()
    connection.close()


def post(
    setup: Setup, path: str, body: dict[str, Any], peer: str, headers: dict[str, str]
) -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=setup.gateway.app, client=(peer, 40_000))
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
            sent = {"authorization": f"Bearer {setup.key}"} | headers
            return await client.post(path, json=body, headers=sent)

    return asyncio.run(go())


CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 8}
COMPLETION = {"model": MODEL, "prompt": "hello", "max_tokens": 8}


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/chat/completions", CHAT),
        ("/v1/completions", COMPLETION),
        ("/v1/chat/completions", CHAT | {"stream": True}),
        ("/v1/completions", COMPLETION | {"stream": True}),
    ],
)
def test_the_event_carries_tokens_of_the_origin_and_the_account(
    setup: Setup, path: str, body: dict[str, Any]
) -> None:
    response = post(setup, path, body, SECRET_ADDRESS, {"user-agent": SECRET_AGENT})
    assert response.status_code == 200, response.text
    (event,) = setup.events
    token = setup.hasher.token
    assert event.address == token(IdentityKind.ADDRESS, SECRET_ADDRESS)
    assert event.network == token(IdentityKind.NETWORK, "203.0.113.0/24")
    assert event.agent == token(IdentityKind.AGENT, SECRET_AGENT)
    names = [name.decode() for name, _ in response.request.headers.raw]
    assert event.header_fingerprint == token(IdentityKind.HEADERS, header_order(names))
    assert (event.org, event.signup_program) == (setup.org_token, "education")
    assert event.created_at is not None and abs(event.created_at - time.time()) < 60


def test_a_spoofed_x_forwarded_for_from_an_untrusted_peer_is_ignored(setup: Setup) -> None:
    post(setup, "/v1/completions", COMPLETION, SECRET_ADDRESS, {"x-forwarded-for": "1.2.3.4"})
    assert setup.events[0].address == setup.hasher.token(IdentityKind.ADDRESS, SECRET_ADDRESS)


def test_a_trusted_proxy_names_the_client(setup: Setup) -> None:
    forwarded = {"x-forwarded-for": f"6.6.6.6, {SECRET_ADDRESS}"}
    post(setup, "/v1/completions", COMPLETION, PROXY, forwarded)
    assert setup.events[0].address == setup.hasher.token(IdentityKind.ADDRESS, SECRET_ADDRESS)


def test_clients_with_other_header_orders_get_other_fingerprints(setup: Setup) -> None:
    post(setup, "/v1/completions", COMPLETION, SECRET_ADDRESS, {"x-a": "1", "x-b": "2"})
    post(setup, "/v1/completions", COMPLETION, SECRET_ADDRESS, {"x-b": "2", "x-a": "1"})
    first, second = setup.events
    assert first.address == second.address and first.agent == second.agent
    assert first.header_fingerprint != second.header_fingerprint


def test_no_raw_address_or_user_agent_in_events_logs_or_usage_rows(
    setup: Setup, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    headers = {"user-agent": SECRET_AGENT, "x-forwarded-for": SECRET_ADDRESS}
    for body in (CHAT, CHAT | {"stream": True}, CHAT | {"model": "none"}):  # the last: a 404
        post(setup, "/v1/chat/completions", body, PROXY, headers)
    assert setup.audit.flush()
    assert len(setup.events) == 3
    connection = connect(setup.home)
    rows = connection.execute("SELECT * FROM usage").fetchall()
    connection.close()
    assert len(rows) == 3
    stored = json.dumps([[str(value) for value in tuple(row)] for row in rows])
    seen = repr(setup.events) + caplog.text + stored
    for raw in (SECRET_ADDRESS, SECRET_AGENT, "unique-agent-marker", PROXY, ORG):
        assert raw not in seen


def test_a_gateway_without_an_identity_key_leaves_the_origin_unknown(setup: Setup) -> None:
    setup.gateway.origins = Origins(XFF, None)
    post(setup, "/v1/completions", COMPLETION, SECRET_ADDRESS, {"user-agent": SECRET_AGENT})
    (event,) = setup.events
    assert (event.address, event.network, event.agent, event.header_fingerprint) == ("",) * 4
    assert event.org == setup.org_token  # the account's metadata still comes with the key
