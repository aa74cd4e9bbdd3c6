"""The n = 1000 speed-ups of the SecAgg+ round (bulk decoding, memoised pair lists, the seeded
config found by identity, hashing a tagged core once, certify's cheaper order): each test pins
that a fast path reads, accepts and refuses exactly what the step-by-step code did."""

from __future__ import annotations

import hashlib
import hmac
import struct
from dataclasses import replace

import numpy as np
import pytest

from secure_fedrl.errors import BelowThresholdError, ProtocolError
from secure_fedrl.secagg import messages as M
from secure_fedrl.secagg import primitives as P
from secure_fedrl.secagg import protocol as R
from secure_fedrl.secagg.driver import run_round
from secure_fedrl.secagg.server import SecAggServer

from secagg_attacker import advertised_round, honest_phases, make_round

D = bytes(range(32))
SHARE = bytes(M.SHARE_BYTES)


def _share_list(entries, count=None):
    count = len(entries) if count is None else count
    return struct.pack(">I", count) + b"".join(struct.pack(">IB", p, k) + s for p, k, s in entries)


def _unmask_response(body: bytes) -> bytes:
    return M._header(M.T_UNMASK, D, 3) + body + bytes(64)


# --------------------------------------------------------------------------- _Reader


def test_reader_unpack_and_entries_read_exactly_and_refuse_short_input():
    r = M._Reader(b"\x00\x00\x00\x02" + b"\x00\x00\x00\x07" + b"ab" + b"\x00\x00\x00\x09" + b"cd" + b"z", "X")
    assert r.entries(struct.Struct(">I2s")) == [(7, b"ab"), (9, b"cd")]
    assert r.pos == 16 and r.take(1) == b"z"
    r.end()
    short = M._Reader(b"\x00\x00\x00\x02" + b"\x00\x00\x00\x07ab" + b"\x00\x00\x00\x09c", "X")
    assert short.entries(struct.Struct(">I2s")) is None
    assert short.pos == 4  # only the count was read
    with pytest.raises(ProtocolError, match="^X: truncated message$"):
        M._Reader(b"\x00\x00\x00\x01\x00\x00\x00", "X").fixed_entries(struct.Struct(">I"))
    assert M._Reader(b"\x00\x00\x00\x00", "X").fixed_entries(struct.Struct(">I")) == []
    r = M._Reader(b"\x01\x02\x03\x04\x05", "X")
    assert r.unpack(struct.Struct(">IB")) == (0x01020304, 5) and r.pos == 5
    r = M._Reader(b"\x01\x02\x03\x04", "X")
    with pytest.raises(ProtocolError, match="^X: truncated message$"):
        r.unpack(struct.Struct(">IB"))
    assert r.pos == 0
    r = M._Reader(b"\x01\x02\x03\x04\x05", "X")
    r.take(1)
    assert r.unpack(struct.Struct(">I")) == (0x02030405,)  # from the current position


def test_reader_ids_reads_from_the_current_position_and_moves_past_the_list():
    r = M._Reader(b"\xff" + struct.pack(">III", 2, 5, 9) + b"\x07", "X")
    r.take(1)
    assert r.ids() == (5, 9)
    assert r.u8() == 7
    r.end()
    with pytest.raises(ProtocolError, match="truncated id list"):
        M._Reader(struct.pack(">II", 2, 5), "X").ids()
    with pytest.raises(ProtocolError, match="not strictly increasing"):
        M._Reader(struct.pack(">III", 2, 9, 9), "X").ids()


# --------------------------------------------------------------------------- UnmaskResponse


