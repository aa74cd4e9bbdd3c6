#!/usr/bin/env python3
"""Deployment benchmark (issue 8, "Measured"): the federation in memory and over gRPC + mTLS.

1. The same federation (default 50 sites, secure aggregation + client-level DP (DDG), d = 100k)
   in memory (Hub + InMemorySite, one thread per site in this process, as `simulate` runs it)
   and over gRPC with mutual TLS (GrpcServer in this process, the sites in ONE separate `join`-like
   process, each site its own mTLS channel, as `serve` / `join --site ... --site ...` run it).
   Each round is what the runtime runs: the server broadcasts the policy (d floats) and the round
   order; each site DDG-encodes (clip, rotate, round, noise share) a d-long update, then SecAgg+
   with the aggregator's threshold and degree; the server decodes the mean. Round time: from
   opening the round to the decoded mean at the server, median of --rounds rounds per arm, both
   arms in the same run, ratio gRPC / in-memory (goal <= 1.5x).
   Bytes per site: the SecAgg payload bytes up + down (`ServerRoundResult.bytes_per_site`) and,
   over gRPC, the bytes actually on the wire: TCP payload bytes (TLS records holding HTTP/2 frames
   holding protobuf chunks: the policy broadcast, the round's long polls, every SecAgg phase)
   counted by the kernel on the server's sockets (tcp_info bytes_received / bytes_sent, read with
   `ss -ti` before and after each round).
2. Scale and dropouts over gRPC: --scale-sites (default 200) sites on loopback in two site
   processes, d = --scale-dim (default 1000) plain uint32 vectors derived from (round, site
   number), so the server recomputes the exact sum of the sites it accepted. --scale-rounds rounds
   with no failure, then --scale-rounds rounds in each of which 10% of the sites (drawn at
   random) die at a random phase (stop before uploading it and close their channel, like a
   killed process; they rejoin with a fresh channel for the next round). Every round must complete
   with the survivors' exact sum (a site killed after its masked input was accepted is in it).

    .venv/bin/python bench/deploy.py            # the issue's sizes; several minutes on a busy 2-core box
    .venv/bin/python bench/deploy.py --quick    # 8 sites, d = 10k: a smoke test in < 30 s
    .venv/bin/python bench/deploy.py --sites 50 --dim 100000 --rounds 3 --scale-sites 200

The tables are printed and written to bench/results/deploy.txt (--out to change, --out '' not to).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
from cryptography import x509  # noqa: E402
from cryptography.hazmat.primitives.serialization import Encoding  # noqa: E402

from secure_fedrl.runtime.aggregation import SIMULATED_DROPOUT_PHASES  # noqa: E402
from secure_fedrl.secagg.protocol import PHASES, RoundConfig  # noqa: E402
from secure_fedrl.transport.backoff import RETRYABLE, Backoff, Heartbeater, retry  # noqa: E402
from secure_fedrl.transport.base import (Hub, InMemorySite, PhaseDeadlines, RosterEntry,  # noqa: E402
                                         RoundAnnouncement, TransportError)
from secure_fedrl.transport.rounds import run_server_round, run_site_round  # noqa: E402

RESULTS = REPO / "bench" / "results" / "deploy.txt"
#: Part 1 never waits for a deadline (nobody drops): generous ones.
CALM = PhaseDeadlines(**dict.fromkeys(PHASES, 300.0))


# ============================================================================ the federation
def site_names(n: int) -> list[str]:
    return [f"site-{i}" for i in range(n)]  # what expand_sites names `name = "site", count = n`


def ddg_config(n: int):
    """Client-level DP (DDG) under SecAgg+, every site sampled, a fixed noise multiplier."""
    from secure_fedrl.config import config_from_dict

    return config_from_dict({
        "federation": {"name": "bench-deploy", "rounds": 3, "seed": 0},
        "local": {"algorithm": "ppo", "steps": 128},
        "strategy": {"name": "fedavg", "weighting": "uniform"},
        "sampling": {"fraction": 1.0},
        "secure_aggregation": {"enabled": True, "bits": 32},
        "privacy": {"unit": "client", "mechanism": "ddg", "clip": 1.0, "noise_multiplier": 1.0,
                    "accountant": "rdp", "delta": 1e-5},
        "sites": [{"name": "site", "env": "CartPole-v1", "num_envs": 1, "seed": 1, "count": n}],
    })


def plain_config(n: int, dropout: float):
    """SecAgg+ without DP; the graph degree sized for `dropout` (the aggregator's automatic k)."""
    from secure_fedrl.config import config_from_dict

    return config_from_dict({
        "federation": {"name": "bench-deploy-scale", "rounds": 1, "seed": 0},
        "local": {"algorithm": "ppo", "steps": 128},
        "strategy": {"name": "fedavg", "weighting": "uniform"},
        "sampling": {"fraction": 1.0},
        "secure_aggregation": {"enabled": True, "bits": 32, "dropout_rate": dropout},
        "sites": [{"name": "site", "env": "CartPole-v1", "num_envs": 1, "seed": 1, "count": n}],
    })


def build_aggregator(config, dim: int):
    """As a site process builds it (runtime/deploy.py SiteProcess): from the config alone."""
    from secure_fedrl.runtime.aggregation import build_aggregator as build
    from secure_fedrl.runtime.privacy_plan import PrivacyPlan

    plan = PrivacyPlan(config, site_names(config.num_sites), ledger_path=None)
    agg = build(config, dim=dim, privacy=plan)
    plan.bind(agg)
    return agg


def make_pki(directory: Path, names: list[str]) -> None:
    from secure_fedrl.transport.pki import CertificateAuthority

    ca = CertificateAuthority.init(directory)
    for name in names:
        ca.issue_site(name)
    ca.issue_server()


def load_ids(pki: Path, names: list[str]) -> dict:
    from secure_fedrl.transport.pki import load_site_identity

    return {n: load_site_identity(pki, n) for n in names}


def roster(ids: dict) -> tuple[list[str], tuple[RosterEntry, ...]]:
    order = sorted(ids, key=lambda n: ids[n].number)
    return order, tuple(RosterEntry(ids[n].number, n, x509.load_pem_x509_certificate(ids[n].tls_cert_pem)
                                    .public_bytes(Encoding.DER)) for n in order)


def update_vector(round_id: int, number: int, dim: int) -> np.ndarray:
    """A site's plaintext update (part 1): norm ~0.5, under the clip of 1 (what local training hands over)."""
    rng = np.random.default_rng([7, round_id, number])
    return (rng.standard_normal(dim, dtype=np.float32) * np.float32(0.5 / math.sqrt(dim))).astype(np.float32)


def plain_vector(round_id: int, number: int, dim: int) -> np.ndarray:
    return np.random.default_rng([11, round_id, number]).integers(0, 2**32, dim, dtype=np.uint32)


def exact_sum(round_id: int, numbers, dim: int) -> np.ndarray:
    total = np.zeros(dim, dtype=np.uint64)
    for u in numbers:
        total += plain_vector(round_id, u, dim)
    return (total % 2**32).astype(np.uint32)


def kill_plan(seed: int, round_id: int, names: list[str], fraction: float) -> dict[str, str]:
    """Which sites die in `round_id`, and before which phase (the same in every process)."""
    rng = random.Random(f"{seed}:{round_id}")
    k = max(1, round(fraction * len(names)))
    return {n: rng.choice(SIMULATED_DROPOUT_PHASES) for n in sorted(rng.sample(sorted(names), k))}


# ============================================================================ sites
class StopBefore:
    """A site's transport that dies just before uploading `phase` (a killed site: no goodbye)."""

    def __init__(self, inner, phase: str) -> None:
        self.inner, self.phase, self.name = inner, phase, inner.name

    def __getattr__(self, attr):
        return getattr(self.inner, attr)

    def upload(self, round_id, phase, payload):
        if phase == self.phase:
            raise TransportError("CANCELLED", f"{self.name} killed before {phase}")
        return self.inner.upload(round_id, phase, payload)


def site_loop(transport, ident, *, work, trust, timeout: float, kill=None, reopen=None, join=True,
              mark=None, heartbeat: float | None = None) -> list[str]:
    """Join, then take part in every round until the federation finishes (a `join` site's loop).

    work(ann) -> the vector this site masks; kill(round) -> phase to die before, or None;
    reopen(transport, round) -> a fresh transport (joined) once the killed round is over;
    mark(round) is called when the broadcast arrives and when the site's part is over; with
    `heartbeat` (seconds) the site heartbeats while it takes part, as `join` does (a killed site's
    beats stop with it)."""
    if join:
        retry(transport.join, backoff=Backoff(base=0.05, cap=0.5), give_up_after=180.0, what="join")
    after, statuses = 0, []
    while True:
        try:
            b = transport.await_round(after, timeout)
        except TransportError as err:
            if err.status == "DEADLINE_EXCEEDED":
                continue
            raise
        if b.finished:
            return statuses
        after = b.round_id
        ann = b.announcement
        if ann is None:
            continue
        if mark:
            mark(ann.round_id)
        stop = kill(ann.round_id) if kill else None
        t = StopBefore(transport, stop) if stop else transport
        with Heartbeater(transport, heartbeat) if heartbeat else contextlib.nullcontext():
            vector = work(ann)
            statuses.append(run_site_round(t, ann, number=ident.number, identity_key=ident.identity_key,
                                           vector=vector, trust=trust, timeout=timeout))
        if mark:
            mark(ann.round_id)
        if stop:
            transport = reopen(transport, ann.round_id)


def ddg_work(agg, ident, dim: int):
    """Part 1's site work once the broadcast arrives: the round's plan, the update, DDG encoding."""
    from secure_fedrl.runtime.site import RoundOrder

    def work(ann):
        order = RoundOrder.decode(ann.extras)
        plan = agg.plan(order.round, planned=order.planned, round_seed=order.round_seed)
        if ann.policy.shape != (dim,):
            raise SystemExit(f"{ident.name}: policy of {ann.policy.size} values")
        vec = update_vector(order.round, ident.number, dim)
        return agg.site_encode(plan, vec, rng=np.random.default_rng([8, order.round, ident.number]),
                               signing_key=ident.identity_key)
    return work


def sites_main(spec_file: str) -> None:
    """A `join`-like process hosting several sites, each its own GrpcSite (own mTLS channel)."""
    from secure_fedrl.transport.grpc_transport import GrpcSite, Limits

    logging.getLogger("secure_fedrl").setLevel(logging.ERROR)
    spec = json.loads(Path(spec_file).read_text())
    pki, address, names, dim = Path(spec["pki"]), spec["address"], spec["names"], spec["dim"]
    ids = load_ids(pki, names)
    agg = build_aggregator(ddg_config(spec["n"]), dim) if spec["mode"] == "ddg" else None
    limits = Limits()
    markers = Path(spec["markers"]) if spec.get("markers") else None

    def reopen(transport, round_id):
        transport.close()  # the killed site's connection goes away
        marker = markers / f"round-{round_id}.done"
        end = time.monotonic() + 300
        while not marker.exists() and time.monotonic() < end:
            time.sleep(0.05)
        fresh = GrpcSite(transport.identity, address, limits=limits)
        retry(fresh.join, backoff=Backoff(base=0.1, cap=1.0), give_up_after=120.0,
              retry_on=RETRYABLE | {"ALREADY_EXISTS"}, what="rejoin")
        return fresh

    out: dict[str, object] = {}
    errors: list[str] = []
    spans: dict[int, list[float]] = {}  # round -> [process CPU at the first broadcast, at the last site's end]
    lock = threading.Lock()

    def mark(r):
        now = time.process_time()
        with lock:
            span = spans.setdefault(r, [now, now])
            span[1] = max(span[1], now)
    joined = threading.Barrier(len(names) + 1)

    def one(name):
        ident = ids[name]
        t = GrpcSite(ident, address, limits=limits)
        if agg is not None:
            work = ddg_work(agg, ident, dim)
        else:
            def work(ann, u=ident.number):
                return plain_vector(ann.round_id, u, dim)
        kill = None
        if spec.get("kill_from"):
            def kill(r, name=name):
                if r < spec["kill_from"]:
                    return None
                return kill_plan(spec["seed"], r, spec["all_names"], spec["fraction"]).get(name)
        try:
            retry(t.join, backoff=Backoff(base=0.05, cap=0.5), give_up_after=180.0, what="join")
            joined.wait()
            out[name] = site_loop(t, ident, work=work, trust=ident.trust, timeout=120.0, kill=kill, reopen=reopen,
                                  join=False, mark=mark, heartbeat=spec.get("heartbeat"))
        except BaseException as exc:  # noqa: BLE001 - reported to the driver
            errors.append(f"{name}: {type(exc).__name__}: {exc}")
            try:
                joined.abort()
            except threading.BrokenBarrierError:
                pass
        finally:
            t.close()
    threads = [threading.Thread(target=one, args=(n,), daemon=True) for n in names]
    for th in threads:
        th.start()
    try:
        joined.wait()
    except threading.BrokenBarrierError:
        pass
    cpu0 = time.process_time()
    for th in threads:
        th.join()
    print(json.dumps({"statuses": out, "errors": errors, "cpu_s": time.process_time() - cpu0,
                      "round_cpu_s": {str(r): b - a for r, (a, b) in spans.items()}}))


# ============================================================================ wire bytes
_SOCK = re.compile(r"bytes_(sent|received):(\d+)")


def tcp_bytes(port: int) -> dict[str, tuple[int, int]] | None:
    """Kernel TCP payload counters of the server's established sockets: peer -> (sent, received)."""
    if shutil.which("ss") is None:
        return None
    try:
        text = subprocess.run(["ss", "-tinH", "state", "established", f"( sport = :{port} )"],
                              capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    out: dict[str, tuple[int, int]] = {}
    peer = None
    for line in text.splitlines():
        if not line.strip():
            continue
        if not line[0].isspace():
            peer = line.split()[-1]
            out[peer] = (0, 0)
        elif peer is not None:
            got = dict(_SOCK.findall(line))
            out[peer] = (int(got.get("sent", 0)), int(got.get("received", 0)))
    return out


def wire_diff(before, after) -> tuple[int, int] | None:
    if before is None or after is None:
        return None
    down = sum(s - before.get(p, (0, 0))[0] for p, (s, _) in after.items())
    up = sum(r - before.get(p, (0, 0))[1] for p, (_, r) in after.items())
    return down, up


# ============================================================================ part 1
def ddg_round_anns(agg, order, entries, ids, r: int, n: int, dim: int, policy):
    from secure_fedrl.runtime.site import RoundOrder

    seed = 1_000_003 * r + 17
    plan = agg.plan(r, planned=n, round_seed=seed)
    cfg = RoundConfig(round_id=r, site_ids=tuple(ids[x].number for x in order),
                      identity_keys=tuple(ids[x].protocol_public_key for x in order), threshold=plan.threshold,
                      dim=agg.wire_dim(plan), bits=32, degree=plan.degree, graph_seed=agg.graph_seed(seed))
    ann = RoundAnnouncement(cfg, entries, policy, RoundOrder(round=r, round_seed=seed, planned=n, dim=dim).encode())
    return plan, {x: ann for x in order}


def _spawn_sites(spec: dict, tmp: Path, tag: str) -> subprocess.Popen:
    path = tmp / f"sites-{tag}.json"
    path.write_text(json.dumps(spec))
    return subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "_sites", str(path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _collect(procs: list[subprocess.Popen], timeout: float) -> list[dict]:
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=timeout)
        if p.returncode != 0:
            raise SystemExit(f"site process failed (exit {p.returncode}): {err[-2000:]}")
        res = json.loads(out.strip().splitlines()[-1])
        if res["errors"]:
            raise SystemExit(f"site process errors: {res['errors'][:3]}")
        outs.append(res)
    return outs


def grpc_server(hub, pki: Path, n: int):
    from secure_fedrl.transport.grpc_transport import GrpcServer, Limits
    from secure_fedrl.transport.pki import load_server_identity

    # The sync server holds one worker per blocked long poll: 3 per site is ample (serve's sizing).
    server = GrpcServer(hub, load_server_identity(pki), limits=Limits(max_sites=n, max_workers=max(64, 3 * n + 16)))
    return server, server.start()


def ddg_round(arm: dict, r: int) -> dict:
    """The server's side of one part-1 round, timed from opening the round to the decoded mean."""
    hub, agg, ids, dim, port = arm["hub"], arm["agg"], arm["ids"], arm["dim"], arm.get("port")
    order, entries = roster(ids)
    n = len(order)
    plan, anns = ddg_round_anns(agg, order, entries, ids, r, n, dim, arm["policy"])
    before = tcp_bytes(port) if port else None
    cpu0, t0 = time.process_time(), time.perf_counter()
    res = run_server_round(hub, anns, deadlines=CALM)
    if res.outcome is None:
        raise SystemExit(f"{arm['name']} round {r} aborted: {res.aborted}")
    mean = agg.server_decode(plan, res.outcome.sum, survivors=len(res.outcome.accepted))
    seconds, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    after = tcp_bytes(port) if port else None
    truth = np.mean([update_vector(r, ids[x].number, dim) for x in order], axis=0)
    nb = res.bytes_per_site or {}
    return {"round": r, "seconds": seconds, "server_cpu_s": cpu, "accepted": len(res.outcome.accepted),
            "payload": statistics.mean(nb.values()), "wire": wire_diff(before, after),
            "rms_err": float(np.sqrt(np.mean((mean - truth) ** 2))), "rms_mean": float(np.sqrt(np.mean(truth ** 2))),
            "threshold": plan.threshold, "degree": plan.degree, "wire_dim": agg.wire_dim(plan)}


def arm_in_memory(pki: Path, n: int, dim: int) -> dict:
    """`simulate`'s layout: the hub, the server and every site (a thread each) in this process."""
    names = site_names(n)
    ids = load_ids(pki, names)
    agg = build_aggregator(ddg_config(n), dim)
    hub = Hub(liveness_s=600.0)
    threads = []
    for name in names:
        ident = ids[name]
        t = InMemorySite(hub, name, ident.number, protocol_key=ident.protocol_public_key)
        threads.append(threading.Thread(target=site_loop, args=(t, ident), daemon=True,
                                        kwargs={"work": ddg_work(agg, ident, dim), "trust": None, "timeout": 300.0}))
    for th in threads:
        th.start()
    if len(hub.wait_for_sites(n, 120.0)) < n:
        raise SystemExit("in-memory: not every site joined")

    def close():
        hub.finish()
        for th in threads:
            th.join(60)
        return {}
    return {"name": "in-memory", "hub": hub, "agg": agg, "ids": ids, "dim": dim, "close": close}


def arm_grpc(pki: Path, n: int, dim: int, tmp: Path) -> dict:
    """`serve` / `join`'s layout: the server here, the n sites in one other process, one mTLS channel each."""
    names = site_names(n)
    ids = load_ids(pki, names)
    agg = build_aggregator(ddg_config(n), dim)
    hub = Hub(liveness_s=600.0)
    server, port = grpc_server(hub, pki, n)
    proc = _spawn_sites({"pki": str(pki), "address": f"127.0.0.1:{port}", "names": names, "dim": dim, "n": n,
                         "mode": "ddg", "heartbeat": 5.0}, tmp, "ddg")

    def close():
        try:
            hub.finish()
            return _collect([proc], 120)[0]
        finally:
            if proc.poll() is None:
                proc.kill()
            server.stop(0.5)
    if len(hub.wait_for_sites(n, 180.0)) < n:
        close()
        raise SystemExit("gRPC: not every site joined")
    return {"name": "gRPC", "hub": hub, "agg": agg, "ids": ids, "dim": dim, "port": port, "close": close}


def compare(pki: Path, n: int, dim: int, rounds: int, tmp: Path) -> tuple[dict, dict]:
    """Both arms live at once; their rounds alternate (mem, gRPC, gRPC, mem, ...) so that a change
    in the machine's load (2 shared cores) falls on both alike."""
    policy = np.random.default_rng(5).standard_normal(dim, dtype=np.float32)
    mem = arm_in_memory(pki, n, dim)
    try:
        net = arm_grpc(pki, n, dim, tmp)
    except BaseException:
        mem["close"]()
        raise
    mem["rows"], net["rows"] = [], []
    try:
        for r in range(1, rounds + 1):
            for arm in ((mem, net) if r % 2 else (net, mem)):
                arm["policy"] = policy
                arm["rows"].append(ddg_round(arm, r))
                print(f"  part 1 {arm['name']} round {r}: {arm['rows'][-1]['seconds']:.2f} s", file=sys.stderr,
                      flush=True)
    finally:
        mem["close"]()
        sites = net["close"]()
    cpu = sites.get("round_cpu_s", {})
    for row in net["rows"]:
        row["sites_cpu_s"] = cpu.get(str(row["round"]), 0.0)
    net["statuses"] = sorted({st for v in sites.get("statuses", {}).values() for st in v})
    return mem, net


# ============================================================================ part 2
def scale_run(pki: Path, n: int, dim: int, clean_rounds: int, kill_rounds: int, fraction: float, liveness: float,
              tmp: Path, seed: int, processes: int = 2) -> dict:
    names = site_names(n)
    ids = load_ids(pki, names)
    order, entries = roster(ids)
    agg = build_aggregator(plain_config(n, fraction), dim)
    number = {x: ids[x].number for x in order}
    hub = Hub(liveness_s=liveness, heartbeat_interval_s=liveness / 3)
    server, port = grpc_server(hub, pki, n)
    markers = tmp / "markers"
    markers.mkdir()
    kill_from = clean_rounds + 1
    chunks = [names[i::processes] for i in range(processes)]
    procs = [_spawn_sites({"pki": str(pki), "address": f"127.0.0.1:{port}", "names": chunk, "dim": dim, "n": n,
                           "mode": "plain", "markers": str(markers), "kill_from": kill_from if kill_rounds else 0,
                           "seed": seed, "all_names": names, "fraction": fraction,
                           "heartbeat": max(0.2, liveness / 3)}, tmp, f"scale{i}")
             for i, chunk in enumerate(chunks)]
    deadlines = PhaseDeadlines(**dict.fromkeys(PHASES, 60.0))
    rows = []
    try:
        for r in range(1, clean_rounds + kill_rounds + 1):
            w0 = time.perf_counter()
            if len(hub.wait_for_sites(n, 180.0)) < n:
                raise SystemExit(f"round {r}: only {len(hub.live_sites())} of {n} sites live")
            wait = time.perf_counter() - w0
            rs = 7919 * r + seed
            plan = agg.plan(r, planned=n, round_seed=rs)
            cfg = RoundConfig(round_id=r, site_ids=tuple(number[x] for x in order),
                              identity_keys=tuple(ids[x].protocol_public_key for x in order),
                              threshold=plan.threshold, dim=dim, bits=32, degree=plan.degree,
                              graph_seed=agg.graph_seed(rs))
            ann = RoundAnnouncement(cfg, entries)
            killed = kill_plan(seed, r, names, fraction) if r >= kill_from else {}
            t0 = time.perf_counter()
            res = run_server_round(hub, {x: ann for x in order}, deadlines=deadlines)
            seconds = time.perf_counter() - t0
            (markers / f"round-{r}.done").write_text("")
            inside = sorted(number[x] for x in order
                            if x not in killed or PHASES.index(killed[x]) > PHASES.index("masked_input"))
            fail = None
            if res.outcome is None:
                fail = f"aborted: {res.aborted}"
            elif list(res.outcome.accepted) != inside:
                fail = f"accepted {len(res.outcome.accepted)} sites, expected {len(inside)}"
            elif not np.array_equal(res.outcome.sum, exact_sum(r, res.outcome.accepted, dim)):
                fail = "sum is not the exact sum of the accepted sites"
            rows.append({"round": r, "killed": len(killed), "phases": sorted(set(killed.values())),
                         "accepted": len(res.outcome.accepted) if res.outcome else 0, "expected": len(inside),
                         "seconds": seconds, "wait_s": wait, "fail": fail, "degree": plan.degree,
                         "threshold": plan.threshold, "rejected": len(res.rejected)})
            print(f"  part 2 round {r}: {seconds:.2f} s, {rows[-1]['accepted']}/{len(inside)} in the sum, "
                  f"{fail or 'exact sum'}", file=sys.stderr, flush=True)
        hub.finish()
        sites = _collect(procs, 180)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        server.stop(0.5)
    statuses: dict[str, int] = {}
    odd: set[str] = set()
    for s in sites:
        for v in s["statuses"].values():
            for st in v:
                key = st.split(":")[0]
                statuses[key] = statuses.get(key, 0) + 1
                if key == "refused":
                    odd.add(st[:200])
    return {"rows": rows, "statuses": statuses, "refused": sorted(odd)[:5]}


# ============================================================================ report
def table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    line = lambda cells: "  ".join(str(c).rjust(w) if i else str(c).ljust(w)  # noqa: E731
                                   for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])


def kib(x: float) -> str:
    return f"{x / 1024:,.1f}"


def report_part1(n: int, dim: int, rounds: int, mem: dict, net: dict) -> str:
    med = lambda rows, k: statistics.median(r[k] for r in rows)  # noqa: E731
    tm, tn = med(mem["rows"], "seconds"), med(net["rows"], "seconds")
    first = mem["rows"][0]
    cpu_mem = med(mem["rows"], "server_cpu_s")
    cpu_net = statistics.median(r["server_cpu_s"] + r["sites_cpu_s"] for r in net["rows"])
    wires = [r["wire"] for r in net["rows"] if r["wire"] is not None]
    down = statistics.median(w[0] for w in wires) / n if wires else None
    up = statistics.median(w[1] for w in wires) / n if wires else None
    pay_mem, pay_net = med(mem["rows"], "payload"), med(net["rows"], "payload")
    policy = 4 * dim
    rows = [
        ["in-memory (Hub + InMemorySite, 1 process)", f"{tm:.2f}", f"{min(r['seconds'] for r in mem['rows']):.2f}",
         f"{max(r['seconds'] for r in mem['rows']):.2f}", f"{cpu_mem:.2f}", kib(pay_mem), "-", "-"],
        ["gRPC + mTLS (server | 1 site process)", f"{tn:.2f}", f"{min(r['seconds'] for r in net['rows']):.2f}",
         f"{max(r['seconds'] for r in net['rows']):.2f}", f"{cpu_net:.2f}", kib(pay_net),
         kib(up) if up is not None else "n/a", kib(down) if down is not None else "n/a"],
    ]
    out = [f"Part 1: the same federation in memory and over gRPC + mTLS (loopback): {n} sites, d = {dim:,} "
           f"(ring vector {first['wire_dim']:,}), SecAgg+ degree {first['degree']}, threshold {first['threshold']}, "
           f"client-level DDG (noise multiplier 1.0, clip 1.0), every site sampled, {rounds} rounds per arm; "
           f"in memory the "
           "sites do not check the roster against the CA (as simulate), over gRPC they do (as join)",
           table(["arm", "round s (median)", "min", "max", "CPU s/round", "SecAgg KiB/site up+down",
                  "wire KiB/site up", "wire KiB/site down"], rows),
           f"ratio gRPC / in-memory, median round time: {tn / tm:.2f}x (goal <= 1.5x: "
           f"{'met' if tn / tm <= 1.5 else f'missed by {tn / tm - 1.5:.2f}x'}); "
           f"CPU per round: {cpu_net / cpu_mem:.2f}x",
           "The arms' rounds alternate (in-memory, gRPC, gRPC, in-memory, ...), both federations live at once.",
           f"decoded mean vs the true mean of the updates: rms error {first['rms_err']:.2e} (DDG noise) "
           f"against an rms mean of {first['rms_mean']:.2e}; every round: {n} of {n} sites in the sum",
           "Round time: from opening the round to the decoded mean at the server (broadcast of the policy,",
           "  DDG encoding at every site, the five SecAgg phases, decoding). CPU s/round: in-memory, the one",
           "  process; gRPC, the server process during the round plus the site process from the first site's",
           "  broadcast to the last site's end of the round.",
           "SecAgg KiB/site: canonical SecAgg message bytes up + down per site (ServerRoundResult.bytes_per_site).",
           f"Wire KiB/site: TCP payload bytes per site counted by the kernel on the server's sockets (ss -ti,",
           "  tcp_info bytes_received = up, bytes_sent = down; TLS records + HTTP/2 frames + protobuf chunks):",
           f"  down includes the policy broadcast ({kib(policy)} KiB = 4*d) that in memory is passed by reference."
           + ("" if wires else " (ss not available: not measured)")]
    return "\n".join(out)


def report_part2(n: int, dim: int, clean: int, kills: int, fraction: float, liveness: float, res: dict) -> str:
    rows_in = res["rows"]
    first = rows_in[0]

    def block(rows, label):
        secs = [r["seconds"] for r in rows]
        fails = [r for r in rows if r["fail"]]
        return [label, str(len(rows)), f"{statistics.median(secs):.2f}", f"{max(secs):.2f}",
                f"{statistics.median(r['wait_s'] for r in rows if r['round'] > 1 or len(rows) == 1):.2f}",
                f"{sum(r['killed'] for r in rows)}", str(len(fails))]
    clean_rows = [r for r in rows_in if r["killed"] == 0]
    kill_rows = [r for r in rows_in if r["killed"] > 0]
    table_rows = [block(clean_rows, "no failures")]
    if kill_rows:
        table_rows.append(block(kill_rows, f"{fraction:.0%} killed at random phases"))
    out = [f"Part 2: {n} sites over gRPC + mTLS on loopback (2 site processes, one channel per site), d = {dim:,} "
           f"uint32, SecAgg+ degree {first['degree']}, threshold {first['threshold']}, liveness {liveness:g} s",
           table(["rounds", "count", "round s (median)", "max", "wait for all live s (median)", "sites killed",
                  "failed rounds"], table_rows)]
    detail = [[str(r["round"]), str(r["killed"]), ",".join(p.split("_")[0] for p in r["phases"]) or "-",
               f"{r['accepted']}/{r['expected']}", f"{r['seconds']:.2f}", r["fail"] or "exact sum"] for r in rows_in]
    out.append(table(["round", "killed", "phases", "in sum / expected", "seconds", "check"], detail))
    out.append("A failed round: aborted, a sum of other sites than expected (every site not killed, plus those killed")
    out.append("  after their masked input), or a sum that is not the exact uint32 sum of the accepted sites' vectors.")
    out.append("Killed: stops before uploading its phase and closes its channel (no goodbye); the server counts it out")
    out.append(f"  once it has not been heard from for the liveness window ({liveness:g} s); it rejoins with a fresh")
    out.append("  channel for the next round (wait for all live: before the round opens, not in its time; round 1's,")
    out.append("  which includes the site processes' start, is left out).")
    out.append(f"Site statuses (all rounds, all sites; a killed site's is 'dropped'): "
               f"{json.dumps(res['statuses'], sort_keys=True)}")
    for why in res.get("refused", []):
        out.append(f"  refused: {why}")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_sites"]:
        sites_main(argv[1])
        return 0
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sites", type=int, default=50, help="sites of part 1 (default 50)")
    p.add_argument("--dim", type=int, default=100_000, help="update length of part 1 (default 100k)")
    p.add_argument("--rounds", type=int, default=3, help="rounds per arm in part 1 (default 3)")
    p.add_argument("--scale-sites", type=int, default=200, help="sites of part 2 (default 200)")
    p.add_argument("--scale-dim", type=int, default=1000, help="vector length of part 2 (default 1000)")
    p.add_argument("--scale-rounds", type=int, default=10, help="clean rounds, then as many with kills (default 10)")
    p.add_argument("--kill-fraction", type=float, default=0.1, help="sites killed per round in part 2 (default 0.1)")
    p.add_argument("--liveness", type=float, default=3.0, help="seconds unheard before a site is dropped (default 3)")
    p.add_argument("--seed", type=int, default=None, help="seed of the kill plan (default: random, printed)")
    p.add_argument("--only", choices=["compare", "scale"], help="run one part")
    p.add_argument("--quick", action="store_true", help="smoke mode: 8 sites, d = 10k, 2 rounds (< 30 s)")
    p.add_argument("--out", default=None, help=f"file the tables are written to (default {RESULTS.relative_to(REPO)}, "
                   "none with --quick; '' = none)")
    a = p.parse_args(argv)
    if a.quick:
        a.sites, a.dim, a.rounds, a.scale_sites, a.scale_dim, a.scale_rounds, a.liveness = 8, 10_000, 2, 8, 100, 1, 1.0
    for flag, value, least in (("--sites", a.sites, 3), ("--dim", a.dim, 1), ("--rounds", a.rounds, 1),
                               ("--scale-sites", a.scale_sites, 3), ("--scale-dim", a.scale_dim, 1),
                               ("--scale-rounds", a.scale_rounds, 1)):
        if value < least:
            p.error(f"{flag}: must be at least {least}, got {value}")
    if not 0.0 < a.kill_fraction < 0.5:
        p.error(f"--kill-fraction: must be in (0, 0.5), got {a.kill_fraction}")
    if a.liveness <= 0:
        p.error(f"--liveness: must be > 0, got {a.liveness}")
    if a.out is None:
        a.out = "" if a.quick else str(RESULTS)
    seed = a.seed if a.seed is not None else int.from_bytes(os.urandom(3), "big")
    logging.getLogger("secure_fedrl").setLevel(logging.ERROR)  # the killed sites' refusals are expected
    started = time.perf_counter()
    sections = [f"bench/deploy.py {' '.join(argv)}".rstrip() + f"  (kill-plan seed {seed}; {os.cpu_count()} CPUs)"]
    tmp = Path(tempfile.mkdtemp(prefix="bench-deploy-"))
    try:
        if a.only in (None, "compare"):
            pki = tmp / "pki"
            make_pki(pki, site_names(a.sites))
            mem, net = compare(pki, a.sites, a.dim, a.rounds, tmp)
            sections.append(report_part1(a.sites, a.dim, a.rounds, mem, net))
            print(sections[-1] + "\n", flush=True)
        if a.only in (None, "scale"):
            if a.only == "scale" or a.scale_sites > a.sites:
                pki = tmp / "pki-scale"
                make_pki(pki, site_names(a.scale_sites))
            res = scale_run(pki, a.scale_sites, a.scale_dim, a.scale_rounds, a.scale_rounds, a.kill_fraction,
                            a.liveness, tmp, seed)
            sections.append(report_part2(a.scale_sites, a.scale_dim, a.scale_rounds, a.scale_rounds,
                                         a.kill_fraction, a.liveness, res))
            print(sections[-1] + "\n", flush=True)
            failed = sum(1 for r in res["rows"] if r["fail"])
        else:
            failed = 0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    sections.append(f"total {time.perf_counter() - started:.0f} s")
    print(sections[-1])
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text("\n\n".join(sections) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
