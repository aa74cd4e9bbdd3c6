"""One test per validation check named in issue 7 points 2 and 7: each fails if its check is
deleted (verified with mutmut, see the SecAgg report)."""

from dataclasses import replace

import numpy as np
import pytest

from secure_fedrl.errors import BelowThresholdError, ProtocolError
from secure_fedrl.secagg import messages as M
from secure_fedrl.secagg import primitives as P
from secure_fedrl.secagg import protocol as R
from secure_fedrl.secagg import run_round, shamir
from secure_fedrl.secagg.client import SecAggClient
from secure_fedrl.secagg.server import SecAggServer

from secagg_attacker import honest_phases

#: A point of order 8 on Curve25519 (Wycheproof x25519 "LowOrderPublic"): X25519 with it is 0.
LOW_ORDER = bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800")


def _swap(phase, site, fn):
    def hook(ph, sid, wire):
        return fn(wire) if (ph == phase and sid == site) else [wire]
    return hook


def _manual(five_sites, **kw):
    inputs, keys = five_sites
    cfg = R.RoundConfig(round_id=3, site_ids=tuple(inputs), threshold=3, dim=6,
                        identity_keys=tuple(P.ed25519_public_bytes(keys[i]) for i in inputs), **kw)
    clients = {i: SecAggClient(config=cfg, site_id=i, identity_key=keys[i], vector=inputs[i]) for i in inputs}
    return cfg, clients, SecAggServer(config=cfg)


def _phase(cfg, clients, server, out, step):
    for i, c in clients.items():
        if i in out:
            server.receive(step(c, out[i]).encode())
    return server.finish_phase()


# --------------------------------------------------------------------------- invalid public keys


@pytest.mark.parametrize("bad", [bytes(32), LOW_ORDER], ids=["all-zero", "low-order"])
@pytest.mark.parametrize("which", ["c_pk", "s_pk"])
def test_server_refuses_a_validly_signed_low_order_key_and_the_round_completes(five_sites, plain_sum, bad, which):
    inputs, keys = five_sites

    def evil(wire):  # site 4 signs an advert with a low-order key
        return [replace(M.AdvertiseKeys.decode(wire), **{which: bad}).signed(keys[4]).encode()]

    res = run_round(inputs, threshold=3, identity_keys=keys, seed=9, on_upload=_swap("advertise_keys", 4, evil))
    assert [(s, p) for s, p, _ in res.rejected] == [(4, "advertise_keys")]
    assert "low-order point" in res.rejected[0][2]
    assert np.array_equal(res.sum, plain_sum(inputs, [1, 2, 3, 5]))


@pytest.mark.parametrize("which", ["c_pk", "s_pk"])
def test_site_skips_a_peer_with_a_low_order_key_and_the_round_completes(five_sites, plain_sum, which):
    """A server that does not check (or a colluding one) delivers site 4's low-order advert:
    every neighbour drops site 4 before sending any share, and the round completes without it."""
    inputs, keys = five_sites
    evil = {}

    def swap_in(ph, sid, wire):
        if ph == "advertise_keys" and sid != 4:
            b = M.KeysBundle.decode(wire)
            ads = []
            for a in b.adverts:
                adv = M.AdvertiseKeys.decode(a)
                ads.append(replace(adv, **{which: LOW_ORDER}).signed(keys[4]).encode() if adv.sender == 4 else a)
            evil[sid] = True
            return replace(b, adverts=tuple(ads)).encode()
        return wire

    rejected = []
    orig = SecAggClient._reject

    def spy(self, err):
        rejected.append((self.id, str(err)))
        orig(self, err)

    import unittest.mock as um
    with um.patch.object(SecAggClient, "_reject", spy):
        res = run_round(inputs, threshold=3, identity_keys=keys, seed=9, on_download=swap_in)
    assert {s for s, why in rejected if "advertised keys of site 4" in why} == {1, 2, 3, 5}
    assert 4 not in res.accepted_sites
    assert np.array_equal(res.sum, plain_sum(inputs, res.accepted_sites))


def test_server_rejects_replayed_public_keys(five_sites):
    inputs, keys = five_sites
    first = {}

    def replay(ph, sid, wire):
        if ph != "advertise_keys":
            return [wire]
        adv = M.AdvertiseKeys.decode(wire)
        if sid == 1:
            first["c"] = adv.c_pk
        if sid == 3:  # site 3 advertises site 1's encryption key
            return [replace(adv, c_pk=first["c"]).signed(keys[3]).encode()]
        return [wire]

    res = run_round(inputs, threshold=3, identity_keys=keys, seed=9, on_upload=replay)
    assert [(s, p) for s, p, _ in res.rejected] == [(3, "advertise_keys")]
    assert "already used by another site" in res.rejected[0][2]


