"""The report's content as one JSON-able document, built from a loaded run directory (no I/O).

HTML, JSON and PDF are renderings of this one document, so they cannot disagree. Its shape is
pinned by schema/privacy-report.schema.json.
"""

from __future__ import annotations

import math
import statistics
from datetime import datetime, timezone
from typing import Any

from secure_fedrl.config import corrupt_sites
from secure_fedrl.report.load import RunData, row_epsilons, witness_info

REPORT_FORMAT = "secure-fedrl/privacy-report/v1"


def _num(x: Any) -> float | None:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def _eps(x: float | None) -> float | None:
    """Epsilon for JSON: +inf (an accountant that gave up) is written as null plus a flag."""
    return None if x is None or not math.isfinite(x) else float(x)


def default_threat_model(config: dict[str, Any], mechanism: str | None) -> str:
    """Whom a v1 `epsilon` column protects against, when the config does not say.

    Central Gaussian: the server adds the noise, so the guarantee is for observers of the release
    only. Distributed discrete Gaussian under secure aggregation and trajectory-level DP-SGD (noise
    added at the sites): the guarantee holds against the server too.
    """
    p = config.get("privacy", {})
    if isinstance(p.get("threat_model"), str):
        return p["threat_model"]
    if mechanism == "gaussian":
        return "release"
    return "server"


