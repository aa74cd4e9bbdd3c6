"""The report's plain-language part: what the numbers mean to someone who is not a DP expert.

Every sentence is generated from the run's own config and ledger, so the worked example uses the
numbers this run actually spent. The interpretation used is the hypothesis-testing one (Wasserman
and Zhou 2010; Kairouz, Oh, Viswanath 2015): for any test an observer runs to decide whether X
took part, true-positive rate <= e^eps * false-positive rate + delta; equivalently, prior odds
that X took part rise by a factor of at most e^eps (except with probability delta).
"""

from __future__ import annotations

import math
from typing import Any

from secure_fedrl.report.model import primary_final

UNIT_WORDS = {
    "trajectory": ("one episode (trajectory)",
                   "a single episode a site collected (for a hospital: one patient's course of "
                   "treatment as one trajectory; for a bank: one customer interaction)"),
    "client": ("one whole site",
               "everything one site (a hospital or bank) contributed, all of its episodes together"),
}


def _exp(x: float) -> float:
    """e^x that saturates at +inf instead of raising (epsilon can exceed 709 with DP off-ish noise)."""
    return math.exp(x) if x < 709.0 else math.inf


def odds_after(eps: float, prior: float = 0.5) -> float:
    """Largest posterior probability an observer can reach from `prior` (ignoring delta)."""
    odds = prior / (1 - prior) * _exp(eps)
    return 1.0 if math.isinf(odds) else odds / (1 + odds)


def max_tpr(eps: float, delta: float, fpr: float) -> float:
    """Best detection rate of any membership test with false-positive rate `fpr` under (eps, delta)."""
    return min(1.0, _exp(eps) * fpr + delta, 1.0 - math.exp(-eps) * (1.0 - delta - fpr))


def _pct(p: float) -> str:
    if p >= 0.99:
        return f"{p:.2%}" if p < 0.9999 else "about 100%"
    return f"{p:.1%}" if p >= 0.001 else f"{p:.2g}%".replace("%", "") + "%"


def _fmt_factor(x: float) -> str:
    if math.isinf(x) or x >= 1e12:
        return "more than a trillion (no meaningful protection)"
    return f"{x:,.0f}" if x >= 100 else f"{x:.1f}" if x >= 10 else f"{x:.2f}"


