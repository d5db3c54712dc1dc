"""Rings: groups of accounts run by one operator, found by graph clustering over weighted links.

Every regrouping, the accounts that sent requests since the last one are compared with the
accounts they share a blocking key with (`monitor.links.Roster`). The link model turns each
pair's links into the probability that one operator runs both; pairs at or above its
threshold are edges. Each account keeps `neighbours` of its edges, drawn at random (a sparse
graph: a 1,000-account cluster costs 10,000 edges, not half a million). Rings are the
connected components of that graph, cut where a cut is thin (spectral bisection), with at
least `min_size` accounts. A ring remembers the mean of its edges' links, which become its
reasons in words ("share a /24 or /64 network (0.92)").
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy.sparse import coo_matrix
from scipy.sparse.linalg import eigsh

from distillguard.monitor.features import Fleet
from distillguard.monitor.links import LINKS, LinkModel, Roster
from distillguard.monitor.state import AccountState

__all__ = ["PairTrace", "Ring", "RingFinder", "RingRules", "adjusted_rand_index"]

_CHUNK = 65_536  # candidate pairs whose links are computed at once

# per candidate pair: (left account, right account, links (pairs, LINKS), left account's
# requests, right account's requests) when the links were computed
PairTrace = Callable[
    [list[str], list[str], NDArray[np.float32], NDArray[np.int64], NDArray[np.int64]], None
]


@dataclass(frozen=True)
class RingRules:
    min_requests: int = 10  # an account needs this many requests to be linked
    min_size: int = 3
    neighbours: int = 10  # strongest edges kept per account
    partners: int = 64  # in a larger block, a changed account meets this many, drawn at random
    max_block: int = 20_000  # a blocking key shared by more accounts than this is ignored
    thin_cut: float = 0.05  # a component splits where a cut's conductance is below this


@dataclass(frozen=True)
class Ring:
    accounts: tuple[str, ...]  # sorted
    links: tuple[float, ...]  # mean of each link over the ring's edges
    edges: int

    def reasons(self, model: LinkModel, top: int = 3) -> list[str]:
        """The links that hold the ring together most, in words."""
        contributions = np.asarray(model.weights) * np.asarray(self.links)
        order = np.argsort(-contributions)
        return [
            f"{LINKS[i].label} ({self.links[i]:.2f})"
            for i in order[:top]
            if contributions[i] > 0.25
        ]


class RingFinder:
    """Keeps the link graph between regroupings; `find` returns the rings of the moment."""

    def __init__(
        self, rules: RingRules, model: LinkModel, signals: int, trace: PairTrace | None = None
    ) -> None:
        self.rules = rules
        self.model = model
        self.trace = trace
        self.roster = Roster(signals)  # `signals`: the length of a behaviour vector
        self._dirty: set[int] = set()
        # row -> {neighbour row: (probability, links)}; an edge exists when either side holds it
        self._edges: dict[int, dict[int, tuple[float, NDArray[np.float32]]]] = {}
        self._holders: dict[int, set[int]] = {}  # row -> rows whose edge lists hold it
        self._rng = np.random.default_rng(0)  # partners drawn in a large block: reproducible

    def update(self, state: AccountState, behaviour: NDArray[np.float64], score: float) -> None:
        """Take in an account that changed (ignored below `min_requests`); `behaviour` is its
        signals' deviation from an ordinary account's (`RiskModel.deviation`)."""
        if state.requests < self.rules.min_requests:
            return
        self._dirty.add(self.roster.update(state, behaviour, score))

    def find(self, fleet: Fleet) -> list[Ring]:
        if self._dirty:
            self._relink(fleet)
        return self._components()

    def _relink(self, fleet: Fleet) -> None:
        roster = self.roster
        dirty = np.fromiter(self._dirty, dtype=np.intp, count=len(self._dirty))
        self._dirty.clear()
        region = roster.region(fleet.centroid)
        left, right = self._candidates(dirty, region)
        found: dict[int, dict[int, tuple[float, NDArray[np.float32]]]] = {
            int(row): {} for row in dirty
        }
        for start in range(0, len(left), _CHUNK):
            heads, tails = left[start : start + _CHUNK], right[start : start + _CHUNK]
            links = roster.features(heads, tails, region)
            if self.trace is not None:
                self.trace(
                    [roster.names[i] for i in heads],
                    [roster.names[i] for i in tails],
                    links,
                    roster.requests[heads],
                    roster.requests[tails],
                )
            probabilities = self.model.probabilities(links)
            edges = np.flatnonzero(probabilities >= self.model.threshold)
            # `neighbours` edges per account, drawn at random among those above the threshold:
            # the strongest would tie each account to its closest look-alikes, and a graph
            # of look-alikes has thin cuts inside one operator's accounts
            draw = self._rng.random(len(edges))
            for index in _strongest(heads[edges], draw, self.rules.neighbours):
                pair = int(edges[index])
                found[int(heads[pair])][int(tails[pair])] = (
                    float(probabilities[pair]),
                    links[pair],
                )
        for row, candidates in found.items():
            self._replace_edges(row, candidates)

    def _candidates(
        self, dirty: NDArray[np.intp], region: NDArray[np.float32]
    ) -> tuple[NDArray[np.intp], NDArray[np.intp]]:
        """(changed account, other account) pairs that share a blocking key, each once; in a
        block larger than `partners`, each changed account meets a random sample of it."""
        is_dirty = np.zeros(len(self.roster.names), dtype=bool)
        is_dirty[dirty] = True
        partners = self.rules.partners
        heads: list[NDArray[np.intp]] = []
        tails: list[NDArray[np.intp]] = []
        for block in self.roster.blocks(dirty, region, self.rules.max_block):
            changed = block[is_dirty[block]]
            if len(block) <= partners:
                heads.append(np.repeat(changed, len(block)))
                tails.append(np.tile(block, len(changed)))
            else:
                heads.append(np.repeat(changed, partners))
                tails.append(self._rng.choice(block, size=len(changed) * partners))
        if not heads:
            return np.zeros(0, np.intp), np.zeros(0, np.intp)
        left, right = np.concatenate(heads), np.concatenate(tails)
        keep = left != right
        combined = np.unique(left[keep].astype(np.int64) * len(is_dirty) + right[keep])
        return (combined // len(is_dirty)).astype(np.intp), (combined % len(is_dirty)).astype(
            np.intp
        )

    def _replace_edges(
        self, row: int, candidates: dict[int, tuple[float, NDArray[np.float32]]]
    ) -> None:
        for other in self._edges.pop(row, {}):
            self._holders.get(other, set()).discard(row)
        for holder in list(self._holders.get(row, ())):  # edges to it found from the other side
            if holder not in candidates:
                self._edges.get(holder, {}).pop(row, None)
                self._holders[row].discard(holder)
        kept = dict(list(candidates.items())[: self.rules.neighbours])
        self._edges[row] = kept
        for other in kept:
            self._holders.setdefault(other, set()).add(row)

    def _components(self) -> list[Ring]:
        """Communities of the edge graph: connected components, cut where a cut is thin, so
        that two dense groups joined by a few stray edges stay two rings."""
        adjacency: dict[int, dict[int, float]] = {}
        for row, edges in self._edges.items():
            for other, (probability, _) in edges.items():
                for a, b in ((row, other), (other, row)):
                    weights = adjacency.setdefault(a, {})
                    weights[b] = max(weights.get(b, 0.0), probability)
        rings = []
        for members in _communities(adjacency, self.rules.thin_cut):
            if len(members) < self.rules.min_size:
                continue
            member_set = set(members)
            links = [
                edge_links
                for row in members
                for other, (_, edge_links) in self._edges.get(row, {}).items()
                if other in member_set
            ]
            mean = np.mean(links, axis=0) if links else np.zeros(len(LINKS))
            rings.append(
                Ring(
                    accounts=tuple(sorted(self.roster.names[row] for row in members)),
                    links=tuple(float(value) for value in mean),
                    edges=len(links),
                )
            )
        return sorted(rings, key=lambda ring: (-len(ring.accounts), ring.accounts[0]))


DENSE_EIGEN_NODES = 64  # larger groups use the sparse Lanczos solver (two vectors)


def _communities(adjacency: dict[int, dict[int, float]], thin: float) -> list[list[int]]:
    """Connected components, each cut in two where its best cut is thin, recursively."""
    seen: set[int] = set()
    found: list[list[int]] = []
    for start in sorted(adjacency):
        if start in seen:
            continue
        component, frontier = [start], [start]
        seen.add(start)
        while frontier:
            node = frontier.pop()
            for other in adjacency[node]:
                if other not in seen:
                    seen.add(other)
                    component.append(other)
                    frontier.append(other)
        found += _bisect(sorted(component), adjacency, thin)
    return found


def _bisect(
    nodes: list[int], adjacency: dict[int, dict[int, float]], thin: float
) -> list[list[int]]:
    """Spectral bisection (Shi and Malik, IEEE PAMI 2000): split by the sign of the normalized
    Laplacian's Fiedler vector, and keep the split only when its conductance (cut weight over
    the smaller side's volume) is below `thin`: two groups held together by a few stray
    edges come apart, while one operator's accounts, linked every which way, do not."""
    if len(nodes) < 6:
        return [nodes]
    index = {node: i for i, node in enumerate(nodes)}
    rows, columns, weights = [], [], []
    for node in nodes:
        for other, weight in adjacency[node].items():
            if other in index:
                rows.append(index[node])
                columns.append(index[other])
                weights.append(weight)
    matrix = coo_matrix((weights, (rows, columns)), shape=(len(nodes), len(nodes))).tocsr()
    degree = np.asarray(matrix.sum(axis=1)).ravel()
    scale = 1.0 / np.sqrt(np.maximum(degree, 1e-12))
    normalized = matrix.multiply(scale[:, None]).multiply(scale[None, :]).tocsr()
    if len(nodes) <= DENSE_EIGEN_NODES:  # a dense solve is O(n^3): 0.2 s at 400 nodes
        _, vectors = np.linalg.eigh(normalized.toarray())
        fiedler = vectors[:, -2]
    else:
        start = np.linspace(1.0, 2.0, len(nodes))  # a fixed start: reproducible
        _, vectors = eigsh(normalized, k=2, which="LA", v0=start)
        fiedler = vectors[:, 0]
    side = fiedler * scale >= 0
    if side.all() or not side.any():
        return [nodes]
    crossing = np.asarray(matrix[side][:, ~side].sum())
    volume = min(float(degree[side].sum()), float(degree[~side].sum()))
    if float(crossing) / max(volume, 1e-12) >= thin:
        return [nodes]
    left = [node for node, on in zip(nodes, side, strict=True) if on]
    right = [node for node, on in zip(nodes, side, strict=True) if not on]
    return _bisect(left, adjacency, thin) + _bisect(right, adjacency, thin)


