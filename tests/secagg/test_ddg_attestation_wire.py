"""The signed DP attestation on the wire (SPEC 7.1, section 5; issue 7 deliverable 9).

A site's MaskedInput carries its Ed25519 signature over the DDG attestation A; the server
recomputes A from the federation's own parameters and refuses (never sums) a site whose field is
missing or does not verify. Defence check: with the `self._verify_dp(...)` call in
`SecAggServer._check_masked_input` deleted, every case of
`test_a_site_attesting_other_dp_parameters_is_not_summed` fails (the site is summed), as do
`test_the_round_vector_refuses_the_cheating_sites` and
`test_simulate_does_not_sum_a_site_that_attests_less_noise`.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

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

ROUND, ROUND_SEED, N = 4, 0x1234_5678, 5


def _config(privacy: dict | None, count: int = N):
    raw = {
        "federation": {"name": "ddg-wire-test", "rounds": 1, "seed": 3},
        "local": {"algorithm": "ppo", "steps": 32, "ppo": {"num_steps": 16, "update_epochs": 1}},
        "strategy": {"name": "fedavg", "weighting": "uniform"},
        "evaluation": {"every": 100, "episodes": 1},
        "sampling": {"fraction": 1.0},
        "secure_aggregation": {"enabled": True, "threshold": 3},
        "sites": [{"name": "s", "env": "CartPole-v1", "num_envs": 1, "seed": 10, "count": count}],
    }
    if privacy is not None:
        raw["privacy"] = privacy
    return config_from_dict(raw)


def _ddg_config(**privacy):
    return _config({"unit": "client", "clip": 0.5, "noise_multiplier": 1.0, "target_epsilon": 1e4, **privacy})


@pytest.fixture(scope="module")
def federation():
    """A client-level DDG aggregator (as the server builds it), the round's plan and honest A."""
    from secure_fedrl.runtime.aggregation import build_aggregator
    from secure_fedrl.runtime.privacy_plan import PrivacyPlan

    cfg = _ddg_config()
    plan_p = PrivacyPlan(cfg, [f"s-{i}" for i in range(N)], ledger_path=None)
    agg = build_aggregator(cfg, dim=40, privacy=plan_p)
    plan_p.bind(agg)
    plan = agg.plan(ROUND, planned=N, round_seed=ROUND_SEED)
    params = agg.ddg_params(plan.planned)
    att = D.attestation_for(params, rotation_seed=D.round_rotation_seed(ROUND, ROUND_SEED))
    keys = {i: P.ed25519_keypair(P.SeededRandom(b"ddg-wire/%d" % i))[0] for i in range(1, N + 1)}
    rng = np.random.default_rng(2)
    inputs = {i: rng.integers(0, 2**agg.sa.bits, 8, dtype=np.uint64).astype(np.uint32) for i in keys}
    return agg, plan, params, att, keys, inputs


def _honest(att, key, round_id=ROUND):
    return D.sign_attestation(att, round_id=round_id, key=key)


def _cheat(case, att, params, keys, site):
    if case == "smaller-sigma":
        return _honest(replace(att, local_stddev=att.local_stddev * 0.5), keys[site])
    if case == "larger-clip":
        return _honest(replace(att, clip_norm=att.clip_norm * 2), keys[site])
    if case == "wrong-round":
        return _honest(att, keys[site], round_id=ROUND + 1)
    if case == "other-rotation":
        other = D.attestation_for(params, rotation_seed=D.round_rotation_seed(ROUND, ROUND_SEED + 1))
        return _honest(other, keys[site])
    if case == "other-sites-key":
        return _honest(att, keys[1])  # site 1's valid signature, sent as site 3's
    if case == "missing":
        return b""
    raise AssertionError(case)


def _round(federation, fields):
    agg, plan, _, _, keys, inputs = federation
    return run_round(inputs, threshold=3, bits=agg.sa.bits, round_id=ROUND, seed=b"ddg-wire", identity_keys=keys,
                     dp_attestations=fields, dp_verifier=lambda cfg: agg.dp_verifier(plan, cfg))


def test_honest_sites_are_all_summed(federation, plain_sum):
    agg, _, _, att, keys, inputs = federation
    res = _round(federation, {i: _honest(att, keys[i]) for i in keys})
    assert res.rejected == [] and res.accepted_sites == tuple(keys)
    assert np.array_equal(res.sum, plain_sum(inputs, list(keys), agg.sa.bits))


