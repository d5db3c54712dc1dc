"""Harvesting campaigns of the simulated fleet, one method per shape.

Every campaign draws what an attacker controls (`PlannerBase.campaign_style`): templates or raw
prompts, logprobs, n, max_tokens (or none), made-up earlier turns; and, for campaigns of many
accounts, how they sign up (`signup`), which client software they send with (`software`) and
where their requests come from (the population's proxy layout, `origins`). The evaluation
fits on one proxy layout and reports on others, so no network signal is planted the same way
in both.

- fast: tens of requests an hour, round the clock;
- slow: a few an hour, some only in waking hours, up to 1,500 requests;
- ring: waves of requests spread over 100 accounts, each far under its limits;
- mixed: a person's account that also carries a harvest stream;
- stealth: mimics a person in every signal it can (no reasoning phrases, no max_tokens,
  logprobs or n, made-up earlier turns, sessions at a person's pace);
- hydra: 1,000 accounts behind a few proxies, each blending harvest into ordinary chat;
- router: one key resold to many users, a harvesting customer among them;
- burst: accounts signed up together, each harvesting on its own.
"""

from __future__ import annotations

import math

from distillguard.experiments.network import CLIENTS, Origin, Software
from distillguard.experiments.planner import DAY, HOUR, PlannerBase, Truth
from distillguard.monitor.text import asks_for_reasoning

__all__ = ["HarvestShapes"]

# A custom asynchronous client: its own user agent and header order.
_SCRIPT = Software(
    "script",
    "Python/3.11 aiohttp/3.9.5",
    ("host", "authorization", "content-type", "accept", "accept-encoding", "user-agent"),
)


