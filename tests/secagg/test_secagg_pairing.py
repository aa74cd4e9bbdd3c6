"""Issue 7 point 1: a server that controls delivery must not unmask a sum of fewer than
min_honest_inputs(t, c) honest inputs. The attacking server is tests/secagg/secagg_attacker.py."""

from dataclasses import replace

import numpy as np
import pytest

from secure_fedrl.errors import BelowThresholdError, ProtocolError
from secure_fedrl.secagg import messages as M
from secure_fedrl.secagg import primitives as P
from secure_fedrl.secagg import protocol as R
from secure_fedrl.secagg import run_round
from secure_fedrl.secagg.graph import min_honest_inputs, secure_threshold
from secure_fedrl.secagg.server import SecAggServer

from secagg_attacker import attack, honest_phases, make_round


def test_exact_attack_complete_graph_n8_t5_one_colluder():
    """Victim 1 gets only the ciphertexts of P = {2 (colluder), 3, 4, 5}; U3 = all \\ {3, 4, 5}."""
    assert secure_threshold(8, max_colluding=1) == 5
    cfg, clients, inputs, keys = make_round(8, threshold=5)
    out = attack(cfg, clients, inputs, keys, colluders={2}, withhold={1: {2, 3, 4, 5}},
                 views=lambda u: (1, 2, 6, 7, 8))
    assert clients[1]._pairs == (2, 3, 4, 5)  # the withholding worked: 1 paired with P only
    assert out.recovered == {}
    # the victim refuses to reveal its own self-mask share; 6, 7, 8 hold 1's shares only because
    # the server delivered 1's ciphertexts to them one-sidedly, which 1's attestation exposes
    assert "site 1 paired with 1 survivors" in out.errors[1] and "pair withholding" in out.errors[1]
    assert all("pairing attestation of site 1" in out.errors[h] for h in (6, 7, 8))


def test_a_paired_holder_refuses_when_too_few_of_the_pairing_survived():
    cfg, clients, inputs, keys = make_round(8, threshold=5)
    out = attack(cfg, clients, inputs, keys, colluders={2}, withhold={1: {2, 3, 4, 5}},
                 views=lambda u: (1, 2, 3, 6, 7, 8))
    assert out.recovered == {}
    assert "site 1 paired with 2 survivors" in out.errors[3]  # 3 is in M(1): it checks the count


def test_exact_attack_secagg_plus_n100_k14_t8():
    cfg, clients, inputs, keys = make_round(100, threshold=8, degree=14, dim=2)
    victim = 1

    def chosen(c):  # t-1 holders, picked once the seeded graph is known
        return set(sorted(c.graph[victim])[:7])

    out = attack(cfg, clients, inputs, keys, withhold=lambda c: {victim: chosen(c)},
                 views=lambda c, u: tuple(i for i in c.site_ids if i not in chosen(c)))
    seeded = out.config
    P_ = chosen(seeded)
    assert clients[victim]._pairs == tuple(sorted(P_))
    assert out.recovered == {}
    assert "pair withholding" in out.errors[victim]
    assert all("pairing attestation of site 1" in out.errors[h] for h in seeded.holders(victim) - P_ - {victim})


def test_honest_delivery_through_the_attacker_recovers_nothing_but_completes():
    cfg, clients, inputs, keys = make_round(8, threshold=5)
    out = attack(cfg, clients, inputs, keys, reorder=True)  # reordered bundles change nothing
    assert out.errors == {} and out.recovered == {} and len(out.revealed) == 8


def test_withholding_below_t_minus_one_makes_the_victim_refuse_to_mask():
    cfg, clients, inputs, keys = make_round(8, threshold=5)
    out = attack(cfg, clients, inputs, keys, withhold={1: {2, 3, 4}})
    assert "sites shared keys with it, threshold is 5" in out.errors[1]
    assert out.recovered == {}


