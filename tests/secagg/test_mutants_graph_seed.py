"""Mutation-testing follow-up for the SecAgg+ graph seed (commit-reveal, phase 0b): each test
pins one behaviour a surviving mutmut mutant (or a hand-made one, for decorated functions that
mutmut 3 skips: RoundConfig.phases, protocol._seeded, messages.pack_pairs32) could change unseen."""

from __future__ import annotations

import struct
from dataclasses import replace

import pytest

from secure_fedrl.errors import BelowThresholdError, ProtocolError
from secure_fedrl.secagg import messages as M
from secure_fedrl.secagg import primitives as P
from secure_fedrl.secagg import protocol as R
from secure_fedrl.secagg.client import SecAggClient
from secure_fedrl.secagg.server import SecAggServer

from secagg_attacker import advertised_round, bundle, honest_phases, keys_bundles, make_round

N, K, T = 10, 4, 3


def _round(seed=0):
    return advertised_round(N, threshold=T, degree=K, seed=seed)


def _reveals(cfg, clients, view):
    return {u: clients[u].graph_reveal(M.GraphView(cfg.digest, u, view)).nonce for u in cfg.site_ids}


# --------------------------------------------------------------------------- RoundConfig.phases


def test_phases_are_all_of_them_under_secagg_plus_and_skip_the_reveal_on_the_complete_graph():
    cfg, *_ = make_round(N, threshold=T, degree=K)
    assert cfg.phases == R.PHASES == (
        "advertise_keys", "graph_reveal", "share_keys", "masked_input", "consistency_check", "unmasking")
    full = replace(cfg, degree=None)
    assert full.complete
    assert full.phases == ("advertise_keys", "share_keys", "masked_input", "consistency_check", "unmasking")


# --------------------------------------------------------------------------- seeding (protocol)


def test_seeded_refuses_a_view_site_without_a_reveal_and_ignores_reveals_outside_the_view():
    cfg, clients, inputs, keys, adverts, view = _round()
    reveals = _reveals(cfg, clients, view)
    missing = {v: r for v, r in reveals.items() if v != 4}
    with pytest.raises(ProtocolError, match="site 4 of the view did not reveal its graph nonce"):
        cfg.seeded(view, missing)
    with pytest.raises(ProtocolError, match="site 4 of the view did not reveal"):
        cfg.seeded(view, tuple(sorted(missing.items())))
    good = cfg.seeded(view, reveals)
    extra = cfg.seeded(view, {**reveals, N + 3: bytes(32)})
    assert extra == good
    # the dict and the wire's pairs give the same config; only the seed (hence D') changes
    assert cfg.seeded(view, tuple(sorted(reveals.items()))) == good
    assert good == replace(cfg, graph_seed=R.mixed_graph_seed(cfg.graph_seed, view, reveals))
    assert good.digest != cfg.digest
    # another set of inputs is not served from the memo of the first
    sub = tuple(e for e in view if e[0] != 7)
    assert cfg.seeded(sub, reveals).graph_seed == R.mixed_graph_seed(cfg.graph_seed, sub, reveals)
    assert cfg.seeded(sub, reveals) != good


def test_seeded_refuses_a_nonce_that_does_not_open_the_commitment_every_time():
    cfg, clients, inputs, keys, adverts, view = _round()
    reveals = _reveals(cfg, clients, view)
    bad = {**reveals, 6: bytes(32)}
    for _ in range(2):  # errors are not memoised as results
        with pytest.raises(ProtocolError, match="graph nonce of site 6 does not match its commitment"):
            cfg.seeded(view, bad)
    # a commitment under another round's digest does not open either
    other = replace(cfg, round_id=cfg.round_id + 1)
    with pytest.raises(ProtocolError, match="does not match its commitment"):
        other.seeded(view, reveals)