@pytest.mark.parametrize("case", ["smaller-sigma", "larger-clip", "wrong-round", "other-rotation",
                                  "other-sites-key", "missing"])
def test_a_site_attesting_other_dp_parameters_is_not_summed(federation, plain_sum, case):
    agg, _, params, att, keys, inputs = federation
    fields = {i: _honest(att, keys[i]) for i in keys}
    fields[3] = _cheat(case, att, params, keys, 3)
    res = _round(federation, fields)
    assert [(s, p) for s, p, _ in res.rejected] == [(3, "masked_input")]
    assert ("no DP attestation" if case == "missing" else "DP attestation refused") in res.rejected[0][2]
    assert res.accepted_sites == (1, 2, 4, 5)  # the round completes with the others
    assert np.array_equal(res.sum, plain_sum(inputs, [1, 2, 4, 5], agg.sa.bits))


def test_too_many_cheaters_abort_the_round_nothing_released(federation):
    from secure_fedrl.errors import BelowThresholdError

    _, _, params, att, keys, _ = federation
    fields = {i: _honest(att, keys[i]) for i in keys}
    for i in (2, 3, 4):
        fields[i] = _cheat("smaller-sigma", att, params, keys, i)
    with pytest.raises(BelowThresholdError):
        _round(federation, fields)


def test_verifier_is_built_from_the_federations_parameters_only(federation):
    agg, plan, _, att, keys, _ = federation
    cfg = R.RoundConfig(round_id=ROUND, site_ids=tuple(keys), threshold=3, dim=8, bits=agg.sa.bits,
                        identity_keys=tuple(P.ed25519_public_bytes(keys[i]) for i in keys))
    verify = agg.dp_verifier(plan, cfg)
    verify(2, _honest(att, keys[2]))
    with pytest.raises(PrivacyError):
        verify(2, _honest(att, keys[2], round_id=ROUND + 1))
    with pytest.raises(PrivacyError):
        verify(9, _honest(att, keys[2]))  # not in the round
    other = agg.plan(ROUND, planned=N, round_seed=ROUND_SEED + 1)  # another broadcast seed: another A
    with pytest.raises(PrivacyError):
        agg.dp_verifier(other, cfg)(2, _honest(att, keys[2]))


def test_without_ddg_the_field_is_empty_and_not_required():
    from secure_fedrl.runtime.aggregation import build_aggregator
    from secure_fedrl.runtime.privacy_plan import PrivacyPlan

    cfg = _config(None, count=3)
    pp = PrivacyPlan(cfg, ["s-0", "s-1", "s-2"], ledger_path=None)
    agg = build_aggregator(cfg, dim=4, privacy=pp)
    pp.bind(agg)
    plan = agg.plan(1, planned=3, round_seed=5)
    assert agg.dp_verifier(plan, None) is None
    vec, field = agg.site_encode_attested(plan, np.ones(4, np.float32), rng=np.random.default_rng(0),
                                          signing_key=P.ed25519_keypair(P.SeededRandom(b"k"))[0])
    assert field == b"" and vec.shape == (4,)


def test_the_site_runtime_encoder_signs_what_the_server_verifies(federation):
    agg, plan, _, _, keys, _ = federation
    vec, field = agg.site_encode_attested(plan, np.full(40, 0.01, np.float32), rng=np.random.default_rng(1),
                                          signing_key=keys[4])
    assert len(field) == 64 and vec.shape == (agg.wire_dim(plan),)
    cfg = R.RoundConfig(round_id=ROUND, site_ids=tuple(keys), threshold=3, dim=8, bits=agg.sa.bits,
                        identity_keys=tuple(P.ed25519_public_bytes(keys[i]) for i in keys))
    agg.dp_verifier(plan, cfg)(4, field)
    with pytest.raises(PrivacyError):
        agg.dp_verifier(plan, cfg)(3, field)  # site 4's signature is not site 3's


# --------------------------------------------------------------------------- strict decoding


def _masked_input_wire(federation, field=None):
    """Site 1's MaskedInput of a manual round (phases 0-2), and the server ready for it."""
    agg, _, _, att, keys, inputs = federation
    field = _honest(att, keys[1]) if field is None else field
    cfg = R.RoundConfig(round_id=ROUND, site_ids=tuple(keys), threshold=3, dim=8, bits=agg.sa.bits,
                        identity_keys=tuple(P.ed25519_public_bytes(keys[i]) for i in keys))
    clients = {i: SecAggClient(config=cfg, site_id=i, identity_key=keys[i], vector=inputs[i],
                               randbytes=P.SeededRandom(b"m/%d" % i), dp_attestation=field if i == 1 else b"")
               for i in keys}
    server = SecAggServer(config=cfg, verify_dp=lambda site, f: None)  # wire-format tests: any field passes
    for i, c in clients.items():
        server.receive(c.advertise_keys().encode())
    out = server.finish_phase()
    for i, c in clients.items():
        server.receive(c.share_keys(out[i]).encode())
    out = server.finish_phase()
    return cfg, clients, server, clients[1].masked_input(out[1]), out


