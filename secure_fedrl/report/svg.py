"""Small inline-SVG charts for the report: line charts (with an optional band) and bar charts.

Written here rather than with matplotlib because the report is rendered at the end of every
`simulate` run: matplotlib costs ~1 s to import and ~70 ms a figure on this machine, this module
about a millisecond a chart, and its output is deterministic text with no fonts or assets.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from html import escape
from typing import Sequence

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")
Point = tuple[float, float]


@dataclass
class Series:
    label: str
    points: list[Point]
    color: str | None = None
    dashed: bool = False
    markers: bool = True
    band: tuple[list[Point], list[Point]] | None = None  # (lower, upper) shaded under the line
    axis: str = "left"  # or "right" (second y axis)


@dataclass
class HLine:
    y: float
    label: str
    color: str = "#444"


@dataclass
class Chart:
    id: str
    title: str
    xlabel: str
    ylabel: str
    series: list[Series] = field(default_factory=list)
    hlines: list[HLine] = field(default_factory=list)
    ylabel_right: str | None = None
    xrange: tuple[float, float] | None = None  # shared x axis across charts (rounds)
    width: int = 720
    height: int = 280


def _nice_ticks(lo: float, hi: float, n: int = 5, *, integer: bool = False) -> list[float]:
    if not math.isfinite(lo) or not math.isfinite(hi):
        return [0.0, 1.0]
    if hi <= lo:
        hi = lo + (abs(lo) if lo else 1.0)
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    if integer:
        step = max(1.0, float(round(step)))
    start = math.floor(lo / step) * step
    ticks = []
    t = start
    while len(ticks) < 50:  # the last tick is at or above hi: every point lies inside the axes
        ticks.append(round(t, 12))
        if t >= hi - 1e-9 * step:
            break
        t += step
    return ticks


def _fmt(v: float) -> str:
    if v == 0:
        return "0"
    a = abs(v)
    if a >= 1e6 or a < 1e-3:
        return f"{v:.1e}"
    if a >= 1000:
        return f"{v:,.0f}"
    return f"{v:.3g}"


def line_chart(chart: Chart) -> str:
    W, H = chart.width, chart.height
    left, right, top, bottom = 64, 64 if chart.ylabel_right else 20, 34, 64
    pw, ph = W - left - right, H - top - bottom
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" id="{escape(chart.id)}" class="chart" '
           f'viewBox="0 0 {W} {H}" width="{W}" height="{H}" role="img" aria-label="{escape(chart.title)}" '
           f'font-family="DejaVu Sans, Arial, Helvetica, sans-serif">',
           f'<rect x="0" y="0" width="{W}" height="{H}" fill="#fff"/>',
           f'<text x="{W / 2}" y="20" text-anchor="middle" font-size="14" font-weight="bold">{escape(chart.title)}</text>']
    axes = {}
    for side in ("left", "right"):
        ss = [s for s in chart.series if s.axis == side]
        ys = [y for s in ss for _, y in s.points if math.isfinite(y)]
        ys += [y for s in ss if s.band for part in s.band for _, y in part if math.isfinite(y)]
        if side == "left":
            ys += [h.y for h in chart.hlines if math.isfinite(h.y)]
        if not ys:
            continue
        lo, hi = min(0.0, min(ys)), max(ys)
        ticks = _nice_ticks(lo, hi)
        axes[side] = (ticks[0], ticks[-1], ticks)
    xs = [x for s in chart.series for x, _ in s.points]
    if not xs or "left" not in axes and "right" not in axes:
        out.append(f'<text x="{W / 2}" y="{H / 2}" text-anchor="middle" fill="#666">no data</text></svg>')
        return "".join(out)
    x0, x1 = chart.xrange if chart.xrange else (min(xs), max(xs))
    if x1 == x0:
        x0, x1 = x0 - 1, x1 + 1

    def sx(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * pw

    def sy(y: float, side: str = "left") -> float:
        lo, hi, _ = axes.get(side) or axes["left" if "left" in axes else "right"]
        return top + ph - (y - lo) / ((hi - lo) or 1.0) * ph

    out.append(f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>')
    for side, (_, _, ticks) in axes.items():
        for t in ticks:
            y = sy(t, side)
            if side == "left":
                out.append(f'<line x1="{left}" x2="{left + pw}" y1="{y:.1f}" y2="{y:.1f}" stroke="#eee"/>')
                out.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" font-size="11">{_fmt(t)}</text>')
            else:
                out.append(f'<text x="{left + pw + 6}" y="{y + 4:.1f}" text-anchor="start" font-size="11">{_fmt(t)}</text>')
    for t in _nice_ticks(x0, x1, 8, integer=all(float(x).is_integer() for x in xs)):
        if x0 <= t <= x1:
            x = sx(t)
            out.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{top + ph}" y2="{top + ph + 4}" stroke="#999"/>')
            out.append(f'<text x="{x:.1f}" y="{top + ph + 16}" text-anchor="middle" font-size="11">{_fmt(t)}</text>')
    out.append(f'<text x="{left + pw / 2}" y="{top + ph + 32}" text-anchor="middle" font-size="12">{escape(chart.xlabel)}</text>')
    out.append(f'<text transform="translate(14,{top + ph / 2}) rotate(-90)" text-anchor="middle" font-size="12">{escape(chart.ylabel)}</text>')
    if chart.ylabel_right:
        out.append(f'<text transform="translate({W - 12},{top + ph / 2}) rotate(90)" text-anchor="middle" font-size="12">{escape(chart.ylabel_right)}</text>')
    for h in chart.hlines:
        y = sy(h.y)
        out.append(f'<line class="hline" x1="{left}" x2="{left + pw}" y1="{y:.1f}" y2="{y:.1f}" stroke="{h.color}" '
                   f'stroke-dasharray="6,4" stroke-width="1.5"/>')
        out.append(f'<text x="{left + pw - 4}" y="{y - 4:.1f}" text-anchor="end" font-size="11" fill="{h.color}">{escape(h.label)}</text>')
    legend = []
    for i, s in enumerate(chart.series):
        color = s.color or PALETTE[i % len(PALETTE)]
        pts = [(x, y) for x, y in s.points if math.isfinite(y)]
        if s.band:
            lo_pts, hi_pts = s.band
            poly = [(sx(x), sy(y, s.axis)) for x, y in hi_pts] + [(sx(x), sy(y, s.axis)) for x, y in reversed(lo_pts)]
            out.append('<polygon class="band" points="' + " ".join(f"{a:.1f},{b:.1f}" for a, b in poly)
                       + f'" fill="{color}" fill-opacity="0.15" stroke="none"/>')
        if pts:
            d = " ".join(f"{'M' if j == 0 else 'L'}{sx(x):.1f},{sy(y, s.axis):.1f}" for j, (x, y) in enumerate(pts))
            dash = ' stroke-dasharray="5,3"' if s.dashed else ""
            out.append(f'<path class="series" d="{d}" fill="none" stroke="{color}" stroke-width="2"{dash}/>')
            if s.markers and len(pts) <= 120:
                out.extend(f'<circle cx="{sx(x):.1f}" cy="{sy(y, s.axis):.1f}" r="2.5" fill="{color}"/>' for x, y in pts)
        legend.append((s.label, color, s.dashed))
    lx, ly = left, H - 20
    for label, color, dashed in legend:
        dash = ' stroke-dasharray="5,3"' if dashed else ""
        out.append(f'<line x1="{lx}" x2="{lx + 18}" y1="{ly - 4}" y2="{ly - 4}" stroke="{color}" stroke-width="2"{dash}/>')
        out.append(f'<text x="{lx + 22}" y="{ly}" font-size="11">{escape(label)}</text>')
        lx += 30 + 6.5 * len(label)
        if lx > W - 160:
            lx, ly = left, ly + 14
    out.append("</svg>")
    return "".join(out)


def bar_chart(chart_id: str, title: str, labels: Sequence[str], values: Sequence[float | None], ylabel: str,
              *, width: int = 720, height: int = 260, color: str = PALETTE[0]) -> str:
    W, H = width, height
    left, right, top, bottom = 64, 20, 34, 70
    pw, ph = W - left - right, H - top - bottom
    vals = [v if v is not None and math.isfinite(v) else 0.0 for v in values]
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" id="{escape(chart_id)}" class="chart" '
           f'viewBox="0 0 {W} {H}" width="{W}" height="{H}" role="img" aria-label="{escape(title)}" '
           f'font-family="DejaVu Sans, Arial, Helvetica, sans-serif">',
           f'<rect x="0" y="0" width="{W}" height="{H}" fill="#fff"/>',
           f'<text x="{W / 2}" y="20" text-anchor="middle" font-size="14" font-weight="bold">{escape(title)}</text>']
    if not vals:
        out.append(f'<text x="{W / 2}" y="{H / 2}" text-anchor="middle" fill="#666">no data</text></svg>')
        return "".join(out)
    ticks = _nice_ticks(0.0, max(vals) or 1.0)
    hi = ticks[-1] or 1.0
    out.append(f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>')
    for t in ticks:
        y = top + ph - t / hi * ph
        out.append(f'<line x1="{left}" x2="{left + pw}" y1="{y:.1f}" y2="{y:.1f}" stroke="#eee"/>')
        out.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" font-size="11">{_fmt(t)}</text>')
    n = len(vals)
    bw = pw / n
    for i, (lab, v) in enumerate(zip(labels, vals)):
        h = v / hi * ph
        x = left + i * bw + bw * 0.15
        out.append(f'<rect class="bar" x="{x:.1f}" y="{top + ph - h:.1f}" width="{bw * 0.7:.1f}" height="{h:.1f}" fill="{color}"/>')
        if n <= 40:
            cx = left + (i + 0.5) * bw
            out.append(f'<text transform="translate({cx:.1f},{top + ph + 12}) rotate(35)" font-size="10">{escape(lab)}</text>')
    out.append(f'<text transform="translate(14,{top + ph / 2}) rotate(-90)" text-anchor="middle" font-size="12">{escape(ylabel)}</text>')
    out.append("</svg>")
    return "".join(out)