def test_mixed_graph_seed_and_graph_commitment_follow_the_spec_bytes():
    cfg, *_ = make_round(N, threshold=T, degree=K)
    nonce = bytes(range(32))
    assert R.graph_commitment(cfg, 7, nonce) == P.sha256(
        b"secure-fedrl/secagg/v1/graph-nonce", cfg.digest, struct.pack(">I", 7), nonce)
    for bad in (bytes(31), bytes(33), b""):
        with pytest.raises(ProtocolError, match="^graph nonce must be 32 bytes$"):
            R.graph_commitment(cfg, 7, bad)
    view = ((2, b"\x02" * 32), (9, b"\x09" * 32))
    reveals = {2: b"\x12" * 32, 9: b"\x19" * 32}
    want = P.sha256(b"secure-fedrl/secagg/v1/graph-seed", b"\xaa" * 32, struct.pack(">I", 2),
                    struct.pack(">I", 2), b"\x02" * 32, b"\x12" * 32,
                    struct.pack(">I", 9), b"\x09" * 32, b"\x19" * 32)
    assert R.mixed_graph_seed(b"\xaa" * 32, view, reveals) == want
    top = 2**32 - 1  # site ids span u32 (R.MAX_ID): packed unsigned
    assert R.mixed_graph_seed(b"\xaa" * 32, ((top, b"\x03" * 32),), {top: b"\x04" * 32}) == P.sha256(
        b"secure-fedrl/secagg/v1/graph-seed", b"\xaa" * 32, struct.pack(">I", 1),
        b"\xff\xff\xff\xff", b"\x03" * 32, b"\x04" * 32)
    assert R.graph_commitment(cfg, top, nonce) == P.sha256(
        b"secure-fedrl/secagg/v1/graph-nonce", cfg.digest, b"\xff\xff\xff\xff", nonce)
    assert R.mixed_graph_seed(b"\xaa" * 32, (), {}) == P.sha256(
        b"secure-fedrl/secagg/v1/graph-seed", b"\xaa" * 32, bytes(4))


# --------------------------------------------------------------------------- messages


def test_graph_view_encodes_as_header_count_and_pairs_and_round_trips():
    d = b"\x5a" * 32
    commits = ((1, b"\x01" * 32), (4, b"\x04" * 32), (2**32 - 1, b"\xff" * 32))
    wire = M.GraphView(d, 3, commits).encode()
    body = struct.pack(">I", 3) + b"".join(struct.pack(">I", i) + c for i, c in commits)
    assert wire == M.HEADER.pack(M.MAGIC, M.VERSION, M.T_GRAPH_VIEW, d, 3) + body
    assert M.GraphView.decode(wire) == M.GraphView(d, 3, commits)
    assert M.decode(wire) == M.GraphView(d, 3, commits)
    empty = M.GraphView(d, 3, ()).encode()
    assert empty.endswith(bytes(4)) and len(empty) == M.HEADER.size + 4
    assert M.GraphView.decode(empty).commits == ()


@pytest.mark.parametrize("commits", [((2, bytes(32)), (1, bytes(32))), ((2, bytes(32)), (2, bytes(32)))])
def test_pairs_must_be_strictly_increasing_when_encoded_and_decoded(commits):
    d = bytes(32)
    with pytest.raises(ProtocolError, match="GraphView: id list not strictly increasing"):
        M.GraphView(d, 1, commits).encode()
    raw = M.HEADER.pack(M.MAGIC, M.VERSION, M.T_GRAPH_VIEW, d, 1) + struct.pack(">I", 2) + b"".join(
        struct.pack(">I", i) + c for i, c in commits)
    with pytest.raises(ProtocolError, match="GraphView: id list not strictly increasing"):
        M.GraphView.decode(raw)
    with pytest.raises(ProtocolError, match="KeysBundle: id list not strictly increasing"):
        M.KeysBundle(d, 1, (), commits).encode()


@pytest.mark.parametrize("size", [0, 31, 33])
def test_pairs_must_carry_32_bytes_each(size):
    with pytest.raises(ProtocolError, match="GraphView: every entry must carry 32 bytes"):
        M.GraphView(bytes(32), 1, ((1, bytes(32)), (2, bytes(size)))).encode()
    with pytest.raises(ProtocolError, match="KeysBundle: every entry must carry 32 bytes"):
        M.KeysBundle(bytes(32), 1, (), ((1, bytes(size)),)).encode()


