"""The report document as one self-contained HTML page: inline CSS and SVG, no scripts, no
network, no external assets (it must open the same on an air-gapped laptop and print to PDF)."""

from __future__ import annotations

import json
import math
from html import escape
from typing import Any

from secure_fedrl.report.model import primary_final
from secure_fedrl.report.svg import PALETTE, Chart, HLine, Series, bar_chart, line_chart

CSS = """
body{font-family:-apple-system,"Segoe UI",Roboto,"DejaVu Sans",Arial,sans-serif;margin:24px auto;max-width:1500px;
color:#222;line-height:1.45;padding:0 16px}
h1{font-size:24px;margin-bottom:4px}h2{font-size:19px;border-bottom:1px solid #ccc;padding-bottom:3px;margin-top:28px}
.sub{color:#555;margin-top:0}.grid{display:flex;flex-wrap:wrap;gap:12px}.grid>div{flex:1 1 560px}
table{border-collapse:collapse;font-size:13px;margin:8px 0}td,th{border:1px solid #ccc;padding:3px 7px;text-align:right}
th{background:#f3f3f3}td.l,th.l{text-align:left}.kpi{display:flex;flex-wrap:wrap;gap:12px;margin:12px 0}
.kpi div{border:1px solid #ccc;border-radius:6px;padding:8px 14px;min-width:150px}.kpi b{display:block;font-size:22px}
.ok{color:#1a7f37;font-weight:bold}.bad{color:#b42318;font-weight:bold}.warn{color:#9a6700;font-weight:bold}
code,.mono{font-family:"DejaVu Sans Mono",Menlo,monospace;font-size:12px;word-break:break-all}
.plain{background:#f7f9fc;border:1px solid #d6e0f0;border-radius:6px;padding:4px 18px 10px}
svg.chart{max-width:100%;height:auto}details{margin:8px 0}
@media print{body{max-width:none;margin:0}.grid>div{flex:1 1 100%}h2{page-break-after:avoid}svg{page-break-inside:avoid}}
"""


def _f(x: Any, digits: int = 3) -> str:
    if x is None:
        return "–"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return str(x)
    if isinstance(x, float):
        if not math.isfinite(x):
            return "∞"
        return f"{x:.{digits}g}"
    return escape(str(x))


def _pts(points: list[dict[str, Any]], key: str = "epsilon") -> list[tuple[float, float]]:
    return [(p["round"], p[key] if p[key] is not None else math.inf) for p in points]


def _xrange(doc: dict[str, Any]) -> tuple[float, float] | None:
    rounds = [r["round"] for r in doc["rounds"]] + [p["round"] for s in doc["epsilon"]["series"] for p in s["points"]]
    return (min(rounds), max(rounds)) if rounds else None


THREAT_COLORS = {"server": PALETTE[0], "release": PALETTE[2]}


def epsilon_chart(doc: dict[str, Any]) -> str:
    eps = doc["epsilon"]
    by_key: dict[tuple[str, str], dict[str, Any]] = {}
    for s in eps["series"]:
        by_key.setdefault((s["threat_model"], s["accountant"]), {})[s["scope"]] = s
    # Curves that coincide (e.g. trajectory DP: the same epsilon against the server and release
    # observers) are drawn once, with both names.
    groups: list[tuple[list[str], str, dict[str, Any]]] = []
    for (threat, acct), scopes in sorted(by_key.items(), key=lambda kv: (kv[0][0] != "server", kv[0])):
        sig = {k: v["points"] for k, v in scopes.items()}
        for names, a, other in groups:
            if a == acct and {k: v["points"] for k, v in other.items()} == sig:
                names.append(threat)
                break
        else:
            groups.append(([threat], acct, scopes))
    series: list[Series] = []
    for i, (threats, acct, scopes) in enumerate(groups):
        color = THREAT_COLORS.get(threats[0], PALETTE[(4 + i) % len(PALETTE)])
        label = f"against {' = '.join(threats)} ({acct})"
        if "federation" in scopes:
            series.append(Series(label, _pts(scopes["federation"]["points"]), color=color))
        if "worst site" in scopes:
            band = None
            if "best site" in scopes:
                band = (_pts(scopes["best site"]["points"]), _pts(scopes["worst site"]["points"]))
            series.append(Series(f"{label}, worst site", _pts(scopes["worst site"]["points"]),
                                 color=color, band=band))
            if "median site" in scopes:
                series.append(Series(f"{label}, median site", _pts(scopes["median site"]["points"]),
                                     color=color, dashed=True, markers=False))
    hlines = [HLine(eps["budget"], f"budget ε = {eps['budget']:g}", "#b42318")] if eps.get("budget") else []
    title = "Privacy spent: cumulative ε per round" + (" (band: best..worst site)"
                                                       if any(s.band for s in series) else "")
    return line_chart(Chart("plot-epsilon", title, "round", "ε (cumulative)", series, hlines,
                            xrange=_xrange(doc)))


