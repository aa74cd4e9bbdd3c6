"""One test per attack of issue 3 point 5; each fails if its defence is removed."""

from dataclasses import replace

import numpy as np
import pytest

from secure_fedrl.errors import BelowThresholdError, ProtocolError
from secure_fedrl.secagg import RoundConfig, run_round
from secure_fedrl.secagg import messages as M
from secure_fedrl.secagg import primitives as P
from secure_fedrl.secagg import protocol as R
from secure_fedrl.secagg.client import RevealGuard, SecAggClient
from secure_fedrl.secagg.server import SecAggServer


def _run(five_sites, **kw):
    inputs, keys = five_sites
    return run_round(inputs, threshold=3, identity_keys=keys, seed=42, **kw)


def _swap(phase, site, fn):
    """An upload hook that rewrites the `phase` message of `site` with fn(wire) -> list of wires."""
    def hook(ph, sid, wire):
        return fn(wire) if (ph == phase and sid == site) else [wire]
    return hook


def test_tampered_message_with_original_signature_is_rejected(five_sites, plain_sum):
    inputs, _ = five_sites

    def tamper(wire):
        b = bytearray(wire)
        b[-65] ^= 0xFF  # last byte of the masked vector (the signature follows)
        return [bytes(b)]

    res = _run(five_sites, on_upload=_swap("masked_input", 3, tamper))
    assert [(s, p) for s, p, _ in res.rejected] == [(3, "masked_input")]
    assert "invalid signature" in res.rejected[0][2]
    assert 3 not in res.accepted_sites
    assert np.array_equal(res.sum, plain_sum(inputs, [1, 2, 4, 5]))


def test_message_signed_by_another_site_is_rejected(five_sites):
    inputs, keys = five_sites

    def impersonate(wire):  # site 3's key signs a message claiming to come from site 4
        msg = M.AdvertiseKeys.decode(wire)
        return [replace(msg, sender=4).signed(keys[3]).encode()]

    res = _run(five_sites, on_upload=_swap("advertise_keys", 4, impersonate))
    assert res.rejected and "invalid signature" in res.rejected[0][2]
    assert 4 not in res.accepted_sites


def test_message_replayed_from_another_round_is_rejected(five_sites, plain_sum):
    inputs, keys = five_sites
    old = {}

    def record(ph, sid, wire):
        if ph == "masked_input" and sid == 3:
            old["wire"] = wire
        return [wire]

    run_round(inputs, threshold=3, identity_keys=keys, seed=1, round_id=1, on_upload=record)
    res = run_round(inputs, threshold=3, identity_keys=keys, seed=1, round_id=2,
                    on_upload=_swap("masked_input", 3, lambda w: [old["wire"]]))
    assert len(res.rejected) == 1 and "wrong round" in res.rejected[0][2]
    assert 3 not in res.accepted_sites
    assert np.array_equal(res.sum, plain_sum(inputs, [1, 2, 4, 5]))


def test_out_of_phase_message_is_rejected(five_sites):
    saved = {}

    def hook(ph, sid, wire):
        if sid == 2 and ph == "share_keys":
            saved["share"] = wire
        if sid == 2 and ph == "masked_input":
            return [saved["share"]]  # replays its ShareKeys instead of the masked input
        return [wire]

    res = _run(five_sites, on_upload=hook)
    assert "unexpected message type" in res.rejected[0][2]
    assert 2 not in res.accepted_sites


def test_duplicate_id_is_rejected_and_counted_once(five_sites, plain_sum):
    inputs, _ = five_sites
    res = _run(five_sites, on_upload=_swap("masked_input", 4, lambda w: [w, w]))
    assert len(res.rejected) == 1 and "duplicate" in res.rejected[0][2]
    assert np.array_equal(res.sum, plain_sum(inputs, [1, 2, 3, 4, 5]))


def test_wrong_length_input_is_rejected_and_the_round_continues(five_sites, plain_sum):
    inputs, keys = five_sites

    def longer(wire):  # a (malicious) site signs a vector one word too long
        msg = M.MaskedInput.decode(wire)
        return [replace(msg, vector=np.append(msg.vector, np.uint32(1))).signed(keys[5]).encode()]

    res = _run(five_sites, on_upload=_swap("masked_input", 5, longer))
    assert "expected 6" in res.rejected[0][2]
    assert 5 not in res.accepted_sites
    assert np.array_equal(res.sum, plain_sum(inputs, [1, 2, 3, 4]))


