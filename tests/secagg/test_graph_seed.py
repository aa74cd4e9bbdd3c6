"""Issue 7 item 3: the SecAgg+ graph seed comes from a commit-reveal exchange (SPEC.md section 2,
phase 0b), so neither the server nor a colluding site picks the graph. Each check here is tried
as the server would try to get around it: a view without the site, a forged or missing reveal, a
reveal swapped after seeing the others, a bundle under the unseeded digest, split views."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from secure_fedrl.errors import BelowThresholdError, ProtocolError
from secure_fedrl.secagg import messages as M
from secure_fedrl.secagg import primitives as P
from secure_fedrl.secagg import protocol as R
from secure_fedrl.secagg import run_round
from secure_fedrl.secagg.client import SecAggClient
from secure_fedrl.secagg.server import SecAggServer

from secagg_attacker import honest_phases, keys_bundles, make_round

N, K, T = 10, 4, 3


def _round(seed=0):
    cfg, clients, inputs, keys = make_round(N, threshold=T, degree=K, seed=seed)
    adverts = {i: clients[i].advertise_keys() for i in cfg.site_ids}
    view = tuple((v, adverts[v].graph_commit) for v in cfg.site_ids)
    return cfg, clients, inputs, keys, adverts, view


def test_an_honest_round_agrees_on_a_seed_that_the_config_does_not_fix(plain_sum):
    cfg, clients, inputs, keys = make_round(N, threshold=T, degree=K, seed=0)
    server = SecAggServer(config=cfg)
    honest_phases(server, clients, "unmasking")
    assert np.array_equal(server.outcome.sum, plain_sum(inputs, cfg.site_ids))
    seeded = server.cfg
    assert seeded.graph_seed != cfg.graph_seed and seeded.digest != cfg.digest
    assert all(c.cfg.digest == seeded.digest for c in clients.values())
    # the same config with other site randomness (fresh nonces) gives another graph
    cfg2, clients2, _, _ = make_round(N, threshold=T, degree=K, seed=1)
    assert cfg2.digest == cfg.digest
    server2 = SecAggServer(config=cfg2)
    honest_phases(server2, clients2, "share_keys")
    assert server2.cfg.graph_seed != seeded.graph_seed


def test_the_seed_is_the_spec_hash_of_the_view_and_reveals():
    cfg, clients, inputs, keys, adverts, view = _round()
    reveals = {u: clients[u].graph_reveal(M.GraphView(cfg.digest, u, view)).nonce for u in cfg.site_ids}
    parts = [b"secure-fedrl/secagg/v1/graph-seed", cfg.graph_seed, N.to_bytes(4, "big")]
    for v, commit in view:
        assert commit == P.sha256(b"secure-fedrl/secagg/v1/graph-nonce", cfg.digest, v.to_bytes(4, "big"), reveals[v])
        parts += [v.to_bytes(4, "big"), commit, reveals[v]]
    assert cfg.seeded(view, reveals).graph_seed == P.sha256(*parts)


def test_the_complete_graph_has_no_reveal_phase_and_refuses_reveals(five_sites):
    inputs, keys = five_sites
    cfg = R.RoundConfig(round_id=1, site_ids=tuple(inputs), threshold=3, dim=6,
                        identity_keys=tuple(P.ed25519_public_bytes(keys[i]) for i in inputs))
    assert "graph_reveal" not in cfg.phases
    clients = {i: SecAggClient(config=cfg, site_id=i, identity_key=keys[i], vector=inputs[i]) for i in inputs}
    server = SecAggServer(config=cfg)
    out = honest_phases(server, clients, "advertise_keys")
    assert all(isinstance(m, M.KeysBundle) and not m.reveals for m in out.values())
    with pytest.raises(ProtocolError, match="graph reveals in a complete-graph round"):
        clients[1].share_keys(replace(out[1], reveals=((1, bytes(32)),)))


# --------------------------------------------------------------------------- the site's view checks


def test_a_site_refuses_a_view_without_its_own_commitment_or_with_it_altered():
    cfg, clients, inputs, keys, adverts, view = _round()
    without = tuple(e for e in view if e[0] != 1)
    with pytest.raises(ProtocolError, match="own graph commitment missing"):
        clients[1].graph_reveal(M.GraphView(cfg.digest, 1, without))
    altered = tuple((v, bytes(32) if v == 2 else c) for v, c in view)
    with pytest.raises(ProtocolError, match="own graph commitment missing"):
        clients[2].graph_reveal(M.GraphView(cfg.digest, 2, altered))
    assert clients[1].phase == clients[2].phase == "graph_reveal"  # nothing revealed


def test_a_site_refuses_a_view_naming_a_site_outside_the_round():
    cfg, clients, inputs, keys, adverts, view = _round()
    stranger = tuple(sorted(view + ((N + 5, bytes(32)),)))
    with pytest.raises(ProtocolError, match="outside the round"):
        clients[1].graph_reveal(M.GraphView(cfg.digest, 1, stranger))


def test_a_site_refuses_a_view_smaller_than_the_threshold():
    cfg, clients, inputs, keys, adverts, view = _round()
    small = tuple(e for e in view if e[0] in (1, 2))
    with pytest.raises(BelowThresholdError, match="view of 2 sites, threshold is 3"):
        clients[1].graph_reveal(M.GraphView(cfg.digest, 1, small))
    exact = tuple(e for e in view if e[0] in (1, 2, 3))
    assert clients[1].graph_reveal(M.GraphView(cfg.digest, 1, exact)).nonce


def test_a_site_reveals_once_per_round():
    cfg, clients, inputs, keys, adverts, view = _round()
    clients[1].graph_reveal(M.GraphView(cfg.digest, 1, view))
    with pytest.raises(ProtocolError, match="in phase 'share_keys'"):
        clients[1].graph_reveal(M.GraphView(cfg.digest, 1, view))


# --------------------------------------------------------------------------- the reveals in the KeysBundle


def test_a_forged_reveal_aborts_the_site_before_any_share_leaves():
    cfg, clients, inputs, keys, adverts, view = _round()
    seeded, bundles = keys_bundles(cfg, clients, adverts)
    b = bundles[1]
    forged = tuple((v, bytes(32) if v == 5 else r) for v, r in b.reveals)
    with pytest.raises(ProtocolError, match="graph nonce of site 5 does not match its commitment"):
        clients[1].share_keys(replace(b, reveals=forged))
    assert clients[1]._shares == {}


def test_a_missing_or_extra_reveal_aborts_the_site():
    cfg, clients, inputs, keys, adverts, view = _round()
    seeded, bundles = keys_bundles(cfg, clients, adverts)
    b = bundles[1]
    with pytest.raises(ProtocolError, match="do not cover exactly its view"):
        clients[1].share_keys(replace(b, reveals=b.reveals[1:]))
    cfg2, clients2, _, _, adverts2, _ = _round()
    s2, bundles2 = keys_bundles(cfg2, clients2, adverts2)
    b2 = bundles2[1]
    with pytest.raises(ProtocolError, match="do not cover exactly its view"):
        clients2[1].share_keys(replace(b2, reveals=tuple(sorted(b2.reveals + ((N + 1, bytes(32)),)))))


def test_a_bundle_under_the_unseeded_digest_is_refused():
    """The server may not skip the seed: D' binds the reveals into every later message and key."""
    cfg, clients, inputs, keys, adverts, view = _round()
    seeded, bundles = keys_bundles(cfg, clients, adverts)
    with pytest.raises(ProtocolError, match="KeysBundle is for another round or configuration"):
        clients[1].share_keys(replace(bundles[1], config_digest=cfg.digest))