def return_chart(doc: dict[str, Any]) -> str:
    rounds = doc["rounds"]
    mean = [(r["round"], r["eval_return_mean"]) for r in rounds if r["eval_return_mean"] is not None]
    worst = [(r["round"], r["eval_return_worst"]) for r in rounds if r["eval_return_worst"] is not None]
    series = [Series("mean over sites", mean, color=PALETTE[2]), Series("worst site", worst, color=PALETTE[3])]
    return line_chart(Chart("plot-return", "Evaluation return of the global policy", "round", "return", series,
                            xrange=_xrange(doc)))


def sites_chart(doc: dict[str, Any]) -> str:
    rounds = doc["rounds"]
    s = [Series("planned", [(r["round"], r["sites_planned"]) for r in rounds if r["sites_planned"] is not None]),
         Series("survived (in the sum)", [(r["round"], r["sites_survived"]) for r in rounds
                                          if r["sites_survived"] is not None], color=PALETTE[2]),
         Series("dropped / rejected", [(r["round"], r["sites_dropped"]) for r in rounds], color=PALETTE[1])]
    return line_chart(Chart("plot-sites", "Sites per round", "round", "sites", s, xrange=_xrange(doc)))


def noise_chart(doc: dict[str, Any]) -> str:
    rounds = doc["rounds"]
    s = [Series("σ planned", [(r["round"], r["sigma_planned"]) for r in rounds if r["sigma_planned"] is not None],
                dashed=True),
         Series("σ effective", [(r["round"], r["sigma_effective"]) for r in rounds if r["sigma_effective"] is not None],
                color=PALETTE[0]),
         Series("clip norm C", [(r["round"], r["clip"]) for r in rounds if r["clip"] is not None],
                color=PALETTE[4], axis="right")]
    return line_chart(Chart("plot-noise", "Noise multiplier σ and clipping norm C", "round",
                            "noise multiplier σ", s, ylabel_right="clip norm C", xrange=_xrange(doc)))


def bytes_chart(doc: dict[str, Any]) -> str:
    sites = [s for s in doc["sites"] if s["bytes_uploaded"] is not None]
    if sites:
        return bar_chart("plot-bytes", "Bytes uploaded per site (whole run)", [s["site"] for s in sites],
                         [s["bytes_uploaded"] for s in sites], "bytes")
    rounds = doc["rounds"]
    s = [Series("mean bytes uploaded per site", [(r["round"], r["bytes_per_site"]) for r in rounds
                                                 if r["bytes_per_site"] is not None], color=PALETTE[5])]
    return line_chart(Chart("plot-bytes", "Bytes uploaded per site and round", "round", "bytes", s))


def site_epsilon_chart(doc: dict[str, Any]) -> str | None:
    rows = [s for s in doc["sites"] if s["epsilon"] is not None]
    if not rows:
        return None
    return bar_chart("plot-site-epsilon", "ε spent per site (final)", [s["site"] for s in rows],
                     [s["epsilon"] for s in rows], "ε", color=PALETTE[1])


