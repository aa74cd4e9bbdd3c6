"""The HTML report rendered by headless Chromium: the page is not blank and draws the epsilon plot.

Needs Debian's `chromium` (`make test-browser` installs it, or apt-get install chromium); without
it these tests are skipped with that reason.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from report_helpers import make_run
from secure_fedrl.report import find_chromium, make_report, render, run_chromium, write_report
from secure_fedrl.report.html import epsilon_chart
from secure_fedrl.report.svg import PALETTE

pytestmark = pytest.mark.skipif(find_chromium() is None,
                                reason="headless Chromium not installed (apt-get install chromium)")
Image = pytest.importorskip("PIL.Image")


def screenshot(html_path: Path, png: Path, *, width: int, height: int) -> np.ndarray:
    proc = run_chromium(["--hide-scrollbars", f"--window-size={width},{height}", f"--screenshot={png}",
                         html_path.as_uri()])
    assert png.is_file(), proc.stderr.decode(errors="replace")[-500:]
    return np.asarray(Image.open(png).convert("RGB")).astype(int)


def near(img: np.ndarray, hex_color: str, tol: int = 40) -> int:
    rgb = np.array([int(hex_color[i:i + 2], 16) for i in (1, 3, 5)])
    return int(np.sum(np.abs(img - rgb).sum(axis=2) < tol))


def test_report_page_renders_with_the_epsilon_plot(tmp_path):
    run, _ = make_run(tmp_path / "run")
    page = write_report(run, tmp_path / "report.html")
    # The DOM Chromium built holds the inline SVG plot with its series and the budget line.
    dom = run_chromium(["--dump-dom", page.as_uri()]).stdout.decode()
    svg = re.search(r'<svg[^>]*id="plot-epsilon".*?</svg>', dom, re.S)
    assert svg, "no epsilon plot in the rendered DOM"
    assert svg.group(0).count('class="series"') >= 2 and 'class="hline"' in svg.group(0)
    img = screenshot(page, tmp_path / "page.png", width=1400, height=1400)
    white = np.all(img > 245, axis=2)
    assert white.mean() < 0.97, "the page rendered (nearly) blank"
    assert img.std() > 10


def test_epsilon_plot_region_is_drawn(tmp_path):
    """Render the epsilon plot alone, so the pixel check looks at exactly its region."""
    run, _ = make_run(tmp_path / "run")
    doc = make_report(run)
    chart = tmp_path / "chart.html"
    chart.write_text(f"<!DOCTYPE html><html><body style='margin:0'>{epsilon_chart(doc)}</body></html>")
    img = screenshot(chart, tmp_path / "chart.png", width=720, height=280)
    plot = img[34:280 - 64, 64:720 - 20]  # the plotting area inside the axes (svg.line_chart margins)
    assert np.mean(np.any(plot < 200, axis=2)) > 0.01, "plot region is empty"
    assert near(plot, PALETTE[0]) > 200, "no epsilon curve drawn"
    assert near(plot, "#b42318", tol=120) > 100, "no budget line drawn"

    # Control: the same check on an epsilon plot with no data finds no curve (the test can fail).
    empty = dict(doc, epsilon=dict(doc["epsilon"], series=[]))
    chart.write_text(f"<!DOCTYPE html><html><body style='margin:0'>{epsilon_chart(empty)}</body></html>")
    img = screenshot(chart, tmp_path / "empty.png", width=720, height=280)
    assert near(img[34:216, 64:700], PALETTE[0]) == 0


def test_pdf_from_the_same_page(tmp_path):
    run, _ = make_run(tmp_path / "run")
    out = write_report(run, tmp_path / "report.pdf", fmt="pdf")
    data = out.read_bytes()
    assert data.startswith(b"%PDF-") and len(data) > 10_000
    assert b"%%EOF" in data[-1024:]
    html = render(make_report(run), "html")
    assert b"plot-epsilon" in html
