"""Conformance vectors: known-answer tests for every construction SPEC.md pins.

`generate_vectors(dir)` writes JSON files from fixed seeds; `check_vectors(dir)` recomputes every
expected output with this implementation and reports one CheckResult per case. Another
implementation conforms if it reproduces the same bytes from the same inputs (the round vector
also lists every message, so an implementation of only the site or only the server can be checked
message by message).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np

from secure_fedrl.errors import ProtocolError, SecureFedRLError

from . import encoding as E
from . import messages as M
from . import primitives as P
from . import protocol as R
from . import shamir
from .client import SecAggClient
from .driver import run_round

DEFAULT_DIR = Path(__file__).resolve().parents[2] / "protocols" / "vectors"
FILES = ("x25519.json", "hkdf.json", "prg.json", "shamir.json", "encoding.json", "round_5sites.json",
         "round_secagg_plus.json", "round_spare_share.json", "round_ddg_attested.json",
         "round_stray_dp_field.json", "round_undecryptable_share.json", "round_split_view.json")


@dataclass(frozen=True)
class CheckResult:
    name: str
    passed: bool
    detail: str = ""


def _h(b: bytes) -> str:
    return bytes(b).hex()


def _b(s: str) -> bytes:
    return bytes.fromhex(s)


def _det(tag: str, n: int = 32) -> bytes:
    """Fixed 'random' bytes for vector inputs."""
    return P.SeededRandom(b"secure-fedrl/secagg/vectors/" + tag.encode())(n)


# ============================================================================ generation


def _gen_x25519() -> dict:
    cases = [{  # RFC 7748 section 6.1
        "name": "rfc7748-6.1",
        "sk_a": "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a",
        "sk_b": "5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb",
    }]
    for i in range(3):
        cases.append({"name": f"seeded-{i}", "sk_a": _h(_det(f"x25519/a/{i}")), "sk_b": _h(_det(f"x25519/b/{i}"))})
    for c in cases:
        a, b = _b(c["sk_a"]), _b(c["sk_b"])
        c["pk_a"], c["pk_b"] = _h(P.x25519_public(a)), _h(P.x25519_public(b))
        c["shared"] = _h(P.x25519(a, P.x25519_public(b)))
    if cases[0]["shared"] != "4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742":
        raise ProtocolError("X25519 does not reproduce RFC 7748 section 6.1")
    return {"description": "X25519 public keys and shared secret (raw 32-byte encodings)", "cases": cases}


def _vector_config(n: int = 5, *, round_id: int = 7, dim: int = 8, threshold: int = 3,
                   degree: int | None = None, bits: int = 32) -> tuple[R.RoundConfig, list]:
    sks = [P.ed25519_keypair(P.SeededRandom(b"vectors/identity/%d" % i))[0] for i in range(1, n + 1)]
    cfg = R.RoundConfig(
        round_id=round_id, site_ids=tuple(range(1, n + 1)),
        identity_keys=tuple(P.ed25519_public_bytes(s) for s in sks),
        threshold=threshold, dim=dim, bits=bits, degree=degree, graph_seed=_det("graph-seed"),
    )
    return cfg, sks


def _config_json(cfg: R.RoundConfig) -> dict:
    return {
        "round_id": cfg.round_id, "site_ids": list(cfg.site_ids),
        "identity_keys": [_h(k) for k in cfg.identity_keys], "threshold": cfg.threshold,
        "dim": cfg.dim, "bits": cfg.bits, "degree": cfg.degree, "graph_seed": _h(cfg.graph_seed),
    }


def _config_from_json(c: dict) -> R.RoundConfig:
    return R.RoundConfig(
        round_id=c["round_id"], site_ids=tuple(c["site_ids"]),
        identity_keys=tuple(_b(k) for k in c["identity_keys"]), threshold=c["threshold"],
        dim=c["dim"], bits=c["bits"], degree=c["degree"], graph_seed=_b(c["graph_seed"]),
    )


def _gen_hkdf() -> dict:
    raw = []
    for i in range(3):
        c = {"ikm": _h(_det(f"hkdf/ikm/{i}")), "salt": _h(_det(f"hkdf/salt/{i}")), "info": _h(b"info-%d" % i)}
        c["okm"] = _h(P.hkdf_sha256(_b(c["ikm"]), salt=_b(c["salt"]), info=_b(c["info"])))
        raw.append(c)
    cfg, _ = _vector_config()
    shared = _det("hkdf/shared")
    protocol = {
        "config": _config_json(cfg),
        "config_digest": _h(cfg.digest),
        "shared_secret": _h(shared),
        "enc_keys": [{"sender": s, "receiver": r, "key": _h(R.enc_key(cfg, shared, s, r)),
                      "nonce": _h(R.enc_nonce(s, r)), "ad": _h(R.enc_ad(cfg, s, r))}
                     for s, r in ((1, 2), (2, 1), (3, 5))],
        "mask_seeds": [{"u": u, "v": v, "seed": _h(R.mask_seed(cfg, shared, u, v))} for u, v in ((1, 2), (2, 1), (4, 5))],
        "b_commitment": {"site": 2, "b": _h(_det("hkdf/b")), "commitment": _h(R.b_commitment(cfg, 2, _det("hkdf/b")))},
    }
    return {"description": "HKDF-SHA256 (32-byte output) and the protocol's derived keys", "raw": raw,
            "protocol": protocol}


def _gen_prg() -> dict:
    cases = []
    for i, bits in enumerate((32, 32, 16, 8, 1, 31)):
        seed = bytes(32) if i == 0 else _det(f"prg/{i}")
        cases.append({"seed": _h(seed), "bits": bits, "words": [int(w) for w in P.prg(seed, 64, bits)]})
    return {"description": "PRG = AES-256-CTR(key=seed, counter block 0^16), first 64 little-endian "
                           "uint32 words mod 2^bits", "cases": cases}


def _gen_shamir() -> dict:
    cases = []
    for i, (t, xs) in enumerate(((3, [1, 2, 3, 4, 5]), (1, [1, 2]), (4, [2, 5, 7, 11, 13, 17]))):
        rand = P.SeededRandom(b"shamir/%d" % i)
        secret = rand(32)
        coeffs = [shamir.random_field_element(rand) for _ in range(t - 1)]
        shares = shamir.split_with_coefficients(secret, coeffs, xs)
        subset = xs[-t:]
        cases.append({
            "secret": _h(secret), "threshold": t, "xs": xs,
            "coefficients": [_h(shamir.share_to_bytes(c)) for c in coeffs],
            "shares": {str(x): _h(shamir.share_to_bytes(y)) for x, y in shares.items()},
            "reconstruct_from": subset,
        })
    return {"description": "Shamir over GF(2^521-1): secret = big-endian 32 bytes, f(x) = secret + "
                           "sum c_i x^i, shares as 66-byte big-endian", "prime": "2^521-1", "cases": cases}


def _gen_encoding() -> dict:
    rng = np.random.default_rng(1234)
    enc = []
    for i, (clip, scale, bits) in enumerate(((1.0, 2.0**16, 32), (0.5, 1000.0, 24), (3.0, 7.0, 8))):
        x = rng.normal(size=6) * clip
        u = rng.random(6)
        out = E.encode_with_uniforms(x, u, clip=clip, scale=scale, bits=bits)
        enc.append({"x": [float(v) for v in x], "uniforms": [float(v) for v in u], "clip": clip,
                    "scale": scale, "bits": bits, "encoded": [int(v) for v in out]})
    dec = []
    ring = E.to_ring(np.array([5, -3, 65536, -65536, 0, 12345]), 32)
    dec.append({"ring_sum": [int(v) for v in ring], "scale": 2.0**16, "bits": 32, "num_sites": 3, "clip": 1.0,
                "decoded": [float(v) for v in E.decode_sum(ring, scale=2.0**16, bits=32, num_sites=3, clip=1.0)]})
    bad = E.to_ring(np.array([3 * 2**16 * 4, 0, 0, 0]), 32)
    dec.append({"ring_sum": [int(v) for v in bad], "scale": 2.0**16, "bits": 32, "num_sites": 3, "clip": 1.0,
                "error": "ProtocolError"})
    cap = {"num_sites": 1000, "clip": 10.0, "scale": 2.0**20, "bits": 32, "error": "ConfigError"}
    return {"description": "encode: L2-clip, clip to [-clip, clip], *scale, round up iff u < frac, mod 2^b; "
                           "decode: centred lift / scale with norm bound", "encode": enc, "decode": dec,
            "capacity": [cap]}


ROUND_SEED = b"secure-fedrl/secagg/vectors/round"


def _round_inputs(n: int = 5, dim: int = 8, seed: int = 5, bits: int = 32) -> dict[int, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {i: rng.integers(0, 2**bits, dim, dtype=np.uint64).astype(np.uint32) for i in range(1, n + 1)}


#: The round vectors: file -> (description, n, dim, threshold, degree, dropouts, bad share or None).
#: A bad share (site, peer, delta) is a validly signed UnmaskResponse of `site` whose b-share of
#: `peer` moves the secret reconstructed from the t smallest holders by +delta (still a 32-byte
#: value: only the self-mask commitment exposes it), so the server must take the retry path.
ROUNDS: dict[str, tuple] = {
    "round_5sites.json": (
        "complete-graph round, 5 sites, t=3; site 2 drops before its masked input, site 4 after it (before "
        "the consistency check)", 5, 8, 3, None, {2: "masked_input", 4: "consistency_check"}, None),
    "round_secagg_plus.json": (
        "SecAgg+ round, n=10 (even), k=3 (odd: ring +-1 plus the opposite position), t=3; site 1 drops "
        "before its masked input (its pairwise masks are removed with its s-shares), site 5 after it, "
        "before the consistency check (it stays in the sum). Phase 0b: every site gets the view of all 10 "
        "graph-nonce commitments, reveals its nonce, and the graph is built from seeded_graph_seed (SPEC 2); "
        "from the KeysBundle on, messages carry the seeded digest D'", 10, 6, 3, 3,
        {1: "masked_input", 5: "consistency_check"}, None),
    "round_spare_share.json": (
        "complete-graph round, 5 sites, t=3, every site responds (2 spare shares per secret); site 2 "
        "reveals a bad b-share of site 1 (shifts b_1 by +1): the commitment check fails and the server "
        "retries without each of the first t shares", 5, 8, 3, None, {}, (2, 1, 1)),
    "round_ddg_attested.json": (
        "complete-graph round, 5 sites, t=3, b=16, distributed DP: every MaskedInput carries the site's "
        "Ed25519 signature over SHA-256(A) (SPEC 7.1) and the server checks it against the federation's A; "
        "site 2 attests a smaller sigma_share and site 4 another rotation, both after sharing: their "
        "MaskedInputs are refused (not summed), their pairwise masks removed with their s-shares",
        5, 8, 3, None, {}, None),
    "round_stray_dp_field.json": (
        "complete-graph round, 5 sites, t=3, no distributed DP: site 3 sends a validly signed and tagged "
        "MaskedInput carrying a 64-byte DP field (a = 64) anyway; SPEC 5 says F_u is empty outside DDG, so "
        "the server refuses it (not summed) and removes its pairwise masks with its s-shares",
        5, 8, 3, None, {}, None),
    "round_undecryptable_share.json": (
        "complete-graph round, 6 sites, t=3: the network flips one byte of site 2's share ciphertext to "
        "site 1 and of site 4's to site 5 (in the CiphertextBundles, logged as received). Sites 1 and 5 "
        "do not pair with the sender whose ciphertext fails AES-GCM and attest M(u) without it (SPEC 4, "
        "phase 2); the server keeps only pairs masked on both sides: site 1 counts before site 2, so "
        "site 2 is refused; site 4 counts before site 5, so site 5 is refused; both s-keys are "
        "reconstructed to remove their masks with the survivors that did pair with them",
        6, 8, 3, None, {}, None),
}

#: Round vectors in which the network corrupts share ciphertexts: (sender, receiver) pairs whose
#: ciphertext gets its first byte flipped in the receiver's CiphertextBundle.
CORRUPT_CIPHERTEXTS = {"round_undecryptable_share.json": ((2, 1), (4, 5))}

#: Round vectors in which a site sends a DP field although the round has no distributed DP.
STRAY_FIELDS = {"round_stray_dp_field.json": {3: "not a DDG round"}}

#: Round vectors with DP attestations: file -> (sigma factor of site 2, rotation seed of site 4).
#: Inputs are uniform ring elements mod 2^16 (the vector pins the wire field, not the encoding).
DP_ROUNDS = {"round_ddg_attested.json": {"bits": 16, "round_seed": 0x5EC_A66, "cheats": {2: "sigma", 4: "rotation"}}}


def _dp_vector(cfg: R.RoundConfig, spec: dict) -> dict:
    """The federation's attestation A for the round and what each site signs (cheaters: another A)."""
    from dataclasses import replace as dc_replace

    from secure_fedrl.privacy import ddg as D

    params = D.ddg_parameters(clip_norm=1.0, dim=cfg.dim, expected_sites=cfg.threshold, bits=cfg.bits,
                              noise_multiplier=1.0, max_sites=cfg.n)
    seed = D.round_rotation_seed(cfg.round_id, spec["round_seed"])
    att = D.attestation_for(params, rotation_seed=seed)
    signed = {}
    for sid in cfg.site_ids:
        how = spec["cheats"].get(sid)
        a = att
        if how == "sigma":
            a = dc_replace(att, local_stddev=att.local_stddev / 2)
        elif how == "rotation":
            a = D.attestation_for(params, rotation_seed=D.round_rotation_seed(cfg.round_id, spec["round_seed"] + 1))
        signed[str(sid)] = _h(D.attestation_bytes(a, round_id=cfg.round_id))
    return {"round_seed": spec["round_seed"], "rotation_seed": _h(seed),
            "federation": _h(D.attestation_bytes(att, round_id=cfg.round_id)), "signed": signed}


