"""Attack review of the signed DP attestation on the wire (commit b6e4667; SPEC 4, 5, 6, 7.1, 8).

Attacker: a malicious server controlling delivery (with up to max_colluding_sites colluders), and
hostile sites. What each test shows:

* replays (old round, another rotation seed, another site's field, a malleated signature) are
  refused by the server's `verify_dp` before summing (holds: A binds round_id and the rotation
  commitment, the key is the sender's, OpenSSL's Ed25519 rejects a non-canonical S);
* LIMITATION, not fixable by a signature: F_u attests the site's intent, never its vector. A
  hostile site that signs the federation's A and masks a noise-free vector is summed. Privacy
  against the server then rests only on the accounting with m = t - c honest noise shares
  (SPEC 7.1/8): such a site must be counted among `max_colluding_sites`;
* the forwarded F_u in UnmaskRequest cannot break the pairing defence: every holder rebuilds u's
  core with the field it is shown and checks u's HMAC tag, so any field other than the one u
  tagged (swapped, replayed, malleated, injected in a non-DDG round) makes that holder abort,
  and the only core any honest holder accepts is u's own;
* decoding is strict (length byte, trailing bytes); a 64-byte field outside a DDG round is
  accepted by the context-free decoder but refused by `SecAggServer(verify_dp=None)` (finding F2,
  fixed: the round without DDG drops that site);
* the site's attestation commits to the rotation seed its encoder actually used (one seed feeds
  both), and the honest server refuses a site that used another broadcast seed;
* finding F1 (fixed in secagg/conformance.py): the round vector's `dp_attestation` metadata
  (`round_seed`, `rotation_seed`) was never tied to the A it pins, so a vector whose A commits to
  another rotation than its round seed passed `check_vectors`.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import numpy as np
import pytest

from secure_fedrl.config import config_from_dict
from secure_fedrl.errors import PrivacyError, ProtocolError
from secure_fedrl.privacy import ddg as D
from secure_fedrl.secagg import messages as M
from secure_fedrl.secagg import primitives as P
from secure_fedrl.secagg import protocol as R
from secure_fedrl.secagg import run_round
from secure_fedrl.secagg.client import SecAggClient
from secure_fedrl.secagg.conformance import DEFAULT_DIR, check_vectors
from secure_fedrl.secagg.server import SecAggServer

ROUND, ROUND_SEED, N = 6, 0x0BAD_5EED, 5
ED25519_L = 2**252 + 27742317777372353535851937790883648493


def _ddg_config():
    return config_from_dict({
        "federation": {"name": "ddg-attack-test", "rounds": 1, "seed": 3},
        "local": {"algorithm": "ppo", "steps": 32, "ppo": {"num_steps": 16, "update_epochs": 1}},
        "strategy": {"name": "fedavg", "weighting": "uniform"},
        "evaluation": {"every": 100, "episodes": 1},
        "sampling": {"fraction": 1.0},
        "secure_aggregation": {"enabled": True, "threshold": 3},
        "privacy": {"unit": "client", "clip": 0.5, "noise_multiplier": 1.0, "target_epsilon": 1e4},
        "sites": [{"name": "s", "env": "CartPole-v1", "num_envs": 1, "seed": 10, "count": N}],
    })


@pytest.fixture(scope="module")
def fed():
    from secure_fedrl.runtime.aggregation import build_aggregator
    from secure_fedrl.runtime.privacy_plan import PrivacyPlan

    cfg = _ddg_config()
    pp = PrivacyPlan(cfg, [f"s-{i}" for i in range(N)], ledger_path=None)
    agg = build_aggregator(cfg, dim=40, privacy=pp)
    pp.bind(agg)
    plan = agg.plan(ROUND, planned=N, round_seed=ROUND_SEED)
    params = agg.ddg_params(plan.planned)
    att = D.attestation_for(params, rotation_seed=D.round_rotation_seed(ROUND, ROUND_SEED))
    keys = {i: P.ed25519_keypair(P.SeededRandom(b"ddg-attack/%d" % i))[0] for i in range(1, N + 1)}
    rng = np.random.default_rng(11)
    inputs = {i: rng.integers(0, 2**agg.sa.bits, 8, dtype=np.uint64).astype(np.uint32) for i in keys}
    return agg, plan, params, att, keys, inputs


def _sign(att, key, round_id=ROUND):
    return D.sign_attestation(att, round_id=round_id, key=key)


def _round(fed, fields, inputs=None):
    agg, plan, _, _, keys, ins = fed
    return run_round(ins if inputs is None else inputs, threshold=3, bits=agg.sa.bits, round_id=ROUND,
                     seed=b"ddg-attack", identity_keys=keys, dp_attestations=fields,
                     dp_verifier=lambda cfg: agg.dp_verifier(plan, cfg))


def _cfg(fed, dim=8):
    agg, _, _, _, keys, _ = fed
    return R.RoundConfig(round_id=ROUND, site_ids=tuple(keys), threshold=3, dim=dim, bits=agg.sa.bits,
                         identity_keys=tuple(P.ed25519_public_bytes(keys[i]) for i in keys))


def _malleate(sig: bytes) -> bytes:
    """The same Ed25519 signature with S replaced by S + L (valid under a lax verifier)."""
    s = int.from_bytes(sig[32:], "little") + ED25519_L
    return sig[:32] + s.to_bytes(32, "little")


# --------------------------------------------------------------- a hostile site's replayed field


@pytest.mark.parametrize("case", ["old-round", "old-round-same-seed", "other-round-seed", "other-site",
                                  "own-field-as-other-site", "malleated", "zero", "random"])
def test_a_replayed_or_borrowed_field_is_never_summed(fed, plain_sum, case):
    agg, _, params, att, keys, inputs = fed
    fields = {i: _sign(att, keys[i]) for i in keys}
    old = D.attestation_for(params, rotation_seed=D.round_rotation_seed(ROUND - 1, ROUND_SEED ^ 1))
    forged = {
        # site 3's valid signature from the previous round (its own A of round-1)
        "old-round": lambda: _sign(old, keys[3], round_id=ROUND - 1),
        # the previous round's A re-signed for this round id: the rotation commitment still differs
        "old-round-same-seed": lambda: _sign(D.attestation_for(
            params, rotation_seed=D.round_rotation_seed(ROUND - 1, ROUND_SEED)), keys[3]),
        # this round id, but the rotation of another broadcast seed
        "other-round-seed": lambda: _sign(D.attestation_for(
            params, rotation_seed=D.round_rotation_seed(ROUND, ROUND_SEED + 1)), keys[3]),
        "other-site": lambda: fields[1],  # site 1's valid field, copied by site 3
        "own-field-as-other-site": lambda: _sign(att, keys[1]),
        "malleated": lambda: _malleate(fields[3]),
        "zero": lambda: bytes(64),
        "random": lambda: P.SeededRandom(b"junk")(64),
    }[case]()
    fields[3] = forged
    res = _round(fed, fields)
    assert [(s, p) for s, p, _ in res.rejected] == [(3, "masked_input")], res.rejected
    assert "DP attestation refused" in res.rejected[0][2]
    assert res.accepted_sites == (1, 2, 4, 5)
    assert np.array_equal(res.sum, plain_sum(inputs, [1, 2, 4, 5], agg.sa.bits))


def test_the_malleated_signature_is_refused_by_the_verifier_itself(fed):
    """Ed25519 strictness (S < L) is what keeps one A from having two valid fields."""
    agg, plan, _, att, keys, _ = fed
    verify = agg.dp_verifier(plan, _cfg(fed))
    good = _sign(att, keys[2])
    verify(2, good)
    with pytest.raises(PrivacyError):
        verify(2, _malleate(good))


def test_limitation_a_valid_field_does_not_attest_the_vector(fed, monkeypatch):
    """LIMITATION (by design, SPEC 8 'input validity proofs' out of scope): a hostile site signs
    the federation's honest A and masks a vector with NO noise share; the server sums it.

    The signature attests what the site says it did, not what is in y_u: nothing in the round
    can tell. What bounds the damage is the accounting: every sum the server can unmask holds
    t - c honest inputs and m = t - c shares carry the target noise, so a site that skips its
    noise must be counted among max_colluding_sites (docs/privacy-model.md, 'Not covered')."""
    agg, plan, params, att, keys, _ = fed
    rs = D.round_rotation_seed(ROUND, ROUND_SEED)
    x = np.full(40, 0.01)
    honest_vec, honest_field = agg.site_encode_attested(plan, x, rng=np.random.default_rng(5), signing_key=keys[3])
    monkeypatch.setattr(D, "sample_discrete_gaussian", lambda var, n, rng: np.zeros(n, dtype=np.int64))
    quiet_vec = D.DDGEncoder(params, rotation_seed=rs).encode(x, rng=np.random.default_rng(5))
    monkeypatch.undo()
    # the noise-free vector decodes to x up to rounding; the honest one does not
    quiet = D.decode_sum(quiet_vec, num_survivors=1, params=params, rotation_seed=rs)
    noisy = D.decode_sum(honest_vec, num_survivors=1, params=params, rotation_seed=rs)
    assert np.abs(quiet - x).max() < 10 * params.gamma < np.abs(noisy - x).max()
    # the same, validly signed field with either vector: both summed
    width = agg.wire_dim(plan)
    rng = np.random.default_rng(3)
    inputs = {i: rng.integers(0, 2**agg.sa.bits, width, dtype=np.uint64).astype(np.uint32) for i in keys}
    inputs[3] = quiet_vec
    fields = {i: _sign(att, keys[i]) for i in keys}
    assert fields[3] == honest_field  # deterministic Ed25519: the very field an honest site sends
    res = _round(fed, fields, inputs)
    assert res.rejected == [] and 3 in res.accepted_sites


# --------------------------------------------------------------- the malicious server, phase 4


def _manual_round(fed, fields, cfg=None):
    """Phases 0-3 with DP fields; returns (clients, server, unmask requests decoded from the wire)."""
    agg, plan, _, _, keys, inputs = fed
    cfg = _cfg(fed) if cfg is None else cfg
    clients = {i: SecAggClient(config=cfg, site_id=i, identity_key=keys[i], vector=inputs[i],
                               randbytes=P.SeededRandom(b"atk/%d" % i), dp_attestation=fields.get(i, b""))
               for i in keys}
    server = SecAggServer(config=cfg, verify_dp=agg.dp_verifier(plan, cfg) if any(fields.values()) else None)
    out = None
    steps = [lambda c, m: c.advertise_keys(), SecAggClient.share_keys, SecAggClient.masked_input,
             SecAggClient.consistency_check]
    cores = {}
    for step in steps:
        for i, c in clients.items():
            msg = step(c, None if out is None else M.decode(out[i].encode()))
            if isinstance(msg, M.MaskedInput):
                cores[i] = msg.attestation_core()
            server.receive(msg.encode())
        out = server.finish_phase()
    return clients, server, {r: M.decode(out[r].encode()) for r in out}, cores


def _with_field(req, u, field):
    """The request with u's forwarded field replaced (b'' removes it), re-encoded and decoded."""
    dps = dict(req.dp_attestations)
    if field:
        dps[u] = field
    else:
        dps.pop(u, None)
    return M.decode(replace(req, dp_attestations=tuple(sorted(dps.items()))).encode())


