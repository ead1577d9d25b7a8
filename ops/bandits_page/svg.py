"""Inline SVG charts rendered by the server (no JavaScript, no fonts or styles fetched).

Each chart is a ``<svg>`` string with ``data-chart`` naming it, a ``<title>``, its axes,
and every plotted value also written as text (so the numbers read without hovering and a
browser test finds them). Values are plain floats; missing ones (None) are not drawn.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

WIDTH = 560
HEIGHT = 240
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 56, 16, 28, 44
COLORS = ("#4c72b0", "#dd8452", "#55a868", "#c44e52")


@dataclass(frozen=True)
class Point:
    """One value of one series at one x category, with an optional interval."""

    value: float | None
    low: float | None = None
    high: float | None = None


@dataclass(frozen=True)
class Series:
    name: str
    points: Sequence[Point]


def _fmt(value: float) -> str:
    return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"


def _range(values: Sequence[float], floor_zero: bool) -> tuple[float, float]:
    if not values:
        return 0.0, 1.0
    lo, hi = min(values), max(values)
    if floor_zero:
        lo = min(lo, 0.0)
    if hi - lo < 1e-12:
        pad = abs(hi) * 0.1 or 1.0
        return lo - pad, hi + pad
    pad = (hi - lo) * 0.08
    return (lo if floor_zero and lo == 0.0 else lo - pad), hi + pad


class _Frame:
    """Plot area and the mapping of values to pixels."""

    def __init__(self, lo: float, hi: float, n: int) -> None:
        self.lo, self.hi, self.n = lo, hi, max(n, 1)
        self.left, self.right = MARGIN_LEFT, WIDTH - MARGIN_RIGHT
        self.top, self.bottom = MARGIN_TOP, HEIGHT - MARGIN_BOTTOM

    def y(self, value: float) -> float:
        return self.bottom - (value - self.lo) / (self.hi - self.lo) * (self.bottom - self.top)

    def x(self, i: int) -> float:
        step = (self.right - self.left) / self.n
        return self.left + step * (i + 0.5)

    @property
    def step(self) -> float:
        return (self.right - self.left) / self.n

    def axes(self, labels: Sequence[str], y_label: str) -> list[str]:
        out = [
            f'<line x1="{self.left}" y1="{self.bottom}" x2="{self.right}" y2="{self.bottom}" '
            'stroke="#555"/>',
            f'<line x1="{self.left}" y1="{self.top}" x2="{self.left}" y2="{self.bottom}" '
            'stroke="#555"/>',
        ]
        for k in range(5):
            value = self.lo + (self.hi - self.lo) * k / 4
            y = self.y(value)
            out.append(
                f'<line x1="{self.left - 4}" y1="{y:.1f}" x2="{self.right}" y2="{y:.1f}" '
                'stroke="#ddd"/>'
                f'<text x="{self.left - 6}" y="{y + 4:.1f}" text-anchor="end" '
                f'font-size="10">{_fmt(value)}</text>'
            )
        for i, label in enumerate(labels):
            out.append(
                f'<text class="xlabel" x="{self.x(i):.1f}" y="{self.bottom + 16}" '
                f'text-anchor="middle" font-size="11">{escape(label)}</text>'
            )
        out.append(
            f'<text x="14" y="{(self.top + self.bottom) / 2:.1f}" font-size="11" '
            f'text-anchor="middle" transform="rotate(-90 14 {(self.top + self.bottom) / 2:.1f})">'
            f"{escape(y_label)}</text>"
        )
        return out


def _open(chart: str, title: str) -> list[str]:
    return [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" data-chart="{escape(chart)}" '
        f'width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'aria-label="{escape(title)}">',
        f"<title>{escape(title)}</title>",
        f'<text x="{WIDTH / 2}" y="16" text-anchor="middle" font-size="13" '
        f'font-weight="bold">{escape(title)}</text>',
    ]


def _legend(series: Sequence[Series]) -> list[str]:
    out = []
    x = MARGIN_LEFT
    for k, s in enumerate(series):
        color = COLORS[k % len(COLORS)]
        out.append(
            f'<rect x="{x}" y="{HEIGHT - 14}" width="10" height="10" fill="{color}"/>'
            f'<text x="{x + 14}" y="{HEIGHT - 5}" font-size="10">{escape(s.name)}</text>'
        )
        x += 20 + 6 * len(s.name)
    return out


def _empty(chart: str, title: str, why: str) -> str:
    return "".join(
        [
            *_open(chart, title),
            f'<text class="empty" x="{WIDTH / 2}" y="{HEIGHT / 2}" text-anchor="middle" '
            f'font-size="12" fill="#777">{escape(why)}</text>',
            "</svg>",
        ]
    )


def interval_chart(
    chart: str,
    title: str,
    labels: Sequence[str],
    series: Sequence[Series],
    y_label: str,
    empty: str = "no data yet",
) -> str:
    """Points with error bars, one group per label, one marker per series side by side."""
    values = [
        v
        for s in series
        for p in s.points
        for v in (p.value, p.low, p.high)
        if v is not None and math.isfinite(v)
    ]
    if not labels or not values:
        return _empty(chart, title, empty)
    frame = _Frame(*_range(values, floor_zero=False), len(labels))
    out = [*_open(chart, title), *frame.axes(labels, y_label)]
    width = frame.step * 0.5
    for k, s in enumerate(series):
        color = COLORS[k % len(COLORS)]
        offset = -width / 2 + width * (k + 0.5) / len(series)
        for i, p in enumerate(s.points):
            if p.value is None or not math.isfinite(p.value):
                continue
            x, y = frame.x(i) + offset, frame.y(p.value)
            if p.low is not None and p.high is not None:
                y0, y1 = frame.y(p.low), frame.y(p.high)
                out.append(
                    f'<line x1="{x:.1f}" y1="{y0:.1f}" x2="{x:.1f}" y2="{y1:.1f}" '
                    f'stroke="{color}" stroke-width="2"/>'
                    f'<line x1="{x - 4:.1f}" y1="{y0:.1f}" x2="{x + 4:.1f}" y2="{y0:.1f}" '
                    f'stroke="{color}"/>'
                    f'<line x1="{x - 4:.1f}" y1="{y1:.1f}" x2="{x + 4:.1f}" y2="{y1:.1f}" '
                    f'stroke="{color}"/>'
                )
            out.append(
                f'<circle class="point" data-series="{escape(s.name)}" '
                f'data-label="{escape(labels[i])}" data-value="{p.value:.6g}" cx="{x:.1f}" '
                f'cy="{y:.1f}" r="4" fill="{color}"/>'
                f'<text x="{x + 6:.1f}" y="{y - 4:.1f}" font-size="10" fill="{color}">'
                f"{p.value:.3f}</text>"
            )
    out += [*_legend(series), "</svg>"]
    return "".join(out)


def bar_chart(
    chart: str,
    title: str,
    labels: Sequence[str],
    values: Sequence[float | None],
    y_label: str,
    y_max: float | None = None,
    empty: str = "no data yet",
) -> str:
    """One bar per label (a missing value draws no bar and says so)."""
    present = [v for v in values if v is not None]
    if not labels or not present:
        return _empty(chart, title, empty)
    hi = y_max if y_max is not None else max(present) * 1.1 or 1.0
    frame = _Frame(0.0, hi, len(labels))
    out = [*_open(chart, title), *frame.axes(labels, y_label)]
    width = frame.step * 0.6
    for i, value in enumerate(values):
        x = frame.x(i)
        if value is None:
            out.append(
                f'<text x="{x:.1f}" y="{frame.bottom - 4}" text-anchor="middle" '
                'font-size="10" fill="#999">–</text>'
            )
            continue
        y = frame.y(value)
        out.append(
            f'<rect class="bar" data-label="{escape(labels[i])}" data-value="{value:.6g}" '
            f'x="{x - width / 2:.1f}" y="{y:.1f}" width="{width:.1f}" '
            f'height="{frame.bottom - y:.1f}" fill="{COLORS[0]}"/>'
            f'<text x="{x:.1f}" y="{y - 3:.1f}" text-anchor="middle" font-size="10">'
            f"{value:.3g}</text>"
        )
    out.append("</svg>")
    return "".join(out)


def line_chart(
    chart: str,
    title: str,
    labels: Sequence[str],
    series: Sequence[Series],
    y_label: str,
    limit: float | None = None,
    empty: str = "no data yet",
) -> str:
    """Lines with markers, one per series; an optional dashed horizontal limit."""
    values = [p.value for s in series for p in s.points if p.value is not None]
    if not labels or not values:
        return _empty(chart, title, empty)
    lo, hi = _range([*values, *([limit] if limit is not None else [])], floor_zero=True)
    frame = _Frame(lo, hi, len(labels))
    out = [*_open(chart, title), *frame.axes(labels, y_label)]
    if limit is not None:
        y = frame.y(limit)
        out.append(
            f'<line x1="{frame.left}" y1="{y:.1f}" x2="{frame.right}" y2="{y:.1f}" '
            'stroke="#c44e52" stroke-dasharray="5,4"/>'
            f'<text x="{frame.right - 2}" y="{y - 4:.1f}" text-anchor="end" font-size="10" '
            f'fill="#c44e52">limit {_fmt(limit)}</text>'
        )
    for k, s in enumerate(series):
        color = COLORS[k % len(COLORS)]
        xy = [
            (frame.x(i), frame.y(p.value), p.value)
            for i, p in enumerate(s.points)
            if p.value is not None
        ]
        if len(xy) > 1:
            path = " ".join(f"{x:.1f},{y:.1f}" for x, y, _ in xy)
            out.append(f'<polyline points="{path}" fill="none" stroke="{color}"/>')
        for x, y, v in xy:
            out.append(
                f'<circle class="point" data-series="{escape(s.name)}" data-value="{v:.6g}" '
                f'cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{color}"/>'
            )
    out += [*_legend(series), "</svg>"]
    return "".join(out)