def plain_language(doc: dict[str, Any], cfg: dict[str, Any]) -> dict[str, Any]:
    run, eps_sec = doc["run"], doc["epsilon"]
    unit = run["privacy_unit"]
    sections: list[dict[str, Any]] = []
    if unit not in UNIT_WORDS:
        sections.append({"title": "No differential privacy in this run", "paragraphs": [
            "This run was configured without differential privacy (privacy.unit = \"none\"). Nothing "
            "bounds what the trained policy or the updates reveal about any episode or site; secure "
            "aggregation, if enabled, only hides individual sites' updates from the server, not what "
            "their sum reveals."]})
        return {"protected_unit": "nothing", "sections": sections}

    short, long = UNIT_WORDS[unit]
    fin = primary_final(eps_sec)
    eps = fin["epsilon"] if fin else None
    delta = eps_sec.get("delta") or run.get("delta") or 0.0
    budget = eps_sec.get("budget")
    scope = " (for the site that spent most)" if fin and fin["scope"] == "worst site" else ""

    sections.append({"title": "What is protected", "paragraphs": [
        f"The protected unit is {short}: {long}. The guarantee compares two worlds that differ only "
        f"in that one unit being used or not, so it says how much anyone looking at the results "
        f"can learn about {short}.",
        ("Each site's guarantee is its own: sites do not share one budget." if unit == "trajectory" else
         "The guarantee covers a site's participation as a whole, so it also covers every episode "
         "inside it."),
        ("A person who appears in several episodes is protected less: k episodes of one person are "
         "covered roughly by k times epsilon (group privacy)." if unit == "trajectory" else
         "It does not hide that the federation exists or which sites are members of it, only what the "
         "results reveal about any one site's data."),
    ]})

    if eps_sec.get("reproducible_rounds"):
        rr = eps_sec["reproducible_rounds"]
        sections.insert(0, {"title": "WARNING: not a privacy guarantee", "paragraphs": [
            f"{len(rr)} round(s) (from round {rr[0]}) ran with reproducible noise and sampling "
            f"(privacy.reproducible_noise): anyone holding the config can recompute the random choices "
            f"and the noise, so the epsilons below are not a guarantee for this run. Such runs are "
            f"for experiments only."]})
    if unit == "client" and any(e["threat_model"] == "server" for e in eps_sec["per_site"]):
        sections[-1]["paragraphs"].append(
            "Against the server each site's spend is counted separately (only the rounds it took part "
            "in count), so the headline is the site that spent most.")
    if eps is None:
        meaning = ["No privacy spend is recorded in the ledger yet (no round was charged)."]
    else:
        factor = _exp(eps)
        low_prior = 0.01
        meaning = [
            f"This run spent epsilon = {eps:.4g}{scope} at delta = {delta:.3g}"
            + (f", against a budget of {budget:g}." if budget else "."),
            f"Odds: whatever an observer believed beforehand about whether {short} was used, seeing "
            f"everything this run released can multiply their odds by at most e^epsilon = "
            f"{_fmt_factor(factor)}. Starting from 50/50 (odds 1:1) they can reach at most "
            f"{_pct(odds_after(eps, 0.5))}; starting from a 1-in-100 suspicion, at most "
            f"{_pct(odds_after(eps, low_prior))}. The delta = {delta:.3g} is the small probability "
            f"with which this bound may fail.",
            f"Tests: any test an observer runs to decide whether {short} was used, if it wrongly "
            f"says \"used\" in at most 1% of cases where it was not, can correctly say \"used\" in "
            f"at most {_pct(max_tpr(eps, delta, 0.01))} of cases where it was (at a 0.1% false-alarm "
            f"rate: at most {_pct(max_tpr(eps, delta, 0.001))}).",
            "Smaller epsilon is stronger protection: epsilon = 1 limits the odds factor to 2.7, "
            "epsilon = 8 to about 3,000. A factor in the thousands still forbids near-certain "
            "conclusions only when the observer starts from little evidence; treat epsilon above "
            "about 10 as weak protection.",
        ]
    sections.append({"title": "What epsilon and delta mean here", "paragraphs": meaning})

    sa = run["secure_aggregation"]
    threat = run.get("threat_model")
    colluding = run.get("max_colluding_sites", 0)
    gamma = run.get("colluding_fraction") or 0.0
    sees = []
    if sa and gamma > 0:
        c_max = run.get("max_colluding_per_holder_set")
        sees.append("The server never sees an individual site's update: secure aggregation masks "
                    "each upload so that only the sum over the surviving sites can be unmasked, "
                    f"as long as no more than a fraction {gamma:g} of the {len(run.get('sites') or [])} "
                    f"sites (C = {run.get('colluders')} sites, a set fixed before each round's graph "
                    "is drawn) collude with it. Any one site's key shares are held by at most "
                    + (f"{c_max} of them" if c_max is not None else "c_max of them")
                    + " except with probability 2^-40 per round attempt, a probability added to delta "
                    "(the server's delta counts recorded rounds; each site's own count of attempts is "
                    "authoritative).")
    elif sa:
        sees.append("The server never sees an individual site's update: secure aggregation masks "
                    "each upload so that only the sum over the surviving sites can be unmasked"
                    + (f", as long as no more than {colluding} site(s) collude with it." if colluding
                       else ", as long as no site colludes with the server."))
    else:
        sees.append("Secure aggregation is off: the server sees every site's update individually.")
    if unit == "trajectory":
        sees.append("Each site adds the privacy noise itself while it trains (DP-SGD), so even an "
                    "individual site's update is protected: the epsilon above holds against the "
                    "server as well as against anyone who sees the trained policy.")
    elif run.get("mechanism") == "gaussian":
        sees.append("The server adds the noise (central DP): the epsilon holds for observers of what "
                    "is released (the trained policy), not against the server, which sees the "
                    "updates before noise.")
    else:
        sees.append("The sites add shares of the noise before masking (distributed discrete "
                    "Gaussian), so the server holds only a noisy sum: the epsilon holds against the "
                    "server, provided enough sites survive each round (the ledger charges the worst "
                    "case it allows).")
    if threat:
        sees.append(f"Threat model of the headline epsilon: \"{threat}\" "
                    + ("(the server itself is the observer)." if threat == "server"
                       else "(observers of the released policy only)."))
    sees.append("The server does see metadata: which sites took part in which round, when, and how "
                "many bytes they sent, and the evaluation returns the sites report.")
    sections.append({"title": "What the server can and cannot see", "paragraphs": sees})

    sections.append({"title": "What is not covered", "paragraphs": [
        "Evaluation returns, timing and participation metadata are not privatised.",
        "Several runs on the same data add up: this report covers this run only, including any "
        "tuning runs only if they are in the same ledger.",
        "Sites or code that do not follow the protocol (a site skipping its noise, a tampered "
        "client, more colluding sites than configured) are outside the guarantee.",
        "Side channels (hardware, network timing) and the floating-point subtleties of noise "
        "generation are out of scope.",
        "The epsilon is an upper bound computed by the accountant named above; an empirical canary "
        "audit, where one was run, gives a lower bound. The truth lies between.",
    ]})
    return {"protected_unit": short, "sections": sections}