def test_server_rejects_equal_encryption_and_masking_keys(five_sites):
    inputs, keys = five_sites

    def same(wire):
        adv = M.AdvertiseKeys.decode(wire)
        return [replace(adv, s_pk=adv.c_pk).signed(keys[2]).encode()]

    res = run_round(inputs, threshold=3, identity_keys=keys, seed=9, on_upload=_swap("advertise_keys", 2, same))
    assert "keys are equal" in res.rejected[0][2]


# --------------------------------------------------------------------------- site checks on adverts


def test_site_refuses_its_own_advert_altered(five_sites):
    cfg, clients, server = _manual(five_sites)
    out = _phase(cfg, clients, server, {i: None for i in clients}, lambda c, m: c.advertise_keys())
    ads = []
    for a in out[1].adverts:
        if M.AdvertiseKeys.decode(a).sender == 1:
            b = bytearray(a)
            b[M.HEADER.size] ^= 1  # first byte of its encryption key: not signature-checked
            a = bytes(b)
        ads.append(a)
    with pytest.raises(ProtocolError, match="altered this site's own advertised keys"):
        clients[1].share_keys(replace(out[1], adverts=tuple(ads)))


def test_site_refuses_a_bundle_without_its_own_advert(five_sites):
    cfg, clients, server = _manual(five_sites)
    out = _phase(cfg, clients, server, {i: None for i in clients}, lambda c, m: c.advertise_keys())
    ads = tuple(a for a in out[1].adverts if M.AdvertiseKeys.decode(a).sender != 1)
    with pytest.raises(ProtocolError, match="own advertised keys missing"):
        clients[1].share_keys(replace(out[1], adverts=ads))


def test_site_refuses_two_peers_advertising_the_same_key(five_sites):
    cfg, clients, server = _manual(five_sites)
    inputs, keys = five_sites
    out = _phase(cfg, clients, server, {i: None for i in clients}, lambda c, m: c.advertise_keys())
    a2 = M.AdvertiseKeys.decode(out[1].adverts[1])
    assert a2.sender == 2
    ads = list(out[1].adverts)
    ads[2] = replace(M.AdvertiseKeys.decode(ads[2]), c_pk=a2.c_pk, s_pk=a2.s_pk).signed(keys[3]).encode()
    with pytest.raises(ProtocolError, match="two advertised public keys are equal"):
        clients[1].share_keys(replace(out[1], adverts=tuple(ads)))


def test_site_rejects_an_advert_for_another_configuration(five_sites):
    cfg, clients, server = _manual(five_sites)
    inputs, keys = five_sites
    out = _phase(cfg, clients, server, {i: None for i in clients}, lambda c, m: c.advertise_keys())
    ads = list(out[1].adverts)
    ads[3] = replace(M.AdvertiseKeys.decode(ads[3]), config_digest=b"\x07" * 32).signed(keys[4]).encode()
    clients[1].share_keys(replace(out[1], adverts=tuple(ads)))
    assert any("site 4 is for another round" in str(e) for e in clients[1].rejected)
    assert 4 not in clients[1]._peer_keys


def test_site_rejects_an_advert_from_a_non_neighbour_and_duplicates():
    ids = tuple(range(1, 9))
    keys = {i: P.ed25519_keypair()[0] for i in ids}
    cfg = R.RoundConfig(round_id=1, site_ids=ids, threshold=2, dim=2, degree=2,
                        identity_keys=tuple(P.ed25519_public_bytes(keys[i]) for i in ids))
    clients = {i: SecAggClient(config=cfg, site_id=i, identity_key=keys[i], vector=np.zeros(2, np.uint32))
               for i in ids}
    server = SecAggServer(config=cfg)
    out = honest_phases(server, clients, "graph_reveal")
    far = next(i for i in ids if i not in server.cfg.holders(1))
    own = out[1].adverts
    extra = clients[far]._advert.encode()
    dup = own[-1]
    ads = tuple(sorted(own + (extra, dup)))
    clients[1].share_keys(replace(out[1], adverts=ads))
    msgs = [str(e) for e in clients[1].rejected]
    assert any(f"site {far}, not a neighbour of 1" in m for m in msgs)
    assert any("duplicate AdvertiseKeys" in m for m in msgs)
    assert far not in clients[1]._peer_keys


