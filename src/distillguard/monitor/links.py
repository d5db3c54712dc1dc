"""Links between accounts: what two accounts share that says one operator runs both.

Each candidate pair gets one value per link in `LINKS`, each in [0, 1] and oriented so that
more of it means more likely one operator:

- identity: the same dominant /24 or /64 network, client address, client software (user agent
  and header order), organisation, sign-up program, sign-up times close together;
- behaviour: the same prompt template, the same hours of activity, prompts in the same topic
  region away from the fleet's, a sweep of that region with little overlap between the two
  (coordinated coverage), requests of the same shape (their risk signals point the same
  way), and both risky on their own.

A logistic `LinkModel` over these, with non-negative weights learned in the fit
(`experiments.fitting.fit_link_model`), says how likely a pair is one operator. No single link
decides: many honest users share a carrier NAT, an SDK's user agent or a sign-up day.

`Roster` keeps the linkable accounts as rows of arrays, rewritten only for the accounts that
changed since the last regrouping, and proposes candidate pairs by blocking: accounts that
share a network, an address, a client, an organisation, a sign-up day, a template or a topic
region (random-hyperplane LSH). An account that changed is paired with the members of each of
its blocks, or with a random sample of them in a large block (`rings.RingFinder`), so the
cost follows the accounts that changed, not the fleet squared.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from distillguard.errors import ConfigError
from distillguard.monitor.state import ACTIVITY_BUCKET, ACTIVITY_HORIZON, AccountState
from distillguard.monitor.text import EMBEDDING_DIM, SIGNATURE_SIZE

__all__ = ["LINKS", "Link", "LinkModel", "Roster"]


@dataclass(frozen=True)
class Link:
    name: str
    label: str  # how a ring's reason reads


LINKS: tuple[Link, ...] = (
    Link("template", "share a prompt template"),
    Link("network", "share a /24 or /64 network"),
    Link("address", "share client addresses"),
    Link("client", "send with the same client software (user agent and header order)"),
    Link("signup", "signed up close together"),
    Link("program", "signed up through the same program"),
    Link("org", "belong to one organisation"),
    Link("timing", "are active in the same hours"),
    Link("region", "ask about the same topic region, away from the fleet's"),
    Link("coverage", "sweep that region with little overlap between them"),
    Link("behaviour", "send requests of the same shape"),
    Link("risk", "each look like harvesting on their own"),
)
LINK_INDEX = {link.name: index for index, link in enumerate(LINKS)}

REGION_DIM = 32  # centroids are compared in a random projection of the embedding
REGION_TABLES = 2  # LSH tables for region blocking ...
REGION_BITS = 4  # ... of 4 hyperplanes each: 16 buckets a table
TEMPLATE_SIGNATURE = 8  # MinHash values over an account's dominant template shingles
ACTIVITY_SLOTS = int(ACTIVITY_HORIZON // ACTIVITY_BUCKET)  # hours of activity compared
SIGNUP_SCALE = 86_400.0  # sign-up times this far apart weigh 1/e
BEHAVIOUR_SCALE = 3.0  # standard deviations from ordinary at which behaviour counts in full
_NONE = np.iinfo(np.uint64).max

_rng = np.random.default_rng(20261201)
_REGION_PROJECTION = (
    _rng.standard_normal((EMBEDDING_DIM, REGION_DIM)) / math.sqrt(REGION_DIM)
).astype(np.float32)
_REGION_PLANES = _rng.standard_normal((REGION_TABLES * REGION_BITS, REGION_DIM)).astype(np.float32)
_TEMPLATE_SALTS = _rng.integers(1, 2**63 - 1, size=TEMPLATE_SIGNATURE, dtype=np.uint64)
_MULT = np.uint64(0x9E3779B97F4A7C15)


@dataclass(frozen=True)
class LinkModel:
    """P(one operator | links) = sigmoid(weights . links + bias); an edge when >= threshold."""

    weights: tuple[float, ...]
    bias: float
    threshold: float = 0.5

    def __post_init__(self) -> None:
        if len(self.weights) != len(LINKS):
            raise ConfigError(
                f"link model has {len(self.weights)} weights for {len(LINKS)} links; refit it"
            )
        if not 0.0 < self.threshold < 1.0:
            raise ConfigError("a link threshold is a probability strictly between 0 and 1")

    @classmethod
    def default(cls) -> LinkModel:
        """Hand-set weights for a monitor without a fitted model: a pair needs several links
        at once (a shared template and hours and region, or a network and a sign-up burst and
        a shared client) to pass."""
        weights = {
            "template": 3.0,
            "network": 2.0,
            "address": 1.0,
            "client": 1.5,
            "signup": 2.0,
            "timing": 3.0,
            "region": 2.0,
            "coverage": 1.0,
            "behaviour": 1.0,
            "risk": 2.0,
        }
        return cls(tuple(weights.get(link.name, 0.0) for link in LINKS), -8.0, 0.5)

    def probabilities(self, features: NDArray[np.float32]) -> NDArray[np.float64]:
        """Edge probabilities for features of shape (..., len(LINKS))."""
        logits = features @ np.asarray(self.weights, dtype=np.float32) + self.bias
        probabilities: NDArray[np.float64] = 1.0 / (1.0 + np.exp(-np.clip(logits, -60, 60)))
        return probabilities


class Roster:
    """The linkable accounts as rows: what the link features read, per account."""

    def __init__(self, signals: int, capacity: int = 256) -> None:
        self.rows: dict[str, int] = {}
        self.names: list[str] = []
        self._signals = signals
        self._allocate(capacity)

    def _allocate(self, capacity: int) -> None:
        self.capacity = capacity
        self.mean_projection = np.zeros((capacity, REGION_DIM), np.float32)
        self.activity = np.zeros((capacity, ACTIVITY_SLOTS), np.float32)
        self.requests = np.zeros(capacity, np.int64)  # the account's requests at its update
        self.behaviour = np.zeros((capacity, self._signals), np.float32)  # standardized, unit
        self.score = np.zeros(capacity, np.float32)
        self.codes = np.zeros((capacity, 5), np.int64)  # network, address, client, org, program
        self.shares = np.zeros((capacity, 3), np.float32)  # of network, address, client
        self.created = np.full(capacity, np.nan)
        self.signature = np.full((capacity, SIGNATURE_SIZE), _NONE, np.uint64)
        self.templates = np.full((capacity, TEMPLATE_SIGNATURE), _NONE, np.uint64)

    def _grow(self) -> None:
        old = {
            name: getattr(self, name)
            for name in (
                "mean_projection",
                "activity",
                "requests",
                "behaviour",
                "score",
                "codes",
                "shares",
                "created",
                "signature",
                "templates",
            )
        }
        self._allocate(self.capacity * 2)
        for name, array in old.items():
            getattr(self, name)[: len(array)] = array

    @staticmethod
    def _code(token: str) -> int:
        """A token as a positive 63-bit integer (0: none), without a table that would grow
        with every address a rotating proxy ever used."""
        if not token:
            return 0
        digest = hashlib.blake2b(token.encode(), digest_size=8).digest()
        return (int.from_bytes(digest, "little") >> 1) or 1

    def update(self, state: AccountState, behaviour: NDArray[np.float64], score: float) -> int:
        """Rewrite the account's row; `behaviour` is its signals' deviation from an ordinary
        account's, in the risk model's standard deviations (`RiskModel.deviation`)."""
        row = self.rows.get(state.account)
        if row is None:
            if len(self.names) == self.capacity:
                self._grow()
            row = self.rows[state.account] = len(self.names)
            self.names.append(state.account)
        if state.texts:
            mean = (state.centroid / state.texts).astype(np.float32)
            self.mean_projection[row] = mean @ _REGION_PROJECTION
        self.activity[row] = 0.0
        for bucket, count in state.activity:
            self.activity[row, bucket % ACTIVITY_SLOTS] = count
        norm = float(np.linalg.norm(self.activity[row]))
        if norm > 0:
            self.activity[row] /= norm
        self.requests[row] = state.requests
        length = float(np.linalg.norm(behaviour))
        # the direction of the account's deviation from an ordinary account, shrunk when the
        # deviation is small: two ordinary accounts point nowhere in particular
        self.behaviour[row] = (
            behaviour / length * math.tanh(length / BEHAVIOUR_SCALE) if length > 0 else 0.0
        )
        self.score[row] = score
        for column, counts in enumerate((state.networks, state.addresses, state.clients)):
            token, share = counts.top()
            self.codes[row, column] = self._code(token)
            self.shares[row, column] = share
        self.codes[row, 3] = self._code("org:" + state.org if state.org else "")
        self.codes[row, 4] = self._code(
            "program:" + state.signup_program if state.signup_program else ""
        )
        self.created[row] = np.nan if state.created_at is None else state.created_at
        self.signature[row] = state.signature
        self.templates[row] = _template_signature(state.dominant_templates())
        return row

    def region(self, centroid: NDArray[np.float64] | None) -> NDArray[np.float32]:
        """Every row's mean prompt embedding less the fleet's, projected, unit length;
        shape (rows, REGION_DIM)."""
        vectors = self.mean_projection[: len(self.names)].copy()
        if centroid is not None:
            vectors -= (centroid.astype(np.float32) @ _REGION_PROJECTION)[None, :]
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        unit: NDArray[np.float32] = np.divide(
            vectors, norms, out=np.zeros_like(vectors), where=norms > 0
        )
        return unit

    def blocks(
        self, dirty: NDArray[np.intp], region: NDArray[np.float32], max_block: int
    ) -> Iterator[NDArray[np.intp]]:
        """Groups of rows that share a blocking key, each with at least one dirty row."""
        count = len(self.names)
        is_dirty = np.zeros(count, dtype=bool)
        is_dirty[dirty] = True
        keys: list[NDArray[np.int64]] = [self.codes[:count, column] for column in range(4)]
        day = np.floor(self.created[:count] / SIGNUP_SCALE)
        half = np.floor(self.created[:count] / SIGNUP_SCALE + 0.5)
        for shifted in (day, half):
            keys.append(np.where(np.isnan(shifted), 0, shifted + 2**40).astype(np.int64))
        bits = (region @ _REGION_PLANES.T) > 0  # (rows, tables * bits)
        weights = 1 << np.arange(REGION_BITS)
        has_region = np.abs(region).sum(axis=1) > 0
        for table in range(REGION_TABLES):
            chunk = bits[:, table * REGION_BITS : (table + 1) * REGION_BITS]
            keys.append(np.where(has_region, 1 + chunk @ weights, 0).astype(np.int64))
        has_template = self.templates[:count, 0] != _NONE
        for half_signature in (slice(0, 4), slice(4, 8)):
            hashed = np.bitwise_xor.reduce(self.templates[:count, half_signature], axis=1)
            keys.append(np.where(has_template, (hashed >> np.uint64(2)) + 1, 0).astype(np.int64))
        for key in keys:
            yield from _groups(key, is_dirty, max_block)

    def features(
        self, left: NDArray[np.intp], right: NDArray[np.intp], region: NDArray[np.float32]
    ) -> NDArray[np.float32]:
        """Link values of the pairs (left[i], right[i]); shape (pairs, len(LINKS))."""
        out = np.zeros((len(left), len(LINKS)), np.float32)
        templates_a, templates_b = self.templates[left], self.templates[right]
        agree = (templates_a == templates_b).mean(axis=1)
        out[:, LINK_INDEX["template"]] = agree * (templates_a[:, 0] != _NONE)
        for column, name in enumerate(("network", "address", "client")):
            code_a, code_b = self.codes[left, column], self.codes[right, column]
            share = np.minimum(self.shares[left, column], self.shares[right, column])
            out[:, LINK_INDEX[name]] = ((code_a == code_b) & (code_a != 0)) * share
        for column, name in ((3, "org"), (4, "program")):
            code_a, code_b = self.codes[left, column], self.codes[right, column]
            out[:, LINK_INDEX[name]] = (code_a == code_b) & (code_a != 0)
        gap = np.abs(self.created[left] - self.created[right])
        out[:, LINK_INDEX["signup"]] = np.nan_to_num(np.exp(-gap / SIGNUP_SCALE), nan=0.0)
        out[:, LINK_INDEX["timing"]] = np.einsum(
            "ij,ij->i", self.activity[left], self.activity[right]
        )
        same_region = np.clip(np.einsum("ij,ij->i", region[left], region[right]), 0.0, 1.0)
        out[:, LINK_INDEX["region"]] = same_region
        signatures_a, signatures_b = self.signature[left], self.signature[right]
        overlap = ((signatures_a == signatures_b) & (signatures_a != _NONE)).mean(axis=1)
        out[:, LINK_INDEX["coverage"]] = same_region * (1.0 - overlap)
        behaviour = np.einsum("ij,ij->i", self.behaviour[left], self.behaviour[right])
        out[:, LINK_INDEX["behaviour"]] = np.clip(behaviour, 0.0, 1.0)
        out[:, LINK_INDEX["risk"]] = np.minimum(self.score[left], self.score[right])
        return out


def _groups(
    key: NDArray[np.int64], is_dirty: NDArray[np.bool_], max_block: int
) -> Iterator[NDArray[np.intp]]:
    """Rows grouped by a non-zero key, for groups of 2..max_block rows with a dirty row."""
    order = np.argsort(key, kind="stable")
    ordered = key[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    ends = np.r_[starts[1:], len(ordered)]
    for start, end in zip(starts, ends, strict=True):
        if ordered[start] == 0 or not 2 <= end - start <= max_block:
            continue
        rows = order[start:end]
        if is_dirty[rows].any():
            yield rows


def _template_signature(shingles: frozenset[int]) -> NDArray[np.uint64]:
    if not shingles:
        return np.full(TEMPLATE_SIGNATURE, _NONE, np.uint64)
    values = np.fromiter(shingles, dtype=np.uint64, count=len(shingles))
    mixed = (values[:, None] ^ _TEMPLATE_SALTS[None, :]) * _MULT
    signature: NDArray[np.uint64] = mixed.min(axis=0)
    return signature