def test_unmask_response_reads_every_share_and_refuses_a_bad_kind_in_a_complete_list():
    wire = _unmask_response(_share_list([(1, M.KIND_B, SHARE), (4, M.KIND_S, b"\x01" * M.SHARE_BYTES)]))
    msg = M.UnmaskResponse.decode(wire)
    assert msg.shares == ((1, M.KIND_B, SHARE), (4, M.KIND_S, b"\x01" * M.SHARE_BYTES)) and msg.sender == 3
    assert msg.signature == bytes(64)
    bad = _unmask_response(_share_list([(1, M.KIND_B, SHARE), (4, 2, SHARE)]))
    with pytest.raises(ProtocolError, match="^UnmaskResponse: unknown share kind 2$"):
        M.UnmaskResponse.decode(bad)
    with pytest.raises(ProtocolError, match="not strictly increasing"):
        M.UnmaskResponse.decode(_unmask_response(_share_list([(4, M.KIND_B, SHARE), (1, M.KIND_B, SHARE)])))


def test_a_truncated_share_list_fails_where_the_entry_by_entry_read_fails():
    # a bad kind before the cut: the kind (that loop reads it before running out of bytes)
    early = _share_list([(1, 9, SHARE), (4, M.KIND_B, SHARE)])[:-10]
    with pytest.raises(ProtocolError, match="^UnmaskResponse: unknown share kind 9$"):
        M.UnmaskResponse.decode(_unmask_response(early)[:-64])
    # the count promises more entries than there are: truncated, once the good ones are read
    with pytest.raises(ProtocolError, match="^UnmaskResponse: truncated message$"):
        M.UnmaskResponse.decode(_unmask_response(_share_list([(1, M.KIND_B, SHARE)], count=2)))
    # a bad kind after the cut is never reached
    late = _share_list([(1, M.KIND_B, SHARE)], count=3) + struct.pack(">IB", 4, 9)
    with pytest.raises(ProtocolError, match="^UnmaskResponse: unknown share kind 9$"):
        M.UnmaskResponse.decode(_unmask_response(late))
    cut = _share_list([(1, M.KIND_B, SHARE)], count=3) + struct.pack(">I", 4)
    with pytest.raises(ProtocolError, match="^UnmaskResponse: truncated message$"):
        M.UnmaskResponse.decode(_unmask_response(cut))
    # a truncated list still checks the order of what it read
    with pytest.raises(ProtocolError, match="^UnmaskResponse: truncated message$"):
        M.UnmaskResponse.decode(M._header(M.T_UNMASK, D, 3) + _share_list([(1, M.KIND_B, SHARE)]) + bytes(10))


# --------------------------------------------------------------------------- fixed-size lists


def _consistency(tags, count=None, tail=bytes(64)):
    count = len(tags) if count is None else count
    return (M.consistency_core(D, 2, (1, 2, 3)) + struct.pack(">I", count)
            + b"".join(struct.pack(">I", r) + t for r, t in tags) + tail)


def test_consistency_sig_tags_round_trip_and_truncation_is_refused():
    tags = ((1, b"\x11" * 32), (3, b"\x33" * 32))
    msg = M.ConsistencySig.decode(_consistency(tags))
    assert msg.tags == tags and msg.survivors == (1, 2, 3) and msg.signature == bytes(64)
    assert M.ConsistencySig.decode(_consistency(())).tags == ()
    for wire in (_consistency(tags, count=4), _consistency(tags, tail=b""), _consistency(tags)[:-65]):
        with pytest.raises(ProtocolError, match="^ConsistencySig: truncated message$"):
            M.ConsistencySig.decode(wire)
    with pytest.raises(ProtocolError, match="^ConsistencySig: 1 trailing bytes$"):
        M.ConsistencySig.decode(_consistency(tags) + b"\x00")


def test_unmask_request_tag_and_signature_lists_round_trip_and_truncate_as_one():
    req = M.UnmaskRequest(D, 5, (1, 2, 5), tags=((1, b"\x01" * 32), (2, b"\x02" * 32)),
                          signatures=((1, b"\x0a" * 64),), attestations=((2, (1, 5), b"\x0b" * 32),))
    wire = req.encode()
    assert M.UnmaskRequest.decode(wire) == req
    for cut in range(len(wire) - 1, M.HEADER.size, -7):
        with pytest.raises(ProtocolError, match="^UnmaskRequest: truncated"):
            M.UnmaskRequest.decode(wire[:cut])