@pytest.mark.parametrize("split", [{1, 6, 7, 8}, {1, 6, 7}, {1, 6}, {6, 7, 8}])
def test_different_views_to_different_sites_reveal_nothing(split):
    """Sites in `split` see U3 = everyone (so 1's pairing with P looks fine); the rest see P
    dropped. With 2t > n + c no two views can both be confirmed by t sites."""
    cfg, clients, inputs, keys = make_round(8, threshold=5)
    everyone, without = tuple(range(1, 9)), (1, 2, 6, 7, 8)
    out = attack(cfg, clients, inputs, keys, colluders={2}, withhold={1: {2, 3, 4, 5}},
                 views=lambda u: everyone if u in split else without)
    assert out.recovered == {}


def test_without_the_attack_one_colluder_learns_nothing_either():
    cfg, clients, inputs, keys = make_round(8, threshold=5)
    out = attack(cfg, clients, inputs, keys, colluders={2})
    assert out.recovered == {} and len(out.revealed) == 7


def test_min_honest_inputs_is_tight_for_an_isolated_group():
    """The server CAN unmask a group of t sites that only paired among themselves: t - c honest
    inputs, the number min_honest_inputs reports (the bound is not loose)."""
    cfg, clients, inputs, keys = make_round(10, threshold=6)
    group = {1, 2, 3, 4, 5, 6}
    rest = set(cfg.site_ids) - group
    withhold = {u: (group if u in group else rest) - {u} for u in cfg.site_ids}
    out = attack(cfg, clients, inputs, keys, colluders={6}, withhold=withhold)
    # each site of the group is masked only with the group: their sum (not one input) leaks
    assert out.recovered == {}
    total = np.zeros(cfg.dim, np.uint32)
    for u in group:
        total += out.masked[u] - P.prg(out.self_masks[u], cfg.dim)
    honest = sorted(group - {6})
    want = sum(inputs[u].astype(np.uint64) for u in honest) % 2**32
    assert np.array_equal(total - inputs[6], want.astype(np.uint32))  # the colluder subtracts its own
    assert len(honest) == min_honest_inputs(6, max_colluding=1) == 5


# --------------------------------------------------------------------------- the holder's checks


def _honest_until_unmask(n=8, t=5, degree=None, seed=0):
    cfg, clients, inputs, keys = make_round(n, threshold=t, degree=degree, seed=seed)
    server = SecAggServer(config=cfg)
    out = honest_phases(server, clients, "consistency_check")
    return server.cfg, clients, server, out


def test_missing_pairing_attestation_aborts():
    cfg, clients, server, reqs = _honest_until_unmask()
    req = reqs[3]
    with pytest.raises(ProtocolError, match="no pairing attestation of site 1"):
        clients[3].unmask(replace(req, attestations=req.attestations[1:]))
    assert clients[3].guard.revealed == {}


def test_forged_pairing_attestation_aborts():
    cfg, clients, server, reqs = _honest_until_unmask()
    req = reqs[3]
    u, paired, tag = req.attestations[0]
    forged = ((u, paired, bytes(32)),) + req.attestations[1:]
    with pytest.raises(ProtocolError, match="not authentic"):
        clients[3].unmask(replace(req, attestations=forged))
    # a genuine tag over another list (the server shrinks M(u) to make it look small) fails too
    with pytest.raises(ProtocolError, match="not authentic"):
        clients[3].unmask(replace(req, attestations=((u, paired[:-1], tag),) + req.attestations[1:]))


def test_attestation_that_omits_the_holder_aborts():
    cfg, clients, server, reqs = _honest_until_unmask()
    req = reqs[3]
    u, paired, _ = req.attestations[0]
    others = tuple(v for v in paired if v != 3)
    core = M.attestation_core(cfg.digest, u, others)
    tag = R.confirm_tag(clients[u]._confirm_key(3), core, 3)  # u (colluding) attests without 3
    with pytest.raises(ProtocolError, match="not authentic"):
        clients[3].unmask(replace(req, attestations=((u, others, tag),) + req.attestations[1:]))


def test_attestation_of_a_site_that_did_not_pair_aborts():
    cfg, clients, server, reqs = _honest_until_unmask()
    req = reqs[3]
    clients[3]._pairs = tuple(v for v in clients[3]._pairs if v != 1)  # 3 never paired with 1
    with pytest.raises(ProtocolError, match="did not pair with it"):
        clients[3].unmask(req)