def _dp_hooks(dp: dict | None, sks: dict) -> tuple[dict | None, Callable | None]:
    """Sites' DP attestation fields (Ed25519 over SHA-256 of what each signed) and the server's
    verifier factory (signature over SHA-256 of the federation's A, by the site's identity key)."""
    if dp is None:
        return None, None
    fields = {int(k): P.sign(sks[int(k)], P.sha256(_b(a))) for k, a in dp["signed"].items()}
    want = P.sha256(_b(dp["federation"]))

    def verifier(cfg: R.RoundConfig):
        return lambda sid, field: P.verify(cfg.identity[sid], field, want, what=f"DP attestation of site {sid}")
    return fields, verifier


def shift_share(share: bytes, x: int, xs: tuple[int, ...], delta: int) -> bytes:
    """The share at x that moves the secret reconstructed from holders `xs` by +delta."""
    lam = shamir.lagrange_at_zero(tuple(xs))[list(xs).index(x)]
    y = (shamir.share_from_bytes(share) + delta * pow(lam, -1, shamir.PRIME)) % shamir.PRIME
    return shamir.share_to_bytes(y)


def _bad_share_hook(bad, cfg: R.RoundConfig, sks: dict):
    site, peer, delta = bad
    xs = tuple(sorted(cfg.holders(peer)))[: cfg.threshold]

    def hook(phase, sid, wire):
        if phase != "unmasking" or sid != site:
            return [wire]
        msg = M.UnmaskResponse.decode(wire)
        shares = tuple((p, k, shift_share(s, site, xs, delta) if p == peer and k == M.KIND_B else s)
                       for p, k, s in msg.shares)
        return [replace(msg, shares=shares).signed(sks[site]).encode()]
    return hook