def test_truncated_and_trailing_bytes_are_rejected():
    sk, pk = P.ed25519_keypair()
    msg = M.AdvertiseKeys(b"d" * 32, 1, b"c" * 32, b"s" * 32).signed(sk)
    wire = msg.encode()
    assert M.AdvertiseKeys.decode(wire) == msg
    with pytest.raises(ProtocolError, match="trailing"):
        M.AdvertiseKeys.decode(wire + b"\0")
    with pytest.raises(ProtocolError, match="truncated"):
        M.AdvertiseKeys.decode(wire[:-1])


def test_tampered_share_ciphertext_is_detected_and_the_round_recovers(five_sites, plain_sum):
    inputs, _ = five_sites

    def tamper(ph, sid, wire):
        if ph == "share_keys" and sid == 1:  # the server's CiphertextBundle to site 1
            bundle = M.CiphertextBundle.decode(wire)
            cts = [(s, bytes([ct[0] ^ 1]) + ct[1:]) if s == 2 else (s, ct) for s, ct in bundle.ciphertexts]
            return replace(bundle, ciphertexts=tuple(cts)).encode()
        return wire

    reveals = {}
    rejected = []
    orig = SecAggClient._reject

    def spy(self, err):
        rejected.append((self.id, str(err)))
        orig(self, err)

    import unittest.mock as um
    # site 2 drops before its masked input: its s-shares are needed, and site 1's is garbage
    with um.patch.object(SecAggClient, "_reject", spy):
        res = _run(five_sites, dropouts={2: "masked_input"}, on_download=tamper,
                   on_upload=lambda ph, sid, w: (reveals.__setitem__(sid, w) if ph == "unmasking" else None, [w])[1])
    assert rejected == [(1, "site 1: ciphertext from site 2, not paired with: share ciphertext failed AES-GCM "
                            "authentication")]
    assert 2 not in {p for p, _, _ in M.UnmaskResponse.decode(reveals[1]).shares}  # discarded, not revealed
    assert np.array_equal(res.sum, plain_sum(inputs, [1, 3, 4, 5]))


def test_tampered_ciphertext_is_recorded_by_the_receiving_site(five_sites):
    inputs, keys = five_sites
    cfg, clients, server = _manual(five_sites)
    bundles = _advance(cfg, clients, server, "share_keys")
    b1 = bundles[1]
    cts = tuple((s, ct[:-1] + bytes([ct[-1] ^ 1])) if s == 3 else (s, ct) for s, ct in b1.ciphertexts)
    clients[1].masked_input(replace(b1, ciphertexts=cts))
    assert any("AES-GCM" in str(e) and "site 3" in str(e) for e in clients[1].rejected)
    assert 3 not in clients[1]._shares and 2 in clients[1]._shares


# --------------------------------------------------------------------------- malicious server


def _manual(five_sites):
    inputs, keys = five_sites
    cfg = RoundConfig(round_id=3, site_ids=tuple(inputs), threshold=3, dim=6,
                      identity_keys=tuple(P.ed25519_public_bytes(keys[i]) for i in inputs))
    clients = {i: SecAggClient(config=cfg, site_id=i, identity_key=keys[i], vector=inputs[i]) for i in inputs}
    return cfg, clients, SecAggServer(config=cfg)


def _advance(cfg, clients, server, until, skip=()):
    """Run honest phases up to (and including) `until`; returns the server's outgoing messages."""
    steps = [("advertise_keys", lambda c, m: c.advertise_keys()), ("share_keys", lambda c, m: c.share_keys(m)),
             ("masked_input", lambda c, m: c.masked_input(m)), ("consistency_check", lambda c, m: c.consistency_check(m)),
             ("unmasking", lambda c, m: c.unmask(m))]
    out: dict = {i: None for i in clients}
    for phase, step in steps:
        for i, c in clients.items():
            if i in out and i not in skip:
                server.receive(step(c, out[i]).encode())
        out = server.finish_phase()
        if phase == until:
            return out
    return out


def _confirmation(clients, signer, receiver, survivors):
    """The HMAC confirmation `signer` would give `receiver` for `survivors` (a forged view)."""
    c = clients[signer]
    return R.confirm_tag(c._confirm_key(receiver), M.consistency_core(c.cfg.digest, signer, survivors), receiver)


def test_consistency_check_aborts_when_a_peer_signed_a_different_survivor_set(five_sites):
    inputs, keys = five_sites
    cfg, clients, server = _manual(five_sites)
    reqs = _advance(cfg, clients, server, "consistency_check")
    # The server told site 1 a survivor set without site 5 (to learn site 5's s-key) and shows
    # site 2 site 1's confirmation of that set.
    lie = _confirmation(clients, 1, 2, (1, 2, 3, 4))
    req = reqs[2]
    tags = tuple((s, lie if s == 1 else tag) for s, tag in req.tags)
    with pytest.raises(ProtocolError, match="signed a different survivor set"):
        clients[2].unmask(replace(req, tags=tags))
    assert clients[2].guard.revealed == {}


