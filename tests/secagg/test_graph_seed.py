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

from secagg_attacker import advertised_round, bundle, honest_phases, keys_bundles, make_round, respond

N, K, T = 10, 4, 3


def _round(seed=0):
    return advertised_round(N, threshold=T, degree=K, seed=seed)


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


def _other_view_config(cfg, clients, left_out):
    """The seeded config of the honest view without `left_out`: what a split view gives its sites."""
    view = tuple((u, clients[u]._advert.graph_commit) for u in cfg.site_ids if u != left_out)
    return cfg.seeded(view, {u: clients[u]._nonce for u, _ in view})


@pytest.mark.parametrize("forge", ["another view", "another sender's", "garbage"])
def test_a_ciphertext_that_does_not_decrypt_under_this_sites_digest_is_not_paired_with(forge):
    """The server puts in peer v's slot: v's own shares encrypted under another view's D' (what a
    split view leaves), another sender's ciphertext, or garbage. The site masks without v (the
    attack review's split view paired on delivery alone, so B's holders could reveal s_v as
    dropped). The honest server takes that MaskedInput and drops v: v masked with site 1, site 1
    not with v, so v's input cannot count."""
    cfg, clients, inputs, keys = make_round(N, threshold=T, degree=K, seed=0)
    server = SecAggServer(config=cfg)
    out = honest_phases(server, clients, "share_keys")
    b = out[1]
    (v, ct), (_, ct_w) = b.ciphertexts[-1], b.ciphertexts[0]
    seeded = server.cfg
    if forge == "another view":
        shared = clients[1]._enc_shared[v]
        pt = P.aead_decrypt(R.enc_key(seeded, shared, v, 1), R.enc_nonce(v, 1), ct, R.enc_ad(seeded, v, 1))
        other = _other_view_config(cfg, clients, left_out=next(x for x in cfg.site_ids if x not in (1, v)))
        assert other.digest != seeded.digest
        ct = P.aead_encrypt(R.enc_key(other, shared, v, 1), R.enc_nonce(v, 1), pt, R.enc_ad(other, v, 1))
    elif forge == "another sender's":
        ct = ct_w
    else:
        ct = bytes(len(ct))
    msg = clients[1].masked_input(replace(b, ciphertexts=b.ciphertexts[:-1] + ((v, ct),)))
    assert len(clients[1].rejected) == 1
    assert str(clients[1].rejected[0]).startswith(f"site 1: ciphertext from site {v}, not paired with: ")
    assert v not in msg.paired and set(msg.paired) == {x for x, _ in b.ciphertexts} - {v}
    assert v not in clients[1]._shares
    server.receive(msg.encode())
    assert server._pairs[1] == frozenset(msg.paired) and 1 not in server._pairs[v]
    with pytest.raises(ProtocolError, match=f"MaskedInput from site {v}: site 1 did not pair with it"):
        server.receive(respond(clients[v], out[v]).encode())


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


def _split_round(view_b_of):
    """Group A = {1..5} and site 10 answer the real view; group B = {6..9} a second view built by
    view_b_of(cfg, view, keys) -> (view_b, {v: GraphReveal} the server holds for it beyond the
    sites' own). Each site then gets the seeded bundle of its own view, carrying every reveal the
    server has for it: A's bundles reuse B's reveals and B's reuse A's. Returns the clients, each
    site's ShareKeys (None if it refused to go on) and the groups."""
    cfg, clients, inputs, keys, adverts, view = _round()
    a_group, b_group = {1, 2, 3, 4, 5, 10}, {6, 7, 8, 9}
    view_b, extra_b = view_b_of(cfg, view, keys)
    got = {u: clients[u].graph_reveal(M.GraphView(cfg.digest, u, view if u in a_group else view_b))
           for u in cfg.site_ids}
    got_b = {v: g for v, g in {**got, **extra_b}.items() if v in dict(view_b)}
    seeded_a = cfg.seeded(view, {u: g.nonce for u, g in got.items()})
    seeded_b = cfg.seeded(view_b, {u: g.nonce for u, g in got_b.items()})
    assert seeded_a.digest != seeded_b.digest
    share = {}
    for u in sorted(cfg.site_ids):
        s, rv = (seeded_a, got) if u in a_group else (seeded_b, got_b)
        try:
            share[u] = clients[u].share_keys(bundle(s, u, adverts, rv))
        except BelowThresholdError:
            share[u] = None
    return cfg, clients, share, a_group, b_group, (seeded_a, seeded_b)


def _colluder_renonced(cfg, view, keys):
    """View B: the colluder (site 10) committed to another nonce, signed for B."""
    alt = bytes(range(32))
    view_b = tuple((v, R.graph_commitment(cfg, 10, alt) if v == 10 else c) for v, c in view)
    return view_b, {10: M.GraphReveal(cfg.digest, 10, alt, view_hash=R.view_hash(cfg, view_b)).signed(keys[10])}


def _one_site_left_out(cfg, view, keys):
    """View B: the real view without site 10 (no colluder: the server alone, attack review)."""
    return tuple((v, c) for v, c in view if v != 10), {}


@pytest.mark.parametrize("view_b_of", [_colluder_renonced, _one_site_left_out])
def test_sites_given_different_views_never_pair_across_them(view_b_of):
    """The server splits the view and then delivers every ciphertext to its receiver, across the
    split too. A site pairs only with peers whose ciphertext decrypts under its own D', which
    hashes its view (SPEC.md section 8), so no site masks with a site of the other view: B's
    holders cannot unmask a pair of A by calling a B site dropped. Pairing on delivery alone
    (what the attack review broke) fails this test."""
    cfg, clients, share, a_group, b_group, seeded = _split_round(view_b_of)
    inbox = {u: [] for u in cfg.site_ids}
    for v, msg in share.items():
        for r, ct in (msg.ciphertexts if msg is not None else ()):
            inbox[r].append((v, ct))
    crossings = 0
    for u in sorted(cfg.site_ids):
        if share[u] is None:
            continue
        s, other = (seeded[0], b_group) if u in a_group else (seeded[1], a_group)
        across = {v for v, _ in inbox[u] if v in other and v in clients[u]._sent_to}  # others: unexpected
        crossings += len(across)
        try:
            msg = clients[u].masked_input(M.CiphertextBundle(s.digest, u, tuple(sorted(inbox[u]))))
        except BelowThresholdError:
            continue
        refused = {int(str(e).split("ciphertext from site ")[1].split(",")[0])
                   for e in clients[u].rejected if "not paired with" in str(e)}
        assert refused == across, (u, refused, across)
        assert not set(msg.paired) & other, (u, msg.paired)
    assert crossings > 0  # the split did put ciphertexts across it
