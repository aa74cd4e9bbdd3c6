"""The site-side split-view vector protocols/vectors/round_split_view.json (SPEC.md section 8,
graph seed (2)): a server shows group A one GraphView and group B another (the real view without
site 10), then delivers every share ciphertext across the split. The checker replays each honest
site from its key and randomness and requires that no signed paired set M(u) crosses the split."""

from __future__ import annotations

import copy
import json

import pytest

from secure_fedrl.errors import ProtocolError
from secure_fedrl.secagg import client as client_mod
from secure_fedrl.secagg import messages as M
from secure_fedrl.secagg import primitives as P
from secure_fedrl.secagg.conformance import (DEFAULT_DIR, SPLIT_VIEW, _check_split_view, _gen_split_view,
                                             check_vectors)

PREFIX = "round_split_view"
CHECKS = ("messages-parse-and-verify", "seeded-digests", "replay-every-site", "paired-sets-within-view")


def _vector() -> dict:
    return json.loads((DEFAULT_DIR / SPLIT_VIEW["file"]).read_text())


def _results(v: dict) -> dict:
    results = []
    _check_split_view(v, results)
    return {r.name.removeprefix(PREFIX + "/"): r for r in results}


def _masking_site_with_a_crossing(v: dict) -> str:
    return next(u for u, s in v["sites"].items() if s["paired"] is not None and s["crossing_deliveries"])


def test_the_repository_vector_passes_and_covers_the_split():
    results = {r.name: r for r in check_vectors(DEFAULT_DIR) if r.name.startswith(PREFIX + "/")}
    assert sorted(results) == sorted(f"{PREFIX}/{c}" for c in CHECKS)
    assert all(r.passed for r in results.values()), results
    v = _vector()
    assert v["config"]["degree"] == 3 and len(v["config"]["site_ids"]) == 10 and v["config"]["threshold"] == 3
    assert v["groups"] == {"A": [1, 2, 3, 4, 5, 10], "B": [6, 7, 8, 9]} and v["left_out"] == 10
    assert v["seeded"]["A"]["digest"] != v["seeded"]["B"]["digest"]
    sites = v["sites"].values()
    assert any(s["refusal"] for s in sites) and any(s["paired"] for s in sites)  # both outcomes logged
    _masking_site_with_a_crossing(v)  # a site that masked was delivered a ciphertext across the split


def test_a_changed_site_message_fails():
    v = _vector()
    u = _masking_site_with_a_crossing(v)
    m = v["sites"][u]["messages"][-1]
    assert m["direction"] == "site->server" and m["phase"] == "masked_input"
    i = len(m["hex"]) - 2 * P.SIG_BYTES - 2  # last byte of y_u, before the signature
    m["hex"] = m["hex"][:i] + f"{int(m['hex'][i:i + 2], 16) ^ 1:02x}" + m["hex"][i + 2:]
    r = _results(v)
    assert not r["messages-parse-and-verify"].passed and "signature" in r["messages-parse-and-verify"].detail.lower()
    assert not r["replay-every-site"].passed and f"site {u}" in r["replay-every-site"].detail


def test_a_changed_server_message_fails_the_replay():
    v = _vector()
    u = _masking_site_with_a_crossing(v)
    msgs = v["sites"][u]["messages"]
    i = next(j for j, m in enumerate(msgs) if m["direction"] == "server->site" and m["phase"] == "masked_input")
    b = M.CiphertextBundle.decode(bytes.fromhex(msgs[i]["hex"]))
    msgs[i]["hex"] = M.CiphertextBundle(b.config_digest, b.receiver, b.ciphertexts[1:]).encode().hex()
    assert not _results(v)["replay-every-site"].passed


def test_a_changed_paired_set_fails():
    v = _vector()
    u = _masking_site_with_a_crossing(v)
    s = v["sites"][u]
    s["paired"] = sorted(s["paired"] + s["crossing_deliveries"])
    r = _results(v)
    assert not r["paired-sets-within-view"].passed and f"paired set of site {u}" in r["paired-sets-within-view"].detail
    assert r["replay-every-site"].passed  # the logged bytes still replay: the named check caught it


def test_a_changed_refusal_fails_the_replay():
    v = _vector()
    u, s = next((u, s) for u, s in v["sites"].items() if s["refusal"])
    s["refusal"]["message_prefix"] = s["refusal"]["message_prefix"].replace("shared keys", "sent keys")
    assert not _results(v)["replay-every-site"].passed