def test_peer_must_be_certified_by_its_own_holders():
    """SecAgg+: a holder reveals a peer's share only if t of that peer's OWN holders confirmed
    the survivor set (else the server could show the peer's other holders another view)."""
    cfg, clients, server, reqs = _honest_until_unmask(n=20, t=3, degree=3, seed=1)
    req = reqs[1]
    assert req.signatures  # confirmations from beyond site 1's neighbourhood
    # a peer x sharing fewer than t holders with site 1: only signatures from x's other holders certify it
    x = next(x for x in sorted(cfg.holders(1) - {1}) if len(cfg.holders(x) & cfg.holders(1)) < 3)
    keep = tuple((s, g) for s, g in req.signatures if s not in cfg.holders(x))
    with pytest.raises(BelowThresholdError, match=r"fewer than 3 holders of site \d+ confirmed"):
        clients[1].unmask(replace(req, signatures=keep))
    assert clients[1].guard.revealed == {}


def test_paired_survivors_must_be_certified_by_their_own_holders():
    """... and t-1 paired survivors of u must be certified before b_u is revealed: without the
    signatures of sites 3, 7 and 14 (found by search for this deterministic round, whose graph the
    reveals seed), too few of site 1's paired survivors are certified."""
    cfg, clients, server, reqs = _honest_until_unmask(n=20, t=3, degree=3, seed=1)
    req = reqs[1]
    keep = tuple((s, g) for s, g in req.signatures if s not in (3, 7, 14))
    with pytest.raises(BelowThresholdError, match="paired survivors of site .* are confirmed by 3 of their holders"):
        clients[1].unmask(replace(req, signatures=keep))
    assert clients[1].guard.revealed == {}
    assert clients[1].unmask(req).shares  # the full request is accepted


def test_confirmation_from_a_site_outside_the_survivor_set_aborts():
    cfg, clients, server, reqs = _honest_until_unmask()
    req = reqs[3]
    bad = tuple((s, g) for s, g in req.tags) + ((9, bytes(32)),)
    with pytest.raises(ProtocolError, match="bad signer 9"):
        clients[3].unmask(replace(req, tags=bad))


def test_tag_from_a_non_neighbour_aborts():
    cfg, clients, server, reqs = _honest_until_unmask(n=20, t=3, degree=4, seed=1)
    req = reqs[1]
    far = req.signatures[0][0]
    tags = tuple(sorted(req.tags + ((far, bytes(32)),)))
    with pytest.raises(ProtocolError, match=f"bad signer {far}"):
        clients[1].unmask(replace(req, tags=tags))


def test_site_refuses_a_survivor_set_without_itself_or_too_small():
    cfg, clients, inputs, keys = make_round(8, threshold=5)
    server = SecAggServer(config=cfg)
    out = {i: None for i in cfg.site_ids}
    for step in (lambda c, m: c.advertise_keys(), lambda c, m: c.share_keys(m), lambda c, m: c.masked_input(m)):
        for i, c in clients.items():
            server.receive(step(c, out[i]).encode())
        out = server.finish_phase()
    with pytest.raises(ProtocolError, match="omits this site"):
        clients[1].consistency_check(replace(out[1], survivors=(2, 3, 4, 5, 6, 7, 8)))
    with pytest.raises(BelowThresholdError, match="4 survivors, threshold is 5"):
        clients[1].consistency_check(replace(out[1], survivors=(1, 2, 3, 4)))
    with pytest.raises(ProtocolError, match="unknown sites"):
        clients[1].consistency_check(replace(out[1], survivors=(1, 2, 3, 4, 5, 99)))
    assert clients[1].phase == "consistency_check"  # nothing signed


# --------------------------------------------------------------------------- the server's checks