def _corrupt_hook(pairs):
    """Flip the first byte of each (sender, receiver) ciphertext in the receiver's CiphertextBundle."""
    bad = {tuple(p) for p in pairs}

    def hook(phase, sid, wire):
        if M.message_type(wire) != M.T_CT_BUNDLE:
            return wire
        b = M.CiphertextBundle.decode(wire)
        cts = tuple((v, bytes([ct[0] ^ 1]) + ct[1:] if (v, sid) in bad else ct) for v, ct in b.ciphertexts)
        return replace(b, ciphertexts=cts).encode()
    return hook


def _run_vector_round(cfg, sks, inputs, dropouts, seed, bad, log, dp=None, stray=None, corrupt=None):
    tamper = _bad_share_hook(bad, cfg, sks) if bad else None
    garble = _corrupt_hook(corrupt) if corrupt else None
    fields, verifier = _dp_hooks(dp, sks)
    if stray:  # a site's signature over a text of its own, as a DP field the round does not expect
        fields = {int(k): P.sign(sks[int(k)], P.sha256(text.encode())) for k, text in stray.items()}

    def up(phase, sid, wire):
        wires = tamper(phase, sid, wire) if tamper else [wire]
        for w in wires:
            log.append({"phase": phase, "direction": "site->server", "site": sid, "hex": _h(w)})
        return wires

    def down(phase, sid, wire):
        wire = garble(phase, sid, wire) if garble else wire
        log.append({"phase": phase, "direction": "server->site", "site": sid, "hex": _h(wire)})
        return wire

    return run_round(inputs, threshold=cfg.threshold, neighbors=cfg.degree, bits=cfg.bits, dropouts=dropouts,
                     round_id=cfg.round_id, seed=seed, identity_keys=sks, graph_seed=cfg.graph_seed,
                     on_upload=up, on_download=down, dp_attestations=fields, dp_verifier=verifier)


