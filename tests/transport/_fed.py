"""A tiny federation for the transport tests: one SecAgg round, run the same way over any transport.

Run as a script it is one process of a multi-process loopback federation:

    python _fed.py server PKI_DIR PORT_FILE RESULT_JSON SITE...   # gRPC server + round driver
    python _fed.py sites  PKI_DIR PORT_FILE SITE[:STOP_PHASE]...  # several sites, one channel each
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from secure_fedrl.secagg.primitives import SeededRandom
from secure_fedrl.secagg.protocol import RoundConfig
from secure_fedrl.transport.backoff import Backoff, retry
from secure_fedrl.transport.base import Hub, PhaseDeadlines, RosterEntry, TransportError
from secure_fedrl.transport.pki import load_site_identity
from secure_fedrl.transport.rounds import announcement, run_server_round, run_site_round

DIM = 257
ROUND = 1
SITES = ("s1", "s2", "s3", "s4")
SEED = b"transport-test"
DEADLINES = PhaseDeadlines(advertise_keys=20, share_keys=20, masked_input=3, consistency_check=20, unmasking=20)


def site_vector(number: int, dim: int = DIM) -> np.ndarray:
    return np.random.default_rng(number).integers(0, 2**32, dim, dtype=np.uint32)


def announcements(pki_dir, names, *, round_id=ROUND, dim=DIM, threshold=None, policy=None, degree=None):
    ids = {n: load_site_identity(pki_dir, n) for n in names}
    order = sorted(names, key=lambda n: ids[n].number)
    cfg = RoundConfig(round_id=round_id, site_ids=tuple(ids[n].number for n in order),
                      identity_keys=tuple(ids[n].protocol_public_key for n in order),
                      threshold=threshold or len(names) // 2 + 1, dim=dim, graph_seed=bytes(range(32)),
                      degree=degree)
    roster = tuple(RosterEntry(ids[n].number, n, x509.load_pem_x509_certificate(ids[n].tls_cert_pem)
                               .public_bytes(Encoding.DER)) for n in order)
    ann = announcement(cfg, roster, np.linspace(0, 1, 33, dtype=np.float32) if policy is None else policy)
    return {n: ann for n in names}, ids


def expected_sum(numbers, dim=DIM) -> np.ndarray:
    total = sum(site_vector(u, dim).astype(np.uint64) for u in numbers)
    return (total % 2**32).astype(np.uint32)


class StopBefore:
    """Wraps a SiteTransport: the site dies just before uploading `phase` (a dropout)."""

    def __init__(self, inner, phase):
        self.inner, self.phase, self.name = inner, phase, inner.name

    def __getattr__(self, attr):
        return getattr(self.inner, attr)

    def upload(self, round_id, phase, payload):
        if phase == self.phase:
            if os.environ.get("FED_SIGKILL"):  # die for real: the process, its channels, mid-round
                os.kill(os.getpid(), signal.SIGKILL)
            raise TransportError("CANCELLED", f"{self.name} stopped before {phase}")
        return self.inner.upload(round_id, phase, payload)


def site_main(transport, identity, *, stop_before=None, timeout=30.0) -> str:
    """Join (with backoff), await the round, take part, then wait for the federation to end."""
    retry(transport.join, backoff=Backoff(base=0.05, cap=0.5), give_up_after=timeout, what="join")
    b = transport.await_round(0, timeout)
    ann = b.announcement
    t = StopBefore(transport, stop_before) if stop_before else transport
    status = run_site_round(t, ann, number=identity.number, identity_key=identity.identity_key,
                            vector=site_vector(identity.number, ann.config.dim), trust=identity.trust,
                            timeout=timeout, randbytes=SeededRandom(SEED + identity.name.encode()))
    if stop_before:
        return status
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            if transport.await_round(ann.round_id, 5.0).finished:
                return status
        except TransportError as err:
            if err.status != "DEADLINE_EXCEEDED":
                raise
    return status + " (no finish)"


def _deadlines() -> PhaseDeadlines:
    if "FED_DEADLINE" in os.environ:
        return PhaseDeadlines(*(float(os.environ["FED_DEADLINE"]),) * 5)
    return DEADLINES


def server_main(hub: Hub, anns, *, expect: int, timeout: float = 60.0, deadlines: PhaseDeadlines = DEADLINES):
    live = hub.wait_for_sites(expect, timeout)
    if len(live) < expect:
        raise SystemExit(f"only {len(live)} of {expect} sites joined")
    result = run_server_round(hub, anns, deadlines=deadlines)
    hub.finish()
    return result


def _serve(pki_dir, port_file, result_json, names):
    from secure_fedrl.transport.grpc_transport import GrpcServer
    from secure_fedrl.transport.pki import load_server_identity

    trace: list = []
    hub = Hub(trace=trace)
    server = GrpcServer(hub, load_server_identity(pki_dir))
    port = server.start()
    tmp = Path(port_file + ".tmp")
    tmp.write_text(str(port))
    tmp.rename(port_file)
    anns, _ = announcements(pki_dir, names)
    res = server_main(hub, anns, expect=len(names), deadlines=_deadlines())
    time.sleep(1.0)  # let the sites see `finished`
    server.stop(1.0)
    out = {"trace": trace, "aborted": res.aborted, "rejected": res.rejected}
    if res.outcome is not None:
        out["sum"] = res.outcome.sum.tolist()
        out["accepted"] = list(res.outcome.accepted)
    Path(result_json).write_text(json.dumps(out))


def _sites(pki_dir, port_file, specs):
    from secure_fedrl.transport.grpc_transport import GrpcSite

    end = time.monotonic() + 30
    while not Path(port_file).exists():
        if time.monotonic() > end:
            raise SystemExit("server never wrote its port")
        time.sleep(0.05)
    address = f"127.0.0.1:{Path(port_file).read_text()}"
    statuses = {}

    def one(spec):
        name, _, stop = spec.partition(":")
        ident = load_site_identity(pki_dir, name)
        t = GrpcSite(ident, address)
        try:
            statuses[name] = site_main(t, ident, stop_before=stop or None)
        finally:
            t.close()
    threads = [threading.Thread(target=one, args=(s,)) for s in specs]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    print(json.dumps(statuses))


if __name__ == "__main__":
    mode, rest = sys.argv[1], sys.argv[2:]
    if mode == "server":
        _serve(rest[0], rest[1], rest[2], rest[3:])
    else:
        _sites(rest[0], rest[1], rest[2:])