# --------------------------------------------------------------------------- share ciphertexts


def test_share_with_a_wrong_plaintext_header_is_discarded(five_sites):
    """Site 2 (malicious) encrypts, under the right key, a share labelled for another receiver."""
    inputs, keys = five_sites
    cfg, clients, server = _manual(five_sites)
    out = _phase(cfg, clients, server, {i: None for i in clients}, lambda c, m: c.advertise_keys())
    out = _phase(cfg, clients, server, out, lambda c, m: c.share_keys(m))
    c2 = clients[2]
    pt = R.share_plaintext(2, 3, *c2._shares[2])  # a (2 -> 3) plaintext ...
    key = R.enc_key(cfg, c2._enc_shared[1], 2, 1)
    forged = P.aead_encrypt(key, R.enc_nonce(2, 1), pt, R.enc_ad(cfg, 2, 1))  # ... sent to site 1
    cts = tuple((s, forged if s == 2 else ct) for s, ct in out[1].ciphertexts)
    clients[1].masked_input(replace(out[1], ciphertexts=cts))
    assert any("site 2" in str(e) and "wrong header" in str(e) for e in clients[1].rejected)
    assert 2 not in clients[1]._shares and 2 not in clients[1]._pairs  # discarded, and not paired with


def test_share_from_a_site_it_did_not_send_to_is_ignored(five_sites):
    cfg, clients, server = _manual(five_sites)
    out = _phase(cfg, clients, server, {i: None for i in clients}, lambda c, m: c.advertise_keys())
    out = _phase(cfg, clients, server, out, lambda c, m: c.share_keys(m))
    cts = out[1].ciphertexts + ((9, b"x" * 156),) + (out[1].ciphertexts[0],)
    clients[1].masked_input(replace(out[1], ciphertexts=cts))
    assert sum("unexpected or duplicate ciphertext" in str(e) for e in clients[1].rejected) == 2


# --------------------------------------------------------------------------- unmasking, server side


def test_server_rejects_a_share_of_the_wrong_kind(five_sites, plain_sum):
    inputs, keys = five_sites

    def wrong_kind(wire):  # site 2 reveals an s-share (kind 1) of survivor 1
        msg = M.UnmaskResponse.decode(wire)
        shares = tuple((p, M.KIND_S if p == 1 else k, s) for p, k, s in msg.shares)
        return [replace(msg, shares=shares).signed(keys[2]).encode()]

    res = run_round(inputs, threshold=3, identity_keys=keys, seed=42, on_upload=_swap("unmasking", 2, wrong_kind))
    assert any(s == 2 and "wrong share kind for site 1" in why for s, _, why in res.rejected)
    assert np.array_equal(res.sum, plain_sum(inputs, [1, 2, 3, 4, 5]))


def test_server_rejects_a_share_of_a_site_the_sender_holds_none_of(five_sites):
    inputs, keys = five_sites
    xs = {i: np.full(2, i, np.uint32) for i in range(1, 9)}
    ks = {i: P.ed25519_keypair()[0] for i in xs}
    picked = []

    def extra(wire):
        msg = M.UnmaskResponse.decode(wire)
        picked.append(far := _not_listed(p for p, _, _ in msg.shares))  # not a holder of site 1's
        shares = tuple(sorted(msg.shares + ((far, M.KIND_B, bytes(66)),)))
        return [replace(msg, shares=shares).signed(ks[1]).encode()]

    res = run_round(xs, threshold=2, neighbors=2, identity_keys=ks, seed=1, graph_seed=bytes(32),
                    on_upload=_swap("unmasking", 1, extra))
    assert any(s == 1 and f"holds no share of site {picked[0]}" in why for s, _, why in res.rejected)


def _shift_share(share: bytes, x: int, xs: tuple, delta: int) -> bytes:
    """A share at x that moves the secret reconstructed from holders `xs` by +delta."""
    lam = shamir.lagrange_at_zero(tuple(xs))[list(xs).index(x)]
    y = (shamir.share_from_bytes(share) + delta * pow(lam, -1, shamir.PRIME)) % shamir.PRIME
    return shamir.share_to_bytes(y)