def _strongest(
    heads: NDArray[np.intp], probabilities: NDArray[np.float64], count: int
) -> NDArray[np.intp]:
    """Indices of each head's `count` most probable pairs."""
    if not len(heads):
        return np.zeros(0, np.intp)
    order = np.lexsort((-probabilities, heads))
    sorted_heads = heads[order]
    starts = np.flatnonzero(np.r_[True, sorted_heads[1:] != sorted_heads[:-1]])
    rank = np.arange(len(order)) - np.repeat(starts, np.diff(np.r_[starts, len(order)]))
    kept: NDArray[np.intp] = order[rank < count]
    return kept


def adjusted_rand_index(truth: Sequence[str], predicted: Sequence[str]) -> float:
    """Hubert and Arabie's adjusted Rand index of two labelings of the same items."""
    if len(truth) != len(predicted):
        raise ValueError("labelings differ in length")
    pairs: dict[tuple[str, str], int] = {}
    rows: dict[str, int] = {}
    cols: dict[str, int] = {}
    for t, p in zip(truth, predicted, strict=True):
        pairs[(t, p)] = pairs.get((t, p), 0) + 1
        rows[t] = rows.get(t, 0) + 1
        cols[p] = cols.get(p, 0) + 1

    def comb2(n: int) -> float:
        return n * (n - 1) / 2.0

    index = sum(comb2(n) for n in pairs.values())
    sum_rows = sum(comb2(n) for n in rows.values())
    sum_cols = sum(comb2(n) for n in cols.values())
    total = comb2(len(truth))
    expected = sum_rows * sum_cols / total if total else 0.0
    maximum = (sum_rows + sum_cols) / 2.0
    if maximum == expected:
        return 1.0
    return (index - expected) / (maximum - expected)
