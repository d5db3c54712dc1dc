"""How the console's templates format numbers, scores and times."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import jinja2

__all__ = ["ago", "count", "install", "score", "when"]


def count(value: float | int | None) -> str:
    """12,345 (or a dash for no value)."""
    if value is None:
        return "—"
    return f"{value:,.0f}"


def score(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"


def when(value: str | float | None) -> str:
    """An ISO 8601 time or an epoch as "2026-05-01 13:04:05 UTC"."""
    if value is None or value == "":
        return "—"
    if isinstance(value, (int, float)):
        moment = datetime.fromtimestamp(value, UTC)
    else:
        try:
            moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return value
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def ago(value: float, now: float | None = None) -> str:
    """How long ago an epoch time was, in words: "4 s ago", "3 min ago"."""
    seconds = max(0.0, (now if now is not None else time.time()) - value)
    if seconds < 90:
        return f"{seconds:.0f} s ago"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.1f} h ago"


def install(environment: jinja2.Environment) -> None:
    environment.filters.update(count=count, score=score, when=when, ago=ago)