def build_report(data: RunData, *, generated_at: datetime | None = None) -> dict[str, Any]:
    cfg = data.config
    fed, priv = cfg.get("federation", {}), cfg.get("privacy", {})
    sa = cfg.get("secure_aggregation", {})
    unit = priv.get("unit", "none")
    rows = data.ledger.rows
    mechanism = rows[-1].get("mechanism") if rows else _configured_mechanism(cfg)
    threat = (rows[-1].get("threat_model") if rows and isinstance(rows[-1].get("threat_model"), str)
              else default_threat_model(cfg, mechanism))
    site_names = _site_names(cfg)
    budget = _num(priv.get("target_epsilon")) if unit != "none" else None
    delta = _num(rows[-1].get("delta")) if rows else _num(priv.get("delta"))
    gamma = float(sa.get("colluding_fraction", 0.0) or 0.0) if sa.get("enabled", False) else 0.0
    client_rows = [r for r in rows if r.get("unit") == "client" and isinstance(r.get("max_colluding"), int)]
    c_max = int(client_rows[-1]["max_colluding"]) if client_rows else None

    epsilon = _epsilon_section(rows, unit, threat, budget, delta)
    rounds = _rounds_section(data.metrics, rows)
    doc: dict[str, Any] = {
        "format": REPORT_FORMAT,
        "generated_at": (generated_at or datetime.now(timezone.utc)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "run": {
            "directory": str(data.root),
            "name": str(fed.get("name", data.root.name)),
            "rounds_planned": int(fed.get("rounds", 0) or 0),
            "rounds_done": max((r["round"] for r in rounds), default=0),
            "privacy_unit": unit,
            "mechanism": mechanism or "none",
            "accountant": (rows[-1].get("accountant") if rows else priv.get("accountant")) or None,
            "delta": delta if unit != "none" else None,
            "epsilon_budget": budget,
            "threat_model": threat if unit != "none" else None,
            "secure_aggregation": bool(sa.get("enabled", False)),
            "max_colluding_sites": int(sa.get("max_colluding_sites", 0) or 0),
            # gamma mode (SPEC 8): the fraction, C = floor(gamma N) colluders in the federation and
            # the per-holder-set bound c_max the last client row's thresholds used
            "colluding_fraction": gamma,
            "colluders": corrupt_sites(gamma, len(site_names)) if gamma > 0 else None,
            "max_colluding_per_holder_set": c_max if gamma > 0 else None,
            "strategy": str(cfg.get("strategy", {}).get("name", "")),
            "sites": site_names,
        },
        "epsilon": epsilon,
        "rounds": rounds,
        "sites": _sites_section(site_names, data, epsilon),
        "ledger": _ledger_section(data),
        "canary": _canary_section(data.canary, epsilon),
    }
    from secure_fedrl.report.plain import plain_language

    doc["plain_language"] = plain_language(doc, cfg)
    return doc


def _configured_mechanism(cfg: dict[str, Any]) -> str | None:
    p = cfg.get("privacy", {})
    unit = p.get("unit", "none")
    if unit == "trajectory":
        return "dp-sgd"
    if unit == "client":
        m = p.get("mechanism", "auto")
        if m != "auto":
            return m
        return "ddg" if cfg.get("secure_aggregation", {}).get("enabled") else "gaussian"
    return None


def _site_names(cfg: dict[str, Any]) -> list[str]:
    """Site names as the runtime expands them (`count = n` gives name-0 .. name-(n-1))."""
    out: list[str] = []
    for s in cfg.get("sites", []):
        name, count = str(s.get("name", "site")), int(s.get("count", 1) or 1)
        out.extend([name] if count == 1 else [f"{name}-{i}" for i in range(count)])
    return out


# -- epsilon ---------------------------------------------------------------------------------------
def _epsilon_section(rows: list[dict[str, Any]], unit: str, threat: str, budget: float | None,
                     delta: float | None) -> dict[str, Any]:
    """Cumulative epsilon per round, per (threat model, accountant); per site where accounting is
    per site (trajectory level): the worst site plus the spread (min / median) across sites."""
    series: list[dict[str, Any]] = []
    per_site: list[dict[str, Any]] = []
    # (threat, accountant) -> scope -> [(round, eps)], scope None = the federation
    curves: dict[tuple[str, str], dict[str | None, list[tuple[int, float]]]] = {}
    for row in rows:
        scope = row.get("site") if row.get("unit") == "trajectory" else None
        for t, accts in row_epsilons(row, threat).items():
            for acct, value in accts.items():
                curves.setdefault((t, acct), {}).setdefault(scope, []).append((int(row["round"]), value))
        per_participant = row.get("site_epsilon_server")  # v2 client-level ddg: each site's own spend
        if scope is None and isinstance(per_participant, dict):
            for site, value in per_participant.items():
                if value is not None:
                    curves.setdefault(("server", str(row.get("accountant"))), {}).setdefault(
                        str(site), []).append((int(row["round"]), value))
    for (t, acct), scopes in sorted(curves.items()):
        individual = t == "server" and any(s is not None for s in scopes) and unit == "client"
        if None in scopes and not individual:
            # (client level against the server the scope is each site: FORMAT.md, "Scopes";
            # the row's epsilon_server is the worst site's, drawn below as such)
            series.append(_series(t, acct, "federation", _last_per_round(scopes[None])))
        site_scopes = {s: v for s, v in scopes.items() if s is not None}
        if not site_scopes:
            continue
        all_rounds = sorted({r for v in site_scopes.values() for r, _ in v})
        carried = {s: _carry_forward(_last_per_round(v), all_rounds) for s, v in site_scopes.items()}
        worst, median, best = [], [], []
        for i, r in enumerate(all_rounds):
            vals = [c[i] for c in carried.values() if c[i] is not None]
            worst.append((r, max(vals)))
            median.append((r, statistics.median(vals)))
            best.append((r, min(vals)))
        series.append(_series(t, acct, "worst site", worst))
        series.append(_series(t, acct, "median site", median))
        series.append(_series(t, acct, "best site", best))
        for s, v in sorted(site_scopes.items()):
            per_site.append({"site": s, "threat_model": t, "accountant": acct, "epsilon": _eps(v[-1][1]),
                             "infinite": not math.isfinite(v[-1][1])})
    final = [{"threat_model": s["threat_model"], "accountant": s["accountant"], "scope": s["scope"],
              "epsilon": s["points"][-1]["epsilon"] if s["points"] else None,
              "infinite": bool(s["points"]) and s["points"][-1]["epsilon"] is None}
             for s in series if s["scope"] in ("federation", "worst site")]
    reproducible = sorted({int(r["round"]) for r in rows if r.get("sampling") == "reproducible"})
    site_budget = next((_num(r.get("site_budget")) for r in reversed(rows) if "site_budget" in r), None)
    return {"unit": unit, "budget": budget, "delta": delta, "default_threat_model": threat,
            "series": series, "final": final, "per_site": per_site,
            "site_budget": site_budget, "reproducible_rounds": reproducible}


def _series(threat: str, acct: str, scope: str, pts: list[tuple[int, float]]) -> dict[str, Any]:
    return {"threat_model": threat, "accountant": acct, "scope": scope,
            "points": [{"round": r, "epsilon": _eps(e)} for r, e in pts]}


def _last_per_round(pts: list[tuple[int, float]]) -> list[tuple[int, float]]:
    out: dict[int, float] = {}
    for r, e in pts:
        out[r] = e
    return sorted(out.items())


def _carry_forward(pts: list[tuple[int, float]], rounds: list[int]) -> list[float | None]:
    """A site's cumulative epsilon at each round: its latest row at or before it (0 before any)."""
    out, j, last = [], 0, 0.0
    for r in rounds:
        while j < len(pts) and pts[j][0] <= r:
            last = pts[j][1]
            j += 1
        out.append(last)
    return out


def primary_final(epsilon: dict[str, Any]) -> dict[str, Any] | None:
    """The headline number: the default threat model's first accountant, federation or worst site."""
    finals = [f for f in epsilon["final"] if f["threat_model"] == epsilon["default_threat_model"]]
    return (finals or epsilon["final"] or [None])[0]


# -- rounds ----------------------------------------------------------------------------------------
def _rounds_section(metrics: list[dict[str, Any]], rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    by_ledger_round: dict[int, list[dict[str, Any]]] = {}
    for row in rows:
        by_ledger_round.setdefault(int(row["round"]), []).append(row)
    out = []
    seen = set()
    for m in metrics:
        r = m.get("round")
        if not isinstance(r, int) or r in seen:
            continue
        seen.add(r)
        lrows = by_ledger_round.get(int(m.get("ledger_round", r)), [])
        dropped = m.get("sites_dropped") or []
        rejected = m.get("sites_rejected") or {}
        planned = m.get("sites_sampled")
        survived = m.get("sites_aggregated")
        client = [x for x in lrows if x.get("unit") == "client"]
        if client:
            planned = client[-1].get("sites_planned", planned)
        sig_eff = [x["sigma_effective"] for x in lrows if _num(x.get("sigma_effective")) is not None]
        sig_plan = [x["sigma_planned"] for x in lrows if _num(x.get("sigma_planned")) is not None]
        clips = [x["clip"] for x in lrows if _num(x.get("clip")) is not None]
        qs = [x["sample_rate"] for x in lrows if _num(x.get("sample_rate")) is not None]
        out.append({
            "round": r,
            "sites_planned": planned if isinstance(planned, int) else None,
            "sites_survived": survived if isinstance(survived, int) else None,
            "sites_dropped": len(dropped) + len(rejected),
            "dropped_names": sorted(list(dropped) + list(rejected)),
            "sigma_planned": min(sig_plan) if sig_plan else _num(m.get("noise_multiplier")),
            "sigma_effective": min(sig_eff) if sig_eff else _num(m.get("noise_multiplier_effective",
                                                                       m.get("noise_multiplier"))),
            "clip": max(clips) if clips else _num(m.get("clip")),
            "sample_rate": max(qs) if qs else None,
            "eval_return_mean": _num(m.get("eval_return_mean")),
            "eval_return_worst": _num(m.get("eval_return_worst")),
            "bytes_per_site": _num(m.get("bytes_per_site")),
            "epsilon_metrics": _num(m.get("epsilon")),
        })
    return out


# -- sites -----------------------------------------------------------------------------------------
def _sites_section(names: list[str], data: RunData, epsilon: dict[str, Any]) -> list[dict[str, Any]]:
    threat = epsilon["default_threat_model"]
    eps_by_site: dict[str, float | None] = {}
    for e in epsilon["per_site"]:
        if e["threat_model"] == threat and e["site"] not in eps_by_site:
            eps_by_site[e["site"]] = e["epsilon"]
    rounds_in: dict[str, int] = {}
    for row in data.ledger.rows:
        if row.get("unit") == "trajectory" and row.get("site"):
            rounds_in[row["site"]] = rounds_in.get(row["site"], 0) + 1
    last_eval = next((m.get("eval_return_per_site") for m in reversed(data.metrics)
                      if isinstance(m.get("eval_return_per_site"), dict)), {}) or {}
    out = []
    for name in names:
        sm = data.site_metrics.get(name, [])
        site_eval = [_num(r.get("eval_return")) for r in sm if _num(r.get("eval_return")) is not None]
        out.append({
            "site": name,
            "epsilon": eps_by_site.get(name),
            "ledger_rows": rounds_in.get(name, 0),
            "rounds_trained": sum(1 for r in sm if "env_steps" in r) if sm else None,
            "uploads_rejected": sum(1 for r in sm if r.get("upload_rejected")) if sm else None,
            "bytes_uploaded": _site_bytes(sm),
            "eval_return_last": site_eval[-1] if site_eval else _num(last_eval.get(name)),
        })
    return out


def _site_bytes(rows: list[dict[str, Any]]) -> float | None:
    """Total bytes a site uploaded, from its own metrics file where the run keeps one."""
    total, found = 0.0, False
    for r in rows:
        for k in ("bytes_uploaded", "upload_bytes", "nbytes", "bytes"):
            v = _num(r.get(k))
            if v is not None:
                total += v
                found = True
                break
    return total if found else None


# -- ledger, canary --------------------------------------------------------------------------------
def _ledger_section(data: RunData) -> dict[str, Any]:
    v = data.ledger
    head = v.head or {}
    return {
        "present": v.present,
        "rows": len(v.rows),
        "verified": v.verified,
        "verdict": v.verdict,
        "public_key": v.meta.get("public_key"),
        "pinned_public_key": data.public_key,
        "pinned_key_source": data.public_key_source,
        "pin_out_of_band": data.public_key_out_of_band,
        "config_hash": v.meta.get("config_hash"),
        "head": {"seq": head.get("seq"), "row_hash": head.get("row_hash"),
                 "signature": head.get("signature")} if v.head else None,
        "witness": witness_info(v) if v.present else {"status": "none", "detail": "no ledger"},
    }


def _canary_section(canary: dict[str, Any] | None, epsilon: dict[str, Any]) -> dict[str, Any] | None:
    if not canary:
        return None
    keys = ("level", "mode", "canaries", "guesses", "correct", "confidence", "epsilon_lower_bound",
            "epsilon_theoretical", "delta", "dp")
    out = {k: canary.get(k) for k in keys}
    fin = primary_final(epsilon)
    out["epsilon_run"] = fin["epsilon"] if fin else None
    return out