class HarvestShapes(PlannerBase):
    # -- what a campaign of many accounts controls ----------------------------------------------

    def signup(self, accounts: list[str]) -> None:
        """Burst (all within hours), drip (over weeks) or aged (bought old accounts); some
        farm an education or startup program."""
        strategy = str(self.rng.choice(["burst", "burst", "drip", "aged"]))
        program = str(self.rng.choice(["", "", "education", "startup"]))
        start = -float(self.rng.uniform(1, 30)) * DAY
        hours = float(self.rng.uniform(1, 6))
        for account in accounts:
            if strategy == "burst":
                created = start + float(self.rng.uniform(0, hours)) * HOUR
            elif strategy == "drip":
                created = start - float(self.rng.uniform(0, 60)) * DAY
            else:
                created = -float(self.rng.uniform(30, 365)) * DAY
            self.signed_up(account, created, program=program)

    def software(self) -> list[Software]:
        """One client for all (a script, or the commonest SDK), or each its own."""
        strategy = str(self.rng.choice(["script", "sdk", "mixed"]))
        if strategy == "script":
            return [_SCRIPT]
        if strategy == "sdk":
            return [self.pool.software() if self.rng.random() < 0.2 else _commonest()]
        return []

    def origins(self, accounts: list[str]) -> dict[str, Origin]:
        """Where each account's requests come from, under the population's proxy layout."""
        layout = self.population.network
        clients = self.software()
        pool = self.pool
        proxies: list[str] = []
        if layout == "subnets":
            for _ in range(int(self.rng.integers(2, 6))):
                subnet = pool.subnet()
                proxies += [f"{subnet}.{int(self.rng.integers(1, 255))}" for _ in range(4)]
        elif layout == "shared-nat":
            nats = pool.nats or [pool.nat(4, 2)]
            proxies = nats[int(self.rng.integers(len(nats)))]
        elif layout not in ("rotating", "spread"):
            raise ValueError(f"unknown proxy layout {layout!r}")
        rotate = "request" if self.rng.random() < 0.7 else "daily"
        result = {}
        for account in accounts:
            software = clients[0] if clients else pool.software()
            if layout == "rotating":
                result[account] = Origin(pool, software, [], rotate)
            elif layout == "spread":
                result[account] = Origin(pool, software, [pool.home()])
            elif layout == "subnets":
                result[account] = Origin(
                    pool, software, [proxies[int(self.rng.integers(len(proxies)))]]
                )
            else:
                result[account] = Origin(pool, software, proxies)
        return result

    def harvester(self, account: str, kind: str, campaign: str, raw: bool) -> None:
        self.truth[account] = Truth(kind, campaign, raw)

    # -- single accounts ------------------------------------------------------------------------

    def fast(self, account: str, campaign: str) -> None:
        raw = self.raw_next("fast", self.population.fast)
        self.harvester(account, "fast", campaign, raw)
        self.signed_up(account, -float(self.rng.uniform(1, 60)) * DAY)
        origin = self.origins([account])[account]
        style = self.campaign_style(raw)
        rate = float(self.rng.uniform(30.0, 120.0)) / HOUR
        regular = self.rng.random() < 0.5
        time = float(self.rng.uniform(0, DAY))
        for _ in range(int(self.rng.integers(800, 2001))):
            self.add(time, account, self.harvest_body(style), origin.client(time))
            mean_gap = 1.0 / rate
            gap = (
                self.rng.gamma(10.0, mean_gap / 10.0) if regular else self.rng.exponential(mean_gap)
            )
            time += float(gap)

    def slow(self, account: str, campaign: str) -> None:
        raw = self.raw_next("slow", self.population.slow)
        self.harvester(account, "slow", campaign, raw)
        self.signed_up(account, -float(self.rng.uniform(1, 60)) * DAY)
        origin = self.origins([account])[account]
        style = self.campaign_style(raw)
        rate = float(self.rng.uniform(4.0, 10.0)) / HOUR
        diurnal = self.rng.random() < 0.5
        offset = float(self.rng.uniform(0, 24))
        time = float(self.rng.uniform(0, DAY))
        for _ in range(self.population.slow_budget):
            if diurnal:  # only in waking hours, like a person
                local = ((time / HOUR) + offset) % 24.0
                if local < 7.0:
                    time += (7.0 - local) * HOUR
            self.add(time, account, self.harvest_body(style), origin.client(time))
            time += float(self.rng.exponential(1.0 / rate))

    def mixed(self, account: str, campaign: str) -> None:
        """A person's account (its own home and habits) that also carries a harvest stream."""
        raw = self.raw_next("mixed", self.population.mixed)
        self.old_account(account)
        origin = self.home_origin()
        self.benign_sessions(account, "power", origin)
        self.harvester(account, "mixed", campaign, raw)
        style = self.campaign_style(raw)
        offset = float(self.rng.uniform(0, 24))
        days = math.ceil(self.population.days)
        for _ in range(int(self.rng.integers(300, 801))):
            time = self.waking_time(offset, int(self.rng.integers(days)))
            self.add(time, account, self.harvest_body(style), origin.client(time))

    def stealth(self, account: str, campaign: str) -> None:
        """A harvester that mimics a person in every signal it can without losing the outputs:
        no reasoning phrases, no max_tokens, logprobs or n, made-up earlier turns, sessions in
        waking hours at a person's pace, from a home address with common software. What is
        left: its prompts, a sweep of new topics."""
        raw = self.raw_next("stealth", self.population.stealth)
        self.harvester(account, "stealth", campaign, raw)
        self.old_account(account)
        plain = [t for t in self.templates if not asks_for_reasoning(t)]
        style = self.campaign_style(raw) | {
            "logprobs": 0.0,
            "multi_n": 0.0,
            "maximal": 0.0,
            "padded": True,
            "system": False,
        }
        if not raw:
            style["templates"] = [plain[int(self.rng.integers(len(plain)))]]
        # half of them hold real conversations: an opening turn, answered, then the harvest
        # question as the second turn (a request more per item, and no made-up history)
        converse = self.rng.random() < 0.5
        origin = self.home_origin()
        offset = float(self.rng.uniform(0, 24))
        days = math.ceil(self.population.days)
        for _ in range(int(self.rng.integers(40, 81))):
            time = self.waking_time(offset, int(self.rng.integers(days)))
            client = origin.client(time)
            for _ in range(int(self.rng.integers(3, 9))):
                body = self.harvest_body(style)
                body.pop("max_tokens", None)
                if converse:
                    opener = body["messages"][0]
                    self.add(time, account, {"model": body["model"], "messages": [opener]}, client)
                    time += float(self.rng.lognormal(math.log(30.0), 0.7)) + 5.0
                self.add(time, account, body, client)
                time += float(self.rng.lognormal(math.log(60.0), 0.9)) + 5.0

    def router(self, account: str, campaign: str | None) -> None:
        """One key resold to many users: a service's server sends its users' conversations,
        round the clock. With a campaign, one of its customers harvests through it (a tenth
        to two fifths of the traffic); without, it is an honest reseller."""
        if campaign is None:
            self.truth[account] = Truth("reseller", None)
        else:
            raw = self.raw_next("router", self.population.routers)
            self.harvester(account, "router", campaign, raw)
        self.old_account(account)
        server = Origin(
            self.pool, _commonest(), [f"{self.pool.subnet()}.{10 + i}" for i in range(2)]
        )
        days = math.ceil(self.population.days)
        chat_requests = 0
        for _ in range(int(self.rng.integers(30, 81))):  # its users
            offset = float(self.rng.uniform(0, 24))
            profile = self.interest_profile()
            for _ in range(1 + int(self.rng.poisson(3.0))):
                start = self.waking_time(offset, int(self.rng.integers(days)))
                turns = 1 + int(min(self.rng.geometric(0.45) - 1, 7))
                self.session(account, start, False, turns, server.client(start), profile=profile)
                chat_requests += turns
        if campaign is None:
            return
        style = self.campaign_style(self.truth[account].raw)
        share = float(self.rng.uniform(0.1, 0.4))
        harvest = int(chat_requests * share / (1.0 - share))
        for _ in range(harvest):
            time = float(self.rng.uniform(0, days * DAY))
            self.add(time, account, self.harvest_body(style), server.client(time))

    # -- many accounts --------------------------------------------------------------------------

    def ring(self, accounts: list[str], campaign: str) -> None:
        raw = self.raw_next("ring", self.population.rings)
        for account in accounts:
            self.harvester(account, "ring", campaign, raw)
        self.signup(accounts)
        origins = self.origins(accounts)
        style = self.campaign_style(raw)
        budgets = {a: int(self.rng.integers(60, 201)) for a in accounts}
        time = float(self.rng.uniform(0, DAY))
        end = self.population.days * DAY
        while any(budgets.values()) and time < end:
            live = [a for a in accounts if budgets[a]]
            wave = self.rng.choice(len(live), size=max(1, len(live) // 4), replace=False)
            for index in wave:
                account = live[int(index)]
                at = time + float(self.rng.uniform(0, 120))
                self.add(at, account, self.harvest_body(style), origins[account].client(at))
                budgets[account] -= 1
            time += float(self.rng.uniform(15, 45)) * 60

    def hydra(self, accounts: list[str], campaign: str) -> None:
        """A hydra cluster: many accounts behind a few proxies (or whatever the layout), one
        operator's sweep split between them without overlap, each account blending it into
        ordinary-looking chat. The operator sends in waves, or lets each account keep a
        person's hours."""
        raw = self.raw_next("hydra", self.population.hydra)
        for account in accounts:
            self.harvester(account, "hydra", campaign, raw)
        self.signup(accounts)
        origins = self.origins(accounts)
        style = self.campaign_style(raw)
        blend = float(self.rng.uniform(0.3, 0.7))  # share of an account's traffic that is chat
        waves = self.rng.random() < 0.5
        days = self.population.days
        for account in accounts:
            offset = float(self.rng.uniform(0, 24))
            requests = int(self.rng.integers(40, 101))
            sent = 0
            while sent < requests:
                if waves:  # the operator's schedule: one of ~300 wave times
                    time = float(self.rng.integers(int(days * 48))) * 1800.0
                    time += float(self.rng.uniform(0, 120))
                else:
                    time = self.waking_time(offset, int(self.rng.integers(math.ceil(days))))
                client = origins[account].client(time)
                if self.rng.random() < blend:
                    turns = int(self.rng.integers(1, 4))
                    self.session(account, time, False, turns, client)
                    sent += turns
                else:
                    self.add(time, account, self.harvest_body(style), client)
                    sent += 1

    def burst(self, accounts: list[str], campaign: str) -> None:
        """Accounts signed up within hours of each other (often through a program), each then
        harvesting on its own schedule, not in waves."""
        raw = self.raw_next("burst", self.population.bursts)
        program = str(self.rng.choice(["", "education", "startup"]))
        start = -float(self.rng.uniform(1, 10)) * DAY
        hours = float(self.rng.uniform(0.5, 4))
        origins = self.origins(accounts)
        style = self.campaign_style(raw)
        for account in accounts:
            self.harvester(account, "burst", campaign, raw)
            self.signed_up(
                account, start + float(self.rng.uniform(0, hours)) * HOUR, program=program
            )
            rate = float(self.rng.uniform(2.0, 8.0)) / HOUR
            time = float(self.rng.uniform(0, DAY))
            for _ in range(int(self.rng.integers(150, 401))):
                self.add(time, account, self.harvest_body(style), origins[account].client(time))
                time += float(self.rng.exponential(1.0 / rate))


def _commonest() -> Software:
    return max(CLIENTS, key=lambda item: item[1])[0]