def test_advert_reveal_masked_input_fields_are_read_in_order_and_refuse_short_or_long_input():
    adv = M.AdvertiseKeys(D, 7, b"\x01" * 32, b"\x02" * 32, b"\x03" * 64, b"\x04" * 32)
    wire = adv.encode()
    assert M.AdvertiseKeys.decode(wire) == adv
    with pytest.raises(ProtocolError, match="^AdvertiseKeys: truncated message$"):
        M.AdvertiseKeys.decode(wire[:-1])
    with pytest.raises(ProtocolError, match="^AdvertiseKeys: 2 trailing bytes$"):
        M.AdvertiseKeys.decode(wire + b"\x00\x00")
    with pytest.raises(ProtocolError, match="bad magic or version"):
        M.AdvertiseKeys.decode(b"XFSA" + wire[4:50])
    g = M.GraphReveal(D, 7, b"\x05" * 32, b"\x06" * 64, b"\x07" * 32)
    assert M.GraphReveal.decode(g.encode()) == g
    with pytest.raises(ProtocolError, match="^GraphReveal: truncated message$"):
        M.GraphReveal.decode(g.encode()[:-1])
    vec = np.arange(3, dtype=np.uint32)
    mi = M.MaskedInput(D, 2, (1, 3), (b"\x08" * 32, b"\x09" * 32), vec, b"\x0a" * 64)
    got = M.MaskedInput.decode(mi.encode())
    assert got.tags == mi.tags and got.paired == (1, 3) and np.array_equal(got.vector, vec)
    head = M.attestation_core(D, 2, (1, 3)) + b"\x08" * 32 + b"\x09" * 31
    with pytest.raises(ProtocolError, match="^MaskedInput: truncated message$"):
        M.MaskedInput.decode(head)


def test_share_keys_and_ciphertext_bundle_read_receiver_and_length_together():
    sk = M.ShareKeys(D, 2, b"\x01" * 32, ((1, b"ab"), (3, b"")), b"\x02" * 64)
    assert M.ShareKeys.decode(sk.encode()) == sk
    cb = M.CiphertextBundle(D, 2, ((1, b"xyz"), (3, b"q")))
    assert M.CiphertextBundle.decode(cb.encode()) == cb
    # cut inside the (receiver, length) header of the second entry, or inside its ciphertext
    for wire, cls in ((sk.encode(), M.ShareKeys), (cb.encode(), M.CiphertextBundle)):
        first = wire.index(b"ab" if cls is M.ShareKeys else b"xyz")
        for cut in (first + 3, first + 5, first + 9):
            with pytest.raises(ProtocolError, match=f"^{cls.NAME}: truncated message$"):
                cls.decode(wire[:cut])


# --------------------------------------------------------------------------- memoised pair lists


def test_pair_lists_are_decoded_once_per_bytes_and_refused_every_time():
    view = tuple((v, bytes([v]) * 32) for v in (2, 5, 9))
    a = M.GraphView.decode(M.GraphView(D, 2, view).encode())
    b = M.GraphView.decode(M.GraphView(D, 5, view).encode())  # another receiver, the same list
    assert a.commits == view and a.receiver == 2 and b.receiver == 5
    assert a.commits is b.commits  # one tuple for every site of the process
    assert M.KeysBundle.decode(M.KeysBundle(D, 2, (), view).encode()).reveals == view
    assert M.GraphView.decode(M.GraphView(D, 2, ()).encode()).commits == ()
    swapped = M._header(M.T_GRAPH_VIEW, D, 2) + struct.pack(">I", 2) + struct.pack(">I32s", 5, bytes(32)) \
        + struct.pack(">I32s", 2, bytes(32))
    for _ in range(2):  # errors are not memoised
        with pytest.raises(ProtocolError, match="^GraphView: id list not strictly increasing"):
            M.GraphView.decode(swapped)
    with pytest.raises(ProtocolError, match="^KeysBundle: id list not strictly increasing"):
        M.KeysBundle.decode(M._header(M.T_KEYS_BUNDLE, D, 2) + struct.pack(">I", 0) + swapped[M.HEADER.size:])
    with pytest.raises(ProtocolError, match="^GraphView: truncated list$"):
        M.GraphView.decode(M.GraphView(D, 2, view).encode()[:-1])