def test_a_pair_list_longer_than_the_message_is_truncated():
    d = bytes(32)
    good = M.GraphView(d, 1, ((1, bytes(32)), (2, bytes(32)))).encode()
    assert M.GraphView.decode(good).commits == ((1, bytes(32)), (2, bytes(32)))
    head = good[: M.HEADER.size]
    # a count one larger than what follows: refused before reading, as a truncated list
    with pytest.raises(ProtocolError, match="GraphView: truncated list"):
        M.GraphView.decode(head + struct.pack(">I", 3) + good[M.HEADER.size + 4:])
    with pytest.raises(ProtocolError, match="truncated list"):
        M.GraphView.decode(head + struct.pack(">I", 2**32 - 1))
    with pytest.raises(ProtocolError, match="trailing bytes"):
        M.GraphView.decode(good + b"\0")
    with pytest.raises(ProtocolError, match="truncated"):
        M.GraphView.decode(head)


def test_keys_bundle_carries_its_reveals_after_the_adverts():
    d = b"\x33" * 32
    reveals = ((1, b"\x01" * 32), (5, b"\x05" * 32))
    b = M.KeysBundle(d, 2, (b"abc", b""), reveals)
    wire = b.encode()
    assert wire.endswith(struct.pack(">I", 0) + struct.pack(">I", 2)
                         + b"".join(struct.pack(">I", i) + r for i, r in reveals))
    assert M.KeysBundle.decode(wire) == b
    assert M.KeysBundle(d, 2, (b"abc",)).reveals == ()
    bare = M.KeysBundle(d, 2, (b"abc",)).encode()
    assert bare.endswith(struct.pack(">I", 3) + b"abc" + bytes(4)) and M.KeysBundle.decode(bare).reveals == ()
    with pytest.raises(ProtocolError, match="KeysBundle: truncated"):
        M.KeysBundle.decode(bare[:-4])
    with pytest.raises(ProtocolError, match="KeysBundle: truncated"):
        M.KeysBundle.decode(wire[:-1])
    with pytest.raises(ProtocolError, match="KeysBundle: truncated list"):
        M.KeysBundle.decode(bare[:-4] + struct.pack(">I", 2**32 - 1))
    with pytest.raises(ProtocolError, match="KeysBundle: 1 trailing bytes"):
        M.KeysBundle.decode(wire + b"\0")


def test_graph_reveal_wire_format_signature_and_nonce_length():
    cfg, clients, inputs, keys = make_round(N, threshold=T, degree=K)
    nonce = bytes(range(32))
    vh = bytes(range(100, 132))
    g = M.GraphReveal(cfg.digest, 3, nonce, view_hash=vh).signed(keys[3])
    wire = g.encode()
    assert wire == M.HEADER.pack(M.MAGIC, M.VERSION, M.T_GRAPH_REVEAL, cfg.digest, 3) + nonce + vh + g.signature
    assert len(wire) == M.HEADER.size + 32 + 32 + 64
    assert M.GraphReveal.decode(wire) == g and M.decode(wire) == g
    g.verify(cfg.identity[3])
    with pytest.raises(ProtocolError):
        g.verify(cfg.identity[4])
    with pytest.raises(ProtocolError):
        replace(g, nonce=bytes(32)).verify(cfg.identity[3])
    with pytest.raises(ProtocolError):
        replace(g, view_hash=bytes(32)).verify(cfg.identity[3])
    for bad in (bytes(31), bytes(33)):
        with pytest.raises(ProtocolError, match="GraphReveal: nonce must be 32 bytes"):
            M.GraphReveal(cfg.digest, 3, bad).signed(keys[3])
        with pytest.raises(ProtocolError, match="GraphReveal: view hash must be 32 bytes"):
            M.GraphReveal(cfg.digest, 3, nonce, view_hash=bad).signed(keys[3])
    with pytest.raises(ProtocolError, match="^GraphReveal: 1 trailing bytes$"):
        M.GraphReveal.decode(wire + b"\0")
    with pytest.raises(ProtocolError, match="truncated"):
        M.GraphReveal.decode(wire[:-1])
    with pytest.raises(ProtocolError, match="expected message type 0x06"):
        M.GraphReveal.decode(M.GraphView(cfg.digest, 3, ()).encode())