def test_the_field_sits_after_ids_and_is_covered_by_core_and_signature(federation):
    cfg, clients, server, msg, _ = _masked_input_wire(federation)
    wire = msg.encode()
    off = M.HEADER.size + 4 + 4 * len(msg.paired)
    assert wire[off] == 64 and wire[off + 1: off + 65] == msg.dp_attestation
    assert msg.attestation_core() == wire[:off + 65]
    assert M.MaskedInput.decode(wire).dp_attestation == msg.dp_attestation
    forged = bytearray(wire)
    forged[off + 1] ^= 1  # a byte of the field changed in transit: the message signature fails
    with pytest.raises(ProtocolError, match="signature"):
        server.receive(bytes(forged))
    server.receive(wire)  # the untouched message is accepted


@pytest.mark.parametrize("how", ["length-63", "length-65", "length-1", "cut-field"])
def test_a_truncated_or_misframed_field_is_a_protocol_error_at_decode(federation, how):
    _, _, _, msg, _ = _masked_input_wire(federation)
    wire = bytearray(msg.encode())
    off = M.HEADER.size + 4 + 4 * len(msg.paired)
    if how == "cut-field":
        wire = wire[:off + 1 + 30]
    else:
        wire[off] = int(how.split("-")[1])
    with pytest.raises(ProtocolError):
        M.MaskedInput.decode(bytes(wire))


def test_field_lengths_other_than_0_or_64_are_refused_when_encoding(federation):
    _, _, _, msg, _ = _masked_input_wire(federation)
    with pytest.raises(ProtocolError):
        replace(msg, dp_attestation=bytes(63)).encode()
    with pytest.raises(ProtocolError):
        M.UnmaskRequest(msg.config_digest, 2, (1, 2, 3), attestations=((1, (2, 3), bytes(32)),),
                        dp_attestations=((4, bytes(64)),)).encode()  # a field for a site not attested
    req = M.UnmaskRequest(msg.config_digest, 2, (1, 2, 3), attestations=((1, (2, 3), bytes(32)),),
                          dp_attestations=((1, bytes(range(64))),))
    assert M.UnmaskRequest.decode(req.encode()) == req
    bad = bytearray(req.encode())
    bad[bad.index(bytes(range(64))) - 1] = 7
    with pytest.raises(ProtocolError):
        M.UnmaskRequest.decode(bytes(bad))


def test_a_wrong_length_field_is_refused_by_the_client(federation):
    agg, _, _, _, keys, inputs = federation
    cfg = R.RoundConfig(round_id=ROUND, site_ids=tuple(keys), threshold=3, dim=8, bits=agg.sa.bits,
                        identity_keys=tuple(P.ed25519_public_bytes(keys[i]) for i in keys))
    with pytest.raises(ProtocolError):
        SecAggClient(config=cfg, site_id=1, identity_key=keys[1], vector=inputs[1], dp_attestation=bytes(32))


def test_a_server_that_strips_the_field_before_unmasking_gets_nothing(federation):
    """The pairing attestation covers the field: a holder rebuilding u's core without it (the
    server dropped or altered F_u in the UnmaskRequest) finds the tag invalid and aborts."""
    agg, _, _, att, keys, inputs = federation
    cfg = R.RoundConfig(round_id=ROUND, site_ids=tuple(keys), threshold=3, dim=8, bits=agg.sa.bits,
                        identity_keys=tuple(P.ed25519_public_bytes(keys[i]) for i in keys))
    clients = {i: SecAggClient(config=cfg, site_id=i, identity_key=keys[i], vector=inputs[i],
                               randbytes=P.SeededRandom(b"s/%d" % i), dp_attestation=_honest(att, keys[i]))
               for i in keys}
    server = SecAggServer(config=cfg, verify_dp=agg.dp_verifier(agg.plan(ROUND, planned=N, round_seed=ROUND_SEED), cfg))
    out = None
    steps = [lambda c, m: c.advertise_keys(), SecAggClient.share_keys, SecAggClient.masked_input,
             SecAggClient.consistency_check]
    for step in steps:
        for i, c in clients.items():
            server.receive(step(c, None if out is None else M.decode(out[i].encode())).encode())
        out = server.finish_phase()
    req = M.decode(out[2].encode())
    assert len(req.dp_attestations) == len(req.attestations) == 4  # every field forwarded
    clients[2].unmask(req)  # the honest request is answered
    stripped = M.decode(out[3].encode())
    with pytest.raises(ProtocolError, match="not authentic"):
        clients[3].unmask(replace(stripped, dp_attestations=stripped.dp_attestations[1:]))
    altered = M.decode(out[4].encode())
    u, field = altered.dp_attestations[0]
    with pytest.raises(ProtocolError, match="not authentic"):
        clients[4].unmask(replace(altered, dp_attestations=((u, _honest(att, keys[u], round_id=ROUND + 1)),)
                                  + altered.dp_attestations[1:]))


