"""Charts drawn on the server as inline SVG: no script, no library, no build step.

Each chart is an <svg role="img"> with a <title> and a <desc> that say what it shows
(screen readers read them); the page puts the same numbers in a table beside it. The
drawing scales with its box (a viewBox, width 100%), so a phone shows it whole.
Colours are presentation attributes, not style: the console's CSP allows no inline
style.
"""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Sequence
from dataclasses import dataclass

from markupsafe import Markup, escape

INK = "#1d2330"
MUTED = "#5b6475"
LINE = "#d9dee7"
ACCENT = "#1f5fbf"
OK = "#1d7a46"
BAD = "#b3261e"
WARN = "#9a6200"
PALETTE = (ACCENT, OK, WARN, "#7b3fb5", "#0f7c8c", BAD)
FONT = 'font-family="system-ui, sans-serif"'

_ids = itertools.count(1)


@dataclass(frozen=True)
class Series:
    name: str
    values: Sequence[int]
    colour: str = ACCENT


def _open(width: int, height: int, title: str, desc: str) -> tuple[str, str]:
    n = next(_ids)
    head = (
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" viewBox="0 0 {width} {height}"'
        f' width="100%" role="img" aria-labelledby="chart{n}-t chart{n}-d" {FONT}'
        f' font-size="12"><title id="chart{n}-t">{escape(title)}</title>'
        f'<desc id="chart{n}-d">{escape(desc)}</desc>'
    )
    return head, "</svg>"


def _nice_top(value: int) -> int:
    """A round number at or above `value` for the axis's top (1, 2, 5 x 10^n)."""
    if value <= 0:
        return 1
    step = 1
    while True:
        for m in (1, 2, 5):
            if m * step >= value:
                return m * step
        step *= 10


def columns(title: str, labels: Sequence[str], series: Sequence[Series], desc: str = "") -> Markup:
    """Grouped vertical bars: one group per label (a week), one bar per series."""
    width, height = 720, 220
    left, right, top, bottom = 44, 12, 28, 40
    plot_w, plot_h = width - left - right, height - top - bottom
    peak = _nice_top(max((v for s in series for v in s.values), default=0))
    head, tail = _open(width, height, title, desc or _describe(labels, series))
    parts = [head]
    # The legend, top left.
    x = left
    for s in series:
        parts.append(f'<rect x="{x}" y="6" width="12" height="12" fill="{s.colour}"/>')
        parts.append(f'<text x="{x + 16}" y="16" fill="{INK}">{escape(s.name)}</text>')
        x += 24 + 8 * len(s.name)
    for frac in (0, 0.5, 1):
        y = top + plot_h - frac * plot_h
        parts.append(
            f'<line x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}" stroke="{LINE}"/>'
            f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" fill="{MUTED}">'
            f"{round(peak * frac):,}</text>"
        )
    group = plot_w / max(len(labels), 1)
    bar = max(group * 0.8 / max(len(series), 1), 1)
    every = max(1, round(len(labels) / 8))  # at most ~8 labels under the axis, the last one
    first_label = (len(labels) - 1) % every
    for n, label in enumerate(labels):
        gx = left + n * group + group * 0.1
        for k, s in enumerate(series):
            value = s.values[n]
            h = plot_h * value / peak
            parts.append(
                f'<rect x="{gx + k * bar:.1f}" y="{top + plot_h - h:.1f}" width="{bar - 1:.1f}"'
                f' height="{h:.1f}" fill="{s.colour}"><title>{escape(label)}: {value:,}'
                f" {escape(s.name)}</title></rect>"
            )
        if n % every == first_label:
            parts.append(
                f'<text x="{left + n * group + group / 2:.1f}" y="{height - bottom + 16}"'
                f' text-anchor="middle" fill="{MUTED}">{escape(label)}</text>'
            )
    parts.append(tail)
    return Markup("".join(parts))