def _gen_round(name: str) -> dict:
    desc, n, dim, t, degree, dropouts, bad = ROUNDS[name]
    spec = DP_ROUNDS.get(name)
    bits = spec["bits"] if spec else 32
    inputs = _round_inputs(n, dim, bits=bits)
    cfg, sk_list = _vector_config(n, dim=dim, threshold=t, degree=degree, bits=bits)
    sks = {i: sk_list[i - 1] for i in inputs}
    dp = _dp_vector(cfg, spec) if spec else None
    stray = {str(k): text for k, text in STRAY_FIELDS.get(name, {}).items()} or None
    corrupt = [list(p) for p in CORRUPT_CIPHERTEXTS.get(name, ())] or None
    log: list[dict] = []
    res = _run_vector_round(cfg, sks, inputs, dropouts, ROUND_SEED, bad, log, dp, stray, corrupt)
    out = {
        "description": desc + ". Site randomness: SeededRandom(seed || '/site/' || u32be(id)); identity keys: "
                       "SeededRandom('vectors/identity/<id>')",
        "config": _config_json(cfg),
        "seed": _h(ROUND_SEED),
        "dropouts": {str(k): v for k, v in dropouts.items()},
        "identity_private_keys": {str(i): _h(_det_identity(i)) for i in inputs},
        "inputs": {str(i): [int(v) for v in x] for i, x in inputs.items()},
        "messages": log,
        "seeded_graph_seed": _h(seeded_config(cfg, log).graph_seed),
        "accepted": list(res.accepted_sites),
        "rejected": [[s, p, why] for s, p, why in res.rejected],
        "sum": [int(v) for v in res.sum],
    }
    if bad:
        out["bad_share"] = {"site": bad[0], "peer": bad[1], "delta": bad[2]}
    if dp:
        out["dp_attestation"] = dp
    if stray:
        out["stray_dp_field"] = stray
    if corrupt:
        out["corrupt_ciphertexts"] = corrupt
    return out


# ---------------------------------------------------------------------------- split view (site side)

#: The split-view vector (SPEC.md section 8, graph seed (2)): a site-side log of one SecAgg+ round
#: (n=10, k=3, t=3) in which the server shows group A the view of every advert and group B the same
#: view without site 10 (`left_out`; no colluder: the server alone), completes each view's seed with
#: the reveals it holds, and delivers every share ciphertext to its receiver, across the split too.
SPLIT_VIEW = {"file": "round_split_view.json", "n": 10, "dim": 6, "threshold": 3, "degree": 3,
              "groups": {"A": (1, 2, 3, 4, 5, 10), "B": (6, 7, 8, 9)}, "left_out": 10}

#: What an honest site answers each server->site message with (by message type).
_SITE_ANSWERS = {M.T_GRAPH_VIEW: "graph_reveal", M.T_KEYS_BUNDLE: "share_keys", M.T_CT_BUNDLE: "masked_input",
                 M.T_CONSISTENCY_REQ: "consistency_check", M.T_UNMASK_REQ: "unmask"}


def _split_site(cfg: R.RoundConfig, sid: int, sk_hex: str, x, seed: bytes):
    """The honest site `sid` of a vector: its identity key, input and SeededRandom(seed || '/site/' || u32(id))."""
    sk = P.ed25519_keypair(lambda n: _b(sk_hex))[0]
    return SecAggClient(config=cfg, site_id=sid, identity_key=sk, vector=np.asarray(x, dtype=np.uint32),
                        randbytes=P.SeededRandom(seed + b"/site/" + sid.to_bytes(4, "big")))


def _refusal_prefix(exc: SecureFedRLError) -> str:
    """The stable part of a site's refusal: its message up to the first comma (the figures after it
    restate the threshold)."""
    return str(exc).split(",")[0]


def _site_answer(client, log: list[dict], wire: bytes | None) -> tuple[object | None, dict | None]:
    """Deliver `wire` (None: start the round, i.e. advertise keys) to an honest site and log both
    directions; returns (its answer, None) or (None, its refusal)."""
    if wire is None:
        phase, call = "advertise_keys", client.advertise_keys
    else:
        msg = M.decode(wire)
        phase = _SITE_ANSWERS[M.message_type(wire)]
        log.append({"phase": phase, "direction": "server->site", "hex": _h(wire)})

        def call(msg=msg):
            return getattr(client, phase)(msg)
    try:
        out = call()
    except SecureFedRLError as exc:
        return None, {"phase": phase, "error": type(exc).__name__, "message_prefix": _refusal_prefix(exc)}
    log.append({"phase": phase, "direction": "site->server", "hex": _h(out.encode())})
    return out, None


def _split_crossings(group_of: dict[int, str], sid: int, own: list[dict]) -> list[int]:
    """Senders of the other group whose ciphertext the server delivered to `sid` and to whom `sid`
    had sent shares: a site that paired on delivery alone would pair with them across the split."""
    sent = cts = None
    for m in own:
        obj = M.decode(_b(m["hex"]))
        if isinstance(obj, M.ShareKeys):
            sent = {r for r, _ in obj.ciphertexts}
        elif isinstance(obj, M.CiphertextBundle):
            cts = [v for v, _ in obj.ciphertexts]
    if sent is None or cts is None:
        return []
    return sorted({v for v in cts if v in sent and group_of.get(v) != group_of[sid]})