def test_a_holder_advert_with_another_commitment_than_the_view_is_dropped():
    cfg, clients, inputs, keys, adverts, view = _round()
    seeded, bundles = keys_bundles(cfg, clients, adverts)
    b = bundles[1]
    peer = max(seeded.holders(1) - {1})
    other = replace(adverts[peer], graph_commit=bytes(32)).signed(keys[peer]).encode()
    ads = tuple(other if M.AdvertiseKeys.decode(a).sender == peer else a for a in b.adverts)
    clients[1].share_keys(replace(b, adverts=ads))
    assert any("graph commitment not the one in the view" in str(e) for e in clients[1].rejected)
    assert peer not in clients[1]._peer_keys


# --------------------------------------------------------------------------- the server's side


def _server_after_adverts(seed=0):
    cfg, clients, inputs, keys = make_round(N, threshold=T, degree=K, seed=seed)
    server = SecAggServer(config=cfg)
    views = honest_phases(server, clients, "advertise_keys")
    assert server.phase == "graph_reveal" and all(isinstance(m, M.GraphView) for m in views.values())
    return cfg, clients, keys, server, views


def test_the_server_refuses_a_reveal_that_does_not_open_the_commitment():
    """A colluder that re-draws its nonce after seeing the honest ones is refused, and the round
    then aborts for its missing reveal: the seed cannot be re-drawn inside a round."""
    cfg, clients, keys, server, views = _server_after_adverts()
    for u in cfg.site_ids:
        if u != 4:
            server.receive(clients[u].graph_reveal(views[u]).encode())
    swapped = M.GraphReveal(cfg.digest, 4, bytes(range(32))).signed(keys[4])
    with pytest.raises(ProtocolError, match="nonce does not match its commitment"):
        server.receive(swapped.encode())
    with pytest.raises(BelowThresholdError, match=r"site\(s\) \[4\] did not reveal"):
        server.finish_phase()
    assert server.phase == "aborted"