@pytest.mark.parametrize("case", ["swap-two-sites", "u-signed-other-round", "malleated", "another-sites-field",
                                  "strip"])
def test_a_server_cannot_make_a_holder_accept_another_field_for_u(fed, case):
    agg, _, params, att, keys, _ = fed
    fields = {i: _sign(att, keys[i]) for i in keys}
    clients, _, reqs, _ = _manual_round(fed, fields)
    r, u, w = 2, 1, 4
    other = D.attestation_for(params, rotation_seed=D.round_rotation_seed(ROUND - 1, ROUND_SEED))
    req = reqs[r]
    if case == "swap-two-sites":
        bad = _with_field(_with_field(req, u, fields[w]), w, fields[u])
    else:
        bad = _with_field(req, u, {
            "u-signed-other-round": lambda: _sign(other, keys[u], round_id=ROUND - 1),  # u's own valid signature
            "malleated": lambda: _malleate(fields[u]),
            "another-sites-field": lambda: fields[w],
            "strip": lambda: b"",
        }[case]())
    with pytest.raises(ProtocolError, match="not authentic"):
        clients[r].unmask(bad)
    assert clients[r].guard.revealed == {}  # nothing revealed before the abort


def test_a_server_cannot_inject_a_field_into_a_round_without_ddg(fed):
    """u sent a = 0; a server that forwards 64 bytes for u changes u's core: the holder aborts."""
    _, _, _, att, keys, _ = fed
    clients, _, reqs, _ = _manual_round(fed, {})
    assert all(req.dp_attestations == () for req in reqs.values())
    with pytest.raises(ProtocolError, match="not authentic"):
        clients[3].unmask(_with_field(reqs[3], 1, _sign(att, keys[1])))


