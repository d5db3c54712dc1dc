"""Rings: accounts run by one operator, found by what they share.

Two accounts are linked when they share a dominant template (a word shingle on at least 30% of
each one's prompts), their timing (cosine of their hourly activity over the last three days)
and their prompt source (cosine of their mean prompt embedding). Template alone is not enough:
independent batch jobs built on one public template share it, but not their hours. Rings are the
connected components of at least `min_size` accounts (union-find). Candidate pairs come from
an inverted index on dominant templates, so the cost grows with the accounts that share one,
not with the square of the fleet.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from distillguard.monitor.features import AccountState

__all__ = ["RingRules", "find_rings"]


@dataclass(frozen=True)
class RingRules:
    min_requests: int = 10  # an account needs this many requests to be linked
    template_jaccard: float = 0.3
    timing_cosine: float = 0.3
    source_cosine: float = 0.3
    min_size: int = 3
    max_sharing: int = 5000  # a template on more accounts than this is ignored (too common)


def _timing_cosine(a: AccountState, b: AccountState) -> float:
    left = dict(a.activity)
    dot = sum(count * left.get(bucket, 0) for bucket, count in b.activity)
    if dot == 0:
        return 0.0
    norm_a = math.sqrt(sum(count * count for _, count in a.activity))
    norm_b = math.sqrt(sum(count * count for _, count in b.activity))
    return dot / (norm_a * norm_b)


def _source_cosine(a: AccountState, b: AccountState) -> float:
    norm = float(np.linalg.norm(a.centroid) * np.linalg.norm(b.centroid))
    return float(a.centroid @ b.centroid) / norm if norm > 0 else 0.0


def find_rings(states: Iterable[AccountState], rules: RingRules) -> list[list[str]]:
    """Groups of linked accounts (each sorted, largest group first)."""
    templates: dict[str, frozenset[int]] = {}
    by_account: dict[str, AccountState] = {}
    index: dict[int, list[str]] = {}
    for state in states:
        if state.requests < rules.min_requests:
            continue
        dominant = state.dominant_templates()
        if not dominant:
            continue
        templates[state.account] = dominant
        by_account[state.account] = state
        for shingle in dominant:
            index.setdefault(shingle, []).append(state.account)
    parent = {account: account for account in templates}

    def root(account: str) -> str:
        while parent[account] != account:
            parent[account] = parent[parent[account]]
            account = parent[account]
        return account

    checked: set[tuple[str, str]] = set()
    for sharing in index.values():
        if len(sharing) < 2 or len(sharing) > rules.max_sharing:
            continue
        for i, first in enumerate(sharing):
            for second in sharing[i + 1 :]:
                pair = (first, second) if first < second else (second, first)
                if pair in checked or root(first) == root(second):
                    continue
                checked.add(pair)
                if _linked(by_account[first], by_account[second], templates, rules):
                    parent[root(first)] = root(second)
    groups: dict[str, list[str]] = {}
    for account in templates:
        groups.setdefault(root(account), []).append(account)
    rings = [sorted(group) for group in groups.values() if len(group) >= rules.min_size]
    return sorted(rings, key=lambda ring: (-len(ring), ring[0]))


def _linked(
    a: AccountState, b: AccountState, templates: dict[str, frozenset[int]], rules: RingRules
) -> bool:
    left, right = templates[a.account], templates[b.account]
    jaccard = len(left & right) / len(left | right)
    if jaccard < rules.template_jaccard:
        return False
    return (
        _timing_cosine(a, b) >= rules.timing_cosine and _source_cosine(a, b) >= rules.source_cosine
    )


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
