"""Where simulated requests come from: client addresses, networks and client software.

Addresses are synthetic (random public-looking IPv4 /24s and IPv6 /64s); what matters is who
shares them. Honest users sit at home (a stable address, now and then a new one), some on a
mobile carrier's NAT (many users per address), some on a campus or company NAT. Harvesting
campaigns choose a proxy layout (`LAYOUTS`), which the evaluation varies between fitting and
reporting, and their client software:

- subnets: a few datacenter /24s, each account pinned to an address in them;
- rotating: rotating residential proxies, a new address on every request (or one a day);
- spread: every account on its own /24, stable;
- shared-nat: the campaign rides the addresses of a NAT that honest users share.

Client software is a user agent and the order of the header names, by family: SDKs, browser
front ends, command-line tools and custom scripts each send their headers in their own order.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["CLIENTS", "LAYOUTS", "Client", "NetworkPool", "Origin"]

LAYOUTS = ("subnets", "rotating", "spread", "shared-nat")


@dataclass(frozen=True)
class Client:
    """One request's origin as the gateway sees it."""

    address: str
    user_agent: str
    headers: tuple[str, ...]  # header names in the order sent (the gateway adds none)


@dataclass(frozen=True)
class Software:
    family: str
    user_agent: str
    headers: tuple[str, ...]


def _sdk(version: str, lang: str) -> Software:
    return Software(
        f"openai-{lang}",
        f"OpenAI/{'Python' if lang == 'python' else 'JS'} {version}",
        (
            "host",
            "accept-encoding",
            "connection",
            "accept",
            "content-type",
            "user-agent",
            "x-stainless-lang",
            "x-stainless-package-version",
            "x-stainless-os",
            "authorization",
            "content-length",
        ),
    )


def _browser(user_agent: str) -> Software:
    return Software(
        "browser",
        user_agent,
        (
            "host",
            "connection",
            "content-length",
            "sec-ch-ua",
            "content-type",
            "authorization",
            "user-agent",
            "accept",
            "origin",
            "sec-fetch-site",
            "accept-encoding",
            "accept-language",
        ),
    )


# What honest API clients run, with how often (weights sum to 1).
CLIENTS: tuple[tuple[Software, float], ...] = (
    (_sdk("1.54.3", "python"), 0.22),
    (_sdk("1.51.0", "python"), 0.12),
    (_sdk("1.40.6", "python"), 0.08),
    (_sdk("4.67.1", "node"), 0.10),
    (_sdk("4.52.7", "node"), 0.05),
    (
        _browser(
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
            "Chrome/131.0.0.0 Safari/537.36"
        ),
        0.12,
    ),
    (
        _browser(
            "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like "
            "Gecko) Version/18.1 Safari/605.1.15"
        ),
        0.06,
    ),
    (
        _browser("Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0"),
        0.04,
    ),
    (
        Software(
            "curl",
            "curl/8.5.0",
            ("host", "user-agent", "accept", "authorization", "content-type", "content-length"),
        ),
        0.06,
    ),
    (
        Software(
            "requests",
            "python-requests/2.32.3",
            (
                "host",
                "user-agent",
                "accept-encoding",
                "accept",
                "connection",
                "authorization",
                "content-type",
                "content-length",
            ),
        ),
        0.08,
    ),
    (
        Software(
            "httpx",
            "python-httpx/0.27.2",
            (
                "host",
                "accept",
                "accept-encoding",
                "connection",
                "user-agent",
                "authorization",
                "content-type",
                "content-length",
            ),
        ),
        0.07,
    ),
)


def _random_v4_network(rng: np.random.Generator) -> str:
    """A public-looking /24: first octet outside 0, 10, 127, 169, 172, 192, 224+."""
    while True:
        first = int(rng.integers(1, 224))
        if first not in (10, 127, 169, 172, 192, 100):
            break
    return f"{first}.{int(rng.integers(0, 256))}.{int(rng.integers(0, 256))}"


@dataclass
class NetworkPool:
    """Draws addresses; remembers the shared NATs honest users sit behind, so that a campaign
    can ride one."""

    rng: np.random.Generator
    nats: list[list[str]] = field(default_factory=list)  # each NAT's public addresses

    def home(self) -> str:
        if self.rng.random() < 0.2:  # an IPv6 home network: a /64 of its own
            words = ":".join(f"{int(w):x}" for w in self.rng.integers(0, 65536, size=3))
            return f"2001:db8:{words}::{int(self.rng.integers(1, 65536)):x}"
        return f"{_random_v4_network(self.rng)}.{int(self.rng.integers(1, 255))}"

    def subnet(self) -> str:
        return _random_v4_network(self.rng)

    def nat(self, addresses: int, subnets: int = 1) -> list[str]:
        """A new NAT: `addresses` public addresses in `subnets` /24s."""
        networks = [self.subnet() for _ in range(subnets)]
        chosen = [
            f"{networks[i % subnets]}.{int(self.rng.integers(1, 255))}" for i in range(addresses)
        ]
        self.nats.append(chosen)
        return chosen

    def software(self) -> Software:
        weights = np.asarray([weight for _, weight in CLIENTS])
        index = int(self.rng.choice(len(CLIENTS), p=weights / weights.sum()))
        return CLIENTS[index][0]


@dataclass
class Origin:
    """Where one account's requests come from: fixed addresses, or a new one per request."""

    pool: NetworkPool
    software: Software
    addresses: list[str]  # the addresses it uses, in turn or at random
    rotate: str = "fixed"  # "fixed", "request" (a new address each time) or "daily"
    mobile: list[str] | None = None  # a carrier NAT some sessions come from
    mobile_share: float = 0.0
    _daily: dict[int, str] = field(default_factory=dict)

    def client(self, time: float, session_mobile: bool = False) -> Client:
        rng = self.pool.rng
        if self.rotate == "request":
            address = self.pool.home()
        elif self.rotate == "daily":
            day = int(time // 86_400)
            if day not in self._daily:
                self._daily[day] = self.pool.home()
            address = self._daily[day]
        elif session_mobile and self.mobile:
            address = self.mobile[int(rng.integers(len(self.mobile)))]
        else:
            address = self.addresses[int(rng.integers(len(self.addresses)))]
        return Client(address, self.software.user_agent, self.software.headers)

    def wants_mobile(self) -> bool:
        return bool(self.mobile) and self.pool.rng.random() < self.mobile_share