def _gen_split_view() -> dict:
    sv = SPLIT_VIEW
    cfg, sk_list = _vector_config(sv["n"], dim=sv["dim"], threshold=sv["threshold"], degree=sv["degree"])
    inputs = _round_inputs(sv["n"], sv["dim"])
    keys = {i: _h(_det_identity(i)) for i in cfg.site_ids}
    group_of = {u: g for g, us in sv["groups"].items() for u in us}
    clients = {u: _split_site(cfg, u, keys[u], inputs[u], ROUND_SEED) for u in cfg.site_ids}
    logs: dict[int, list[dict]] = {u: [] for u in cfg.site_ids}
    refusals: dict[int, dict | None] = dict.fromkeys(cfg.site_ids)

    def deliver(u, wire):
        out, refusal = _site_answer(clients[u], logs[u], wire)
        refusals[u] = refusal
        return out

    adverts = {u: deliver(u, None) for u in cfg.site_ids}
    views = {"A": tuple((v, adverts[v].graph_commit) for v in cfg.site_ids)}
    views["B"] = tuple(e for e in views["A"] if e[0] != sv["left_out"])
    reveals = {u: deliver(u, M.GraphView(cfg.digest, u, views[group_of[u]]).encode()) for u in cfg.site_ids}
    # each view's seed from every reveal the server holds for its sites (A's reuse B's and back)
    seeded = {g: cfg.seeded(view, {v: reveals[v].nonce for v, _ in view}) for g, view in views.items()}
    share = {}
    for u in cfg.site_ids:
        s, view = seeded[group_of[u]], dict(views[group_of[u]])
        live = [v for v in sorted(s.holders(u)) if v in view]
        share[u] = deliver(u, M.KeysBundle(s.digest, u, tuple(adverts[v].encode() for v in live),
                                           tuple((v, reveals[v].nonce) for v in sorted(view))).encode())
    masked = {}
    for u in cfg.site_ids:
        if share[u] is None:
            continue
        cts = tuple((v, ct) for v in cfg.site_ids if share.get(v) is not None
                    for r, ct in share[v].ciphertexts if r == u)  # every ciphertext for u, across the split too
        masked[u] = deliver(u, M.CiphertextBundle(seeded[group_of[u]].digest, u, cts).encode())
    sites = {}
    for u in cfg.site_ids:
        mi = masked.get(u)
        sites[str(u)] = {"group": group_of[u], "messages": logs[u], "refusal": refusals[u],
                         "paired": list(mi.paired) if mi is not None else None,
                         "crossing_deliveries": _split_crossings(group_of, u, logs[u])}
    return {
        "description": (
            "site-side split view (SPEC 8, graph seed (2)): SecAgg+ round, n=10, k=3, t=3. The server sends "
            "group A the GraphView of all 10 adverts and group B the same view without site 10 (left_out), "
            "builds each view's seed from every reveal it holds for that view's sites, sends each site the "
            "KeysBundle of its own view (holders from its own seed) and then delivers every share "
            "ciphertext to its receiver, across the split too. Per site: every server->site message and "
            "every honest site->server answer in order, or the site's refusal (error class and message up "
            "to the first comma); paired = M(u) of its MaskedInput; crossing_deliveries = senders of the "
            "other group whose ciphertext reached u and to whom u had sent shares (pairing on delivery "
            "alone would pair with them). No M(u) crosses the split. The log ends with the MaskedInputs. "
            "Site randomness: SeededRandom(seed || '/site/' || u32be(id)); identity keys: "
            "SeededRandom('vectors/identity/<id>')"),
        "config": _config_json(cfg),
        "config_digest": _h(cfg.digest),
        "seed": _h(ROUND_SEED),
        "identity_private_keys": {str(u): keys[u] for u in cfg.site_ids},
        "inputs": {str(u): [int(v) for v in x] for u, x in inputs.items()},
        "groups": {g: list(us) for g, us in sv["groups"].items()},
        "left_out": sv["left_out"],
        "seeded": {g: {"graph_seed": _h(s.graph_seed), "digest": _h(s.digest)} for g, s in seeded.items()},
        "sites": sites,
    }


def _det_identity(i: int) -> bytes:
    return P.SeededRandom(b"vectors/identity/%d" % i)(32)


