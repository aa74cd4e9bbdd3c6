"""`secure-fedrl report`: content, JSON schema, ledger verdicts, self-containment, bad input."""

from __future__ import annotations

import json
import math
import re

import jsonschema
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from report_helpers import SITES, make_run, tamper_epsilon
from secure_fedrl.cli import main
from secure_fedrl.report import SCHEMA_PATH, make_report, render
from secure_fedrl.report.load import decode_float, normalize_row, row_epsilons
from secure_fedrl.report.plain import max_tpr, odds_after

SCHEMA = json.loads(SCHEMA_PATH.read_text())


def validate(doc: dict) -> dict:
    doc = json.loads(json.dumps(doc, allow_nan=False))  # what --format json writes
    jsonschema.Draft202012Validator(SCHEMA).validate(doc)
    return doc


def test_schema_is_a_valid_draft_2020_12_schema():
    jsonschema.Draft202012Validator.check_schema(SCHEMA)


def test_trajectory_report_worst_site_and_distribution(tmp_path):
    run, _ = make_run(tmp_path / "run", unit="trajectory")
    doc = validate(make_report(run))
    eps = doc["epsilon"]
    worst = next(s for s in eps["series"] if s["scope"] == "worst site" and s["threat_model"] == "server")
    best = next(s for s in eps["series"] if s["scope"] == "best site" and s["threat_model"] == "server")
    # helper: site i spends (1 + 0.5 i) sqrt(r): worst is the last site, best the first
    assert [p["epsilon"] for p in worst["points"]] == pytest.approx([2.0 * math.sqrt(r) for r in range(1, 5)])
    assert [p["epsilon"] for p in best["points"]] == pytest.approx([math.sqrt(r) for r in range(1, 5)])
    per_site = {e["site"]: e["epsilon"] for e in eps["per_site"] if e["threat_model"] == "server"}
    assert per_site == pytest.approx({s: (1 + 0.5 * i) * 2.0 for i, s in enumerate(SITES)})
    assert eps["budget"] == 8.0 and doc["run"]["delta"] == 1e-5
    assert doc["run"]["privacy_unit"] == "trajectory" and doc["plain_language"]["protected_unit"].startswith("one episode")
    assert doc["ledger"]["verified"] and doc["ledger"]["rows"] == 12
    assert doc["ledger"]["head"]["seq"] == 12 and re.fullmatch("[0-9a-f]{128}", doc["ledger"]["head"]["signature"])
    # rounds: planned / survived / dropped and eval beside epsilon
    r1, r2 = doc["rounds"][0], doc["rounds"][1]
    assert (r1["sites_planned"], r1["sites_survived"], r1["sites_dropped"]) == (3, 2, 1)
    assert r2["eval_return_mean"] == 40.0 and r2["eval_return_worst"] == 30.0
    assert r1["sigma_effective"] == 1.1 and r1["clip"] == 1.0
    site_c = next(s for s in doc["sites"] if s["site"] == "clinic-c")
    assert site_c["rounds_trained"] == 4 and site_c["eval_return_last"] == 62.0
    # the worked example uses the run's own numbers
    text = " ".join(p for s in doc["plain_language"]["sections"] for p in s["paragraphs"])
    assert "epsilon = 4 " in text and f"{math.exp(4.0):.1f}" in text


def test_client_ddg_report_has_both_threat_models_and_per_site_spend(tmp_path):
    run, _ = make_run(tmp_path / "run", unit="client")
    doc = validate(make_report(run))
    finals = {(f["threat_model"], f["scope"]): f["epsilon"] for f in doc["epsilon"]["final"]}
    # against the server the scope is each site (FORMAT.md "Scopes"): worst site, no federation value
    assert finals[("server", "worst site")] == pytest.approx(3.0) and ("server", "federation") not in finals
    assert finals[("release", "federation")] == pytest.approx(2.7)
    per_site = {e["site"]: e["epsilon"] for e in doc["epsilon"]["per_site"]}
    assert per_site == pytest.approx({"clinic-a": 3.0, "clinic-b": 2.7, "clinic-c": 1.5 * math.sqrt(3) * 0.8})
    assert doc["plain_language"]["sections"][0]["paragraphs"][-1].startswith("Against the server each site")
    assert doc["run"]["threat_model"] == "server" and doc["run"]["mechanism"] == "ddg"
    assert doc["rounds"][0]["sigma_effective"] == pytest.approx(1.15)


def test_central_gaussian_reports_no_guarantee_against_the_server(tmp_path):
    run, _ = make_run(tmp_path / "run", unit="client", mechanism="gaussian", secagg=False)
    doc = validate(make_report(run))
    server = next(f for f in doc["epsilon"]["final"] if f["threat_model"] == "server")
    assert server["infinite"] and server["epsilon"] is None
    assert doc["run"]["threat_model"] == "release"
    html = render(doc, "html").decode()
    assert "∞ (no guarantee)" in html
    assert "not against the server" in html