def test_two_views_must_give_two_digests_and_view_b_must_leave_one_site_out():
    v = _vector()
    v["left_out"] = 3
    assert not _results(v)["seeded-digests"].passed
    w = _vector()
    w["seeded"]["B"] = copy.deepcopy(w["seeded"]["A"])
    assert not _results(w)["seeded-digests"].passed


class _PairOnDelivery:
    """The client's primitives, except that a share ciphertext that does not decrypt yields a
    plaintext with the right header and zero shares: the site then pairs with every sender it was
    delivered a ciphertext from (the pairing rule the attack review broke)."""

    def __getattr__(self, name):
        return getattr(P, name)

    @staticmethod
    def aead_decrypt(key, nonce, ciphertext, associated_data):
        try:
            return P.aead_decrypt(key, nonce, ciphertext, associated_data)
        except ProtocolError:
            return nonce[:8] + bytes(len(ciphertext) - 16 - 8)


@pytest.fixture
def pair_on_delivery(monkeypatch):
    monkeypatch.setattr(client_mod, "P", _PairOnDelivery())


def test_a_site_that_pairs_on_delivery_fails_the_repository_vector(pair_on_delivery):
    r = _results(_vector())
    assert not r["replay-every-site"].passed


def test_a_vector_of_sites_that_pair_on_delivery_fails_the_paired_set_check(pair_on_delivery):
    """Self-consistent (the replay matches what the same sites generated), yet a signed M(u) crosses
    the split: the named check catches it."""
    v = json.loads(json.dumps(_gen_split_view()))
    r = _results(v)
    assert r["messages-parse-and-verify"].passed and r["seeded-digests"].passed and r["replay-every-site"].passed
    assert not r["paired-sets-within-view"].passed
    assert "across the split" in r["paired-sets-within-view"].detail


def test_a_site_declared_in_the_other_group_fails():
    v = _vector()
    v["groups"] = {"A": sorted(v["groups"]["A"] + [8]), "B": [u for u in v["groups"]["B"] if u != 8]}
    r = _results(v)
    assert not r["paired-sets-within-view"].passed and not r["messages-parse-and-verify"].passed


# ---------------------------------------------------------------- mutation-testing follow-ups
# Each test below removes the effect of one defence of the checker (found by mutmut on
# _check_split_view / _split_crossings) and requires that the named check still catches it.

LAYOUT_CHECKS = ("messages-parse-and-verify", "seeded-digests", "paired-sets-within-view")


def _hexes(v: dict, u: str, phase: str, direction: str) -> list[dict]:
    return [m for m in v["sites"][u]["messages"] if m["phase"] == phase and m["direction"] == direction]


def _identity_key(v: dict, u: str):
    return P.ed25519_keypair(lambda n: bytes.fromhex(v["identity_private_keys"][u]))[0]


def test_a_wrong_config_digest_fails_every_check_that_reads_the_layout():
    v = _vector()
    d = v["config_digest"]
    v["config_digest"] = ("00" if d[:2] != "00" else "01") + d[2:]
    r = _results(v)
    for c in LAYOUT_CHECKS:
        assert not r[c].passed and "config_digest" in r[c].detail, (c, r[c].detail)


def test_the_left_out_site_must_be_in_group_a():
    """View B without a site of B itself: the layout check refuses it in every check that reads it."""
    v = _vector()
    v["left_out"] = v["groups"]["B"][0]
    r = _results(v)
    for c in ("messages-parse-and-verify", "paired-sets-within-view"):
        assert not r[c].passed and "left-out" in r[c].detail, (c, r[c].detail)
    assert not r["seeded-digests"].passed


@pytest.mark.parametrize("groups", [
    {"A": [1, 2, 3, 4, 5, 10], "B": [6, 7, 8, 8, 9]},  # a site listed twice: the set of ids is still right
    {"A": [1, 2, 3, 4, 5, 8, 10], "B": [6, 7, 8, 9]},  # a site in both groups
    {"A": [1, 2, 3, 4, 5, 10], "B": [6, 7, 9]},  # a site in neither
])
def test_groups_must_partition_the_sites(groups):
    v = _vector()
    v["groups"] = groups
    r = _results(v)
    for c in LAYOUT_CHECKS:
        assert not r[c].passed and "partition" in r[c].detail, (c, r[c].detail)