def test_seeded_finds_the_same_arguments_by_identity_and_never_caches_a_refusal():
    cfg, clients, inputs, keys, adverts, view = advertised_round(10, threshold=3, degree=4, seed=0)
    got = {u: clients[u].graph_reveal(M.GraphView(cfg.digest, u, view)).nonce for u in cfg.site_ids}
    reveals = tuple(sorted(got.items()))
    first = cfg.seeded(view, reveals)
    assert cfg.seeded(view, reveals) is first  # same objects: the last result
    assert cfg.seeded(tuple(view), tuple(reveals)) == first
    assert R._last_seeded[3] is first
    other = replace(cfg, round_id=cfg.round_id + 1)  # same view and reveals, another config
    with pytest.raises(ProtocolError, match="does not match its commitment"):
        other.seeded(view, reveals)
    assert cfg.seeded(view, reveals) is first
    bad = tuple((v, bytes(32) if v == 4 else r) for v, r in reveals)
    for _ in range(2):
        with pytest.raises(ProtocolError, match="graph nonce of site 4 does not match"):
            cfg.seeded(view, bad)
    sub = view[:-1]
    assert cfg.seeded(sub, reveals) != first and cfg.seeded(sub, reveals).graph_seed == \
        R.mixed_graph_seed(cfg.graph_seed, sub, dict(reveals))
    assert cfg.seeded(view, reveals) == first  # the last call was for another view: no stale result


# --------------------------------------------------------------------------- tags


def test_tags_of_a_hashed_core_and_the_one_shot_hmac_are_the_same_bytes():
    key, core = bytes(range(32)), b"core bytes" * 50
    for receiver in (0, 1, 2**32 - 1):
        want = hmac.new(key, hashlib.sha256(core).digest() + struct.pack(">I", receiver), hashlib.sha256).digest()
        assert R.confirm_tag(key, core, receiver) == want
        assert R.confirm_tag_of_hash(key, hashlib.sha256(core).digest(), receiver) == want
    assert P.hmac_sha256(b"k", b"data") == hmac.new(b"k", b"data", hashlib.sha256).digest()
    assert P.hmac_sha256(b"\x01" * 100, b"") == hmac.new(b"\x01" * 100, b"", hashlib.sha256).digest()


def test_consistency_core_from_encoded_ids_is_the_core():
    u3 = (1, 4, 9, 2**32 - 1)
    assert M.encode_ids(u3) == struct.pack(">5I", 4, *u3) == M.encode_ids(list(u3))
    assert M.consistency_core_ids(D, 4, M.encode_ids(u3)) == M.consistency_core(D, 4, u3)
    assert M.consistency_core(D, 4, u3) == M._header(M.T_CONSISTENCY, D, 4) + struct.pack(">5I", 4, *u3)


# --------------------------------------------------------------------------- whole rounds


@pytest.mark.parametrize("neighbors,drops", [(4, {}), (4, {3: "masked_input", 7: "consistency_check"}),
                                             (None, {2: "unmasking"})])
def test_rounds_still_sum_exactly(neighbors, drops, plain_sum):
    rng = np.random.default_rng(5)
    inputs = {i: rng.integers(0, 2**32, 40, dtype=np.uint64).astype(np.uint32) for i in range(12)}
    res = run_round(inputs, threshold=3 if neighbors else 7, neighbors=neighbors, dropouts=drops, seed=9)
    assert not res.site_errors and not res.rejected
    assert np.array_equal(res.sum, plain_sum(inputs, res.accepted_sites))
    before = ("advertise_keys", "graph_reveal", "share_keys", "masked_input")  # dropped before its masked input
    assert set(res.accepted_sites) == set(inputs) - {k for k, ph in drops.items() if ph in before}


# --------------------------------------------------------------------------- mutation follow-up