def test_signature_of_a_distant_site_over_another_set_aborts(plain_sum):
    """SecAgg+: confirmations from beyond the neighbourhood come as Ed25519 signatures."""
    rng = np.random.default_rng(2)
    inputs = {i: rng.integers(0, 2**32, 4, dtype=np.uint64).astype(np.uint32) for i in range(12)}
    keys = {i: P.ed25519_keypair()[0] for i in inputs}

    def forge(ph, sid, wire):
        if ph == "consistency_check" and sid == 1:
            req = M.UnmaskRequest.decode(wire)
            if req.signatures:
                w = req.signatures[0][0]
                bad = M.ConsistencySig(req.config_digest, w, req.survivors[1:]).signed(keys[w - 1]).signature
                return replace(req, signatures=((w, bad),) + req.signatures[1:]).encode()
        return wire

    with pytest.raises(BelowThresholdError):  # site 1 aborts: its own and its peers' secrets stay hidden
        run_round(inputs, threshold=3, neighbors=2, identity_keys=keys, seed=1, on_download=forge)
    seen = {}
    client_unmask = SecAggClient.unmask

    def spy(self, req):
        try:
            return client_unmask(self, req)
        except ProtocolError as err:
            seen[self.id] = str(err)
            raise
    import unittest.mock as um
    with um.patch.object(SecAggClient, "unmask", spy), pytest.raises(BelowThresholdError):
        run_round(inputs, threshold=3, neighbors=2, identity_keys=keys, seed=1, on_download=forge)
    assert "signed a different survivor set" in seen[1]
    # and without the forgery the same round completes
    ok = run_round(inputs, threshold=3, neighbors=2, identity_keys=keys, seed=1)
    assert np.array_equal(ok.sum, plain_sum(inputs, range(12)))


def test_site_aborts_when_survivor_set_changes_after_it_signed(five_sites):
    cfg, clients, server = _manual(five_sites)
    reqs = _advance(cfg, clients, server, "consistency_check")
    with pytest.raises(ProtocolError, match="survivor set changed"):
        clients[3].unmask(replace(reqs[3], survivors=(1, 2, 3, 4)))


def test_site_aborts_with_too_few_consistency_signatures(five_sites):
    cfg, clients, server = _manual(five_sites)
    reqs = _advance(cfg, clients, server, "consistency_check")
    with pytest.raises(BelowThresholdError, match="fewer than 3 holders of site 1 confirmed the survivor set"):
        clients[3].unmask(replace(reqs[3], tags=reqs[3].tags[:1]))
    assert clients[3].guard.revealed == {}


def test_server_rejects_consistency_signature_over_another_set(five_sites):
    inputs, keys = five_sites

    def lie(ph, sid, wire):
        if ph == "masked_input" and sid == 1:  # ConsistencyRequest to site 1 omits site 5
            return replace(M.ConsistencyRequest.decode(wire), survivors=(1, 2, 3, 4)).encode()
        return wire

    res = _run(five_sites, on_download=lie)
    assert any(s == 1 and "different survivor set" in why for s, _, why in res.rejected)


def test_honest_site_never_reveals_both_shares_of_a_peer(five_sites):
    cfg, clients, server = _manual(five_sites)
    # site 5 drops after sharing keys: the others reveal its s-share
    out = {i: None for i in clients}
    for phase in ("advertise_keys", "share_keys", "masked_input", "consistency_check"):
        for i, c in clients.items():
            if i not in out or (phase == "masked_input" and i == 5):
                continue
            msg = {"advertise_keys": lambda: c.advertise_keys(), "share_keys": lambda: c.share_keys(out[i]),
                   "masked_input": lambda: c.masked_input(out[i]),
                   "consistency_check": lambda: c.consistency_check(out[i])}[phase]()
            server.receive(msg.encode())
        out = server.finish_phase()
    resp = clients[1].unmask(out[1])
    assert (5, M.KIND_S) in {(p, k) for p, k, _ in resp.shares}
    # A second request that now lists site 5 as a survivor (to get its b-share) is refused.
    with pytest.raises(ProtocolError):
        clients[1].unmask(replace(out[1], survivors=(1, 2, 3, 4, 5)))
    assert clients[1].guard.revealed[5] == M.KIND_S


def test_reveal_guard_refuses_the_other_secret():
    g = RevealGuard()
    g.reveal(7, M.KIND_S)
    g.reveal(7, M.KIND_S)  # idempotent
    with pytest.raises(ProtocolError, match="both the b-share and the s-share of site 7"):
        g.reveal(7, M.KIND_B)