def test_the_server_aborts_when_a_site_of_the_view_does_not_reveal():
    res = None
    xs = {i: np.full(2, i, np.uint32) for i in range(N)}
    with pytest.raises(BelowThresholdError, match="did not reveal their graph nonce"):
        res = run_round(xs, threshold=T, neighbors=K, dropouts={3: "graph_reveal"}, seed=4)
    assert res is None


def test_the_server_takes_one_reveal_per_site_signed_by_it():
    cfg, clients, keys, server, views = _server_after_adverts()
    wire = clients[1].graph_reveal(views[1]).encode()
    server.receive(wire)
    with pytest.raises(ProtocolError, match="duplicate GraphReveal"):
        server.receive(wire)
    other = M.GraphReveal(cfg.digest, 2, clients[2]._nonce).signed(keys[3])
    with pytest.raises(ProtocolError):
        server.receive(other.encode())


# --------------------------------------------------------------------------- split views


def test_sites_given_different_views_hold_no_usable_shares_of_each_other():
    """The server shows group A the real view and group B one where a colluder (site 10)
    committed to another nonce: the two groups get different seeds, hence different D', and no
    share ciphertext crosses between them (each fails its AEAD check)."""
    cfg, clients, inputs, keys, adverts, view = _round()
    a_group, b_group = {1, 2, 3, 4, 5}, {6, 7, 8, 9}
    alt_nonce = bytes(range(32))
    view_b = tuple((v, R.graph_commitment(cfg, 10, alt_nonce) if v == 10 else c) for v, c in view)
    reveals = {u: clients[u].graph_reveal(M.GraphView(cfg.digest, u, view if u in a_group | {10} else view_b)).nonce
               for u in cfg.site_ids}
    seeded_a = cfg.seeded(view, reveals)
    seeded_b = cfg.seeded(view_b, {**reveals, 10: alt_nonce})
    assert seeded_a.digest != seeded_b.digest
    share = {}
    for u in a_group | b_group:
        s = seeded_a if u in a_group else seeded_b
        rv = reveals if u in a_group else {**reveals, 10: alt_nonce}
        ads = tuple(adverts[v].encode() for v in sorted(s.holders(u)))
        share[u] = clients[u].share_keys(M.KeysBundle(s.digest, u, ads, tuple(sorted(rv.items()))))
    crossing = 0
    for u in a_group:
        cts = tuple((v, ct) for v in sorted(b_group) for r, ct in share[v].ciphertexts if r == u)
        crossing += len(cts)
        before = len(clients[u].rejected)
        try:
            clients[u].masked_input(M.CiphertextBundle(seeded_a.digest, u, cts))
        except ProtocolError:
            pass  # too few usable shares: it refuses to mask, which is just as safe
        assert len(clients[u].rejected) - before == len(cts)
    assert crossing > 0