def test_list_order_errors_name_the_message():
    sk = M.ShareKeys(D, 2, b"\x01" * 32, ((3, b"a"), (1, b"b")), b"\x02" * 64)
    with pytest.raises(ProtocolError, match=r"^ShareKeys: id list not strictly increasing \(duplicate id 1\?\)$"):
        M.ShareKeys.decode(sk.encode())
    with pytest.raises(ProtocolError, match="^ConsistencySig: id list not strictly increasing"):
        M.ConsistencySig.decode(_consistency(((3, bytes(32)), (1, bytes(32)))))
    with pytest.raises(ProtocolError, match="^UnmaskResponse: id list not strictly increasing"):
        M.UnmaskResponse.decode(_unmask_response(_share_list([(4, M.KIND_B, SHARE), (4, M.KIND_S, SHARE)])))
    with pytest.raises(ProtocolError, match="^ConsistencyRequest: id list not strictly increasing"):
        M.ConsistencyRequest.decode(M._header(M.T_CONSISTENCY_REQ, D, 2) + struct.pack(">III", 2, 5, 5))


def test_reader_view_is_a_window_of_exactly_n_bytes():
    r = M._Reader(b"abcdef", "X")
    r.take(2)
    assert bytes(r.view(4)) == b"cdef" and r.pos == 6
    r.end()
    for start, n in ((2, 5), (0, 7), (6, 1)):
        r = M._Reader(b"abcdef", "X")
        r.pos = start
        with pytest.raises(ProtocolError, match="^X: truncated message$"):
            r.view(n)
    r = M._Reader(b"abcdef", "X")
    r.pos = 3
    with pytest.raises(ProtocolError, match="^X: truncated message$"):
        r.view(-1)
    assert bytes(r.view(0)) == b"" and bytes(r.view(3)) == b"def"


def test_seeded_fast_path_only_for_the_same_three_objects(monkeypatch):
    cfg, clients, inputs, keys, adverts, view = advertised_round(10, threshold=3, degree=4, seed=1)
    got = {u: clients[u].graph_reveal(M.GraphView(cfg.digest, u, view)).nonce for u in cfg.site_ids}
    reveals = tuple(sorted(got.items()))
    monkeypatch.setattr(R, "_last_seeded", None)  # as in a fresh process
    first = cfg.seeded(view, reveals)
    calls = []
    memo = R._seeded
    monkeypatch.setattr(R, "_seeded", lambda *a: calls.append(a) or memo(*a))
    assert cfg.seeded(view, reveals) is first and calls == []  # found by identity, the memo untouched
    with pytest.raises(ProtocolError, match="does not match its commitment"):
        cfg.seeded(reveals, reveals)  # the last call's reveals, now as the view: checked, not found
    assert len(calls) == 1
    assert cfg.seeded(list(view), reveals) == first and len(calls) == 2  # an equal copy: the memo


def test_unmask_ends_the_round_for_the_site():
    from test_secagg_pairing import _honest_until_unmask  # noqa: PLC0415
    cfg, clients, server, reqs = _honest_until_unmask(n=10, t=3, degree=4, seed=2)
    clients[4].unmask(reqs[4])
    assert clients[4].phase == "done"
    with pytest.raises(ProtocolError, match=r"UnmaskRequest received in phase 'done'"):
        clients[4].unmask(reqs[4])


def test_too_few_certified_paired_survivors_names_t_minus_1():
    from test_secagg_pairing import _honest_until_unmask  # noqa: PLC0415
    cfg, clients, server, reqs = _honest_until_unmask(n=20, t=3, degree=3, seed=1)
    keep = tuple((s, g) for s, g in reqs[1].signatures if s not in (3, 7, 14))
    with pytest.raises(BelowThresholdError, match=r"are confirmed by 3 of their holders, threshold - 1 is 2$"):
        clients[1].unmask(replace(reqs[1], signatures=keep))


