"""Who sent a request: its client address, user agent and header order, as the monitor's
identity tokens (`monitor.identity`).

The client address is the socket's peer, unless that peer is one of the configured trusted
proxies (`serve --trusted-proxy CIDR`). Then it comes from the one forwarding header those
proxies write (`X-Forwarded-For`, or RFC 7239 `Forwarded`'s `for=`; `serve --proxy-header`),
read from the right: each proxy appends the address it received the request from, so the
right-most hop that is not itself a trusted proxy is the client. Everything to its left was
written by the client and is never read. Only one header is trusted, never both: a proxy that
writes one passes the other through from the client, who could then pick its own address.

A header the walk cannot read (a malformed hop, `unknown`, an obfuscated identifier such as
`_hidden`) stops it: the address is then the last trusted hop, the nearest one known. No header
is ever an error.

The request path pays for this in dictionary lookups: trusted-or-not is cached per address and
`IdentityHasher` caches tokens, so an HMAC runs only for a value not seen lately.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from functools import lru_cache
from typing import Any

from distillguard.errors import ConfigError
from distillguard.monitor.identity import IdentityHasher, RequestIdentity

__all__ = [
    "Origins",
    "ProxyHeader",
    "TrustedProxies",
    "client_address",
    "forwarded_hops",
    "parse_hop",
    "x_forwarded_for_hops",
]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
_CACHE_ENTRIES = 65_536  # addresses remembered as trusted or not


class ProxyHeader(Enum):
    """The header the trusted proxies write the client's address in."""

    X_FORWARDED_FOR = "x-forwarded-for"
    FORWARDED = "forwarded"  # RFC 7239


@dataclass(frozen=True)
class TrustedProxies:
    """The proxies whose forwarding header is believed (none: the socket's peer is the client)."""

    networks: tuple[Network, ...] = ()
    header: ProxyHeader = ProxyHeader.X_FORWARDED_FOR

    @classmethod
    def parse(
        cls, cidrs: Iterable[str], header: str | ProxyHeader = ProxyHeader.X_FORWARDED_FOR
    ) -> TrustedProxies:
        """From CIDRs ("10.0.0.0/8", "2001:db8::/32"; a bare address is a /32 or /128)."""
        networks = []
        for cidr in cidrs:
            try:
                networks.append(ipaddress.ip_network(cidr.strip(), strict=False))
            except ValueError:
                raise ConfigError(f"--trusted-proxy {cidr!r} is not an address or CIDR") from None
        try:
            chosen = ProxyHeader(header)
        except ValueError:
            names = ", ".join(item.value for item in ProxyHeader)
            raise ConfigError(f"unknown proxy header {header!r}: one of {names}") from None
        return cls(tuple(networks), chosen)


@lru_cache(maxsize=_CACHE_ENTRIES)  # per request: the same few proxies and clients recur
def parse_hop(text: str) -> str | None:
    """The address of one hop as a header writes it ("192.0.2.1", "192.0.2.1:443",
    "2001:db8::1", "[2001:db8::1]:443", quotes already removed), normalized; None when it is
    not an address (`unknown`, an obfuscated `_identifier`, garbage)."""
    text = text.strip()
    if text.startswith("["):  # [v6] or [v6]:port (RFC 7239 sec. 6)
        end = text.find("]")
        if end < 0 or (end + 1 < len(text) and not text[end + 1 :].startswith(":")):
            return None
        text = text[1:end]
    elif text.count(":") == 1:  # v4:port; a bare v6 address has at least two colons
        text = text.partition(":")[0]
    try:
        address = ipaddress.ip_address(text.partition("%")[0])  # no zone: not the client's
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


def x_forwarded_for_hops(value: str) -> Iterator[str]:
    """The hops of an X-Forwarded-For value, right-most first."""
    for hop in reversed(value.split(",")):
        yield hop.strip().strip('"')


def forwarded_hops(value: str) -> Iterator[str]:
    """The `for=` values of a Forwarded value (RFC 7239 sec. 4), right-most element first,
    unquoted. An element without `for=` yields "" (a hop that says nothing: the walk stops).

    Elements are split from the right, so that whatever the client wrote on the left (an
    unbalanced quote, say) cannot swallow the elements its proxies appended."""
    for element in _split_from_right(value, ","):
        found = ""
        for pair in _split_from_right(element, ";"):
            name, equals, content = pair.partition("=")
            if equals and name.strip().lower() == "for":
                found = _unquote(content.strip())
                break
        yield found