def bars(title: str, labels: Sequence[str], values: Sequence[int], unit: str) -> Markup:
    """Horizontal bars, one a line (an issue's clicks): the label left, the value right."""
    width, row, label_w = 720, 30, 230
    height = max(len(labels), 1) * row + 8
    peak = max(values, default=0) or 1
    desc = "; ".join(f"{label}: {v:,} {unit}" for label, v in zip(labels, values, strict=True))
    head, tail = _open(width, height, title, desc or "nothing yet")
    parts = [head]
    for n, (label, value) in enumerate(zip(labels, values, strict=True)):
        y = 4 + n * row
        w = (width - label_w - 70) * value / peak
        short = label if len(label) <= 30 else label[:29] + "…"
        parts.append(
            f'<text x="{label_w - 8}" y="{y + 17}" text-anchor="end" fill="{INK}">'
            f"{escape(short)}</text>"
            f'<rect x="{label_w}" y="{y + 3}" width="{w:.1f}" height="{row - 8}" fill="{ACCENT}"/>'
            f'<text x="{label_w + w + 6:.1f}" y="{y + 17}" fill="{INK}">{value:,}</text>'
        )
    if not labels:
        parts.append(f'<text x="8" y="20" fill="{MUTED}">Nothing yet</text>')
    parts.append(tail)
    return Markup("".join(parts))


@dataclass(frozen=True)
class Span:
    """One row of a timeline: a label and its dates (None: open on that side)."""

    label: str
    start: dt.date | None
    end: dt.date | None
    colour: str = ACCENT


def timeline(
    title: str, spans: Sequence[Span], first: dt.date, days: int, today: dt.date
) -> Markup:
    """A row per span over `days` days from `first`, the weeks marked, today a line."""
    width, row, label_w, top = 720, 28, 150, 24
    plot_w = width - label_w - 10
    height = top + max(len(spans), 1) * row + 6
    last = first + dt.timedelta(days=days)

    def x(day: dt.date) -> float:
        return label_w + plot_w * (day - first).days / days

    desc = (
        "; ".join(f"{s.label}: {s.start or 'open'} to {s.end or 'open'}" for s in spans)
        or "no bookings"
    )
    head, tail = _open(width, height, title, f"From {first} to {last}, today {today}. {desc}")
    parts = [head]
    for week in range(0, days + 1, 7):
        day = first + dt.timedelta(days=week)
        parts.append(
            f'<line x1="{x(day):.1f}" x2="{x(day):.1f}" y1="{top - 4}" y2="{height}"'
            f' stroke="{LINE}"/>'
        )
        if week < days and (week // 7) % 2 == 0:
            parts.append(
                f'<text x="{x(day) + 2:.1f}" y="{top - 8}" fill="{MUTED}">{day:%b %d}</text>'
            )
    for n, span in enumerate(spans):
        y = top + n * row
        parts.append(
            f'<text x="{label_w - 8}" y="{y + 18}" text-anchor="end" fill="{INK}">'
            f"{escape(span.label[:22])}</text>"
        )
        start = max(span.start or first, first)
        end = min(span.end or last, last)
        if start <= end:
            x1, x2 = x(start), x(end + dt.timedelta(days=1)) if end < last else x(last)
            parts.append(
                f'<rect x="{x1:.1f}" y="{y + 5}" width="{max(x2 - x1, 2):.1f}" height="{row - 10}"'
                f' rx="4" fill="{span.colour}"><title>{escape(span.label)}:'
                f" {span.start or 'open'} to {span.end or 'open'}</title></rect>"
            )
    if first <= today <= last:
        tx = x(today)
        parts.append(
            f'<line x1="{tx:.1f}" x2="{tx:.1f}" y1="{top - 4}" y2="{height}" stroke="{BAD}"'
            f' stroke-width="2"/><text x="{tx + 3:.1f}" y="{height - 2}" fill="{BAD}">today</text>'
        )
    parts.append(tail)
    return Markup("".join(parts))


def _describe(labels: Sequence[str], series: Sequence[Series]) -> str:
    return "; ".join(
        f"{label}: " + ", ".join(f"{s.values[n]:,} {s.name}" for s in series)
        for n, label in enumerate(labels)
    )
