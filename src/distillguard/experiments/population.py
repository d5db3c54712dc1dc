"""The simulated fleet: who the accounts are, and what each kind sends when.

Accounts are benign users, honest look-alikes or harvesters. Benign users send real prompts
(a prompt set read at run time) in sessions with follow-up turns, in their waking hours, mostly
on a couple of favourite topics: casual users, power users, developers (logprobs, n > 1,
temperature 0) and batch jobs (one task template over many inputs, on a schedule). The
look-alikes (`experiments.lookalikes`: campuses and carrier NATs, enterprise proxies, CI and
evaluation harnesses, honest resellers) and the harvesting shapes (`experiments.harvesters`)
are described where they are planned. Every request carries where it came from
(`experiments.network`) and every account when and how it signed up.

`Planner.plan` builds every account's requests up front, on the simulated clock, with each
account's ground truth; `distillguard.experiments.simulate` sends them through the gateway.
"""

from __future__ import annotations

from distillguard.experiments.harvesters import HarvestShapes
from distillguard.experiments.lookalikes import LookalikeShapes
from distillguard.experiments.planner import (
    BATCH_TEMPLATES,
    DAY,
    FOLLOW_UPS,
    HARVEST_TEMPLATES,
    HOUR,
    MAX_TOKENS_CAP,
    MODEL,
    AccountMeta,
    PlannedRequest,
    Population,
    Truth,
)

__all__ = [
    "BATCH_TEMPLATES",
    "DAY",
    "FOLLOW_UPS",
    "HARVEST_TEMPLATES",
    "HOUR",
    "MAX_TOKENS_CAP",
    "MODEL",
    "NAT_KINDS",
    "AccountMeta",
    "PlannedRequest",
    "Planner",
    "Population",
    "Truth",
]

NAT_KINDS = ("campus", "carrier", "enterprise")  # honest accounts behind shared addresses


class Planner(HarvestShapes, LookalikeShapes):
    """Builds every account's requests up front (conversations need no real replies)."""

    def plan(self) -> list[PlannedRequest]:
        population = self.population
        # the shared NATs first, so that a campaign can ride one
        for index in range(population.campuses):
            members = [f"bc{index}-{i:04d}" for i in range(population.campus_size)]
            self.campus(members, f"university-{index}")
        for index in range(population.carriers):
            self.carrier([f"bm{index}-{i:04d}" for i in range(population.carrier_size)])
        for index in range(population.enterprises):
            members = [f"be{index}-{i:03d}" for i in range(population.enterprise_size)]
            self.enterprise(members, f"company-{index}")
        for index in range(population.eval_harnesses):
            self.eval_harness(f"bv{index:03d}")
        for index in range(population.resellers):
            self.router(f"bp{index:03d}", None)
        self.plan_benign_users()
        for index in range(population.fast):
            self.fast(f"hf{index:03d}", f"fast-{index}")
        for index in range(population.slow):
            self.slow(f"hs{index:03d}", f"slow-{index}")
        for ring in range(population.rings):
            members = [f"hr{ring}-{i:03d}" for i in range(population.ring_size)]
            self.ring(members, f"ring-{ring}")
        for index in range(population.mixed):
            self.mixed(f"hm{index:03d}", f"mixed-{index}")
        for index in range(population.stealth):
            self.stealth(f"hx{index:03d}", f"stealth-{index}")
        for cluster in range(population.hydra):
            members = [f"hh{cluster}-{i:04d}" for i in range(population.hydra_size)]
            self.hydra(members, f"hydra-{cluster}")
        for index in range(population.routers):
            self.router(f"ho{index:03d}", f"router-{index}")
        for burst in range(population.bursts):
            members = [f"hb{burst}-{i:03d}" for i in range(population.burst_size)]
            self.burst(members, f"burst-{burst}")
        return sorted(self.requests)

    def plan_benign_users(self) -> None:
        population = self.population
        counts = {
            "power": round(population.benign * population.power_share),
            "developer": round(population.benign * population.developer_share),
            "batch": round(population.benign * population.batch_share),
        }
        counts["casual"] = population.benign - sum(counts.values())
        number = 0
        for kind in ("casual", "power", "developer", "batch"):
            for _ in range(counts[kind]):
                number += 1
                account = f"b{number:05d}"
                if kind == "batch":
                    self.batch_user(account)
                else:
                    self.benign_user(account, kind)
