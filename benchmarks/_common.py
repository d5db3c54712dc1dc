"""Helpers shared by the benchmark scripts: timing, tables, data location."""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def data_dir() -> Path:
    return Path(os.environ.get("DISTILLGUARD_DATA", REPO_ROOT.parent / "shared" / "data"))


def best_seconds(function: Callable[[], object], repeats: int) -> float:
    """Fastest of `repeats` runs after one warm-up (the least disturbed by a noisy machine)."""
    function()
    timings = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        timings.append(time.perf_counter() - start)
    return min(timings)


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def pin_to_one_core() -> None:
    """Run on one core, so 'per core' figures mean what they say."""
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})


def print_table(title: str, rows: list[tuple[str, str]]) -> None:
    width = max(len(name) for name, _ in rows)
    print(f"\n{title}")
    print("-" * (width + 20))
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