def test_confirmations_the_tags_make_unneeded_are_never_checked():
    """certify counts the cheapest evidence first (checked, then tags, then signatures, by id) and
    stops at t, so a site whose neighbours' tags certify everything it needs never looks at the
    signatures of farther sites: bad ones there change nothing (pins the order and the stop)."""
    from test_secagg_pairing import _honest_until_unmask  # noqa: PLC0415
    cfg, clients, server, reqs = _honest_until_unmask(n=10, t=3, degree=4, seed=2)
    with_sigs = [r for r in reqs if reqs[r].signatures]
    assert with_sigs
    for r in with_sigs:
        req = reqs[r]
        bad = replace(req, signatures=tuple((w, bytes(64)) for w, _ in req.signatures))
        assert clients[r].unmask(bad).shares
    # bad signatures do abort a site that needs them (degree 3: some peers share < t holders with it)
    cfg, clients, server, reqs = _honest_until_unmask(n=20, t=3, degree=3, seed=1)
    bad = replace(reqs[1], signatures=tuple((w, bytes(64)) for w, _ in reqs[1].signatures))
    with pytest.raises(ProtocolError, match="signed a different survivor set"):
        clients[1].unmask(bad)


def test_a_tag_the_site_cannot_check_never_counts():
    """The server kept site 2's advert from site 1 (so they share no key) yet forwards 2's tag to
    1, and withholds site 3's confirmations: 2's tag is no evidence for 1, not on its first look
    and not on later ones (memoised as unconfirmed), so too few paired survivors of site 10 are
    certified (n = 10, k = 4, t = 4; found by search over this deterministic round)."""
    cfg, clients, inputs, keys = make_round(10, threshold=4, degree=4, seed=0)
    server = SecAggServer(config=cfg)
    out = honest_phases(server, clients, "graph_reveal")
    out[1] = replace(out[1], adverts=tuple(a for a in out[1].adverts if M.AdvertiseKeys.decode(a).sender != 2))
    out = honest_phases(server, clients, "consistency_check", out=out)
    req = out[1]
    assert 2 in dict(req.tags) and 2 not in clients[1]._enc_shared and 2 not in dict(req.signatures)
    req = replace(req, tags=tuple(x for x in req.tags if x[0] != 3),
                  signatures=tuple(x for x in req.signatures if x[0] != 3))
    with pytest.raises(BelowThresholdError, match="only 2 paired survivors of site 10 are confirmed by 4"):
        clients[1].unmask(req)
    assert clients[1].guard.revealed == {}


def _pairs_wire(count: int) -> bytes:
    return struct.pack(">I", count) + b"".join(struct.pack(">I", i) + bytes([i % 251]) * 32 for i in range(count))


def test_lists_a_round_can_hold_are_memoised_longer_ones_are_not():
    """A server can send views far longer than any round and have them refused: those must not stay
    in the decoder's memo (memory kept by refused messages), ordinary ones are shared."""
    M._pairs32.cache_clear()
    small = _pairs_wire(3)
    a = M._read_pairs32(M._Reader(small, "GraphView"))
    b = M._read_pairs32(M._Reader(small, "GraphView"))
    assert a is b and M._pairs32.cache_info().currsize == 1
    big = _pairs_wire(M._PAIRS32_MEMO_MAX + 1)
    x = M._read_pairs32(M._Reader(big, "GraphView"))
    assert len(x) == M._PAIRS32_MEMO_MAX + 1 and x[-1][0] == M._PAIRS32_MEMO_MAX
    assert M._pairs32.cache_info().currsize == 1  # the long list was decoded, not kept
    at_cap = _pairs_wire(M._PAIRS32_MEMO_MAX)
    M._read_pairs32(M._Reader(at_cap, "GraphView"))
    assert M._pairs32.cache_info().currsize == 2
    M._pairs32.cache_clear()


def test_a_long_unsorted_list_is_refused_without_the_memo_too():
    wire = bytearray(_pairs_wire(M._PAIRS32_MEMO_MAX + 1))
    wire[4:8], wire[40:44] = wire[40:44], wire[4:8]  # swap the first two ids
    with pytest.raises(ProtocolError, match="GraphView"):
        M._read_pairs32(M._Reader(bytes(wire), "GraphView"))
