"""The simulated fleet: who the accounts are, and what each kind sends when.

Accounts are benign users or harvesters. Benign users send real prompts (a prompt set read at
run time) in sessions with follow-up turns, in their waking hours:
casual users, power users, developers (logprobs, n > 1, temperature 0) and batch jobs (one
task template over many inputs, on a schedule) - the last two are the hard negatives.
Harvesters sweep a harvest prompt set through distiller templates:

- fast: tens of requests an hour, round the clock;
- low-and-slow: a few an hour, some only in waking hours, up to 1,500 requests;
- rings of accounts run by one operator: waves of requests spread over the accounts, each
  account far under its limits;
- mixed: a benign user's account that also carries a harvest stream.

`Planner.plan` builds every account's requests up front, on the simulated clock, with each
account's ground truth; `distillguard.experiments.simulate` sends them through the gateway.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from distillguard.monitor.text import asks_for_reasoning

__all__ = [
    "BATCH_TEMPLATES",
    "DAY",
    "FOLLOW_UPS",
    "HARVEST_TEMPLATES",
    "HOUR",
    "MAX_TOKENS_CAP",
    "MODEL",
    "PlannedRequest",
    "Planner",
    "Population",
    "Truth",
]

DAY = 86_400.0
HOUR = 3_600.0
MODEL = "served-model"  # what every account asks for, and the simulated upstream serves
MAX_TOKENS_CAP = 4096  # the upstream's longest completion, which maximal requests ask for

# Distiller templates in two folds: a monitor tuned on one is evaluated on the other.
HARVEST_TEMPLATES: tuple[tuple[str, ...], ...] = (
    (
        "Solve the following problem. Think step by step and show all of your reasoning before "
        "giving the final answer.\n\n{q}",
        "{q}\n\nLet's think step by step.",
        "Question: {q}\nExplain your reasoning in detail, then state the answer.",
        "You are an expert tutor. Provide a detailed, step-by-step solution to the following.\n{q}",
        "Answer the following as helpfully and completely as you can.\n\n{q}",
        "{q}\n\nRespond with a long, thorough answer.",
    ),
    (
        "Please work through this carefully, explaining each step of your reasoning:\n{q}",
        "{q}\nWalk me through your thought process before answering.",
        "Task: {q}\nRespond with a thorough chain of thought followed by the final answer.",
        "I need a complete worked solution with intermediate steps for the following. {q}",
        "### Instruction:\n{q}\n\n### Response:",
        "Here is a request from a user. Write the best possible response.\n\nRequest: {q}",
    ),
)
# What batch-job users wrap their inputs in (benign, templated, one-shot).
BATCH_TEMPLATES: tuple[tuple[str, ...], ...] = (
    (
        "Summarize the following message in one sentence:\n\n{q}",
        "Classify the topic of this text as one of: tech, health, travel, other.\nText: {q}",
        "Translate into French:\n{q}",
    ),
    (
        "Extract the main request from this user message, in five words or fewer: {q}",
        "Rate the politeness of the following message from 1 to 5. Message: {q}",
        "Rewrite this more formally:\n{q}",
    ),
)
FOLLOW_UPS: tuple[tuple[str, ...], ...] = (
    (
        "Can you make that shorter?",
        "Thanks! Can you give me an example?",
        "What do you mean by that?",
        "Could you explain the second point again?",
        "That's not quite what I meant. I was asking about something more specific.",
        "Great, and what about the cost?",
        "Can you put that in a table?",
        "ok, why?",
    ),
    (
        "Could you rephrase that more simply?",
        "Interesting. Are there any downsides?",
        "Please continue.",
        "Which of those would you recommend?",
        "hmm, are you sure about that?",
        "Can you write that as a bulleted list?",
        "How would that work in practice?",
        "thank you! one more question: is there a quicker way?",
    ),
)


@dataclass(frozen=True)
class Population:
    """How many accounts of each kind one simulation runs."""

    benign: int = 600
    power_share: float = 0.10
    developer_share: float = 0.03
    batch_share: float = 0.03
    fast: int = 8
    slow: int = 8
    rings: int = 1
    ring_size: int = 100
    mixed: int = 8
    stealth: int = 0  # a stress test beyond the shapes (see Planner.stealth)
    days: float = 7.0
    slow_budget: int = 1500

    @classmethod
    def small(cls) -> Population:
        """A few minutes of CPU less: for tests."""
        return cls(benign=60, fast=2, slow=2, rings=1, ring_size=12, mixed=2, days=3.0)


@dataclass(frozen=True)
class Truth:
    kind: str  # benign: "casual", "power", "developer", "batch";
    # harvesters: "fast", "slow", "ring", "mixed", "stealth"
    campaign: str | None  # harvest campaign (a ring's accounts share one); None for benign

    @property
    def harvester(self) -> bool:
        return self.campaign is not None


@dataclass(order=True)
class PlannedRequest:
    """One request of the plan; requests sort by time (then by the order they were planned)."""

    time: float
    sequence: int
    account: str = field(compare=False)
    chat: bool = field(compare=False)
    body: dict[str, Any] = field(compare=False)


class Planner:
    """Builds every account's requests up front (conversations need no real replies)."""

    def __init__(
        self,
        rng: np.random.Generator,
        population: Population,
        benign: list[str],
        harvest: list[str],
        fold: int,
    ) -> None:
        if not benign or not harvest:
            raise ValueError("the simulator needs benign and harvest prompts")
        self.rng = rng
        self.population = population
        self.benign = benign
        self.harvest = harvest
        self.templates = HARVEST_TEMPLATES[fold % 2]
        self.batch_templates = BATCH_TEMPLATES[fold % 2]
        self.follow_ups = FOLLOW_UPS[fold % 2]
        self.requests: list[PlannedRequest] = []
        self.truth: dict[str, Truth] = {}
        self._sequence = 0

    def add(self, time: float, account: str, body: dict[str, Any], chat: bool = True) -> None:
        self._sequence += 1
        self.requests.append(PlannedRequest(time, self._sequence, account, chat, body))

    # -- benign ---------------------------------------------------------------------------------

    def waking_time(self, offset: float, day: int) -> float:
        """A time in the account's waking hours (7:00 to 24:00 local) on `day`."""
        local_hour = float(self.rng.uniform(7.0, 24.0))
        return day * DAY + ((local_hour - offset) % 24.0) * HOUR

    def benign_params(self, developer: bool) -> dict[str, Any]:
        params: dict[str, Any] = {}
        draw = self.rng.random()
        if draw < 0.40:
            params["max_tokens"] = int(self.rng.choice([256, 512, 1024, 2048]))
        elif draw < 0.45:
            params["max_tokens"] = MAX_TOKENS_CAP
        if developer:
            params["temperature"] = 0.0
            if self.rng.random() < 0.5:
                params["logprobs"] = True
                params["top_logprobs"] = int(self.rng.integers(1, 6))
            if self.rng.random() < 0.3:
                params["n"] = int(self.rng.integers(2, 5))
        elif self.rng.random() < 0.02:
            params["n"] = 2
        if self.rng.random() < 0.3:
            params["stream"] = True
        return params

    def session(self, account: str, start: float, developer: bool, turns: int) -> float:
        messages: list[dict[str, str]] = []
        if self.rng.random() < 0.2:
            messages.append({"role": "system", "content": "You are a helpful assistant."})
        time = start
        for turn in range(turns):
            if turn == 0 or self.rng.random() < 0.2:
                text = self.benign[int(self.rng.integers(len(self.benign)))]
            else:
                text = self.follow_ups[int(self.rng.integers(len(self.follow_ups)))]
            messages.append({"role": "user", "content": text})
            body = {"model": MODEL, "messages": list(messages)} | self.benign_params(developer)
            self.add(time, account, body)
            messages.append({"role": "assistant", "content": "(the assistant's reply)"})
            time += float(self.rng.lognormal(math.log(60.0), 0.9)) + 5.0
        return time

    def benign_user(self, account: str, kind: str) -> None:
        self.truth[account] = Truth(kind, None)
        self.benign_sessions(account, kind)

    def benign_sessions(self, account: str, kind: str) -> None:
        offset = float(self.rng.uniform(0, 24))
        days = math.ceil(self.population.days)
        sessions = {
            "casual": 1 + int(self.rng.poisson(3.0)),
            "power": int(self.rng.integers(15, 41)),
            "developer": int(self.rng.integers(5, 21)),
        }[kind]
        for _ in range(sessions):
            start = self.waking_time(offset, int(self.rng.integers(days)))
            turns = 1 + int(min(self.rng.geometric(0.45) - 1, 7))
            self.session(account, start, developer=kind == "developer", turns=turns)

    def batch_user(self, account: str) -> None:
        self.truth[account] = Truth("batch", None)
        template = self.batch_templates[int(self.rng.integers(len(self.batch_templates)))]
        max_tokens = int(self.rng.choice([64, 128, 256]))
        days = math.ceil(self.population.days)
        for _ in range(int(self.rng.integers(1, 5))):
            time = float(self.rng.uniform(0, days * DAY))
            spacing = float(self.rng.uniform(1.0, 5.0))
            for _ in range(int(self.rng.integers(50, 201))):
                text = template.format(q=self.benign[int(self.rng.integers(len(self.benign)))])
                body = {
                    "model": MODEL,
                    "messages": [{"role": "user", "content": text}],
                    "max_tokens": max_tokens,
                    "temperature": 0.0,
                }
                self.add(time, account, body)
                time += spacing * float(self.rng.uniform(0.8, 1.2))

    # -- harvesters -----------------------------------------------------------------------------

    def campaign_style(self) -> dict[str, Any]:
        count = int(self.rng.integers(1, 4))
        chosen = self.rng.choice(len(self.templates), size=count, replace=False)
        return {
            "templates": [self.templates[int(i)] for i in chosen],
            "logprobs": float(self.rng.choice([0.0, 0.0, 0.5, 1.0])),
            "multi_n": float(self.rng.choice([0.0, 0.0, 0.3])),
            "maximal": float(self.rng.choice([1.0, 1.0, 0.7, 0.0])),
            "system": bool(self.rng.random() < 0.3),
            # some campaigns pad each request with a made-up earlier exchange, to look like a
            # conversation rather than one-shot collection
            "padded": bool(self.rng.random() < 0.25),
            "stream": float(self.rng.choice([0.0, 0.5])),
            "cursor": int(self.rng.integers(len(self.harvest))),
        }

    def harvest_body(self, style: dict[str, Any]) -> dict[str, Any]:
        question = self.harvest[style["cursor"] % len(self.harvest)]
        style["cursor"] += 1
        templates = style["templates"]
        text = templates[int(self.rng.integers(len(templates)))].format(q=question)
        messages = [{"role": "user", "content": text}]
        if style["padded"]:
            opener = self.follow_ups[int(self.rng.integers(len(self.follow_ups)))]
            messages = [
                {"role": "user", "content": opener},
                {"role": "assistant", "content": "Sure, go ahead."},
                *messages,
            ]
        if style["system"]:
            messages.insert(0, {"role": "system", "content": "You are a world-class expert."})
        body: dict[str, Any] = {"model": MODEL, "messages": messages}
        if self.rng.random() < style["maximal"]:
            body["max_tokens"] = MAX_TOKENS_CAP
        else:
            body["max_tokens"] = int(self.rng.choice([1024, 2048]))
        if self.rng.random() < style["logprobs"]:
            body["logprobs"], body["top_logprobs"] = True, 5
        if self.rng.random() < style["multi_n"]:
            body["n"] = int(self.rng.choice([2, 4]))
        if self.rng.random() < style["stream"]:
            body["stream"] = True
        return body

    def fast(self, account: str, campaign: str) -> None:
        self.truth[account] = Truth("fast", campaign)
        style = self.campaign_style()
        rate = float(self.rng.uniform(30.0, 120.0)) / HOUR
        regular = self.rng.random() < 0.5
        time = float(self.rng.uniform(0, DAY))
        for _ in range(int(self.rng.integers(800, 2001))):
            self.add(time, account, self.harvest_body(style))
            mean_gap = 1.0 / rate
            gap = (
                self.rng.gamma(10.0, mean_gap / 10.0) if regular else self.rng.exponential(mean_gap)
            )
            time += float(gap)

    def slow(self, account: str, campaign: str) -> None:
        self.truth[account] = Truth("slow", campaign)
        style = self.campaign_style()
        rate = float(self.rng.uniform(4.0, 10.0)) / HOUR
        diurnal = self.rng.random() < 0.5
        offset = float(self.rng.uniform(0, 24))
        time = float(self.rng.uniform(0, DAY))
        for _ in range(self.population.slow_budget):
            if diurnal:  # only in waking hours, like a person
                local = ((time / HOUR) + offset) % 24.0
                if local < 7.0:
                    time += (7.0 - local) * HOUR
            self.add(time, account, self.harvest_body(style))
            time += float(self.rng.exponential(1.0 / rate))

    def ring(self, accounts: list[str], campaign: str) -> None:
        style = self.campaign_style()
        budgets = {a: int(self.rng.integers(60, 201)) for a in accounts}
        for account in accounts:
            self.truth[account] = Truth("ring", campaign)
        time = float(self.rng.uniform(0, DAY))
        end = self.population.days * DAY
        while any(budgets.values()) and time < end:
            live = [a for a in accounts if budgets[a]]
            wave = self.rng.choice(len(live), size=max(1, len(live) // 4), replace=False)
            for index in wave:
                account = live[int(index)]
                self.add(time + float(self.rng.uniform(0, 120)), account, self.harvest_body(style))
                budgets[account] -= 1
            time += float(self.rng.uniform(15, 45)) * 60

    def mixed(self, account: str, campaign: str) -> None:
        self.benign_sessions(account, "power")
        self.truth[account] = Truth("mixed", campaign)
        style = self.campaign_style()
        offset = float(self.rng.uniform(0, 24))
        days = math.ceil(self.population.days)
        total = int(self.rng.integers(300, 801))
        for _ in range(total):
            time = self.waking_time(offset, int(self.rng.integers(days)))
            self.add(time, account, self.harvest_body(style))

    def stealth(self, account: str, campaign: str) -> None:
        """A harvester that mimics a person in every signal it can without losing the outputs:
        no reasoning phrases, no max_tokens, logprobs or n, made-up earlier turns, sessions in
        waking hours at a person's pace. What is left: one template, a sweep of new topics."""
        self.truth[account] = Truth("stealth", campaign)
        plain = [t for t in self.templates if not asks_for_reasoning(t)]
        style = self.campaign_style() | {
            "templates": [plain[int(self.rng.integers(len(plain)))]],
            "logprobs": 0.0,
            "multi_n": 0.0,
            "maximal": 0.0,
            "padded": True,
            "system": False,
        }
        offset = float(self.rng.uniform(0, 24))
        days = math.ceil(self.population.days)
        for _ in range(int(self.rng.integers(40, 81))):
            time = self.waking_time(offset, int(self.rng.integers(days)))
            for _ in range(int(self.rng.integers(3, 9))):
                body = self.harvest_body(style)
                body.pop("max_tokens", None)
                self.add(time, account, body)
                time += float(self.rng.lognormal(math.log(60.0), 0.9)) + 5.0

    def plan(self) -> list[PlannedRequest]:
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
        return sorted(self.requests)