def test_no_dp_run(tmp_path):
    run, _ = make_run(tmp_path / "run", unit="none")
    doc = validate(make_report(run))
    assert not doc["ledger"]["present"] and doc["epsilon"]["series"] == []
    assert doc["plain_language"]["sections"][0]["title"] == "No differential privacy in this run"


def test_schema_rejects_a_malformed_report(tmp_path):
    run, _ = make_run(tmp_path / "run")
    doc = validate(make_report(run))
    bad = json.loads(json.dumps(doc))
    bad["epsilon"]["per_site"][0]["epsilon"] = -1.0
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, SCHEMA)
    bad = json.loads(json.dumps(doc))
    del bad["ledger"]["verified"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, SCHEMA)


def test_tampered_ledger_is_reported_as_failed(tmp_path):
    run, _ = make_run(tmp_path / "run")
    tamper_epsilon(run, seq=5)
    doc = validate(make_report(run))
    assert not doc["ledger"]["verified"]
    assert doc["ledger"]["verdict"].startswith("FAILED") and "seq 5" in doc["ledger"]["verdict"]
    assert "FAILED" in render(doc, "html").decode()


def test_pinned_key_must_match(tmp_path):
    run, pub = make_run(tmp_path / "run")
    doc = make_report(run, public_key=pub)
    assert doc["ledger"]["verified"] and doc["ledger"]["pin_out_of_band"]
    other = Ed25519PrivateKey.generate().public_key().public_bytes_raw().hex()
    doc = make_report(run, public_key=other)
    assert not doc["ledger"]["verified"] and "pinned key" in doc["ledger"]["verdict"]


def test_run_directory_key_copy_is_not_a_pin_but_the_key_directory_is(tmp_path):
    run, pub = make_run(tmp_path / "run")
    doc = make_report(run, key_dir=tmp_path / "nokeys")
    assert doc["ledger"]["pinned_public_key"] == pub and not doc["ledger"]["pin_out_of_band"]
    keys = tmp_path / "keys"
    keys.mkdir()
    (keys / "ledger_public_key.hex").write_text(pub + "\n")
    doc = make_report(run, key_dir=keys)
    assert doc["ledger"]["pin_out_of_band"] and "key directory" in doc["ledger"]["pinned_key_source"]
    # a swapped key in the operator's key directory is caught
    (keys / "ledger_public_key.hex").write_text(Ed25519PrivateKey.generate().public_key().public_bytes_raw().hex())
    assert not make_report(run, key_dir=keys)["ledger"]["verified"]


def test_html_is_self_contained(tmp_path):
    run, _ = make_run(tmp_path / "run")
    html = render(make_report(run), "html").decode()
    assert '<svg xmlns="http://www.w3.org/2000/svg" id="plot-epsilon"' in html
    urls = set(re.findall(r"https?://[^\s\"'<>)]+", html)) - {"http://www.w3.org/2000/svg"}
    assert urls == set()
    assert not re.search(r"<(link|img|iframe)\b|<script\b(?![^>]*application/json)|@import|url\(", html)


def test_canary_result_is_shown_next_to_theoretical_epsilon(tmp_path):
    run, _ = make_run(tmp_path / "run")
    (run / "canary_audit.json").write_text(json.dumps({
        "level": "client", "mode": "fast", "dp": True, "canaries": 256, "guesses": 50, "correct": 40,
        "confidence": 0.95, "epsilon_lower_bound": 0.4, "epsilon_theoretical": 2.0, "delta": 1e-5}))
    doc = validate(make_report(run))
    assert doc["canary"]["epsilon_lower_bound"] == 0.4 and doc["canary"]["epsilon_run"] == pytest.approx(4.0)
    assert "empirical ε lower bound" in render(doc, "html").decode()


# -- readers: v1 and v2 rows ---------------------------------------------------------------------------
def test_reader_handles_v1_and_v2_rows():
    v1 = {"epsilon": '{"prv":"4000000000000000","rdp":"4008000000000000"}', "accountant": "rdp"}
    assert row_epsilons(v1, "server") == {"server": {"prv": 2.0, "rdp": 3.0}}
    v2 = normalize_row({"epsilon": '{"rdp":"4008000000000000"}', "accountant": "rdp",
                        "privacy": json.dumps({"epsilon_server": "7ff0000000000000",
                                               "epsilon_release": "4000000000000000",
                                               "threat_model": "release", "site_epsilon_server": {}})})
    eps = row_epsilons(v2, "server")
    assert eps["release"] == {"rdp": 2.0} and math.isinf(eps["server"]["rdp"])
    assert decode_float("3ff0000000000000") == 1.0 and decode_float(True) is None


def test_plain_language_numbers():
    assert odds_after(math.log(3.0), 0.5) == pytest.approx(0.75)
    assert max_tpr(1.0, 0.0, 0.01) == pytest.approx(math.e * 0.01)
    assert max_tpr(8.0, 1e-5, 0.01) == pytest.approx(1 - math.exp(-8) * (1 - 1e-5 - 0.01))


