"""In-memory driver: runs one whole round between SecAggClient and SecAggServer objects.

Every message goes through its canonical byte encoding (as it would on a wire), so the driver
exercises exactly what a transport would carry. Dropouts are injected per site and phase; the
`on_upload` / `on_download` hooks let tests play an attacker in the network or a malicious server
(tamper, replay, duplicate or drop messages).
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass, field
from typing import Callable, Hashable, Mapping, Sequence

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from secure_fedrl.errors import ConfigError, ProtocolError, SecureFedRLError

from . import messages as M
from . import primitives as P
from .client import SecAggClient
from .protocol import PHASES, RoundConfig
from .server import SecAggServer

#: on_upload(phase, site_id, wire) -> list of wires the server receives instead (tamper/replay/drop).
UploadHook = Callable[[str, int, bytes], Sequence[bytes]]
#: on_download(phase, site_id, wire) -> the wire the site receives instead (None = not delivered).
DownloadHook = Callable[[str, int, bytes], "bytes | None"]


@dataclass
class RoundResult:
    """What a round produced, keyed by the caller's site keys.

    sum: exact sum mod 2^bits of the inputs of `accepted_sites` (the survivors to count for DP).
    dropped: site -> phase whose message it did not deliver (dropout, abort or rejection).
    rejected: (site, phase, reason) for each upload the server refused.
    site_errors: site -> reason it abandoned the round (it detected misbehaviour).
    bytes_per_site / bytes_to_site: encoded bytes uploaded / downloaded by each site.
    """

    sum: np.ndarray
    accepted_sites: tuple
    dropped: dict
    rejected: list = field(default_factory=list)
    site_errors: dict = field(default_factory=dict)
    bytes_per_site: dict = field(default_factory=dict)
    bytes_to_site: dict = field(default_factory=dict)
    site_seconds: dict = field(default_factory=dict)
    server_seconds: float = 0.0


def _site_rand(seed: bytes | None, sid: int) -> P.RandBytes:
    if seed is None:
        return os.urandom
    return P.SeededRandom(seed + b"/site/" + sid.to_bytes(4, "big"))


def _seed_bytes(seed: int | bytes | None) -> bytes | None:
    if seed is None:
        return None
    if isinstance(seed, (bytes, bytearray)):
        return bytes(seed)
    if isinstance(seed, (int, np.integer)):
        return int(seed).to_bytes(16, "big", signed=True)
    raise ConfigError(f"seed must be None, an int or bytes, got {type(seed).__name__}")


def _check_inputs(vectors: Sequence[np.ndarray], bits: int) -> tuple[list[np.ndarray], int]:
    if not isinstance(bits, int) or not 1 <= bits <= 32:
        raise ConfigError(f"bits must be an integer in [1, 32], got {bits!r}")
    out = []
    for i, v in enumerate(vectors):
        a = np.asarray(v)
        if a.ndim != 1 or not np.issubdtype(a.dtype, np.integer):
            raise ConfigError(f"input {i}: expected a 1-D integer (uint32) vector, got {a.dtype} shape {a.shape}")
        if a.size and (int(a.min()) < 0 or int(a.max()) >> bits):
            raise ConfigError(f"input {i}: values must be reduced mod 2^{bits}")
        out.append(a.astype(np.uint32, copy=False))
    dims = {a.size for a in out}
    if len(dims) != 1:
        raise ConfigError(f"inputs must all have the same length, got lengths {sorted(dims)}")
    return out, dims.pop()


def run_round(
    inputs: Mapping[Hashable, np.ndarray],
    *,
    threshold: int,
    neighbors: int | None = None,
    bits: int = 32,
    dropouts: Mapping[Hashable, str] | None = None,
    round_id: int = 0,
    seed: int | bytes | None = None,
    identity_keys: Mapping[Hashable, Ed25519PrivateKey] | None = None,
    graph_seed: bytes | None = None,
    on_upload: UploadHook | None = None,
    on_download: DownloadHook | None = None,
    dp_attestations: Mapping[Hashable, bytes] | None = None,
    dp_verifier: Callable[[RoundConfig], Callable[[int, bytes], None]] | None = None,
) -> RoundResult:
    """Run one secure-aggregation round in memory and return the sum plus who is in it.

    Sites are numbered 1..n in sorted order of their keys. `seed` makes all crypto randomness
    deterministic (tests and conformance only); None uses os.urandom. Raises BelowThresholdError
    when fewer than `threshold` sites remain at any phase (nothing is released).

    `dp_attestations` (site key -> 64-byte signature over its DDG attestation, SPEC.md section
    7.1) go into the sites' MaskedInputs; `dp_verifier(config)` returns the server's
    `verify_dp(site_id, field)` for the round (a site whose field fails is not summed).
    """
    keys = sorted(inputs)
    if len(keys) < 2:
        raise ConfigError(f"secure aggregation needs at least 2 sites, got {len(keys)}")
    vectors, dim = _check_inputs([inputs[k] for k in keys], bits)
    ids = {k: i + 1 for i, k in enumerate(keys)}
    drops: dict[int, str] = {}
    for k, phase in (dropouts or {}).items():
        if k not in ids:
            raise ConfigError(f"dropout for unknown site {k!r}")
        if phase not in PHASES:
            raise ConfigError(f"dropout phase must be one of {PHASES}, got {phase!r}")
        drops[ids[k]] = phase
    sb = _seed_bytes(seed)
    if identity_keys is None:
        sks = {ids[k]: P.ed25519_keypair(_site_rand(None if sb is None else sb + b"/identity", ids[k]))[0] for k in keys}
    else:
        sks = {ids[k]: identity_keys[k] for k in keys}
    if graph_seed is None:
        graph_seed = hashlib.sha256(b"graph-seed" + sb).digest() if sb is not None else os.urandom(32)
    cfg = RoundConfig(
        round_id=round_id,
        site_ids=tuple(sorted(ids.values())),
        identity_keys=tuple(P.ed25519_public_bytes(sks[i]) for i in sorted(ids.values())),
        threshold=threshold,
        dim=dim,
        bits=bits,
        degree=neighbors,
        graph_seed=graph_seed,
    )
    clients = {
        ids[k]: SecAggClient(config=cfg, site_id=ids[k], identity_key=sks[ids[k]], vector=vectors[i],
                             randbytes=_site_rand(sb, ids[k]),
                             dp_attestation=(dp_attestations or {}).get(k, b""))
        for i, k in enumerate(keys)
    }
    server = SecAggServer(config=cfg, verify_dp=None if dp_verifier is None else dp_verifier(cfg))
    # A phase this round skips (graph_reveal on the complete graph) stops the site before the next one.
    stops = {sid: sum(p in cfg.phases for p in PHASES[:PHASES.index(ph)]) for sid, ph in drops.items()}
    return _drive(cfg, clients, server, stops, {v: k for k, v in ids.items()}, on_upload, on_download)


def _drive(cfg, clients, server, drops, key_of, on_upload, on_download) -> RoundResult:
    up = {i: 0 for i in clients}
    down = {i: 0 for i in clients}
    secs = {i: 0.0 for i in clients}
    rejected: list = []
    errors: dict = {}
    server_s = 0.0
    inbox: dict[int, bytes] = {}
    handlers = {
        "graph_reveal": lambda c, m: c.graph_reveal(m),
        "share_keys": lambda c, m: c.share_keys(m),
        "masked_input": lambda c, m: c.masked_input(m),
        "consistency_check": lambda c, m: c.consistency_check(m),
        "unmasking": lambda c, m: c.unmask(m),
    }
    for p, phase in enumerate(cfg.phases):
        for sid, client in clients.items():
            if sid in errors or drops.get(sid, len(PHASES)) <= p:
                continue
            if p > 0 and sid not in inbox:
                continue  # the server no longer counts this site
            t0 = time.perf_counter()
            try:
                if p == 0:
                    msg = client.advertise_keys()
                else:
                    msg = handlers[phase](client, M.decode(inbox[sid]))
                wire = msg.encode()
            except SecureFedRLError as err:
                errors[sid] = f"{phase}: {err}"
                continue
            finally:
                secs[sid] += time.perf_counter() - t0
            up[sid] += len(wire)
            for w in on_upload(phase, sid, wire) if on_upload else (wire,):
                t0 = time.perf_counter()
                try:
                    server.receive(w)
                except ProtocolError as err:
                    rejected.append((key_of.get(sid, sid), phase, str(err)))
                finally:
                    server_s += time.perf_counter() - t0
        t0 = time.perf_counter()
        out = server.finish_phase()  # BelowThresholdError propagates: nothing released
        inbox = {u: m.encode() for u, m in out.items()}
        server_s += time.perf_counter() - t0
        if on_download:
            inbox = {u: w2 for u, w in inbox.items() if (w2 := on_download(phase, u, w)) is not None}
        for u, w in inbox.items():
            down[u] += len(w)
    outcome = server.outcome
    k = key_of.get
    return RoundResult(
        sum=outcome.sum,
        accepted_sites=tuple(k(u) for u in outcome.accepted),
        dropped={k(u): ph for u, ph in outcome.dropped.items()},
        rejected=rejected,
        site_errors={k(u): e for u, e in errors.items()},
        bytes_per_site={k(u): b for u, b in up.items()},
        bytes_to_site={k(u): b for u, b in down.items()},
        site_seconds={k(u): s for u, s in secs.items()},
        server_seconds=server_s,
    )


def simulate_round(
    inputs: Sequence[np.ndarray],
    *,
    threshold: int,
    neighbors: int | None = None,
    dropouts: Mapping[int, str] | None = None,
    bits: int = 32,
    seed: int | bytes | None = None,
) -> np.ndarray:
    """Exact sum mod 2^bits of the accepted sites' inputs (uint32 vectors reduced mod 2^bits).

    neighbors None = complete graph (SecAgg), int k = SecAgg+ with degree k. dropouts maps a site
    index (0-based) to the phase before whose message it drops: "advertise_keys", "share_keys",
    "masked_input", "consistency_check" or "unmasking". A site that drops before its masked input
    is simply left out of the sum. Raises BelowThresholdError (a ProtocolError) when fewer than
    `threshold` sites are live at some phase; ConfigError for invalid arguments.
    """
    result = run_round(
        {i: v for i, v in enumerate(inputs)},
        threshold=threshold, neighbors=neighbors, bits=bits, dropouts=dropouts, seed=seed,
    )
    return result.sum