def test_a_graph_reveal_signed_for_the_other_view_fails():
    """Re-signed with the site's own key (so the signature check passes): the reveal binds r_u to
    the view of group A although the site is in group B, which the seeded-digests check refuses."""
    v = _vector()
    u = str(v["groups"]["B"][0])
    m = _hexes(v, u, "graph_reveal", "site->server")[0]
    g = M.GraphReveal.decode(bytes.fromhex(m["hex"]))
    view_a = next(M.GraphView.decode(bytes.fromhex(x["hex"])).commits
                  for x in _hexes(v, str(v["groups"]["A"][0]), "graph_reveal", "server->site"))
    from secure_fedrl.secagg import protocol as R
    from secure_fedrl.secagg.conformance import _config_from_json

    cfg = _config_from_json(v["config"])
    forged = M.GraphReveal(g.config_digest, g.sender, g.nonce, view_hash=R.view_hash(cfg, view_a))
    m["hex"] = forged.signed(_identity_key(v, u)).encode().hex()
    r = _results(v)
    assert r["messages-parse-and-verify"].passed  # validly signed, canonical
    assert not r["seeded-digests"].passed and "signs another view" in r["seeded-digests"].detail


def test_a_keys_bundle_with_a_reveal_no_site_logged_fails():
    """Every KeysBundle of group B also carries a made-up reveal of the left-out site (outside B's
    view, so B's seed and digest are unchanged): a reveal the server cannot have held."""
    v = _vector()
    for u in v["groups"]["B"]:
        for m in _hexes(v, str(u), "share_keys", "server->site"):
            kb = M.KeysBundle.decode(bytes.fromhex(m["hex"]))
            fake = ((v["left_out"], bytes(len(kb.reveals[0][1]))),)
            m["hex"] = M.KeysBundle(kb.config_digest, kb.receiver, kb.adverts, kb.reveals + fake).encode().hex()
    r = _results(v)
    assert not r["seeded-digests"].passed and "carries a reveal no site logged" in r["seeded-digests"].detail


@pytest.mark.parametrize("field", ["graph_seed", "digest"])
def test_either_logged_seed_field_alone_is_checked(field):
    v = _vector()
    x = v["seeded"]["B"][field]
    v["seeded"]["B"][field] = ("00" if x[:2] != "00" else "01") + x[2:]
    r = _results(v)
    assert not r["seeded-digests"].passed and "view B" in r["seeded-digests"].detail


def test_a_changed_paired_set_after_a_refusing_site_fails():
    """The paired-set check goes on past a site that refused (site 6): the last masking site counts too."""
    v = _vector()
    u = max((u for u, s in v["sites"].items() if s["paired"] is not None), key=int)
    assert any(int(w) < int(u) and s["refusal"] for w, s in v["sites"].items())
    v["sites"][u]["paired"] = v["sites"][u]["paired"][:-1]
    r = _results(v)
    assert not r["paired-sets-within-view"].passed and f"paired set of site {u}" in r["paired-sets-within-view"].detail


def test_a_vector_without_a_delivery_across_the_split_is_vacuous_and_fails():
    """Drop every ciphertext delivered across the split (and log crossing_deliveries to match):
    the paired sets no longer show that the sites refused to pair across it."""
    from secure_fedrl.secagg.conformance import _split_crossings

    v = _vector()
    group_of = {u: g for g, us in v["groups"].items() for u in us}
    for u, s in v["sites"].items():
        for m in _hexes(v, u, "masked_input", "server->site"):
            b = M.CiphertextBundle.decode(bytes.fromhex(m["hex"]))
            kept = tuple((w, ct) for w, ct in b.ciphertexts if group_of[w] == group_of[int(u)])
            m["hex"] = M.CiphertextBundle(b.config_digest, b.receiver, kept).encode().hex()
        s["crossing_deliveries"] = _split_crossings(group_of, int(u), s["messages"])
        assert s["crossing_deliveries"] == []
    r = _results(v)
    assert not r["paired-sets-within-view"].passed
    assert "no masking site was delivered a ciphertext across the split" in r["paired-sets-within-view"].detail


def test_split_crossings_of_a_log_that_stops_early_is_empty():
    """A site whose log has no CiphertextBundle (or no ShareKeys) had nothing delivered across the split."""
    from secure_fedrl.secagg.conformance import _split_crossings

    v = _vector()
    group_of = {u: g for g, us in v["groups"].items() for u in us}
    u = next(u for u, s in v["sites"].items() if s["crossing_deliveries"])
    msgs = v["sites"][u]["messages"]
    assert _split_crossings(group_of, int(u), msgs) == v["sites"][u]["crossing_deliveries"]
    no_cts = [m for m in msgs if not (m["phase"] == "masked_input" and m["direction"] == "server->site")]
    no_share = [m for m in msgs if not (m["phase"] == "share_keys" and m["direction"] == "site->server")]
    assert _split_crossings(group_of, int(u), no_cts) == []
    assert _split_crossings(group_of, int(u), no_share) == []