def test_split_views_of_us_core_only_the_one_u_tagged_is_ever_accepted(fed):
    """The server shows holder 2 u's honest field and holder 3 another: 2 answers, 3 aborts. For
    every holder that answers, the core it rebuilt equals u's own MaskedInput core."""
    _, _, _, att, keys, _ = fed
    fields = {i: _sign(att, keys[i]) for i in keys}
    clients, _, reqs, cores = _manual_round(fed, fields)
    u = 1
    for r in (2, 4, 5):
        req = reqs[r]
        (paired,) = [p for x, p, _ in req.attestations if x == u]
        rebuilt = M.attestation_core(req.config_digest, u, paired, dict(req.dp_attestations).get(u, b""))
        assert rebuilt == cores[u]
        clients[r].unmask(req)
    with pytest.raises(ProtocolError, match="not authentic"):
        clients[3].unmask(_with_field(reqs[3], u, _sign(att, keys[u], round_id=ROUND + 1)))


# --------------------------------------------------------------- strict decoding


def _masked_wire(fed, field):
    agg, _, _, _, keys, inputs = fed
    cfg = _cfg(fed)
    clients = {i: SecAggClient(config=cfg, site_id=i, identity_key=keys[i], vector=inputs[i],
                               randbytes=P.SeededRandom(b"dec/%d" % i), dp_attestation=field if i == 1 else b"")
               for i in keys}
    server = SecAggServer(config=cfg)
    for c in clients.values():
        server.receive(c.advertise_keys().encode())
    out = server.finish_phase()
    for i, c in clients.items():
        server.receive(c.share_keys(out[i]).encode())
    out = server.finish_phase()
    return server, clients[1].masked_input(out[1])