def generate_vectors(directory: str | Path = DEFAULT_DIR) -> list[Path]:
    """Write every vector file into `directory`; returns the paths written."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    gens: dict[str, Callable[[], dict]] = {
        "x25519.json": _gen_x25519, "hkdf.json": _gen_hkdf, "prg.json": _gen_prg,
        "shamir.json": _gen_shamir, "encoding.json": _gen_encoding,
        **{name: (lambda name=name: _gen_round(name)) for name in ROUNDS},
        SPLIT_VIEW["file"]: _gen_split_view,
    }
    out = []
    for name, gen in gens.items():
        path = d / name
        path.write_text(json.dumps(gen(), indent=1) + "\n")
        out.append(path)
    return out


# ============================================================================ checking


def _check(results: list[CheckResult], name: str, fn: Callable[[], str | None]) -> None:
    try:
        problem = fn()
    except Exception as exc:  # a vector that makes the implementation crash is a failure, not a crash
        problem = f"{type(exc).__name__}: {exc}"
    results.append(CheckResult(name, problem is None, problem or "ok"))


def _eq(what: str, got, want) -> str | None:
    return None if got == want else f"{what}: got {str(got)[:48]}, expected {str(want)[:48]}"


def _check_x25519(v: dict, results: list[CheckResult]) -> None:
    for c in v["cases"]:
        def f(c=c):
            a, b = _b(c["sk_a"]), _b(c["sk_b"])
            return (_eq("pk_a", _h(P.x25519_public(a)), c["pk_a"]) or _eq("pk_b", _h(P.x25519_public(b)), c["pk_b"])
                    or _eq("shared a->b", _h(P.x25519(a, _b(c["pk_b"]))), c["shared"])
                    or _eq("shared b->a", _h(P.x25519(b, _b(c["pk_a"]))), c["shared"]))
        _check(results, f"x25519/{c['name']}", f)


def _check_hkdf(v: dict, results: list[CheckResult]) -> None:
    for i, c in enumerate(v["raw"]):
        _check(results, f"hkdf/raw-{i}", lambda c=c: _eq(
            "okm", _h(P.hkdf_sha256(_b(c["ikm"]), salt=_b(c["salt"]), info=_b(c["info"]))), c["okm"]))
    p = v["protocol"]

    def f():
        cfg = _config_from_json(p["config"])
        sh = _b(p["shared_secret"])
        err = _eq("config digest", _h(cfg.digest), p["config_digest"])
        for e in p["enc_keys"]:
            s, r = e["sender"], e["receiver"]
            err = err or _eq(f"enc key {s}->{r}", _h(R.enc_key(cfg, sh, s, r)), e["key"]) \
                or _eq("nonce", _h(R.enc_nonce(s, r)), e["nonce"]) or _eq("ad", _h(R.enc_ad(cfg, s, r)), e["ad"])
        for m in p["mask_seeds"]:
            err = err or _eq(f"mask seed {m['u']},{m['v']}", _h(R.mask_seed(cfg, sh, m["u"], m["v"])), m["seed"])
        bc = p["b_commitment"]
        return err or _eq("b commitment", _h(R.b_commitment(cfg, bc["site"], _b(bc["b"]))), bc["commitment"])
    _check(results, "hkdf/protocol-derivations", f)


def _check_prg(v: dict, results: list[CheckResult]) -> None:
    for i, c in enumerate(v["cases"]):
        _check(results, f"prg/{i}-b{c['bits']}", lambda c=c: _eq(
            "words", [int(w) for w in P.prg(_b(c["seed"]), len(c["words"]), c["bits"])], c["words"]))


def _check_shamir(v: dict, results: list[CheckResult]) -> None:
    for i, c in enumerate(v["cases"]):
        def f(c=c):
            coeffs = [int(h, 16) for h in c["coefficients"]]
            shares = shamir.split_with_coefficients(_b(c["secret"]), coeffs, c["xs"])
            got = {str(x): _h(shamir.share_to_bytes(y)) for x, y in shares.items()}
            sub = {x: shamir.share_from_bytes(_b(c["shares"][str(x)])) for x in c["reconstruct_from"]}
            rec = shamir.reconstruct(sub, threshold=c["threshold"])
            return _eq("shares", got, c["shares"]) or _eq("reconstructed secret", _h(rec), c["secret"])
        _check(results, f"shamir/{i}-t{c['threshold']}", f)


def _check_encoding(v: dict, results: list[CheckResult]) -> None:
    for i, c in enumerate(v["encode"]):
        _check(results, f"encoding/encode-{i}", lambda c=c: _eq("encoded", [int(x) for x in E.encode_with_uniforms(
            np.array(c["x"]), np.array(c["uniforms"]), clip=c["clip"], scale=c["scale"], bits=c["bits"])], c["encoded"]))
    for i, c in enumerate(v["decode"]):
        def f(c=c):
            args = dict(scale=c["scale"], bits=c["bits"], num_sites=c["num_sites"], clip=c["clip"])
            ring = np.array(c["ring_sum"], dtype=np.uint32)
            if "error" in c:
                try:
                    E.decode_sum(ring, **args)
                except SecureFedRLError as exc:
                    return _eq("error", type(exc).__name__, c["error"])
                return f"expected {c['error']}, decode_sum released a sum"
            return _eq("decoded", [float(x) for x in E.decode_sum(ring, **args)], c["decoded"])
        _check(results, f"encoding/decode-{i}", f)
    for i, c in enumerate(v.get("capacity", [])):
        def g(c=c):
            try:
                E.ring_capacity_check(num_sites=c["num_sites"], clip=c["clip"], scale=c["scale"], bits=c["bits"])
            except SecureFedRLError as exc:
                return _eq("error", type(exc).__name__, c["error"])
            return f"expected {c['error']} for a configuration that can wrap"
        _check(results, f"encoding/capacity-{i}", g)


def _check_round(v: dict, results: list[CheckResult], prefix: str = "round") -> None:
    cfg = _config_from_json(v["config"])
    msgs = v["messages"]

    def signatures():
        seeded = seeded_config(cfg, msgs)
        if "seeded_graph_seed" in v and _h(seeded.graph_seed) != v["seeded_graph_seed"]:
            return "the graph seed from the logged view and reveals is not seeded_graph_seed"
        for m in msgs:
            wire = _b(m["hex"])
            obj = M.decode(wire)
            if obj.encode() != wire:
                return f"{m['phase']} message of site {m['site']} does not re-encode canonically"
            if m["direction"] == "site->server":
                if obj.sender != m["site"]:
                    return f"message claims sender {obj.sender}, logged from site {m['site']}"
                obj.verify(cfg.identity[obj.sender])
            elif obj.receiver != m["site"]:
                return f"server message addressed to {obj.receiver}, logged to site {m['site']}"
            before_seed = m["phase"] == "advertise_keys" or (m["phase"] == "graph_reveal" and m["direction"] == "site->server")
            if obj.config_digest != (cfg if before_seed else seeded).digest:
                return f"{m['phase']} message bound to another configuration"
        return None

    _check(results, f"{prefix}/messages-parse-and-verify", signatures)

    def replay():
        inputs = {int(k): np.array(x, dtype=np.uint32) for k, x in v["inputs"].items()}
        sks = {int(k): P.ed25519_keypair(lambda n, h=h: _b(h))[0] for k, h in v["identity_private_keys"].items()}
        bad = v.get("bad_share")
        log: list[dict] = []
        res = _run_vector_round(cfg, sks, inputs, {int(k): p for k, p in v["dropouts"].items()}, _b(v["seed"]),
                                (bad["site"], bad["peer"], bad["delta"]) if bad else None, log,
                                v.get("dp_attestation"), v.get("stray_dp_field"), v.get("corrupt_ciphertexts"))
        want = [m["hex"] for m in msgs]
        got = [m["hex"] for m in log]
        if len(got) != len(want):
            return f"{len(got)} messages, expected {len(want)}"
        for i, (g, w) in enumerate(zip(got, want)):
            if g != w:
                m = msgs[i]
                return f"message {i} ({m['phase']}, {m['direction']}, site {m['site']}) differs"
        return _eq("accepted", list(res.accepted_sites), v["accepted"]) or _eq(
            "sum", [int(x) for x in res.sum], v["sum"])

    _check(results, f"{prefix}/replay-every-message", replay)

    def plain_sum():
        acc = sum(np.array(v["inputs"][str(i)], dtype=np.uint64) for i in v["accepted"]) % 2**cfg.bits
        return _eq("sum of accepted inputs", [int(x) for x in acc], v["sum"])

    _check(results, f"{prefix}/sum-equals-plain-sum", plain_sum)
    if "dp_attestation" in v:
        _check(results, f"{prefix}/dp-attestations", lambda: _check_dp_fields(v, cfg))


def seeded_config(cfg: R.RoundConfig, msgs: list[dict]) -> R.RoundConfig:
    """The configuration after phase 0b (SPEC.md section 2) from a logged round: the view every
    GraphView carried (all alike in a vector) and the GraphReveals, each signing that view's hash;
    cfg itself on the complete graph."""
    if cfg.complete:
        return cfg
    views = {M.GraphView.decode(_b(m["hex"])).commits for m in msgs if M.message_type(_b(m["hex"])) == M.T_GRAPH_VIEW}
    if len(views) != 1:
        raise ProtocolError(f"a SecAgg+ vector must log one view, found {len(views)}")
    view = next(iter(views))
    reveals = [M.GraphReveal.decode(_b(m["hex"])) for m in msgs if M.message_type(_b(m["hex"])) == M.T_GRAPH_REVEAL]
    if any(r.view_hash != R.view_hash(cfg, view) for r in reveals):
        raise ProtocolError("a GraphReveal signs another view than the logged one")
    return cfg.seeded(view, {r.sender: r.nonce for r in reveals})


def _check_dp_metadata(dp: dict, cfg: R.RoundConfig) -> str | None:
    """The federation's A is SPEC 7.1's encoding for this round: its domain and length, u64(round_id)
    = the config's, u8(b) and u32(d') = the config's bits and ring length, and its rotation
    commitment is that of rotation_seed = SHA-256(... || u64(round_id) || u64(round_seed)) with the
    vector's own round_seed (attack review F1: the metadata was never tied to the A it pins)."""
    from secure_fedrl.privacy import ddg as D

    a = _b(dp["federation"])
    dom = b"secure-fedrl/ddg/attestation/v1"
    if len(a) != len(dom) + 8 + 32 + 9 + 32 or not a.startswith(dom):
        return "federation attestation is not SPEC 7.1's encoding (domain or length)"
    rid = int.from_bytes(a[len(dom):len(dom) + 8], "big")
    bits, padded = a[len(dom) + 40], int.from_bytes(a[len(dom) + 45:len(dom) + 49], "big")
    seed = D.round_rotation_seed(cfg.round_id, int(dp["round_seed"]))
    return (_eq("attested round id", rid, cfg.round_id) or _eq("attested bits", bits, cfg.bits)
            or _eq("attested padded dim", padded, cfg.dim)
            or _eq("rotation_seed from round_seed", dp["rotation_seed"], _h(seed))
            or _eq("rotation commitment", a[-32:].hex(), D.rotation_commitment(seed)))