def test_advertise_keys_signs_and_carries_its_graph_commitment():
    cfg, clients, inputs, keys = make_round(N, threshold=T, degree=K)
    adv = clients[2].advertise_keys()
    wire = adv.encode()
    assert wire[M.HEADER.size + 64: M.HEADER.size + 96] == adv.graph_commit
    assert len(wire) == M.HEADER.size + 96 + 64
    back = M.AdvertiseKeys.decode(wire)
    assert back == adv and back.graph_commit == adv.graph_commit and back.signature == adv.signature
    with pytest.raises(ProtocolError):  # the commitment is under the signature
        replace(adv, graph_commit=bytes(32)).verify(cfg.identity[2])
    assert M.AdvertiseKeys(cfg.digest, 2).graph_commit == bytes(32)
    for bad in (bytes(31), bytes(33)):
        with pytest.raises(ProtocolError, match="AdvertiseKeys: graph commitment must be 32 bytes"):
            replace(adv, graph_commit=bad).signed(keys[2])
    with pytest.raises(ProtocolError, match="^AdvertiseKeys: 1 trailing bytes$"):
        M.AdvertiseKeys.decode(wire + b"\0")


# --------------------------------------------------------------------------- the site (client)


def test_a_site_reveals_its_committed_nonce_signed_under_d_and_keeps_the_view():
    cfg, clients, inputs, keys, adverts, view = _round()
    c = clients[3]
    assert c.phase == "graph_reveal"
    assert adverts[3].graph_commit == R.graph_commitment(cfg, 3, c._nonce)
    g = c.graph_reveal(M.GraphView(cfg.digest, 3, view))
    assert (g.config_digest, g.sender, g.nonce) == (cfg.digest, 3, c._nonce)
    g.verify(cfg.identity[3])
    assert c.phase == "share_keys" and c._view == view


def test_a_view_exactly_at_the_threshold_and_with_every_site_is_accepted():
    cfg, clients, inputs, keys, adverts, view = _round()
    exact = tuple(e for e in view if e[0] in (2, 5, 9))
    assert clients[2].graph_reveal(M.GraphView(cfg.digest, 2, exact)).nonce == clients[2]._nonce
    assert clients[5].graph_reveal(M.GraphView(cfg.digest, 5, view)).nonce == clients[5]._nonce
    # a view of every site plus a stranger is refused as naming a site outside the round
    with pytest.raises(ProtocolError, match="outside the round"):
        clients[9].graph_reveal(M.GraphView(cfg.digest, 9, view + ((N + 1, bytes(32)),)))
    small = tuple(e for e in view if e[0] in (1, 7))
    with pytest.raises(BelowThresholdError, match="site 7: view of 2 sites"):
        clients[7].graph_reveal(M.GraphView(cfg.digest, 7, small))


def test_a_view_that_is_not_a_graph_view_or_comes_in_the_wrong_phase_is_refused():
    cfg, clients, inputs, keys, adverts, view = _round()
    with pytest.raises(ProtocolError):
        clients[1].graph_reveal(M.KeysBundle(cfg.digest, 1, ()))
    assert clients[1].phase == "graph_reveal"
    cfg2, clients2, *_ = make_round(N, threshold=T, degree=K)
    with pytest.raises(ProtocolError):  # before its advert
        clients2[1].graph_reveal(M.GraphView(cfg2.digest, 1, view))


def test_a_reveal_list_of_the_views_length_naming_another_site_is_refused():
    cfg, clients, inputs, keys, adverts, view = _round()
    seeded, bundles = keys_bundles(cfg, clients, adverts)
    b = bundles[1]
    swapped = tuple(sorted([e for e in b.reveals if e[0] != 4] + [(N + 2, bytes(32))]))
    assert len(swapped) == len(b.reveals)
    with pytest.raises(ProtocolError, match="site 1: site 4 of the view did not reveal its graph nonce"):
        clients[1].share_keys(replace(b, reveals=swapped))
    assert clients[1]._shares == {} and clients[1].cfg == cfg


