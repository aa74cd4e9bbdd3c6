"""The inline SVG charts: every point inside the axes, nothing non-finite drawn, text escaped."""

from __future__ import annotations

import math
import re

from secure_fedrl.report.svg import Chart, HLine, Series, _nice_ticks, bar_chart, line_chart


def test_ticks_cover_the_data():
    for lo, hi in [(0, 1.67), (0, 8), (0, 3100), (0.3, 0.31), (0, 1e-4), (-2, 5)]:
        t = _nice_ticks(lo, hi)
        assert t[0] <= lo + 1e-12 and t[-1] >= hi - 1e-12 and len(t) <= 50
    assert all(float(x).is_integer() for x in _nice_ticks(1, 3, 8, integer=True))


def test_points_lie_inside_the_plot_area():
    svg = line_chart(Chart("c", "t", "x", "y", [Series("s", [(1, 1.67), (2, 0.2), (3, math.inf)])],
                           [HLine(1.0, "limit")]))
    top, bottom = 34, 280 - 64
    cys = [float(v) for v in re.findall(r'<circle cx="[^"]+" cy="([^"]+)"', svg)]
    assert len(cys) == 2 and all(top - 0.05 <= y <= bottom + 0.05 for y in cys)
    assert "inf" not in svg and "nan" not in svg.lower()


def test_labels_are_escaped_and_empty_data_says_so():
    svg = line_chart(Chart("c", "<b>&", "x", "y", [Series("<script>", [])]))
    assert "<script>" not in svg and "no data" in svg and "&lt;b&gt;&amp;" in svg
    assert 'class="bar"' in bar_chart("b", "t", ["a", "b"], [1.0, None], "y")