def test_self_mask_commitment_catches_a_share_that_still_looks_like_a_secret(five_sites, plain_sum):
    """Site 2 reveals a b-share of site 1 that shifts b_1 by one: the result is still a 32-byte
    value, only the commitment shows it is wrong. With no spare share the round aborts; with
    spares the server finds the t shares that match the commitment."""
    inputs, keys = five_sites

    def corrupt(wire):
        msg = M.UnmaskResponse.decode(wire)
        shares = tuple((p, k, _shift_share(s, 2, (1, 2, 3, 4, 5) if t5 else (1, 2, 3), 1) if p == 1 else s)
                       for p, k, s in msg.shares)
        return [replace(msg, shares=shares).signed(keys[2]).encode()]

    t5 = True
    with pytest.raises(ProtocolError, match="bad shares"):
        run_round(inputs, threshold=5, identity_keys=keys, seed=42, on_upload=_swap("unmasking", 2, corrupt))
    t5 = False
    res = run_round(inputs, threshold=3, identity_keys=keys, seed=42, on_upload=_swap("unmasking", 2, corrupt))
    assert np.array_equal(res.sum, plain_sum(inputs, [1, 2, 3, 4, 5]))


def test_masking_key_check_catches_a_bad_s_share(five_sites, plain_sum):
    inputs, keys = five_sites

    def corrupt(wire):  # site 2 lies about dropped site 5's masking key
        msg = M.UnmaskResponse.decode(wire)
        shares = tuple((p, k, _shift_share(s, 2, (1, 2, 3, 4), 1) if p == 5 else s) for p, k, s in msg.shares)
        return [replace(msg, shares=shares).signed(keys[2]).encode()]

    with pytest.raises(ProtocolError, match="bad shares"):
        run_round(inputs, threshold=4, identity_keys=keys, seed=42, dropouts={5: "masked_input"},
                  on_upload=_swap("unmasking", 2, corrupt))


def test_site_input_must_be_a_uint32_vector_of_the_round_length(five_sites):
    from secure_fedrl.errors import UpdateRejected

    cfg, clients, server = _manual(five_sites)
    inputs, keys = five_sites
    for bad in (np.zeros(5, np.uint32), np.zeros(6, np.int64)):
        with pytest.raises(UpdateRejected, match="uint32 vector of length 6"):
            SecAggClient(config=cfg, site_id=1, identity_key=keys[1], vector=bad)


def test_site_ids_up_to_2_to_the_32_minus_1_work(plain_sum):
    """Ids are u32 everywhere (share headers, nonces, Shamir x): the largest ones must round-trip."""
    ids = (2**31 - 1, 2**31, 2**32 - 2, 2**32 - 1)
    keys = {i: P.ed25519_keypair()[0] for i in ids}
    rng = np.random.default_rng(0)
    inputs = {i: rng.integers(0, 2**32, 3, dtype=np.uint64).astype(np.uint32) for i in ids}
    cfg = R.RoundConfig(round_id=1, site_ids=ids, threshold=3, dim=3,
                        identity_keys=tuple(P.ed25519_public_bytes(keys[i]) for i in ids))
    clients = {i: SecAggClient(config=cfg, site_id=i, identity_key=keys[i], vector=inputs[i]) for i in ids}
    server = SecAggServer(config=cfg)
    out = {i: None for i in ids}
    for step in (lambda c, m: c.advertise_keys(), lambda c, m: c.share_keys(m), lambda c, m: c.masked_input(m),
                 lambda c, m: c.consistency_check(m), lambda c, m: c.unmask(m)):
        for i, c in clients.items():
            server.receive(step(c, out[i]).encode())
        out = server.finish_phase()
    assert all(not c.rejected for c in clients.values())
    assert np.array_equal(server.outcome.sum, plain_sum(inputs, ids))


def _sparse(n=8):
    ids = tuple(range(1, n + 1))
    keys = {i: P.ed25519_keypair()[0] for i in ids}
    xs = {i: np.full(2, i, np.uint32) for i in ids}
    return xs, keys


def _not_listed(receivers, n=8):
    """A site other than 1 that site 1 addressed nothing to: with every site live, a non-neighbour
    of the (reveal-seeded) graph."""
    return min(set(range(2, n + 1)) - set(receivers))