def test_a_site_seeds_its_config_from_its_view_and_the_bundles_reveals():
    cfg, clients, inputs, keys, adverts, view = _round()
    seeded, bundles = keys_bundles(cfg, clients, adverts)
    out = clients[2].share_keys(bundles[2])
    assert clients[2].cfg == seeded and clients[2].cfg.digest != cfg.digest
    assert out.config_digest == seeded.digest
    assert {r for r, _ in out.ciphertexts} == set(seeded.holders(2)) - {2}
    assert clients[2].rejected == []


def test_with_a_short_view_the_site_seeds_over_its_own_view_only():
    cfg, clients, inputs, keys, adverts, view = _round()
    sub = tuple(e for e in view if e[0] != 10)
    ids = [v for v, _ in sub]
    got = {u: clients[u].graph_reveal(M.GraphView(cfg.digest, u, sub)) for u in ids}
    reveals = {u: g.nonce for u, g in got.items()}
    seeded = cfg.seeded(sub, reveals)
    b = bundle(seeded, 1, adverts, got)
    clients[1].share_keys(b)
    assert clients[1].cfg == seeded
    # the same bundle with the full view's reveals does not cover the site's view
    full = {**reveals, 10: clients[10]._nonce}
    with pytest.raises(ProtocolError, match="site 2: the reveals in the KeysBundle do not cover exactly its view"):
        clients[2].share_keys(replace(b, receiver=2, reveals=tuple(sorted(full.items()))))


def test_adverts_in_the_bundle_are_checked_against_the_unseeded_round():
    """The adverts were signed under D (before the seed existed): one re-signed under D' is refused."""
    cfg, clients, inputs, keys, adverts, view = _round()
    seeded, bundles = keys_bundles(cfg, clients, adverts)
    b = bundles[1]
    peer = max(seeded.holders(1) - {1})
    moved = replace(adverts[peer], config_digest=seeded.digest).signed(keys[peer]).encode()
    ads = tuple(moved if M.AdvertiseKeys.decode(a).sender == peer else a for a in b.adverts)
    clients[1].share_keys(replace(b, adverts=ads))
    assert any(f"AdvertiseKeys from site {peer} is for another round" in str(e) for e in clients[1].rejected)
    assert peer not in clients[1]._peer_keys
    assert len(clients[1]._peer_keys) == len(seeded.holders(1)) - 1


def test_an_advert_signed_by_another_site_is_dropped():
    cfg, clients, inputs, keys, adverts, view = _round()
    seeded, bundles = keys_bundles(cfg, clients, adverts)
    b = bundles[1]
    peer = max(seeded.holders(1) - {1})
    forged = replace(adverts[peer]).signed(keys[1]).encode()
    ads = tuple(forged if M.AdvertiseKeys.decode(a).sender == peer else a for a in b.adverts)
    clients[1].share_keys(replace(b, adverts=ads))
    assert peer not in clients[1]._peer_keys and len(clients[1].rejected) == 1


def test_on_the_complete_graph_the_default_commitment_is_not_checked(five_sites):
    inputs, keys = five_sites
    cfg = R.RoundConfig(round_id=1, site_ids=tuple(inputs), threshold=3, dim=6,
                        identity_keys=tuple(P.ed25519_public_bytes(keys[i]) for i in inputs))
    clients = {i: SecAggClient(config=cfg, site_id=i, identity_key=keys[i], vector=inputs[i]) for i in inputs}
    server = SecAggServer(config=cfg)
    out = honest_phases(server, clients, "advertise_keys")
    c = next(iter(clients))
    clients[c].share_keys(out[c])
    assert clients[c].rejected == [] and clients[c].cfg == cfg
    assert len(clients[c]._peer_keys) == len(inputs)


# --------------------------------------------------------------------------- the server