def render_html(doc: dict[str, Any]) -> str:
    run, eps, led = doc["run"], doc["epsilon"], doc["ledger"]
    fin = primary_final(eps)
    parts = [f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
             f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
             f"<title>Privacy report: {escape(run['name'])}</title><style>{CSS}</style></head><body>",
             f"<h1>Privacy report: {escape(run['name'])}</h1>",
             f"<p class=\"sub\">Run directory <code>{escape(run['directory'])}</code> · generated "
             f"{escape(doc['generated_at'])} · {run['rounds_done']} of {run['rounds_planned']} rounds</p>"]
    kpis = [("ε spent" + (" (worst site)" if fin and fin["scope"] == "worst site" else ""),
             _f(fin["epsilon"], 4) if fin else ("none recorded" if run["privacy_unit"] != "none" else "no DP")),
            ("budget ε", _f(eps.get("budget"))), ("δ", _f(run.get("delta"))),
            ("protected unit", escape(doc["plain_language"]["protected_unit"])),
            ("threat model", _f(run.get("threat_model"))),
            ("ledger", "<span class=\"ok\">verified</span>" if led["verified"] else
             ("<span class=\"warn\">none</span>" if not led["present"] else "<span class=\"bad\">FAILED</span>"))]
    if doc.get("canary") and doc["canary"].get("epsilon_lower_bound") is not None:
        kpis.append(("empirical ε lower bound", _f(doc["canary"]["epsilon_lower_bound"])))
    if eps.get("site_budget") is not None:
        kpis.insert(2, ("site budget ε", _f(eps["site_budget"])))
    parts.append("<div class=\"kpi\">" + "".join(f"<div>{k}<b>{v}</b></div>" for k, v in kpis) + "</div>")
    if eps.get("reproducible_rounds"):
        parts.append("<p class=\"bad\">Reproducible noise and sampling (privacy.reproducible_noise) in "
                     f"{len(eps['reproducible_rounds'])} round(s): the epsilons below are NOT a privacy guarantee.</p>")

    parts.append("<h2>Privacy spent and what it bought</h2><div class=\"grid\">"
                 f"<div>{epsilon_chart(doc)}</div><div>{return_chart(doc)}</div></div>")
    if eps["final"]:
        parts.append("<table><tr><th class=\"l\">threat model</th><th class=\"l\">accountant</th>"
                     "<th class=\"l\">scope</th><th>ε</th><th>budget</th></tr>")
        for f in eps["final"]:
            parts.append(f"<tr><td class=\"l\">{escape(f['threat_model'])}</td><td class=\"l\">{escape(f['accountant'])}"
                         f"</td><td class=\"l\">{escape(f['scope'])}</td>"
                         f"<td>{'∞ (no guarantee)' if f.get('infinite') else _f(f['epsilon'], 4)}</td>"
                         f"<td>{_f(eps.get('budget'))}</td></tr>")
        parts.append("</table>")
    parts.append("<h2>In plain language</h2><div class=\"plain\">")
    for sec in doc["plain_language"]["sections"]:
        parts.append(f"<h3>{escape(sec['title'])}</h3>")
        parts.extend(f"<p>{escape(p)}</p>" for p in sec["paragraphs"])
    parts.append("</div>")

    parts.append("<h2>Participation and noise</h2><div class=\"grid\">"
                 f"<div>{sites_chart(doc)}</div><div>{noise_chart(doc)}</div></div>")
    se = site_epsilon_chart(doc)
    parts.append("<h2>Sites</h2><div class=\"grid\">" + f"<div>{bytes_chart(doc)}</div>"
                 + (f"<div>{se}</div>" if se else "") + "</div>")
    cols = [("ε spent", "epsilon", 4), ("ledger rows", "ledger_rows", 3), ("rounds trained", "rounds_trained", 3),
            ("uploads rejected", "uploads_rejected", 3), ("bytes uploaded", "bytes_uploaded", 6),
            ("last eval return", "eval_return_last", 4)]
    cols = [c for c in cols if any(s[c[1]] is not None for s in doc["sites"])]  # drop empty columns
    parts.append("<table><tr><th class=\"l\">site</th>" + "".join(f"<th>{c[0]}</th>" for c in cols) + "</tr>")
    for s in doc["sites"]:
        parts.append(f"<tr><td class=\"l\">{escape(s['site'])}</td>"
                     + "".join(f"<td>{_f(s[key], d)}</td>" for _, key, d in cols) + "</tr>")
    parts.append("</table>")

    parts.append("<h2>Ledger</h2>")
    if not led["present"]:
        parts.append("<p>This run has no privacy ledger (no differential privacy was configured).</p>")
    else:
        cls = "ok" if led["verified"] else "bad"
        head = led["head"] or {}
        if led["pinned_public_key"] and led["pin_out_of_band"]:
            pin = f"checked against the key from {escape(str(led['pinned_key_source']))}"
        elif led["pinned_public_key"]:
            pin = (f"<span class=\"warn\">not pinned</span>: compared with the {escape(str(led['pinned_key_source']))}; "
                   "pass the key you obtained from the operator with --public-key")
        else:
            pin = ("<span class=\"warn\">no public key found to pin</span>: checked against the key the "
                   "ledger names itself, which proves integrity but not whose key it is")
        parts.append(f"<p><span class=\"{cls}\">{escape(led['verdict'])}</span></p><table>"
                     f"<tr><th class=\"l\">rows</th><td class=\"l\">{led['rows']}</td></tr>"
                     f"<tr><th class=\"l\">head seq</th><td class=\"l\">{_f(head.get('seq'))}</td></tr>"
                     f"<tr><th class=\"l\">head row hash</th><td class=\"l mono\">{_f(head.get('row_hash'))}</td></tr>"
                     f"<tr><th class=\"l\">head signature</th><td class=\"l mono\">{_f(head.get('signature'))}</td></tr>"
                     f"<tr><th class=\"l\">ledger public key</th><td class=\"l mono\">{_f(led['public_key'])}</td></tr>"
                     f"<tr><th class=\"l\">key check</th><td class=\"l\">{pin}</td></tr>"
                     f"<tr><th class=\"l\">witnesses</th><td class=\"l\">{escape(led['witness']['status'])}: "
                     f"{escape(led['witness']['detail'])}</td></tr>"
                     f"<tr><th class=\"l\">config hash</th><td class=\"l mono\">{_f(led['config_hash'])}</td></tr></table>"
                     "<p>Independent check (recomputes every epsilon with a different accountant): "
                     f"<code>secure-fedrl audit verify {escape(run['directory'])}</code></p>")

    parts.append("<h2>Empirical audit (canaries)</h2>")
    c = doc.get("canary")
    if not c:
        parts.append("<p>No canary audit is attached to this run. <code>secure-fedrl audit canary CONFIG "
                     "--out DIR</code> runs one (Steinke, Nasr, Jagielski 2023) and writes "
                     "<code>canary_audit.json</code>, which the report then shows here.</p>")
    else:
        parts.append("<table>" + "".join(
            f"<tr><th class=\"l\">{escape(k)}</th><td class=\"l\">{_f(c.get(k), 4)}</td></tr>"
            for k in ("level", "mode", "dp", "canaries", "guesses", "correct", "confidence",
                      "epsilon_lower_bound", "epsilon_theoretical", "epsilon_run")) + "</table>"
            "<p>The lower bound is what the canaries' membership could be guessed with at the stated "
            "confidence; it must not exceed the theoretical ε (it is usually far below it: one-run "
            "audits are loose).</p>")

    parts.append("<h2>Per round</h2><details><summary>table of every round</summary><table><tr>"
                 "<th>round</th><th>planned</th><th>survived</th><th>dropped</th><th>σ planned</th>"
                 "<th>σ effective</th><th>C</th><th>q</th><th>ε (metrics)</th><th>eval mean</th>"
                 "<th>eval worst</th><th>bytes/site</th></tr>")
    for r in doc["rounds"]:
        parts.append("<tr>" + "".join(f"<td>{_f(r[k], 4)}</td>" for k in (
            "round", "sites_planned", "sites_survived", "sites_dropped", "sigma_planned", "sigma_effective",
            "clip", "sample_rate", "epsilon_metrics", "eval_return_mean", "eval_return_worst",
            "bytes_per_site")) + "</tr>")
    parts.append("</table></details>")
    parts.append("<script type=\"application/json\" id=\"report-data\">"
                 + json.dumps(doc, sort_keys=True).replace("</", "<\\/") + "</script>")
    parts.append("</body></html>")
    return "".join(parts)