@pytest.mark.parametrize("how", ["trailing-byte", "length-0-field-left-in", "length-64-no-field",
                                 "length-255", "length-32"])
def test_masked_input_decoding_is_strict(fed, how):
    _, _, _, att, keys, _ = fed
    server, msg = _masked_wire(fed, _sign(att, keys[1]))
    wire = bytearray(msg.encode())
    off = M.HEADER.size + 4 + 4 * len(msg.paired)
    assert wire[off] == 64
    if how == "trailing-byte":
        wire += b"\x00"
    elif how == "length-0-field-left-in":
        wire[off] = 0
    elif how == "length-64-no-field":
        del wire[off + 1: off + 65]
    else:
        wire[off] = int(how.split("-")[1])
    with pytest.raises(ProtocolError):
        server.receive(bytes(wire))


def test_unmask_request_decoding_is_strict(fed):
    _, _, _, att, keys, _ = fed
    req = M.UnmaskRequest(bytes(32), 2, (1, 2, 3), attestations=((1, (2, 3), bytes(32)), (3, (1, 2), bytes(32))),
                          dp_attestations=((1, _sign(att, keys[1])),))
    wire = req.encode()
    assert M.UnmaskRequest.decode(wire) == req
    with pytest.raises(ProtocolError):
        M.UnmaskRequest.decode(wire + b"\x00")
    with pytest.raises(ProtocolError):
        M.UnmaskRequest.decode(wire[:-1])
    i = wire.index(req.dp_attestations[0][1]) - 1
    for n in (1, 63, 65, 255):
        bad = bytearray(wire)
        bad[i] = n
        with pytest.raises(ProtocolError):
            M.UnmaskRequest.decode(bytes(bad))
    with pytest.raises(ProtocolError):  # two fields for one site
        replace(req, dp_attestations=req.dp_attestations * 2).encode()


def test_finding_f2_a_field_outside_ddg_is_refused(fed):
    """F2 (fixed): SPEC 5 says F_u is empty outside DDG. Decoding is context-free, so a 64-byte
    field decodes, but a server without `verify_dp` refuses it instead of summing the vector and
    forwarding an unattested field as if it attested something."""
    server, msg = _masked_wire(fed, bytes(range(64)))
    assert M.MaskedInput.decode(msg.encode()).dp_attestation == bytes(range(64))
    with pytest.raises(ProtocolError, match="DP attestation field in a round without distributed DP"):
        server.receive(msg.encode())