def _check_dp_fields(v: dict, cfg: R.RoundConfig) -> str | None:
    """Every MaskedInput carries its site's signature over SHA-256 of what it signed; exactly the
    sites that signed an A other than the federation's are refused and left out of the sum."""
    dp = v["dp_attestation"]
    bad = _check_dp_metadata(dp, cfg)
    if bad:
        return bad
    cheats = {int(k) for k, a in dp["signed"].items() if a != dp["federation"]}
    checked = set()
    for m in v["messages"]:
        if m["phase"] == "masked_input" and m["direction"] == "site->server":
            msg = M.MaskedInput.decode(_b(m["hex"]))
            P.verify(cfg.identity[msg.sender], msg.dp_attestation, P.sha256(_b(dp["signed"][str(msg.sender)])),
                     what=f"DP attestation field of site {msg.sender}")
            checked.add(msg.sender)
    refused = {s for s, phase, _ in v["rejected"] if phase == "masked_input"}
    # never vacuous: every site summed or refused at masked_input had its field checked above
    return _eq("sites whose DP field was checked", sorted(checked), sorted(refused | set(v["accepted"]))) or \
        _eq("refused at masked_input", sorted(refused), sorted(cheats)) or (
        None if not cheats & set(v["accepted"]) else f"sites {sorted(cheats & set(v['accepted']))} summed")


