"""The simulated fleet's building blocks: what accounts are (`Population`, `Truth`), what one
planned request is, and the planner's shared steps (benign sessions, harvest requests, where
each account's requests come from). The shapes themselves are in `experiments.harvesters`
(harvesters) and `experiments.lookalikes` (honest accounts that look like them);
`experiments.population.Planner` puts them together.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from distillguard.experiments.network import Client, NetworkPool, Origin

__all__ = [
    "BATCH_TEMPLATES",
    "DAY",
    "EVAL_TEMPLATES",
    "FOLLOW_UPS",
    "HARVEST_TEMPLATES",
    "HOUR",
    "MAX_TOKENS_CAP",
    "MODEL",
    "AccountMeta",
    "PlannedRequest",
    "PlannerBase",
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


# What evaluation harnesses send: a bare question, a few-shot-free "Answer:" prompt, and the
# chain-of-thought instruction public evaluation suites use for maths.
EVAL_TEMPLATES: tuple[str, ...] = (
    "Question: {q}\nAnswer:",
    "Solve the following math problem step by step. The last line of your response should be "
    "of the form Answer: $ANSWER.\n\n{q}",
    "{q}",
)


@dataclass(frozen=True)
class Population:
    """How many accounts of each kind one simulation runs, and what the harvesters control."""

    benign: int = 600
    power_share: float = 0.10
    developer_share: float = 0.03
    batch_share: float = 0.03
    fast: int = 8
    slow: int = 8
    rings: int = 1
    ring_size: int = 100
    mixed: int = 8
    stealth: int = 0  # harvesters that mimic a person (see HarvestShapes.stealth)
    hydra: int = 0  # clusters of accounts behind a few proxies, harvest blended in
    hydra_size: int = 1000
    routers: int = 0  # one key resold to many users, carrying a harvest share
    bursts: int = 0  # accounts signed up together, each harvesting on its own
    burst_size: int = 40
    # honest look-alikes
    campuses: int = 0  # universities: students behind a campus NAT, signed up in cohorts
    campus_size: int = 150
    carriers: int = 0  # carrier-grade NAT pools of mobile users
    carrier_size: int = 200
    enterprises: int = 0  # companies: many keys of one organisation behind one proxy
    enterprise_size: int = 25
    eval_harnesses: int = 0  # CI and evaluation harnesses re-running a benchmark
    resellers: int = 0  # honest routers: one key, many users, no harvest
    # what the attacker controls, varied between fitting and reporting
    network: str = "subnets"  # the campaigns' proxy layout (experiments.network.LAYOUTS)
    raw_share: float = 0.0  # of each shape, the first ceil(count x share) send raw prompts
    days: float = 7.0
    slow_budget: int = 1500

    @classmethod
    def small(cls) -> Population:
        """A few minutes of CPU less: for tests. Every kind, a few of each."""
        return cls(
            benign=60,
            fast=2,
            slow=2,
            rings=1,
            ring_size=12,
            mixed=2,
            stealth=2,
            hydra=1,
            hydra_size=24,
            routers=1,
            bursts=1,
            burst_size=6,
            campuses=1,
            campus_size=20,
            carriers=1,
            carrier_size=10,
            enterprises=1,
            enterprise_size=6,
            eval_harnesses=1,
            resellers=1,
            raw_share=0.5,
            days=3.0,
        )


@dataclass(frozen=True)
class Truth:
    kind: str  # benign: "casual", "power", "developer", "batch", "campus", "carrier",
    # "enterprise", "eval", "reseller"; harvesters: "fast", "slow", "ring", "mixed",
    # "stealth", "hydra", "router", "burst"
    campaign: str | None  # harvest campaign (a ring's accounts share one); None for benign
    raw: bool = False  # the campaign sends its prompts without a distiller template

    @property
    def harvester(self) -> bool:
        return self.campaign is not None


@dataclass(frozen=True)
class AccountMeta:
    """What the key store knows of an account: when and how it signed up."""

    created_at: float  # simulated seconds; negative = before the simulation starts
    org: str = ""  # the organisation's name ("" = none)
    program: str = ""  # "education", "startup" or ""


@dataclass(order=True)
class PlannedRequest:
    """One request of the plan; requests sort by time (then by the order they were planned)."""

    time: float
    sequence: int
    account: str = field(compare=False)
    chat: bool = field(compare=False)
    body: dict[str, Any] = field(compare=False)
    client: Client = field(compare=False)


class PlannerBase:
    """The steps every shape uses; the shapes are mixins over it."""

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
        self.meta: dict[str, AccountMeta] = {}
        self.pool = NetworkPool(rng)
        self.interests = _interest_clusters(benign, rng)
        self._sequence = 0
        self._raw_counts: dict[str, int] = {}

    def add(
        self, time: float, account: str, body: dict[str, Any], client: Client, chat: bool = True
    ) -> None:
        self._sequence += 1
        self.requests.append(PlannedRequest(time, self._sequence, account, chat, body, client))

    def raw_next(self, shape: str, count: int) -> bool:
        """Whether the next campaign of `shape` (of `count`) sends raw prompts."""
        index = self._raw_counts.get(shape, 0)
        self._raw_counts[shape] = index + 1
        return index < math.ceil(count * self.population.raw_share - 1e-9)

    def signed_up(self, account: str, created_at: float, org: str = "", program: str = "") -> None:
        self.meta[account] = AccountMeta(created_at, org, program)

    def old_account(self, account: str) -> None:
        """An account made some time in the past year, outside any program."""
        self.signed_up(account, -float(self.rng.uniform(1, 365)) * DAY)

    def home_origin(self, mobile_share: float | None = None) -> Origin:
        """An honest user's: a home address, some sessions from a carrier NAT."""
        share = float(self.rng.uniform(0.1, 0.5)) if self.rng.random() < 0.3 else 0.0
        if mobile_share is not None:
            share = mobile_share
        mobile = None
        if share > 0:
            nats = self.pool.nats or [self.pool.nat(4, 2)]
            mobile = nats[int(self.rng.integers(len(nats)))]
        return Origin(self.pool, self.pool.software(), [self.pool.home()], "fixed", mobile, share)

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

    def interest_profile(self) -> list[int]:
        """A person's favourite topics: one or two clusters of the benign prompts."""
        count = min(1 + int(self.rng.random() < 0.4), len(self.interests))
        return [int(i) for i in self.rng.choice(len(self.interests), size=count, replace=False)]

    def benign_prompt(self, profile: list[int] | None) -> str:
        """Mostly on the person's own topics, otherwise anything."""
        if profile and self.rng.random() < 0.6:
            cluster = self.interests[profile[int(self.rng.integers(len(profile)))]]
            return self.benign[cluster[int(self.rng.integers(len(cluster)))]]
        return self.benign[int(self.rng.integers(len(self.benign)))]

    def session(
        self,
        account: str,
        start: float,
        developer: bool,
        turns: int,
        client: Client,
        first: str | None = None,
        profile: list[int] | None = None,
    ) -> float:
        messages: list[dict[str, str]] = []
        if self.rng.random() < 0.2:
            messages.append({"role": "system", "content": "You are a helpful assistant."})
        time = start
        for turn in range(turns):
            if turn == 0 and first is not None:
                text = first
            elif turn == 0 or self.rng.random() < 0.2:
                text = self.benign_prompt(profile)
            else:
                text = self.follow_ups[int(self.rng.integers(len(self.follow_ups)))]
            messages.append({"role": "user", "content": text})
            body = {"model": MODEL, "messages": list(messages)} | self.benign_params(developer)
            self.add(time, account, body, client)
            messages.append({"role": "assistant", "content": "(the assistant's reply)"})
            time += float(self.rng.lognormal(math.log(60.0), 0.9)) + 5.0
        return time

    def benign_user(self, account: str, kind: str) -> None:
        self.truth[account] = Truth(kind, None)
        self.old_account(account)
        self.benign_sessions(account, kind, self.home_origin())

    def benign_sessions(
        self,
        account: str,
        kind: str,
        origin: Origin,
        sessions: int | None = None,
        homework: float = 0.0,
        timezone: float | None = None,
    ) -> None:
        """A person's sessions over the simulated days; `homework` is the share of sessions
        that open with a question from the harvest set (a student's maths homework);
        `timezone` is the hour offset of the place (a campus), anywhere when None."""
        if timezone is None:
            offset = float(self.rng.uniform(0, 24))
        else:  # one place, people's own habits an hour or two either way
            offset = timezone + float(self.rng.normal(0.0, 1.0))
        days = math.ceil(self.population.days)
        if sessions is None:
            sessions = {
                "casual": 1 + int(self.rng.poisson(3.0)),
                "power": int(self.rng.integers(15, 41)),
                "developer": int(self.rng.integers(5, 21)),
            }[kind]
        profile = self.interest_profile()
        for _ in range(sessions):
            start = self.waking_time(offset, int(self.rng.integers(days)))
            turns = 1 + int(min(self.rng.geometric(0.45) - 1, 7))
            first = None
            if homework and self.rng.random() < homework:
                first = self.harvest[int(self.rng.integers(len(self.harvest)))]
            client = origin.client(start, origin.wants_mobile())
            self.session(
                account,
                start,
                developer=kind == "developer",
                turns=turns,
                client=client,
                first=first,
                profile=profile,
            )

    def batch_user(self, account: str) -> None:
        """A batch job: one task template over many inputs, in bursts; a quarter of them
        ask for long outputs (reports, rewrites)."""
        self.truth[account] = Truth("batch", None)
        self.old_account(account)
        origin = Origin(self.pool, self.pool.software(), [self.pool.home()])
        template = self.batch_templates[int(self.rng.integers(len(self.batch_templates)))]
        max_tokens = int(self.rng.choice([64, 128, 256]))
        if self.rng.random() < 0.25:
            max_tokens = int(self.rng.choice([1024, 2048]))
        days = math.ceil(self.population.days)
        for _ in range(int(self.rng.integers(1, 5))):
            time = float(self.rng.uniform(0, days * DAY))
            spacing = float(self.rng.uniform(1.0, 5.0))
            client = origin.client(time)
            for _ in range(int(self.rng.integers(50, 201))):
                text = template.format(q=self.benign[int(self.rng.integers(len(self.benign)))])
                body = {
                    "model": MODEL,
                    "messages": [{"role": "user", "content": text}],
                    "max_tokens": max_tokens,
                    "temperature": 0.0,
                }
                self.add(time, account, body, client)
                time += spacing * float(self.rng.uniform(0.8, 1.2))

    # -- harvest requests -----------------------------------------------------------------------

    def campaign_style(self, raw: bool = False) -> dict[str, Any]:
        """A campaign's habits, drawn: what the attacker controls."""
        count = int(self.rng.integers(1, 4))
        chosen = self.rng.choice(len(self.templates), size=count, replace=False)
        return {
            "templates": ["{q}"] if raw else [self.templates[int(i)] for i in chosen],
            "raw": raw,
            "logprobs": float(self.rng.choice([0.0, 0.0, 0.5, 1.0])),
            "multi_n": float(self.rng.choice([0.0, 0.0, 0.3])),
            "maximal": float(self.rng.choice([1.0, 1.0, 0.7, 0.0])),
            # some leave max_tokens unset: the model's default is long enough for them
            "unset_max_tokens": bool(self.rng.random() < 0.2),
            "system": bool(self.rng.random() < 0.3),
            # some campaigns pad each request with a made-up earlier exchange, to look like a
            # conversation rather than one-shot collection
            "padded": bool(self.rng.random() < 0.25),
            "stream": float(self.rng.choice([0.0, 0.5])),
            "cursor": int(self.rng.integers(len(self.harvest))),
        }

    def harvest_body(self, style: dict[str, Any]) -> dict[str, Any]:
        question = self.harvest[style["cursor"] % len(self.harvest)]
        style["cursor"] += int(style.get("stride", 1))
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
        if style["unset_max_tokens"]:
            pass
        elif self.rng.random() < style["maximal"]:
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