# --------------------------------------------------------------- rotation binding


def test_the_attestation_commits_to_the_rotation_the_encoder_applies(fed, monkeypatch):
    """One seed feeds both the encoder and the signature: the signs DDGEncoder uses are those of
    the seed whose commitment the field carries, and no other."""
    agg, plan, _, _, keys, _ = fed
    used = []
    real = D.rotation_signs
    monkeypatch.setattr(D, "rotation_signs", lambda seed, d: used.append(seed) or real(seed, d))
    _, field = agg.site_encode_attested(plan, np.full(40, 0.01), rng=np.random.default_rng(0), signing_key=keys[1])
    assert used == [D.round_rotation_seed(ROUND, ROUND_SEED)]
    signed_for = D.attestation_for(agg.ddg_params(plan.planned), rotation_seed=used[0])
    D.verify_signed_attestation(signed_for, field, round_id=ROUND, public_key=keys[1].public_key())


def test_a_site_told_another_round_seed_is_refused_by_the_honest_server(fed, plain_sum):
    """A server (or network) that hands site 3 another round seed under the same D: site 3 rotates
    with it and truthfully attests it; the honest server, verifying against the seed it
    broadcast, does not sum it. (SPEC 7.1 'privacy never rests on' the rotation; see the report
    for why the seed is not bound into D at the site.)"""
    agg, plan, _, _, keys, _ = fed
    lied = agg.plan(ROUND, planned=N, round_seed=ROUND_SEED + 7)
    width = agg.wire_dim(plan)
    rng = np.random.default_rng(4)
    inputs, fields = {}, {}
    for i in keys:
        p = lied if i == 3 else plan
        inputs[i], fields[i] = agg.site_encode_attested(p, rng.normal(0, 0.01, 40), rng=rng, signing_key=keys[i])
    res = _round(fed, fields, inputs)
    assert [(s, p) for s, p, _ in res.rejected] == [(3, "masked_input")]
    assert np.array_equal(res.sum, plain_sum(inputs, [1, 2, 4, 5], agg.sa.bits))


# --------------------------------------------------------------- conformance vector (finding F1)


def _copy_vectors(tmp_path):
    for f in DEFAULT_DIR.glob("*.json"):
        shutil.copy(f, tmp_path / f.name)
    return json.loads((tmp_path / "round_ddg_attested.json").read_text())


def test_the_shipped_ddg_round_vector_is_internally_consistent():
    results = {r.name: r for r in check_vectors(DEFAULT_DIR) if r.name.startswith("round_ddg_attested/")}
    assert results and all(r.passed for r in results.values()), results


@pytest.mark.parametrize("edit", ["round_seed", "rotation_seed"])
def test_finding_f1_vector_metadata_must_match_the_attestation(tmp_path, edit):
    """F1 (fixed): `dp_attestation.round_seed` / `rotation_seed` were written but never checked
    against the A the vector pins, so a vector whose A commits to another rotation than its round
    seed (an implementation deriving the rotation wrongly) passed every check."""
    v = _copy_vectors(tmp_path)
    if edit == "round_seed":
        v["dp_attestation"]["round_seed"] += 1
    else:
        v["dp_attestation"]["rotation_seed"] = "00" * 32
    (tmp_path / "round_ddg_attested.json").write_text(json.dumps(v))
    results = {r.name: r for r in check_vectors(tmp_path)}
    assert not results["round_ddg_attested/dp-attestations"].passed


def test_finding_f1_the_federations_a_must_be_the_spec_encoding(tmp_path):
    """Holds (before and after F1): an A naming another round id makes every site's field a
    mismatch, so the refused set no longer matches; F1's check now also names the round id."""
    v = _copy_vectors(tmp_path)
    a = bytearray(bytes.fromhex(v["dp_attestation"]["federation"]))
    dom = len(b"secure-fedrl/ddg/attestation/v1")
    a[dom + 7] ^= 1  # u64(round_id) now names another round
    v["dp_attestation"]["federation"] = a.hex()
    (tmp_path / "round_ddg_attested.json").write_text(json.dumps(v))
    results = {r.name: r for r in check_vectors(tmp_path)}
    assert not results["round_ddg_attested/dp-attestations"].passed