def test_server_refuses_an_attestation_that_differs_from_what_it_delivered(five_sites, plain_sum):
    inputs, keys = five_sites

    def lie(ph, sid, wire):  # site 3 (malicious) signs a pairing list without site 1
        if ph == "masked_input" and sid == 3:
            msg = M.MaskedInput.decode(wire)
            keep = [(v, g) for v, g in zip(msg.paired, msg.tags) if v != 1]
            msg = replace(msg, paired=tuple(v for v, _ in keep), tags=tuple(g for _, g in keep))
            return [msg.signed(keys[3]).encode()]
        return [wire]

    res = run_round(inputs, threshold=3, identity_keys=keys, seed=8, on_upload=lie)
    assert any(s == 3 and "did not pair with site 1, whose masked input already counts" in why
               for s, _, why in res.rejected)
    assert np.array_equal(res.sum, plain_sum(inputs, [1, 2, 4, 5]))


def test_an_attestation_naming_a_peer_that_never_shared_with_it_is_refused():
    """Site 1 (malicious) attests a pair with site 5, which dropped before sharing keys."""
    cfg, clients, inputs, keys = make_round(5, threshold=3, seed=3)
    server = SecAggServer(config=cfg)
    out = honest_phases(server, clients, "advertise_keys")
    out = honest_phases(server, clients, "share_keys", out, silent={5})
    msg = clients[1].masked_input(out[1])
    assert msg.paired == (2, 3, 4)
    forged = replace(msg, paired=(2, 3, 4, 5), tags=msg.tags + (bytes(32),)).signed(keys[1])
    with pytest.raises(ProtocolError, match="attested pairing names a site whose ciphertext was not delivered"):
        server.receive(forged.encode())
    server.receive(msg.encode())


def test_asymmetric_pairing_is_dropped_not_summed_as_garbage(five_sites, plain_sum):
    inputs, keys = five_sites

    def withhold(ph, sid, wire):  # the network loses site 2's ciphertext to site 1
        if ph == "share_keys" and sid == 1:
            b = M.CiphertextBundle.decode(wire)
            return replace(b, ciphertexts=tuple(c for c in b.ciphertexts if c[0] != 2)).encode()
        return wire

    res = run_round(inputs, threshold=3, identity_keys=keys, seed=8, on_download=withhold)
    # site 1 masks without 2 and counts first, so 2 (which masked with 1) is dropped, not summed
    assert [(s, why.split(": ", 1)[1]) for s, _, why in res.rejected] == [
        (2, "site 1 did not pair with it (its share ciphertext did not decrypt there)")]
    assert np.array_equal(res.sum, plain_sum(inputs, res.accepted_sites))
    assert res.accepted_sites == (1, 3, 4, 5)


def test_server_aborts_when_a_survivor_lost_its_paired_survivors():
    cfg, clients, inputs, keys = make_round(12, threshold=3, degree=4, seed=2)
    server = SecAggServer(config=cfg)
    out = honest_phases(server, clients, "share_keys")
    drops = set(sorted(server.cfg.graph[1])[:3])  # 3 of site 1's 4 peers leave before their masked input
    with pytest.raises(BelowThresholdError, match="site 1 paired with 1 survivors"):
        honest_phases(server, clients, "masked_input", out, silent=drops)


def test_min_honest_inputs_and_secure_threshold_interface():
    assert min_honest_inputs(5, max_colluding=1) == 4
    assert min_honest_inputs(8) == 8
    with pytest.raises(ValueError):
        min_honest_inputs(0)
    with pytest.raises(ValueError):
        secure_threshold(5, max_colluding=-1)


def test_confirmation_from_a_holder_outside_the_survivor_set_aborts():
    cfg, clients, inputs, keys = make_round(8, threshold=5)
    server = SecAggServer(config=cfg)
    out = {i: None for i in cfg.site_ids}
    steps = [lambda c, m: c.advertise_keys(), lambda c, m: c.share_keys(m), lambda c, m: c.masked_input(m),
             lambda c, m: c.consistency_check(m)]
    for step in steps:
        for i, c in clients.items():
            if i in out and not (i == 8 and step is steps[2]):  # site 8 drops before its masked input
                server.receive(step(c, out[i]).encode())
        out = server.finish_phase()
    req = out[3]
    assert 8 not in req.survivors
    tag8 = R.confirm_tag(clients[8]._confirm_key(3), M.consistency_core(cfg.digest, 8, req.survivors), 3)
    with pytest.raises(ProtocolError, match="bad signer 8"):
        clients[3].unmask(replace(req, tags=tuple(sorted(req.tags + ((8, tag8),)))))