_WORD = re.compile(r"[a-z]{3,}")


def _interest_clusters(prompts: list[str], rng: np.random.Generator, k: int = 8) -> list[list[int]]:
    """Topics of the benign prompts, so that a person can have favourites: k-means (cosine)
    over TF-IDF word vectors. Its own representation (whole words, inverse document frequency),
    not the monitor's hashed n-grams."""
    documents = [set(_WORD.findall(p.lower())) for p in prompts]
    frequency: dict[str, int] = {}
    for words in documents:
        for word in words:
            frequency[word] = frequency.get(word, 0) + 1
    vocabulary = sorted(
        (w for w, c in frequency.items() if 2 <= c <= 0.3 * len(prompts)),
        key=lambda w: -frequency[w],
    )[:2000]
    if len(prompts) < 2 * k or not vocabulary:
        return [list(range(len(prompts)))]
    column = {word: index for index, word in enumerate(vocabulary)}
    vectors = np.zeros((len(prompts), len(vocabulary)), np.float32)
    for row, words in enumerate(documents):
        for word in words:
            if word in column:
                vectors[row, column[word]] = math.log(len(prompts) / frequency[word])
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    vectors = np.divide(vectors, norms, out=np.zeros_like(vectors), where=norms > 0)
    centres = vectors[rng.choice(len(prompts), size=k, replace=False)]
    labels = np.zeros(len(prompts), dtype=np.intp)
    for _ in range(12):
        labels = np.argmax(vectors @ centres.T, axis=1)
        for cluster in range(k):
            members = vectors[labels == cluster]
            if len(members):
                centre = members.sum(axis=0)
                centres[cluster] = centre / max(float(np.linalg.norm(centre)), 1e-9)
    clusters = [np.flatnonzero(labels == c).tolist() for c in range(k)]
    return [c for c in clusters if c] or [list(range(len(prompts)))]
