"""DDG encoding conformance vector (protocols/vectors/ddg_encoding.json, SPEC 7.1).

Pins, byte for byte or to float64 round-off, every deterministic step of the distributed
discrete Gaussian encoding so that another implementation can check itself: the rotation seed
derivation, the rotation signs, the Walsh-Hadamard rotation, Delta_2, the gamma rule, conditional
rounding (with the uniforms given, including a rejected try), the noise share added (given: the
spec fixes its distribution, not a sampler), the ring encoding, the server's decoding of a sum,
and the signed attestation. Randomness is fixed by the vector, never drawn here.

    .venv/bin/python -m secure_fedrl.privacy.ddg_conformance --generate   # rewrite the vector
    .venv/bin/python -m secure_fedrl.privacy.ddg_conformance              # check it
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np

from secure_fedrl.privacy import ddg as D
from secure_fedrl.secagg.encoding import to_ring

FILE = "ddg_encoding.json"
VECTOR = Path(__file__).resolve().parents[2] / "protocols" / "vectors" / FILE
rotation_seed = D.round_rotation_seed  # the runtime's derivation, checked by the vector


def _signing_key():
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    return Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"secure-fedrl/vectors/ddg-site").digest())


def generate() -> dict:
    rng = np.random.default_rng(20261201)
    round_id, round_seed = 9, 0x1234_5678_9ABC_DEF0
    seed = rotation_seed(round_id, round_seed)
    params = D.ddg_parameters(clip_norm=1.0, dim=6, expected_sites=3, bits=16, noise_multiplier=1.0,
                              max_sites=4)
    d = params.padded_dim
    signs = D.rotation_signs(seed, d)
    x = rng.normal(size=6) * 2.0  # norm > C: clipping is exercised
    clipped = x * min(1.0, params.clip_norm / float(np.linalg.norm(x)))
    padded = np.zeros(d)
    padded[:6] = clipped
    rotated = D.rotate(padded, signs)
    z = rotated / params.gamma
    bound = params.l2_bound_scaled
    # try 0 rounds every coordinate away from zero (too long: rejected), try 1 is random
    away = np.where(z > 0, 0.0, 1.0)
    tries = [away.tolist(), rng.random(d).tolist()]
    rounded, used = D.conditional_round_with_uniforms(z, bound, tries)
    assert used == 1, "vector construction: the first try must be rejected"
    noise = D.sample_discrete_gaussian(params.scaled_stddev**2, d, rng)
    encoded = to_ring(rounded + noise, params.bits)
    others = [to_ring(rng.integers(-40, 40, size=d), params.bits) for _ in range(2)]
    ring_sum = (encoded.astype(np.uint64) + others[0] + others[1]) % (1 << params.bits)
    decoded = D.decode_sum(ring_sum.astype(np.uint32), num_survivors=3, params=params, rotation_seed=seed,
                           check_overflow=False)
    att = D.attestation_for(params, rotation_seed=seed)
    key = _signing_key()
    from cryptography.hazmat.primitives import serialization

    pub = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return {
        "description": "SPEC 7.1 distributed discrete Gaussian encoding: rotation seed, signs, "
                       "Walsh-Hadamard rotation, Delta_2, gamma rule, conditional rounding, noise, ring, "
                       "decode, signed attestation",
        "round_id": round_id, "round_seed": round_seed, "rotation_seed": seed.hex(),
        "params": {"clip": params.clip_norm, "dim": params.dim, "padded_dim": d, "bits": params.bits,
                   "noise_multiplier": params.noise_multiplier, "noise_shares": params.expected_sites,
                   "max_sites": params.max_sites, "beta": params.beta, "k_stddevs": params.k_stddevs,
                   "flatness": params.flatness, "local_stddev": params.local_stddev, "gamma": params.gamma,
                   "l2_bound": bound},
        "signs": [int(s) for s in signs],
        "x": x.tolist(), "clipped_padded": padded.tolist(), "rotated": rotated.tolist(), "scaled": z.tolist(),
        "rounding_tries": tries, "rounding_used_try": used, "rounded": [int(v) for v in rounded],
        "noise": [int(v) for v in noise], "encoded": [int(v) for v in encoded],
        "other_encodings": [[int(v) for v in o] for o in others], "ring_sum": [int(v) for v in ring_sum],
        "decoded": decoded.tolist(),
        "attestation": {"bytes": D.attestation_bytes(att, round_id=round_id).hex(),
                        "public_key": pub.hex(),
                        "signature": D.sign_attestation(att, round_id=round_id, key=key).hex()},
    }


def check(v: dict, results: list, check_one) -> None:
    """Append one result per step to `results` via `check_one(results, name, fn)` (conformance.py)."""
    p = v["params"]

    def eq_list(what, got, want, tol=0.0):
        got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
        if got.shape != want.shape or not np.allclose(got, want, rtol=tol, atol=tol):
            return f"{what}: got {got[:4].tolist()}..., expected {want[:4].tolist()}..."
        return None

    seed = bytes.fromhex(v["rotation_seed"])
    d = int(p["padded_dim"])
    check_one(results, "ddg/rotation-seed",
              lambda: None if rotation_seed(v["round_id"], v["round_seed"]) == seed else "rotation seed differs")
    check_one(results, "ddg/rotation-signs", lambda: eq_list("signs", D.rotation_signs(seed, d), v["signs"]))
    check_one(results, "ddg/walsh-hadamard-rotation", lambda: eq_list(
        "rotated", D.rotate(np.asarray(v["clipped_padded"]), np.asarray(v["signs"], dtype=np.float64)),
        v["rotated"], 1e-12))

    def gamma_rule():
        params = D.ddg_parameters(clip_norm=p["clip"], dim=p["dim"], expected_sites=p["noise_shares"],
                                  bits=p["bits"], noise_multiplier=p["noise_multiplier"], max_sites=p["max_sites"],
                                  beta=p["beta"], k_stddevs=p["k_stddevs"], flatness=p["flatness"])
        for name, got in (("gamma", params.gamma), ("local_stddev", params.local_stddev),
                          ("l2_bound", params.l2_bound_scaled)):
            if not np.isclose(got, p[name], rtol=1e-12, atol=0):
                return f"{name}: got {got!r}, expected {p[name]!r}"
        return None

    check_one(results, "ddg/gamma-rule-and-delta2", gamma_rule)

    def rounding():
        r, used = D.conditional_round_with_uniforms(np.asarray(v["scaled"]), p["l2_bound"], v["rounding_tries"])
        if used != v["rounding_used_try"]:
            return f"accepted try {used}, expected {v['rounding_used_try']}"
        return eq_list("rounded", r, v["rounded"])

    check_one(results, "ddg/conditional-rounding", rounding)
    check_one(results, "ddg/ring-encoding", lambda: eq_list(
        "encoded", to_ring(np.asarray(v["rounded"]) + np.asarray(v["noise"]), p["bits"]), v["encoded"]))

    def decode():
        params = D.DDGParams(clip_norm=p["clip"], dim=p["dim"], bits=p["bits"], local_stddev=p["local_stddev"],
                             gamma=p["gamma"], expected_sites=p["noise_shares"], max_sites=p["max_sites"],
                             noise_multiplier=p["noise_multiplier"], beta=p["beta"], k_stddevs=p["k_stddevs"],
                             flatness=p["flatness"])
        ring = np.asarray(v["ring_sum"], dtype=np.uint32)
        want_sum = (np.asarray(v["encoded"], dtype=np.uint64) + sum(np.asarray(o, dtype=np.uint64)
                                                                   for o in v["other_encodings"])) % (1 << p["bits"])
        if not np.array_equal(ring.astype(np.uint64), want_sum):
            return "ring_sum is not the sum of the encodings mod 2^bits"
        got = D.decode_sum(ring, num_survivors=3, params=params, rotation_seed=seed, check_overflow=False)
        return eq_list("decoded", got, v["decoded"], 1e-9)

    check_one(results, "ddg/decode-sum", decode)

    def attestation():
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

        params = D.DDGParams(clip_norm=p["clip"], dim=p["dim"], bits=p["bits"], local_stddev=p["local_stddev"],
                             gamma=p["gamma"], expected_sites=p["noise_shares"], max_sites=p["max_sites"],
                             noise_multiplier=p["noise_multiplier"], beta=p["beta"])
        att = D.attestation_for(params, rotation_seed=seed)
        raw = D.attestation_bytes(att, round_id=v["round_id"])
        if raw.hex() != v["attestation"]["bytes"]:
            return "attestation bytes differ"
        pub = Ed25519PublicKey.from_public_bytes(bytes.fromhex(v["attestation"]["public_key"]))
        D.verify_signed_attestation(att, bytes.fromhex(v["attestation"]["signature"]), round_id=v["round_id"],
                                    public_key=pub)
        return None

    check_one(results, "ddg/signed-attestation", attestation)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--generate" in argv:
        VECTOR.write_text(json.dumps(generate(), indent=1) + "\n")
        print(f"wrote {VECTOR}")
        return 0
    from secure_fedrl.secagg.conformance import _check

    results: list = []
    check(json.loads(VECTOR.read_text()), results, _check)
    for r in results:
        print(r)
    return 0 if all(r.passed for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