def test_server_rejects_share_keys_for_a_non_neighbour_or_too_few_holders():
    xs, keys = _sparse()

    def extra(wire):  # site 1 (malicious) also sends a "share" to a site that is not its neighbour
        msg = M.ShareKeys.decode(wire)
        far = _not_listed(r for r, _ in msg.ciphertexts)
        cts = tuple(sorted(msg.ciphertexts + ((far, b"\0" * 156),)))
        return [replace(msg, ciphertexts=cts).signed(keys[1]).encode()]

    res = run_round(xs, threshold=2, neighbors=2, identity_keys=keys, seed=1, graph_seed=bytes(32),
                    on_upload=_swap("share_keys", 1, extra))
    assert any(s == 1 and "not a live neighbour" in why for s, _, why in res.rejected)

    # site 2 shares with t-2 = 1 holder only (t = 3, holder sets of 3)
    ids = tuple(range(1, 9))
    cfg = R.RoundConfig(round_id=1, site_ids=ids, threshold=3, dim=2, degree=2,
                        identity_keys=tuple(P.ed25519_public_bytes(keys[i]) for i in ids))
    clients = {i: SecAggClient(config=cfg, site_id=i, identity_key=keys[i], vector=xs[i]) for i in ids}
    server = SecAggServer(config=cfg)
    out = honest_phases(server, clients, "graph_reveal")
    msg = clients[2].share_keys(out[2])
    short = replace(msg, ciphertexts=msg.ciphertexts[:1]).signed(keys[2])
    with pytest.raises(ProtocolError, match="fewer than threshold share holders"):
        server.receive(short.encode())
    server.receive(replace(msg, ciphertexts=msg.ciphertexts[:2]).signed(keys[2]).encode())  # t-1: accepted


def test_server_rejects_confirmation_tags_for_non_neighbours():
    xs, keys = _sparse()

    def extra(wire):
        msg = M.ConsistencySig.decode(wire)
        far = _not_listed(r for r, _ in msg.tags)
        tags = tuple(sorted(msg.tags + ((far, b"\0" * 32),)))
        return [replace(msg, tags=tags).signed(keys[1]).encode()]

    res = run_round(xs, threshold=2, neighbors=2, identity_keys=keys, seed=1, graph_seed=bytes(32),
                    on_upload=_swap("consistency_check", 1, extra))
    assert any(s == 1 and "not a live neighbour" in why for s, _, why in res.rejected)


def test_server_rejects_a_share_of_a_site_that_never_shared(five_sites):
    inputs, keys = five_sites

    def extra(wire):  # site 1 reveals a "share" of site 5, which dropped before sharing keys
        msg = M.UnmaskResponse.decode(wire)
        return [replace(msg, shares=tuple(sorted(msg.shares + ((5, M.KIND_S, bytes(66)),)))).signed(keys[1]).encode()]

    res = run_round(inputs, threshold=3, identity_keys=keys, seed=2, dropouts={5: "share_keys"},
                    on_upload=_swap("unmasking", 1, extra))
    assert any(s == 1 and "site 5" in why for s, _, why in res.rejected)


def test_server_zeroes_its_running_sum_after_an_abort_and_after_release(five_sites):
    inputs, keys = five_sites
    servers = []
    orig = SecAggServer.__init__

    def keep(self, **kw):
        orig(self, **kw)
        servers.append(self)

    import unittest.mock as um

    def lie(wire):
        msg = M.UnmaskResponse.decode(wire)
        shares = tuple((p, k, (b"\x00" * 65 + b"\x01") if p == 1 else s) for p, k, s in msg.shares)
        return [replace(msg, shares=shares).signed(keys[2]).encode()]

    with um.patch.object(SecAggServer, "__init__", keep):
        run_round(inputs, threshold=3, identity_keys=keys, seed=2)
        with pytest.raises(ProtocolError):
            run_round(inputs, threshold=5, identity_keys=keys, seed=2, on_upload=_swap("unmasking", 2, lie))
    assert len(servers) == 2 and all(not s._sum.any() for s in servers)
    assert servers[1].phase == "aborted" and servers[0].phase == "done"


def test_a_site_with_fewer_than_t_live_holders_says_how_many(five_sites):
    """The server forwards site 1 only its own advert and one peer's (t = 3): it refuses to share."""
    cfg, clients, server = _manual(five_sites)
    out = _phase(cfg, clients, server, {i: None for i in clients}, lambda c, m: c.advertise_keys())
    b = out[1]
    with pytest.raises(BelowThresholdError, match=r"^site 1: 2 live neighbours incl. itself, threshold is 3$"):
        clients[1].share_keys(replace(b, adverts=b.adverts[:2]))