# --------------------------------------------------------------------------- conformance vector


def test_the_round_vector_refuses_the_cheating_sites():
    results = {r.name: r for r in check_vectors(DEFAULT_DIR) if r.name.startswith("round_ddg_attested/")}
    assert len(results) == 4 and all(r.passed for r in results.values()), results
    v = json.loads((DEFAULT_DIR / "round_ddg_attested.json").read_text())
    assert v["accepted"] == [1, 3, 5]
    assert sorted(s for s, ph, _ in v["rejected"] if ph == "masked_input") == [2, 4]


def test_a_changed_dp_field_in_the_round_vector_fails(tmp_path):
    import shutil

    for f in DEFAULT_DIR.glob("*.json"):
        shutil.copy(f, tmp_path / f.name)
    v = json.loads((tmp_path / "round_ddg_attested.json").read_text())
    v["dp_attestation"]["federation"] = v["dp_attestation"]["signed"]["2"]  # the server would accept site 2
    (tmp_path / "round_ddg_attested.json").write_text(json.dumps(v))
    results = {r.name: r for r in check_vectors(tmp_path)}
    assert not results["round_ddg_attested/replay-every-message"].passed
    assert not results["round_ddg_attested/dp-attestations"].passed


# --------------------------------------------------------------------------- end to end (simulate)


def _params(run: Path) -> np.ndarray:
    import torch

    return torch.load(run / "checkpoints" / "round-00001.pt", weights_only=False)["global_params"].numpy()


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_simulate_honest_path_unchanged_by_the_check(tmp_path, monkeypatch):
    """Client-level DDG through simulate (sites over the in-memory transport): every site is
    summed and the model equals the one of the same run with the server's check switched off."""
    from secure_fedrl.runtime.secure_aggregation import SecureAggregator
    from secure_fedrl.runtime.simulate import run_simulation

    cfg = _ddg_config(reproducible_noise=True)
    run_simulation(cfg, tmp_path / "checked", progress=False)
    row = _metrics(tmp_path / "checked")[0]
    assert row["sites_aggregated"] == N and row["sites_dropped"] == []
    monkeypatch.setattr(SecureAggregator, "dp_verifier", lambda self, plan, config: lambda site, field: None)
    run_simulation(cfg, tmp_path / "unchecked", progress=False)
    assert np.array_equal(_params(tmp_path / "checked"), _params(tmp_path / "unchecked"))


def test_simulate_does_not_sum_a_site_that_attests_less_noise(tmp_path, monkeypatch):
    """One site's runtime signs an attestation with half the noise: the server drops it, the
    round completes with the other four."""
    from secure_fedrl.runtime.simulate import run_simulation
    from secure_fedrl.runtime.site import SiteRuntime

    honest = SiteRuntime.encode_attested

    def cheating(self, plan, vector):
        vec, field = honest(self, plan, vector)
        if self.index != 0:
            return vec, field
        params = self.aggregator.ddg_params(plan.planned)
        att = D.attestation_for(params, rotation_seed=D.round_rotation_seed(plan.round_id, plan.round_seed))
        return vec, D.sign_attestation(replace(att, local_stddev=att.local_stddev / 2), round_id=plan.round_id,
                                       key=self.identity_key)

    monkeypatch.setattr(SiteRuntime, "encode_attested", cheating)
    run_simulation(_ddg_config(), tmp_path / "run", progress=False)
    row = _metrics(tmp_path / "run")[0]
    assert row["sites_aggregated"] == N - 1 and len(row["sites_dropped"]) == 1
