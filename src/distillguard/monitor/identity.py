"""Tokens for what identifies a person: the client address, its network, the user agent, the
order of the header names, the organisation.

The monitor links accounts that share them, so it needs equality, never the values. Each value
becomes a token: HMAC-SHA256 under a key derived from the master secret
(`keys.derive.monitor_identity_key`), over the kind and the value, cut to 64 bits. Without the
key nobody can test a guess (an IPv4 address has only 2^32 values, so an unkeyed hash would
hide nothing); with the same master secret every replica makes the same tokens.

The gateway calls `IdentityHasher.request` once per request. Tokens are cached (clients reuse
their address and software), so the request path pays a dictionary lookup, and an HMAC only
for a value it has not seen lately.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum

__all__ = [
    "IdentityHasher",
    "IdentityKind",
    "RequestIdentity",
    "header_order",
    "identity_token",
    "network_of",
]

TOKEN_HEX = 16  # 64 bits: no collision in practice among the values one gateway sees


class IdentityKind(Enum):
    """What a token stands for; part of the hashed message, so equal values of different
    kinds never share a token."""

    ADDRESS = "address"
    NETWORK = "network"
    AGENT = "agent"
    HEADERS = "headers"
    ORG = "org"


def identity_token(key: bytes, kind: IdentityKind, value: str) -> str:
    """HMAC-SHA256(key, kind NUL value), 16 hex digits; "" for an empty value (unknown)."""
    if not value:
        return ""
    if len(key) < 16:
        raise ValueError("an identity key has at least 16 bytes")
    message = kind.value.encode() + b"\0" + value.encode("utf-8", "surrogatepass")
    return hmac.new(key, message, hashlib.sha256).hexdigest()[:TOKEN_HEX]


def network_of(address: str) -> str:
    """The /24 of an IPv4 address or the /64 of an IPv6 one, as text ("" when it is not an
    address). An IPv4-mapped IPv6 address counts as the IPv4 address it maps."""
    try:
        parsed = ipaddress.ip_address(address.strip().strip("[]"))
    except ValueError:
        return ""
    if isinstance(parsed, ipaddress.IPv6Address) and parsed.ipv4_mapped is not None:
        parsed = parsed.ipv4_mapped
    prefix = 24 if parsed.version == 4 else 64
    return str(ipaddress.ip_network(f"{parsed}/{prefix}", strict=False))


def header_order(names: Iterable[str]) -> str:
    """The order in which a client sent its header names, lowercased: browsers, SDKs and
    scripts each have their own, whatever user agent they claim."""
    return ",".join(name.lower() for name in names)


@dataclass(frozen=True, slots=True)
class RequestIdentity:
    """The origin tokens of one request, named as MonitorEvent's fields."""

    address: str = ""
    network: str = ""
    agent: str = ""
    header_fingerprint: str = ""


class IdentityHasher:
    """Tokens under one key, with a bounded cache of recent values."""

    def __init__(self, key: bytes, cache_size: int = 65_536) -> None:
        if len(key) < 16:
            raise ValueError("an identity key has at least 16 bytes")
        self._key = key
        self._cache_size = cache_size
        self._cache: dict[tuple[IdentityKind, str], str] = {}
        self._networks: dict[str, str] = {}  # address -> its network, as text

    def token(self, kind: IdentityKind, value: str) -> str:
        cached = self._cache.get((kind, value))
        if cached is not None:
            return cached
        if len(self._cache) >= self._cache_size:
            self._cache.clear()  # cheaper than an LRU, and a miss only costs one HMAC
        token = self._cache[(kind, value)] = identity_token(self._key, kind, value)
        return token

    def request(
        self, address: str, user_agent: str = "", header_names: Iterable[str] = ()
    ) -> RequestIdentity:
        """The tokens of a request from `address` (the client as the gateway determined it:
        the socket's peer, or what a trusted proxy forwarded) with these headers."""
        network = self._networks.get(address)
        if network is None:
            if len(self._networks) >= self._cache_size:
                self._networks.clear()
            network = self._networks[address] = network_of(address)  # parsing is the slow part
        return RequestIdentity(
            address=self.token(IdentityKind.ADDRESS, address),
            network=self.token(IdentityKind.NETWORK, network),
            agent=self.token(IdentityKind.AGENT, user_agent),
            header_fingerprint=self.token(IdentityKind.HEADERS, header_order(header_names)),
        )
