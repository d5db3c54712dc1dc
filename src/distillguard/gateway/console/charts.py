"""Inline SVG charts: a sparkline, a line chart with threshold lines, and signed bars.

Each chart is an `<svg role="img">` with a `<title>` that says in words what it shows, so a
screen reader (or a page without styles) still gets the point. Colours come from the
console's stylesheet classes, never inline styles, so the page's Content-Security-Policy can
forbid inline styles. Every value is a number formatted here; text is escaped.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

from markupsafe import Markup

__all__ = ["Series", "bars", "line_chart", "sparkline"]


@dataclass(frozen=True)
class Series:
    name: str
    values: Sequence[float]
    css: str = "series-a"  # the stylesheet class that colours it


def _points(
    values: Sequence[float], width: float, height: float, low: float, high: float, pad: float
) -> str:
    span = high - low or 1.0
    step = (width - 2 * pad) / max(len(values) - 1, 1)
    return " ".join(
        f"{pad + i * step:.1f},{height - pad - (v - low) / span * (height - 2 * pad):.1f}"
        for i, v in enumerate(values)
    )


def sparkline(
    values: Sequence[float],
    label: str,
    width: int = 100,
    height: int = 24,
    low: float | None = None,
    high: float | None = None,
) -> Markup:
    """A small line of `values` (no axes) between `low` and `high` (default: their range);
    `label` says what it is."""
    title = escape(label)
    if not values:
        return _built(
            f'<svg class="spark" role="img" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}"><title>{title}: no samples yet</title></svg>'
        )
    if len(values) == 1:
        values = [values[0], values[0]]
    low = min(values) if low is None else low
    high = max(values) if high is None else high
    points = _points(values, width, height, low, high, 2)
    return _built(
        f'<svg class="spark" role="img" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}"><title>{title}: from {values[0]:.2f} to '
        f'{values[-1]:.2f}</title><polyline class="line series-a" points="{points}"/></svg>'
    )


def line_chart(
    series: Sequence[Series],
    labels: Sequence[str],
    title: str,
    *,
    low: float | None = None,
    high: float | None = None,
    thresholds: Sequence[tuple[str, float]] = (),
    width: int = 640,
    height: int = 200,
) -> Markup:
    """Lines over shared x labels (first and last printed), with dashed threshold lines."""
    pad_left, pad = 48, 20
    values = [v for s in series for v in s.values] + [t for _, t in thresholds]
    if not values or not labels:
        return _built(f'<p class="empty">{escape(title)}: no data yet.</p>')
    low = min(values) if low is None else low
    high = max(values) if high is None else high
    if high <= low:
        high = low + 1.0
    plot_w, plot_h = width - pad_left - pad, height - 2 * pad
    count = max(len(labels) - 1, 1)

    def x(i: int) -> float:
        return pad_left + i * plot_w / count

    def y(v: float) -> float:
        return pad + (1 - (v - low) / (high - low)) * plot_h

    parts = [
        f'<svg class="chart" role="img" viewBox="0 0 {width} {height}" '
        f'preserveAspectRatio="xMidYMid meet"><title>{escape(title)}</title>',
        f'<line class="axis" x1="{pad_left}" y1="{pad + plot_h}" x2="{width - pad}" '
        f'y2="{pad + plot_h}"/>',
        f'<line class="axis" x1="{pad_left}" y1="{pad}" x2="{pad_left}" y2="{pad + plot_h}"/>',
        f'<text class="tick" x="{pad_left - 4}" y="{pad + 4}" text-anchor="end">'
        f"{_short(high)}</text>",
        f'<text class="tick" x="{pad_left - 4}" y="{pad + plot_h}" text-anchor="end">'
        f"{_short(low)}</text>",
        f'<text class="tick" x="{pad_left}" y="{height - 4}">{escape(labels[0])}</text>',
        f'<text class="tick" x="{width - pad}" y="{height - 4}" text-anchor="end">'
        f"{escape(labels[-1])}</text>",
    ]
    for name, value in thresholds:
        parts.append(
            f'<line class="threshold" x1="{pad_left}" y1="{y(value):.1f}" x2="{width - pad}" '
            f'y2="{y(value):.1f}"/><text class="tick" x="{width - pad}" y="{y(value) - 3:.1f}" '
            f'text-anchor="end">{escape(name)}</text>'
        )
    for item in series:
        if len(item.values) == 1:
            parts.append(
                f'<circle class="dot {escape(item.css)}" cx="{x(0):.1f}" '
                f'cy="{y(item.values[0]):.1f}" r="3"><title>{escape(item.name)}</title></circle>'
            )
            continue
        points = " ".join(f"{x(i):.1f},{y(v):.1f}" for i, v in enumerate(item.values))
        parts.append(
            f'<polyline class="line {escape(item.css)}" points="{points}">'
            f"<title>{escape(item.name)}</title></polyline>"
        )
    parts.append("</svg>")
    return _built("".join(parts))


def bars(items: Sequence[tuple[str, float]], title: str, width: int = 640) -> Markup:
    """Horizontal bars of signed values around a zero line (contributions to a logit)."""
    if not items:
        return _built(f'<p class="empty">{escape(title)}: no data yet.</p>')
    row, label_w, pad = 20, 180, 8
    height = row * len(items) + 2 * pad
    extent = max(max(abs(v) for _, v in items), 1e-9)
    half = (width - label_w - 2 * pad) / 2
    zero = label_w + pad + half
    parts = [
        f'<svg class="chart" role="img" viewBox="0 0 {width} {height}"><title>'
        f"{escape(title)}</title>",
        f'<line class="axis" x1="{zero:.1f}" y1="{pad}" x2="{zero:.1f}" y2="{height - pad}"/>',
    ]
    for i, (name, value) in enumerate(items):
        top = pad + i * row
        length = abs(value) / extent * half
        left = zero if value >= 0 else zero - length
        css = "bar-up" if value >= 0 else "bar-down"
        parts.append(
            f'<text class="tick" x="{label_w}" y="{top + 14}" text-anchor="end">'
            f"{escape(name)}</text>"
            f'<rect class="{css}" x="{left:.1f}" y="{top + 3}" width="{max(length, 0.5):.1f}" '
            f'height="{row - 6}"><title>{escape(name)}: {value:+.2f}</title></rect>'
        )
    parts.append("</svg>")
    return _built("".join(parts))


def _built(svg: str) -> Markup:
    """Markup of an SVG built here: numbers formatted here, every text escaped."""
    return Markup(svg)  # noqa: S704 - built from escaped text and formatted numbers only


def _short(value: float) -> str:
    """A tick label: 0.97, 12, 3.4k, 1.2M."""
    magnitude = abs(value)
    if magnitude >= 1e6:
        return f"{value / 1e6:.1f}M"
    if magnitude >= 1e4:
        return f"{value / 1e3:.0f}k"
    if magnitude >= 1e3:
        return f"{value / 1e3:.1f}k"
    if magnitude >= 10 or value == math.floor(value):
        return f"{value:.0f}"
    return f"{value:.2f}"