# -- the command line --------------------------------------------------------------------------------
def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("secure-fedrl: error: ") and "Traceback" not in err
    return err


def test_cli_json_and_html(tmp_path):
    run, _ = make_run(tmp_path / "run")
    assert main(["report", str(run), "--out", str(tmp_path / "r.json")]) == 0
    validate(json.loads((tmp_path / "r.json").read_text()))
    assert main(["report", str(run), "--out", str(tmp_path / "r.out"), "--format", "html"]) == 0
    assert (tmp_path / "r.out").read_text().startswith("<!DOCTYPE html>")


@pytest.mark.parametrize("make", ["missing", "file", "empty-dir"])
def test_cli_bad_run_dir_is_one_line_exit_2(tmp_path, capsys, make):
    target = tmp_path / "x"
    if make == "file":
        target.write_text("not a run")
    elif make == "empty-dir":
        target.mkdir()
    assert main(["report", str(target), "--out", str(tmp_path / "r.html")]) == 2
    assert str(target) in one_line_error(capsys)
    assert not (tmp_path / "r.html").exists()


def test_cli_bad_public_key_and_out_dir(tmp_path, capsys):
    run, _ = make_run(tmp_path / "run")
    assert main(["report", str(run), "--out", str(tmp_path / "r.html"), "--public-key", "abc"]) == 2
    assert "--public-key" in one_line_error(capsys)
    assert main(["report", str(run), "--out", str(tmp_path / "no" / "r.html")]) == 2
    assert "--out" in one_line_error(capsys)


def test_cli_pdf_without_chromium_is_one_line_exit_2(tmp_path, capsys, monkeypatch):
    run, _ = make_run(tmp_path / "run")
    monkeypatch.setenv("SECURE_FEDRL_CHROMIUM", str(tmp_path / "no-such-chromium"))
    assert main(["report", str(run), "--out", str(tmp_path / "r.pdf"), "--format", "pdf"]) == 2
    assert "Chromium" in one_line_error(capsys)


# -- simulate writes the report ----------------------------------------------------------------------
def test_simulate_writes_privacy_report(small_private_run):
    run = small_private_run
    doc = validate(json.loads((run / "privacy_report.json").read_text()))
    assert doc["run"]["rounds_done"] == 2 and doc["ledger"]["verified"]
    assert doc["ledger"]["pin_out_of_band"]  # the key directory's copy, outside the run directory
    assert {s["site"] for s in doc["sites"]} == {"s-0", "s-1"}
    assert all(s["epsilon"] and s["epsilon"] > 0 for s in doc["sites"])
    html = (run / "privacy_report.html").read_text()
    assert 'id="plot-epsilon"' in html and "<path class=\"series\"" in html


def test_reproducible_noise_is_flagged_as_no_guarantee(tmp_path):
    import sqlite3

    run, _ = make_run(tmp_path / "run", unit="client")
    conn = sqlite3.connect(run / "privacy_ledger.sqlite")  # read as the reader sees v2 rows
    privacy = json.loads(conn.execute("SELECT privacy FROM rows WHERE seq = 2").fetchone()[0])
    conn.close()
    assert privacy["sampling"] == "secret"
    from secure_fedrl.report.load import load_run
    from secure_fedrl.report.model import build_report

    data = load_run(run)
    data.ledger.rows[1]["sampling"] = "reproducible"
    doc = validate(build_report(data))
    assert doc["epsilon"]["reproducible_rounds"] == [2]
    assert doc["plain_language"]["sections"][0]["title"] == "WARNING: not a privacy guarantee"
    assert "NOT a privacy guarantee" in render(doc, "html").decode()
    assert validate(make_report(run))["epsilon"]["reproducible_rounds"] == []


def test_plain_language_survives_a_huge_epsilon():
    """epsilon above ~709 overflowed math.exp and silently dropped the report."""
    from secure_fedrl.report import plain

    assert plain.odds_after(5000.0) == 1.0
    assert plain.max_tpr(5000.0, 1e-5, 0.01) == 1.0
    assert "trillion" in plain._fmt_factor(plain._exp(5000.0))


def test_gamma_mode_report_states_the_fraction_and_colluders(tmp_path):
    """gamma mode: max_colluding_sites is 0, yet the report must not say "no site colludes"."""
    run, _ = make_run(tmp_path / "run", unit="client")
    cfg = run / "config.resolved.toml"
    cfg.write_text(cfg.read_text().replace("threshold = 0.6", "threshold = 0.6\ncolluding_fraction = 0.34"))
    doc = validate(make_report(run))
    assert doc["run"]["colluding_fraction"] == 0.34 and doc["run"]["colluders"] == 1
    assert doc["run"]["max_colluding_per_holder_set"] == 0  # the rows' recorded c_max
    text = " ".join(p for s in doc["plain_language"]["sections"] for p in s["paragraphs"])
    assert "no site colludes" not in text
    assert "a fraction 0.34 of the 3 sites (C = 1 sites" in text and "2^-40 per round attempt" in text