def test_server_cannot_substitute_a_sites_advertised_keys(five_sites):
    inputs, keys = five_sites
    cfg, clients, server = _manual(five_sites)
    bundles = _advance(cfg, clients, server, "advertise_keys")
    fake_sk = P.ed25519_keypair()[0]
    forged = M.AdvertiseKeys(cfg.digest, 4, P.x25519_keypair()[1], P.x25519_keypair()[1]).signed(fake_sk)
    adverts = tuple(forged.encode() if M.AdvertiseKeys.decode(a).sender == 4 else a for a in bundles[1].adverts)
    clients[1].share_keys(replace(bundles[1], adverts=adverts))
    assert any("site 4" in str(e) and "invalid signature" in str(e) for e in clients[1].rejected)
    assert 4 not in clients[1]._peer_keys


def test_message_for_another_configuration_is_refused_by_a_site(five_sites):
    cfg, clients, server = _manual(five_sites)
    bundles = _advance(cfg, clients, server, "advertise_keys")
    with pytest.raises(ProtocolError, match="another round"):
        clients[1].share_keys(replace(bundles[1], config_digest=b"\0" * 32))
    with pytest.raises(ProtocolError, match="addressed to site 2"):
        clients[1].share_keys(bundles[2])


def test_reveal_guard_holds_even_if_the_phase_checks_are_bypassed(five_sites):
    """Last line of defence: rewind the site's state as a buggy transport might, then ask for
    site 5's b-share after its s-share went out; the guard inside unmask() must refuse."""
    cfg, clients, server = _manual(five_sites)
    out = {i: None for i in clients}
    for phase in ("advertise_keys", "share_keys", "masked_input", "consistency_check"):
        for i, c in clients.items():
            if i not in out or (phase == "masked_input" and i == 5):
                continue
            msg = {"advertise_keys": lambda: c.advertise_keys(), "share_keys": lambda: c.share_keys(out[i]),
                   "masked_input": lambda: c.masked_input(out[i]),
                   "consistency_check": lambda: c.consistency_check(out[i])}[phase]()
            server.receive(msg.encode())
        out = server.finish_phase()
    site = clients[1]
    site.unmask(out[1])
    everyone = (1, 2, 3, 4, 5)
    site.phase, site._survivors = "unmasking", everyone
    tags = tuple((i, _confirmation(clients, i, 1, everyone)) for i in everyone if i != 1)
    core = M.attestation_core(cfg.digest, 5, (1, 2, 3, 4))
    att = (5, (1, 2, 3, 4), R.confirm_tag(clients[5]._confirm_key(1), core, 1))
    with pytest.raises(ProtocolError, match="both the b-share and the s-share of site 5"):
        site.unmask(replace(out[1], survivors=everyone, tags=tags, attestations=out[1].attestations + (att,)))


def test_unreduced_masked_words_are_rejected(five_sites, plain_sum):
    inputs, keys = five_sites
    small = {i: v & np.uint32(0xFFFF) for i, v in inputs.items()}

    def unreduced(wire):  # a word >= 2^16 could smuggle extra magnitude past the ring
        msg = M.MaskedInput.decode(wire)
        v = msg.vector.copy()
        v[0] |= np.uint32(1 << 20)
        return [replace(msg, vector=v).signed(keys[2]).encode()]

    res = run_round(small, threshold=3, bits=16, identity_keys=keys, seed=4,
                    on_upload=_swap("masked_input", 2, unreduced))
    assert "not reduced mod 2^16" in res.rejected[0][2]
    assert np.array_equal(res.sum, plain_sum(small, [1, 3, 4, 5], 16))


def test_one_bad_revealed_share_is_outvoted_by_a_spare(five_sites, plain_sum):
    inputs, keys = five_sites

    def corrupt(wire):  # malicious site 2 reveals a wrong b-share of site 1 (validly signed)
        msg = M.UnmaskResponse.decode(wire)
        shares = tuple((p, k, (b"\x00" * 65 + b"\x01") if p == 1 else s) for p, k, s in msg.shares)
        return [replace(msg, shares=shares).signed(keys[2]).encode()]

    res = _run(five_sites, on_upload=_swap("unmasking", 2, corrupt))
    assert np.array_equal(res.sum, plain_sum(inputs, [1, 2, 3, 4, 5]))
    # with no spare share the same lie aborts the round instead of releasing a wrong sum
    with pytest.raises(ProtocolError, match="bad shares"):
        run_round(inputs, threshold=5, identity_keys=keys, seed=42, on_upload=_swap("unmasking", 2, corrupt))
