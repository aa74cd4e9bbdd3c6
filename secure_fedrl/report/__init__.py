"""Privacy-budget report of a run directory: HTML (self-contained), JSON (schema-validated), PDF.

    secure-fedrl report RUN_DIR --out FILE [--format html|json|pdf]

One document (`model.build_report`) is rendered three ways, so they always agree. `simulate`
writes privacy_report.html and privacy_report.json into the run directory when it ends.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from secure_fedrl.errors import ConfigError, SecureFedRLError
from secure_fedrl.fsutil import atomic_write
from secure_fedrl.report.load import load_run
from secure_fedrl.report.model import REPORT_FORMAT, build_report

__all__ = ["REPORT_FORMAT", "SCHEMA_PATH", "PdfUnavailable", "build_report", "find_chromium", "make_report",
           "render", "write_report", "write_run_reports"]

log = logging.getLogger(__name__)
SCHEMA_PATH = Path(__file__).parent / "schema" / "privacy-report.schema.json"
FORMATS = ("html", "json", "pdf")
HTML_NAME, JSON_NAME = "privacy_report.html", "privacy_report.json"
# Flags for a root user on a machine with a closed network (see the project's CI notes).
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage")


class PdfUnavailable(SecureFedRLError):
    """No PDF renderer (headless Chromium) on this machine."""


def make_report(run_dir: str | Path, *, public_key: str | None = None, key_dir: str | Path | None = None,
                canary: str | Path | None = None) -> dict[str, Any]:
    return build_report(load_run(run_dir, public_key=public_key, key_dir=key_dir, canary_path=canary))


def render(doc: dict[str, Any], fmt: str) -> bytes:
    if fmt == "json":
        return (json.dumps(doc, indent=2, sort_keys=True, allow_nan=False) + "\n").encode()
    if fmt == "html":
        from secure_fedrl.report.html import render_html

        return render_html(doc).encode("utf-8")
    if fmt == "pdf":
        from secure_fedrl.report.html import render_html

        return html_to_pdf(render_html(doc))
    raise ConfigError(f"--format: expected one of {', '.join(FORMATS)}, got {fmt!r}")


def write_report(run_dir: str | Path, out: str | Path, *, fmt: str | None = None,
                 public_key: str | None = None, key_dir: str | Path | None = None,
                 canary: str | Path | None = None) -> Path:
    out = Path(out)
    fmt = fmt or (out.suffix.lstrip(".").lower() if out.suffix.lstrip(".").lower() in FORMATS else "html")
    if fmt not in FORMATS:
        raise ConfigError(f"--format: expected one of {', '.join(FORMATS)}, got {fmt!r}")
    if fmt == "pdf" and find_chromium() is None:  # fail before any work
        raise PdfUnavailable("--format pdf needs headless Chromium (`chromium`), which is not installed; "
                             "install it (Debian: apt-get install chromium) or use --format html")
    if not out.parent.is_dir():
        raise ConfigError(f"--out: directory {out.parent} does not exist")
    doc = make_report(run_dir, public_key=public_key, key_dir=key_dir, canary=canary)
    atomic_write(out, render(doc, fmt))
    return out


def write_run_reports(run_dir: str | Path, *, key_dir: str | Path | None = None) -> None:
    """privacy_report.{html,json} into the run directory; never fails the run that wrote it."""
    root = Path(run_dir)
    try:
        doc = make_report(root, key_dir=key_dir)
        atomic_write(root / JSON_NAME, render(doc, "json"))
        atomic_write(root / HTML_NAME, render(doc, "html"))
    except Exception as exc:  # noqa: BLE001 - a report problem must not lose a finished run
        log.warning("privacy report not written to %s: %s: %s", root, type(exc).__name__, exc)


# -- PDF via headless Chromium ----------------------------------------------------------------------
def find_chromium() -> str | None:
    env = os.environ.get("SECURE_FEDRL_CHROMIUM")
    if env:
        return env if Path(env).is_file() else None
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


def run_chromium(args: list[str], *, timeout: float = 120.0) -> subprocess.CompletedProcess:
    exe = find_chromium()
    if exe is None:
        raise PdfUnavailable("headless Chromium (`chromium`) is not installed")
    with tempfile.TemporaryDirectory(prefix="sfrl-chromium-") as profile:
        cmd = [exe, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args]
        try:
            return subprocess.run(cmd, capture_output=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            raise PdfUnavailable(f"chromium did not finish within {timeout:g} s") from None


def html_to_pdf(html: str) -> bytes:
    with tempfile.TemporaryDirectory(prefix="sfrl-report-") as tmp:
        src, pdf = Path(tmp) / "report.html", Path(tmp) / "report.pdf"
        src.write_text(html, encoding="utf-8")
        proc = run_chromium(["--no-pdf-header-footer", f"--print-to-pdf={pdf}", src.as_uri()])
        if not pdf.is_file() or pdf.stat().st_size == 0:
            tail = proc.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
            raise PdfUnavailable(f"chromium produced no PDF (exit {proc.returncode}: {tail[0]})")
        return pdf.read_bytes()
