"""Honest accounts that look like harvesters in one way or another: what the monitor must not
flag.

- campus: students behind a university's NAT (a few addresses in one /24), signed up in class
  cohorts through the education program, some of their sessions opening with a maths question
  from the very set harvesters sweep (homework);
- carrier: mobile users behind a carrier-grade NAT pool;
  (the users of one NAT live in one timezone, give or take an hour of habit)
- enterprise: one organisation's keys behind its egress proxy, with one standard client,
  often created the same onboarding day, busy in the same office hours: developers, power
  users and batch pipelines;
- eval: CI and evaluation harnesses re-running a fixed benchmark subset (questions from the
  harvest set) at temperature 0, nightly or per commit, from CI runners whose addresses change;
- reseller: an honest router, one key for many users (`HarvestShapes.router` without a
  harvesting customer).
"""

from __future__ import annotations

import math

from distillguard.experiments.network import Origin
from distillguard.experiments.planner import DAY, EVAL_TEMPLATES, HOUR, MODEL, PlannerBase, Truth

__all__ = ["LookalikeShapes"]


class LookalikeShapes(PlannerBase):
    def campus(self, accounts: list[str], name: str) -> None:
        nat = self.pool.nat(int(self.rng.integers(2, 5)), 1)
        timezone = float(self.rng.uniform(0, 24))
        cohorts = [
            -float(self.rng.uniform(1, 200)) * DAY for _ in range(int(self.rng.integers(2, 5)))
        ]
        for account in accounts:
            self.truth[account] = Truth("campus", None)
            cohort = cohorts[int(self.rng.integers(len(cohorts)))]
            program = "education" if self.rng.random() < 0.7 else ""
            self.signed_up(account, cohort + float(self.rng.uniform(0, 3)) * HOUR, name, program)
            software = self.pool.software()
            origin = Origin(self.pool, software, nat, mobile=[self.pool.home()], mobile_share=0.2)
            sessions = 1 + int(self.rng.poisson(4.0))
            self.benign_sessions(
                account, "casual", origin, sessions=sessions, homework=0.25, timezone=timezone
            )

    def carrier(self, accounts: list[str]) -> None:
        nat = self.pool.nat(int(self.rng.integers(4, 9)), 2)
        timezone = float(self.rng.uniform(0, 24))
        for account in accounts:
            self.truth[account] = Truth("carrier", None)
            self.old_account(account)
            origin = Origin(self.pool, self.pool.software(), nat)
            self.benign_sessions(account, "casual", origin, timezone=timezone)

    def enterprise(self, accounts: list[str], name: str) -> None:
        proxy = self.pool.nat(int(self.rng.integers(1, 3)), 1)
        software = self.pool.software()
        onboarding = -float(self.rng.uniform(10, 300)) * DAY
        burst = self.rng.random() < 0.5
        office = float(self.rng.uniform(0, 24))  # the office's timezone offset
        for account in accounts:
            self.truth[account] = Truth("enterprise", None)
            created = onboarding + (
                float(self.rng.uniform(0, 4)) * HOUR
                if burst
                else float(self.rng.uniform(0, 200)) * DAY
            )
            self.signed_up(account, created, org=name)
            origin = Origin(self.pool, software, proxy)
            draw = self.rng.random()
            if draw < 0.2:
                self.pipeline(account, origin, office)
            else:
                kind = "developer" if draw < 0.6 else "power"
                self.office_sessions(account, kind, origin, office)

    def office_sessions(self, account: str, kind: str, origin: Origin, office: float) -> None:
        days = math.ceil(self.population.days)
        profile = self.interest_profile()
        for _ in range(int(self.rng.integers(5, 30))):
            day = int(self.rng.integers(days))
            start = day * DAY + ((float(self.rng.uniform(9, 18)) - office) % 24.0) * HOUR
            turns = 1 + int(min(self.rng.geometric(0.45) - 1, 7))
            self.session(
                account, start, kind == "developer", turns, origin.client(start), profile=profile
            )

    def pipeline(self, account: str, origin: Origin, office: float) -> None:
        """A batch pipeline on a company key: a nightly job over new documents."""
        template = self.batch_templates[int(self.rng.integers(len(self.batch_templates)))]
        max_tokens = int(self.rng.choice([128, 256, 1024]))
        for day in range(math.ceil(self.population.days)):
            time = day * DAY + ((float(self.rng.uniform(0, 5)) - office) % 24.0) * HOUR
            client = origin.client(time)
            for _ in range(int(self.rng.integers(20, 80))):
                text = template.format(q=self.benign[int(self.rng.integers(len(self.benign)))])
                body = {
                    "model": MODEL,
                    "messages": [{"role": "user", "content": text}],
                    "max_tokens": max_tokens,
                    "temperature": 0.0,
                }
                self.add(time, account, body, client)
                time += float(self.rng.uniform(1.0, 4.0))

    def eval_harness(self, account: str) -> None:
        """A fixed subset of a public benchmark (the harvest set: GSM8K is a test set), run
        again and again: nightly, or on every commit of a working day."""
        self.truth[account] = Truth("eval", None)
        self.old_account(account)
        items = [
            self.harvest[int(i)]
            for i in self.rng.choice(
                len(self.harvest),
                size=min(len(self.harvest), int(self.rng.integers(50, 301))),
                replace=False,
            )
        ]
        template = EVAL_TEMPLATES[int(self.rng.integers(len(EVAL_TEMPLATES)))]
        max_tokens = [256, 512, None][int(self.rng.integers(3))]
        ephemeral = self.rng.random() < 0.5  # hosted CI runners: a new address every run
        origin = Origin(self.pool, self.pool.software(), [self.pool.home()])
        nightly = self.rng.random() < 0.5
        office = float(self.rng.uniform(0, 24))
        runs: list[float] = []
        for day in range(math.ceil(self.population.days)):
            if nightly:
                runs.append(day * DAY + ((2.0 - office) % 24.0) * HOUR)
            elif day % 7 < 5:
                for _ in range(int(self.rng.integers(1, 5))):
                    runs.append(day * DAY + ((float(self.rng.uniform(9, 19)) - office) % 24) * HOUR)
        for start in runs:
            client = Origin(self.pool, origin.software, [self.pool.home()]).client(start)
            if not ephemeral:
                client = origin.client(start)
            time = start
            for question in items:
                body: dict[str, object] = {
                    "model": MODEL,
                    "messages": [{"role": "user", "content": template.format(q=question)}],
                    "temperature": 0.0,
                }
                if max_tokens is not None:
                    body["max_tokens"] = max_tokens
                self.add(time, account, body, client)
                time += float(self.rng.uniform(0.5, 3.0))