def test_the_server_sends_every_site_the_unseeded_view_of_u1_then_seeded_bundles():
    cfg, clients, inputs, keys = make_round(N, threshold=T, degree=K)
    server = SecAggServer(config=cfg)
    views = honest_phases(server, clients, "advertise_keys", silent=(6,))
    u1 = [u for u in cfg.site_ids if u != 6]
    assert server.phase == "graph_reveal" and list(server.u1) == u1
    view = tuple((u, clients[u]._advert.graph_commit) for u in u1)
    assert set(views) == set(u1)
    assert all(views[u] == M.GraphView(cfg.digest, u, view) for u in u1)
    for u in u1:
        server.receive(clients[u].graph_reveal(views[u]).encode())
    vh = R.view_hash(cfg, view)
    got = {u: M.GraphReveal(cfg.digest, u, clients[u]._nonce, view_hash=vh).signed(keys[u]) for u in u1}
    assert server._got == {u: g.nonce for u, g in got.items()}
    bundles = server.finish_phase()
    reveals = tuple((u, clients[u]._nonce) for u in u1)
    seeded = cfg.seeded(view, dict(reveals))
    assert server.cfg == seeded and server.phase == "share_keys" and server._got == {}
    assert set(bundles) == set(u1)
    for u in u1:
        live = [v for v in sorted(seeded.holders(u)) if v != 6]
        want = tuple(clients[v]._advert.encode() for v in live)
        assert bundles[u] == M.KeysBundle(seeded.digest, u, want, reveals)
    # the sites take them and the server accepts their shares under D'
    for u in u1:
        server.receive(clients[u].share_keys(bundles[u]).encode())
    assert set(server._got) == set(u1)


def test_the_server_refuses_reveals_under_the_unseeded_phase_rules():
    cfg, clients, inputs, keys = make_round(N, threshold=T, degree=K)
    server = SecAggServer(config=cfg)
    views = honest_phases(server, clients, "advertise_keys")
    g = clients[2].graph_reveal(views[2])
    # another site's nonce, honestly signed by site 3, does not open site 3's commitment
    with pytest.raises(ProtocolError, match="GraphReveal from site 3: nonce does not match its commitment"):
        server.receive(replace(g, sender=3).signed(keys[3]).encode())
    # its own nonce, signed for another view than the one the server sent (one view to all)
    other = R.view_hash(cfg, tuple(views[3].commits[:-1]))
    with pytest.raises(ProtocolError, match="GraphReveal from site 3: signed for another view"):
        server.receive(M.GraphReveal(cfg.digest, 3, clients[3]._nonce, view_hash=other).signed(keys[3]).encode())
    assert 3 not in server._got
    server.receive(g.encode())
    assert server._got[2] == g.nonce


def test_the_server_aborts_when_reveals_are_missing_and_lists_them():
    cfg, clients, inputs, keys = make_round(N, threshold=T, degree=K)
    server = SecAggServer(config=cfg)
    views = honest_phases(server, clients, "advertise_keys")
    for u in cfg.site_ids:
        if u not in (2, 8):
            server.receive(clients[u].graph_reveal(views[u]).encode())
    with pytest.raises(BelowThresholdError, match=r"site\(s\) \[2, 8\] did not reveal their graph nonce"):
        server.finish_phase()
    assert server.phase == "aborted" and server.cfg == cfg


def test_share_keys_seeds_only_from_a_keys_bundle_in_its_phase():
    """Another message in phase share_keys, or a second KeysBundle later, is a phase/type error
    (ProtocolError), never an attempt to seed from it."""
    cfg, clients, inputs, keys, adverts, view = _round()
    seeded, bundles = keys_bundles(cfg, clients, adverts)
    with pytest.raises(ProtocolError, match="expected KeysBundle"):
        clients[1].share_keys(M.CiphertextBundle(seeded.digest, 1, ()))
    assert clients[1].cfg == cfg and clients[1].phase == "share_keys"
    clients[1].share_keys(bundles[1])
    assert clients[1].cfg == seeded
    with pytest.raises(ProtocolError, match="in phase 'masked_input'"):
        clients[1].share_keys(bundles[1])
    assert clients[1].cfg == seeded