def test_a_tag_from_a_holder_without_a_shared_key_does_not_count(five_sites):
    """Site 1 dropped site 4 (forged advert): 4's tag cannot be checked by 1, so it is no
    confirmation; with only 4 and 5 offered, 1 has 2 < t = 3 confirmations and refuses."""
    inputs, keys = five_sites
    cfg = R.RoundConfig(round_id=3, site_ids=tuple(inputs), threshold=3, dim=6,
                        identity_keys=tuple(P.ed25519_public_bytes(keys[i]) for i in inputs))
    from secure_fedrl.secagg.client import SecAggClient

    clients = {i: SecAggClient(config=cfg, site_id=i, identity_key=keys[i], vector=inputs[i]) for i in inputs}
    server = SecAggServer(config=cfg)
    out = {i: None for i in inputs}
    for i, c in clients.items():
        server.receive(c.advertise_keys().encode())
    out = server.finish_phase()
    forged = M.AdvertiseKeys(cfg.digest, 4, P.x25519_keypair()[1], P.x25519_keypair()[1]).signed(P.ed25519_keypair()[0])
    out[1] = replace(out[1], adverts=tuple(forged.encode() if M.AdvertiseKeys.decode(a).sender == 4 else a
                                           for a in out[1].adverts))
    for step in (lambda c, m: c.share_keys(m), lambda c, m: c.masked_input(m), lambda c, m: c.consistency_check(m)):
        for i, c in clients.items():
            server.receive(step(c, out[i]).encode())
        out = server.finish_phase()
    assert 4 not in clients[1]._enc_shared
    req = out[1]
    fake4 = (4, bytes(32))
    with pytest.raises(BelowThresholdError, match="fewer than 3 holders"):
        clients[1].unmask(replace(req, tags=tuple(sorted([fake4] + [g for g in req.tags if g[0] == 5]))))


def test_a_neighbour_may_confirm_with_its_signature_instead_of_a_tag():
    cfg, clients, server, reqs = _honest_until_unmask()
    req = reqs[3]
    sig2 = clients[2]._consistency.signature
    resp = clients[3].unmask(replace(req, tags=tuple(g for g in req.tags if g[0] != 2), signatures=((2, sig2),)))
    assert resp.shares


def test_attestation_of_a_site_outside_the_survivor_set_aborts():
    cfg, clients, inputs, keys = make_round(8, threshold=5)
    server = SecAggServer(config=cfg)
    out = {i: None for i in cfg.site_ids}
    steps = [lambda c, m: c.advertise_keys(), lambda c, m: c.share_keys(m), lambda c, m: c.masked_input(m),
             lambda c, m: c.consistency_check(m)]
    for step in steps:
        for i, c in clients.items():
            if i in out and not (i == 8 and step is steps[2]):  # site 8 drops before its masked input
                server.receive(step(c, out[i]).encode())
        out = server.finish_phase()
    req = out[3]
    paired = tuple(v for v in cfg.site_ids if v != 8)
    tag = R.confirm_tag(clients[8]._confirm_key(3), M.attestation_core(cfg.digest, 8, paired), 3)
    with pytest.raises(ProtocolError, match="pairing attestation of site 8"):
        clients[3].unmask(replace(req, attestations=req.attestations + ((8, paired, tag),)))


def test_pairing_survivor_rule_boundary():
    """t-2 paired survivors: refused by the count rule itself (t-1 would pass it)."""
    cfg, clients, inputs, keys = make_round(8, threshold=5)
    out = attack(cfg, clients, inputs, keys, withhold={1: {2, 3, 4, 5}},
                 views=lambda u: (1, 2, 3, 4, 6, 7, 8))
    assert out.recovered == {}
    assert "site 1 paired with 3 survivors, fewer than threshold - 1 = 4" in out.errors[2]