def _check_split_view(v: dict, results: list[CheckResult], prefix: str = "round_split_view") -> None:
    """The site-side split-view vector (SPEC.md section 8, graph seed (2)): messages canonical and
    signed, the two seeded digests from the two logged views, every honest site's answers byte for
    byte, and no paired set M(u) across the split."""
    cfg = _config_from_json(v["config"])
    sites = {int(k): s for k, s in v["sites"].items()}
    group_of = {u: g for g, us in v["groups"].items() for u in us}

    def decoded(u, direction=None):
        return [M.decode(_b(m["hex"])) for m in sites[u]["messages"] if direction in (None, m["direction"])]

    def group_view(g):
        got = {m.commits for u in v["groups"][g] for m in decoded(u) if isinstance(m, M.GraphView)}
        if len(got) != 1:
            raise ProtocolError(f"group {g} must be sent one view, found {len(got)}")
        return next(iter(got))

    def group_config(g):
        view = group_view(g)
        got = {m.reveals for u in v["groups"][g] for m in decoded(u) if isinstance(m, M.KeysBundle)}
        if len(got) != 1:
            raise ProtocolError(f"group {g} must be sent one set of reveals, found {len(got)}")
        return cfg.seeded(view, next(iter(got)))

    def layout():
        if sorted(group_of) != sorted(cfg.site_ids) or len(group_of) != sum(map(len, v["groups"].values())):
            return "groups A and B do not partition the round's sites"
        if sorted(v["groups"]) != ["A", "B"] or group_of.get(v["left_out"]) != "A":
            return "the left-out site must be in group A"
        if _h(cfg.digest) != v["config_digest"]:
            return "config_digest is not the config's D"
        return None

    def signatures():
        bad = layout()
        if bad:
            return bad
        seeded = {g: group_config(g) for g in v["groups"]}
        for u, s in sites.items():
            if s["messages"][0]["direction"] != "site->server":
                return f"site {u}: its log must start with its AdvertiseKeys"
            for m in s["messages"]:
                wire = _b(m["hex"])
                obj = M.decode(wire)
                if obj.encode() != wire:
                    return f"{m['phase']} message of site {u} does not re-encode canonically"
                if m["direction"] == "site->server":
                    if obj.sender != u:
                        return f"message claims sender {obj.sender}, logged from site {u}"
                    obj.verify(cfg.identity[u])
                elif obj.receiver != u:
                    return f"server message addressed to {obj.receiver}, logged to site {u}"
                before = isinstance(obj, (M.AdvertiseKeys, M.GraphView, M.GraphReveal))
                if obj.config_digest != (cfg if before else seeded[group_of[u]]).digest:
                    return f"{m['phase']} message of site {u} bound to another configuration"
        return None

    _check(results, f"{prefix}/messages-parse-and-verify", signatures)

    def digests():
        bad = layout()
        if bad:
            return bad
        va, vb = group_view("A"), group_view("B")
        if [e[0] for e in va] != list(cfg.site_ids):
            return "view A does not cover every site of the round"
        if vb != tuple(e for e in va if e[0] != v["left_out"]):
            return f"view B is not view A without site {v['left_out']}"
        adverts = {u: next(m for m in decoded(u) if isinstance(m, M.AdvertiseKeys)) for u in sites}
        if va != tuple((u, adverts[u].graph_commit) for u in cfg.site_ids):
            return "view A is not the sites' logged graph commitments"
        own = {u: next((m for m in decoded(u) if isinstance(m, M.GraphReveal)), None) for u in sites}
        for u, g in own.items():  # each reveal signs its own view: the split is provable
            if g is not None and g.view_hash != R.view_hash(cfg, group_view(group_of[u])):
                return f"site {u}'s GraphReveal signs another view than its group's"
        for grp in v["groups"]:
            for u in v["groups"][grp]:
                for m in decoded(u):
                    if isinstance(m, M.KeysBundle) and any(own[w] is None or own[w].nonce != r for w, r in m.reveals):
                        return f"the KeysBundle of site {u} carries a reveal no site logged"
        seeded = {g: group_config(g) for g in ("A", "B")}
        for g, s in seeded.items():
            err = _eq(f"graph seed of view {g}", _h(s.graph_seed), v["seeded"][g]["graph_seed"]) or _eq(
                f"seeded digest of view {g}", _h(s.digest), v["seeded"][g]["digest"])
            if err:
                return err
        return None if seeded["A"].digest != seeded["B"].digest else "the two views give one seeded digest"

    _check(results, f"{prefix}/seeded-digests", digests)

    def replay():
        for u, s in sorted(sites.items()):
            client = _split_site(cfg, u, v["identity_private_keys"][str(u)], v["inputs"][str(u)], _b(v["seed"]))
            log: list[dict] = []
            _, refusal = _site_answer(client, log, None)
            for m in s["messages"]:
                if m["direction"] == "server->site":
                    if refusal is not None:
                        return f"site {u} refused in phase {refusal['phase']}, the log goes on"
                    _, refusal = _site_answer(client, log, _b(m["hex"]))
            if len(log) != len(s["messages"]):
                return f"site {u}: {len(log)} messages, expected {len(s['messages'])}"
            for i, (got, want) in enumerate(zip(log, s["messages"])):
                if (got["direction"], got["hex"]) != (want["direction"], want["hex"]):
                    return f"site {u}: message {i} ({want['phase']}, {want['direction']}) differs"
            want = s["refusal"]
            if (refusal is None) != (want is None):
                return f"site {u}: refusal {refusal}, expected {want}"
            if want is not None and (refusal["phase"], refusal["error"]) != (want["phase"], want["error"]):
                return (f"site {u}: refused with {refusal['error']} in {refusal['phase']}, "
                        f"expected {want['error']} in {want['phase']}")
            if want is not None and not refusal["message_prefix"].startswith(want["message_prefix"]):
                return f"site {u}: refusal {refusal['message_prefix']!r}, expected {want['message_prefix']!r}"
        return None

    _check(results, f"{prefix}/replay-every-site", replay)

    def within():
        bad = layout()
        if bad:
            return bad
        if group_view("A") == group_view("B"):  # each group shown one view (group_view), and not the same one
            return "groups A and B were shown the same view"
        would_cross = 0
        for u, s in sorted(sites.items()):
            mi = [m for m in decoded(u, "site->server") if isinstance(m, M.MaskedInput)]
            paired = list(mi[0].paired) if mi else None
            err = _eq(f"paired set of site {u}", paired, s["paired"]) or _eq(
                f"crossing deliveries of site {u}", _split_crossings(group_of, u, s["messages"]),
                s["crossing_deliveries"])
            if err:
                return err
            if paired is None:
                if s["refusal"] is None:
                    return f"site {u} neither masked nor refused"
                continue
            across = sorted(w for w in paired if group_of.get(w) != group_of[u])
            if across:
                return f"site {u} (view {group_of[u]}) paired with {across} across the split"
            would_cross += bool(s["crossing_deliveries"])
        # never vacuous: some site that masked was delivered a ciphertext across the split
        return None if would_cross else "no masking site was delivered a ciphertext across the split"

    _check(results, f"{prefix}/paired-sets-within-view", within)


_CHECKERS = {
    "x25519.json": _check_x25519, "hkdf.json": _check_hkdf, "prg.json": _check_prg,
    "shamir.json": _check_shamir, "encoding.json": _check_encoding,
    **{name: (lambda v, r, name=name: _check_round(v, r, name.removesuffix(".json"))) for name in ROUNDS},
    SPLIT_VIEW["file"]: _check_split_view,
    "ddg_encoding.json": lambda v, r: _check_ddg(v, r),
}


def _check_ddg(v: dict, results: list[CheckResult]) -> None:
    """SPEC 7.1 (distributed DP encoding); generator and checks live in privacy/ddg_conformance.py."""
    from secure_fedrl.privacy.ddg_conformance import check

    check(v, results, _check)


def check_vectors(directory: str | Path = DEFAULT_DIR) -> list[CheckResult]:
    """Check this implementation against every vector file in `directory` (missing file = failure)."""
    d = Path(directory)
    results: list[CheckResult] = []
    for name, checker in _CHECKERS.items():
        path = d / name
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            results.append(CheckResult(name, False, f"cannot read vectors: {exc}"))
            continue
        try:
            checker(data, results)
        except (KeyError, TypeError, ValueError) as exc:
            results.append(CheckResult(name, False, f"malformed vector file: {type(exc).__name__}: {exc}"))
    return results


def format_table(results: list[CheckResult]) -> str:
    """Plain-text pass/fail table with a summary line."""
    width = max([len(r.name) for r in results] + [4])
    lines = [f"{'check'.ljust(width)}  result  detail", f"{'-' * width}  ------  ------"]
    for r in results:
        lines.append(f"{r.name.ljust(width)}  {'PASS' if r.passed else 'FAIL':6}  {r.detail}")
    failed = sum(not r.passed for r in results)
    lines.append(f"{len(results) - failed}/{len(results)} passed" + (f", {failed} FAILED" if failed else ""))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """`python -m secure_fedrl.secagg.conformance [--vectors DIR] [--generate]`: exit 1 on failure."""
    p = argparse.ArgumentParser(description="Check (or regenerate) the secure-aggregation vectors.")
    p.add_argument("--vectors", default=str(DEFAULT_DIR), help="vector directory (default: protocols/vectors)")
    p.add_argument("--generate", action="store_true", help="write the vectors instead of checking them")
    a = p.parse_args(argv)
    if a.generate:
        for path in generate_vectors(a.vectors):
            print(path)
        return 0
    results = check_vectors(a.vectors)
    print(format_table(results))
    return 0 if all(r.passed for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