def _split_from_right(text: str, separator: str) -> Iterator[str]:
    """`text` split on `separator` outside quoted strings, right-most part first.

    Read backwards: outside a quoted string a quote opens one; inside, a quote closes it
    unless an odd number of backslashes escape it (RFC 7230 quoted-pair)."""
    end = len(text)
    quoted = False
    position = len(text) - 1
    while position >= 0:
        char = text[position]
        if char == '"':
            backslashes = 0
            while position - 1 - backslashes >= 0 and text[position - 1 - backslashes] == "\\":
                backslashes += 1
            if not quoted or backslashes % 2 == 0:
                quoted = not quoted
        elif char == separator and not quoted:
            yield text[position + 1 : end]
            end = position
        position -= 1
    yield text[:end]


def _unquote(text: str) -> str:
    if len(text) >= 2 and text[0] == '"' and text[-1] == '"':
        inner = text[1:-1]
        unescaped = []
        escaped = False
        for char in inner:
            if char == "\\" and not escaped:
                escaped = True
                continue
            unescaped.append(char)
            escaped = False
        return "".join(unescaped)
    return text


def client_address(
    peer: str,
    header_values: Sequence[str],
    proxies: TrustedProxies,
    trusted: Callable[[str], bool] | None = None,
) -> str:
    """The client's address: `peer` unless it is a trusted proxy, else the right-most hop of
    the forwarding header (all its lines, in order) that is not a trusted proxy itself.

    `trusted` (address -> bool) defaults to a membership test of `proxies`' networks.
    """
    is_trusted = trusted or (lambda address: _in_networks(address, proxies.networks))
    if not peer or not header_values or not is_trusted(peer):
        return peer
    value = ",".join(header_values)  # several lines are one list (RFC 7230 sec. 3.2.2)
    if proxies.header is ProxyHeader.FORWARDED:
        hops = forwarded_hops(value)
    else:
        hops = x_forwarded_for_hops(value)
    nearest = peer  # the last hop known: what a proxy that says nothing more is left with
    for hop in hops:
        address = parse_hop(hop)
        if address is None:
            return nearest  # unknown, obfuscated or malformed: nothing further is known
        if not is_trusted(address):
            return address
        nearest = address
    return nearest  # every hop a trusted proxy: the request started inside


def _in_networks(address: str, networks: tuple[Network, ...]) -> bool:
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return False
    if isinstance(parsed, ipaddress.IPv6Address) and parsed.ipv4_mapped is not None:
        parsed = parsed.ipv4_mapped
    return any(parsed in network for network in networks)


class Origins:
    """A request's identity tokens from its ASGI scope, once per request."""

    def __init__(self, proxies: TrustedProxies, hasher: IdentityHasher | None) -> None:
        self.proxies = proxies
        self.hasher = hasher
        self._header = proxies.header.value
        self._peers: dict[str, str] = {}  # as the socket gave it -> normalized
        self._trusted: dict[str, bool] = {}

    def of(self, scope: Mapping[str, Any] | None) -> RequestIdentity:
        """The tokens of the request in `scope` (empty ones without a hasher or a scope)."""
        if self.hasher is None or scope is None:
            return RequestIdentity()
        client = scope.get("client")
        peer = self._peer(str(client[0])) if client else ""
        names: list[str] = []
        agent = ""
        forwarded: list[str] = []
        for raw_name, raw_value in scope.get("headers", ()):
            name = raw_name.decode("latin-1").lower()
            names.append(name)
            if name == "user-agent":
                agent = raw_value.decode("latin-1")
            elif name == self._header:
                forwarded.append(raw_value.decode("latin-1"))
        address = client_address(peer, forwarded, self.proxies, self._is_trusted)
        return self.hasher.request(address, agent, names)

    def _peer(self, raw: str) -> str:
        """The peer's address normalized (an IPv4-mapped IPv6 peer is its IPv4 address), so
        that a client has one token whichever socket family reached it."""
        known = self._peers.get(raw)
        if known is None:
            if len(self._peers) >= _CACHE_ENTRIES:
                self._peers.clear()
            known = self._peers[raw] = parse_hop(raw) or raw
        return known

    def _is_trusted(self, address: str) -> bool:
        known = self._trusted.get(address)
        if known is None:
            if len(self._trusted) >= _CACHE_ENTRIES:
                self._trusted.clear()
            known = self._trusted[address] = _in_networks(address, self.proxies.networks)
        return known
