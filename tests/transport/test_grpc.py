"""gRPC + mutual TLS on loopback: who may call, what they may send, and limits. Attacker's view."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import socket
import threading
import time

import grpc
import numpy as np
import pytest
from _fed import SITES, announcements, expected_sum, server_main, site_main, site_vector
from grpc_health.v1 import health_pb2, health_pb2_grpc

from secure_fedrl.secagg.client import SecAggClient
from secure_fedrl.transport._pb import federation_pb2 as pb
from secure_fedrl.transport.backoff import Backoff, retry
from secure_fedrl.transport.base import Hub, TransportError
from secure_fedrl.transport.grpc_transport import SERVICE, Limits
from secure_fedrl.transport.logs import JsonFormatter
from secure_fedrl.transport.pki import CertificateAuthority, SiteIdentity, load_site_identity

pytestmark = pytest.mark.timeout(60)


def _status(excinfo) -> str:
    return excinfo.value.status


def _raw(site, method, payload: bytes, timeout=5.0):
    call = site.channel.unary_unary(f"/{SERVICE}/{method}", request_serializer=None, response_deserializer=None)
    return call(payload, timeout=timeout)


# ---------------------------------------------------------------- a whole round
def _whole_round(hub, address, anns, ids, site):
    """Every site of SITES in its own thread against the server loop; asserts the exact sum."""
    sites = {n: site(n, address) for n in SITES}
    statuses = {}
    threads = [threading.Thread(target=lambda n=n: statuses.__setitem__(n, site_main(sites[n], ids[n])))
               for n in SITES]
    for t in threads:
        t.start()
    res = server_main(hub, anns, expect=len(SITES))
    for t in threads:
        t.join()
    assert statuses == {n: "done" for n in SITES}
    assert res.rejected == [] and res.outcome.accepted == (1, 2, 3, 4)
    np.testing.assert_array_equal(res.outcome.sum, expected_sum([1, 2, 3, 4]))
    return sites


def test_round_over_grpc_mtls_recovers_the_exact_sum(pki, serve, site):
    hub, _, address = serve()
    anns, ids = announcements(pki.dir, SITES)
    sites = _whole_round(hub, address, anns, ids, site)
    # and the federation is over for everyone
    assert sites["s1"].await_round(1, 5).finished


def test_secagg_plus_round_over_grpc_runs_the_graph_reveal(pki, serve, site):
    """SecAgg+ (a 4-site ring): the GRAPH_REVEAL phase crosses the wire and the hub switches to
    the seeded digest D' from the KeysBundles on."""
    trace: list = []
    hub, _, address = serve(Hub(trace=trace))
    anns, ids = announcements(pki.dir, SITES, degree=2, threshold=2)
    cfg = next(iter(anns.values())).config
    assert cfg.phases[1] == "graph_reveal"
    _whole_round(hub, address, anns, ids, site)
    assert sorted(n for _, ph, d, n, _ in trace if ph == "graph_reveal" and d == "up") == sorted(SITES)
    r = hub._rounds[cfg.round_id]
    assert r.seeded_digest not in (None, cfg.digest)


def test_health_service_answers_over_mtls(pki, serve, site):
    _, server, address = serve()
    stub = health_pb2_grpc.HealthStub(site("s1", address).channel)
    for name in ("", SERVICE):
        assert stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=5).status == \
            health_pb2.HealthCheckResponse.SERVING


# ---------------------------------------------------------------- certificates
def _identity_with(pki, name, cert_pem, key_pem):
    real = load_site_identity(pki.dir, name)
    return SiteIdentity(name, real.number, key_pem, cert_pem, real.identity_key, real.trust)


def test_unknown_ca_refused_at_handshake(pki, serve, tmp_path):
    from secure_fedrl.transport.grpc_transport import GrpcSite

    hub, _, address = serve()
    rogue = CertificateAuthority.init(tmp_path / "rogue")
    d = rogue.issue_site("s1")
    ident = _identity_with(pki, "s1", (d / "tls.crt").read_bytes(), (d / "tls.key").read_bytes())
    with pytest.raises(TransportError) as e:
        GrpcSite(ident, address, call_timeout_s=5).join()
    assert _status(e) == "UNAVAILABLE"
    assert hub.live_sites() == {}


def test_expired_certificate_refused(pki, serve, events):
    import datetime as dt

    from secure_fedrl.transport.grpc_transport import GrpcSite

    hub, _, address = serve()
    now = dt.datetime.now(dt.timezone.utc)
    d = pki.issue_site("expired", not_before=now - dt.timedelta(days=3), not_after=now - dt.timedelta(days=1))
    real = load_site_identity(pki.dir, "s1")
    ident = SiteIdentity("expired", pki.index["sites"]["expired"]["number"], (d / "tls.key").read_bytes(),
                         (d / "tls.crt").read_bytes(), real.identity_key, real.trust)
    with pytest.raises(TransportError) as e:
        GrpcSite(ident, address, call_timeout_s=5).join()
    # BoringSSL refuses it in the handshake; should it not, the interceptor must (and log it).
    assert _status(e) in ("UNAVAILABLE", "UNAUTHENTICATED")
    if _status(e) == "UNAUTHENTICATED":
        assert any(ev == "peer_refused" and "validity" in f["reason"] for ev, f in events())
    assert hub.live_sites() == {}


def test_revoked_certificate_refused_on_the_next_call_and_logged(tmp_path, serve, site, events):
    ca = CertificateAuthority.init(tmp_path / "pki")
    for n in ("a", "b"):
        ca.issue_site(n)
    ca.issue_server()
    hub, _, address = serve(ca=ca)
    a, b = site("a", address, ca=ca), site("b", address, ca=ca)
    a.join()
    b.join()
    ca.revoke_site("a")  # the server reloads crl.pem on its next call, no restart
    with pytest.raises(TransportError) as e:
        a.heartbeat()
    assert _status(e) == "UNAUTHENTICATED" and "revoked" in str(e.value)
    assert any(ev == "peer_refused" and "revoked" in f["reason"] for ev, f in events())
    b.heartbeat()  # the others carry on


def test_claimed_site_must_match_the_certificate(pki, serve, site, events):
    hub, _, address = serve()
    s1 = site("s1", address)
    with pytest.raises(grpc.RpcError) as e:
        s1.stub.Join(pb.JoinRequest(site="s2", protocol_version=1), timeout=5)
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert ("site_id_mismatch", {"method": "Join", "certificate": "s1", "claimed": "s2"}) in events()
    assert hub.live_sites() == {}
    s1.join()
    header = pb.PayloadHeader(site="s2", session=s1._session, round_id=1, phase=1, length=1,
                              sha256=hashlib.sha256(b"x").digest())
    with pytest.raises(grpc.RpcError) as e:
        s1.stub.Upload(iter([pb.Chunk(header=header), pb.Chunk(data=b"x")]), timeout=5)
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_second_connection_for_a_live_site_refused(pki, serve, site, events):
    hub, _, address = serve(Hub(liveness_s=1.0))
    first, second = site("s1", address), site("s1", address)
    first.join()
    with pytest.raises(TransportError) as e:
        second.join()
    assert _status(e) == "ALREADY_EXISTS"
    assert any(ev == "join_refused" and f["site"] == "s1" for ev, f in events())
    time.sleep(1.2)  # the first went silent: a restarted site may take over
    second.join()
    with pytest.raises(TransportError) as e:
        first.heartbeat()
    assert _status(e) == "PERMISSION_DENIED"


def test_max_sites(pki, serve, site):
    _, _, address = serve(limits=Limits(max_sites=2))
    site("s1", address).join()
    site("s2", address).join()
    with pytest.raises(TransportError) as e:
        site("s3", address).join()
    assert _status(e) == "RESOURCE_EXHAUSTED"


def test_per_peer_rate_limit(pki, serve, site, events):
    _, _, address = serve(limits=Limits(rate_per_s=0.01, rate_burst=3))
    s1, s2 = site("s1", address), site("s2", address)
    s1.join()
    s1.heartbeat()
    s1.heartbeat()
    with pytest.raises(TransportError) as e:
        s1.heartbeat()
    assert _status(e) == "RESOURCE_EXHAUSTED"
    assert any(ev == "rate_limited" and f["site"] == "s1" for ev, f in events())
    s2.join()  # another peer has its own bucket


def test_malformed_protobuf_is_invalid_argument_not_a_crash(pki, serve, site, events):
    _, _, address = serve()
    s1 = site("s1", address)
    with pytest.raises(grpc.RpcError) as e:
        _raw(s1, "Join", b"\xff\xff\xff\xff")
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert any(ev == "malformed_message" for ev, _ in events())
    s1.join()  # the server carries on


def test_silent_tcp_connection_is_closed(pki, serve):
    _, _, address = serve(limits=Limits(handshake_timeout_s=1.0))
    host, port = address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        t0 = time.monotonic()
        assert sock.recv(1) == b""  # the server hung up on a peer that never sent a byte
        assert time.monotonic() - t0 < 6


def test_call_that_sends_nothing_is_cancelled_by_the_server(pki, serve, site):
    _, _, address = serve(limits=Limits(call_timeout_s=1.0))
    s1 = site("s1", address)
    s1.join()
    stop = threading.Event()

    def silent():
        stop.wait(20)
        return
        yield  # pragma: no cover

    t0 = time.monotonic()
    with pytest.raises(grpc.RpcError) as e:
        s1.stub.Upload(silent(), timeout=20)  # the client itself would wait 20 s
    stop.set()
    assert e.value.code() == grpc.StatusCode.CANCELLED and time.monotonic() - t0 < 8
    s1.heartbeat()


# ---------------------------------------------------------------- uploads an attacker crafts
@pytest.fixture()
def open_round(pki, serve, site):
    hub, _, address = serve(limits=Limits(max_message_bytes=64 * 1024))
    anns, ids = announcements(pki.dir, SITES)
    s1 = site("s1", address)
    s1.join()
    hub.open_round(anns)
    cfg = anns["s1"].config

    def advert(name="s1", config=cfg):
        ident = ids[name]
        return SecAggClient(config=config, site_id=ident.number, identity_key=ident.identity_key,
                            vector=site_vector(ident.number, config.dim)).advertise_keys().encode()
    return hub, s1, cfg, advert


def _upload(s1, payload, *, phase=1, round_id=1, length=None, sha=None, chunks=None):
    header = pb.PayloadHeader(site="s1", session=s1._session, round_id=round_id, phase=phase,
                              length=len(payload) if length is None else length,
                              sha256=hashlib.sha256(payload).digest() if sha is None else sha)
    parts = [pb.Chunk(header=header)] + [pb.Chunk(data=c) for c in (chunks or [payload])]
    try:
        s1.stub.Upload(iter(parts), timeout=5)
    except grpc.RpcError as err:
        return err.code().name, err.details()
    return "OK", ""


def test_after_the_reveal_the_hub_takes_only_the_seeded_digest(pki, serve, site):
    from secure_fedrl.secagg import messages as M

    hub, _, address = serve()
    anns, ids = announcements(pki.dir, SITES, degree=2, threshold=2)
    cfg = anns["s1"].config
    s1 = site("s1", address)
    s1.join()
    hub.open_round(anns)
    hub.deliver(cfg.round_id, "advertise_keys", {})
    seeded = b"\x07" * 32  # what the server's KeysBundles carry (any D' here: the hub only compares)
    hub.deliver(cfg.round_id, "graph_reveal", {"s1": M.KeysBundle(seeded, ids["s1"].number, ()).encode()})

    def share_keys(digest):
        return M.HEADER.pack(M.MAGIC, M.VERSION, M.T_SHARE_KEYS, digest, ids["s1"].number) + bytes(8)

    assert _upload(s1, share_keys(cfg.digest), phase=pb.SHARE_KEYS) == (
        "INVALID_ARGUMENT", "share_keys upload is for another round or configuration")
    assert _upload(s1, share_keys(seeded), phase=pb.SHARE_KEYS) == ("OK", "")


def test_valid_upload_accepted(open_round):
    hub, s1, cfg, advert = open_round
    assert _upload(s1, advert()) == ("OK", "")


@pytest.mark.parametrize("attack, status, words", [
    ("oversized_declared", "RESOURCE_EXHAUSTED", "exceeds the cap"),
    ("wrong_vector_length", "INVALID_ARGUMENT", "cannot hold a vector"),
    ("more_than_declared", "INVALID_ARGUMENT", "more data than the declared"),
    ("tampered_in_transit", "INVALID_ARGUMENT", "SHA-256 does not match"),
    ("chunk_over_message_limit", "RESOURCE_EXHAUSTED", ""),
    ("unknown_round", "NOT_FOUND", "unknown round 99"),
    ("phase_not_open", "FAILED_PRECONDITION", "is not open"),
    ("claims_another_site", "PERMISSION_DENIED", "claiming site 2"),
    ("replayed", "ALREADY_EXISTS", "duplicate"),
    ("other_round_digest", "INVALID_ARGUMENT", "another round or configuration"),
    ("not_secagg", "INVALID_ARGUMENT", "not a SecAgg message"),
    ("data_before_header", "INVALID_ARGUMENT", "must start with a header"),
    ("wrong_message_type", "INVALID_ARGUMENT", "message type"),
])
def test_hostile_uploads_get_a_status_and_the_round_goes_on(open_round, events, attack, status, words):
    hub, s1, cfg, advert = open_round
    good = advert()
    if attack == "oversized_declared":
        got = _upload(s1, good, length=10**7, chunks=[])
    elif attack == "wrong_vector_length":
        got = _upload(s1, good, phase=3, length=len(good))
    elif attack == "more_than_declared":
        got = _upload(s1, good, length=len(good) - 1)
    elif attack == "tampered_in_transit":
        got = _upload(s1, good, sha=hashlib.sha256(b"other").digest())
    elif attack == "chunk_over_message_limit":
        got = _upload(s1, good, chunks=[b"\0" * (100 * 1024)])
    elif attack == "unknown_round":
        got = _upload(s1, good, round_id=99)
    elif attack == "phase_not_open":
        got = _upload(s1, good, phase=2)
    elif attack == "claims_another_site":
        got = _upload(s1, advert("s2"))
    elif attack == "replayed":
        assert _upload(s1, good)[0] == "OK"
        got = _upload(s1, good)
    elif attack == "other_round_digest":
        got = _upload(s1, advert(config=dataclasses.replace(cfg, round_id=0)))
    elif attack == "not_secagg":
        got = _upload(s1, b"hello")
    elif attack == "data_before_header":
        try:
            s1.stub.Upload(iter([pb.Chunk(data=good)]), timeout=5)
            got = ("OK", "")
        except grpc.RpcError as err:
            got = (err.code().name, err.details())
    elif attack == "wrong_message_type":
        got = _upload(s1, good[:5] + b"\x02" + good[6:])
    assert got[0] == status and words in got[1], got
    if status != "RESOURCE_EXHAUSTED" or words:
        assert any(ev == "call_refused" and f["status"] == status for ev, f in events())
    if attack != "replayed":
        assert _upload(s1, good) == ("OK", "")  # the site may still take part


# ---------------------------------------------------------------- reconnect
def test_backoff_is_bounded_full_jitter():
    import random

    b = Backoff(base=0.1, factor=2, cap=1.0, rng=random.Random(0))
    delays = [b.delay(k) for k in range(20)]
    assert all(0 <= d <= min(1.0, 0.1 * 2**k) for k, d in enumerate(delays))
    assert len(set(delays)) == len(delays)  # jittered, not lockstep
    assert max(delays[10:]) > 0.5  # grows up to the cap


def test_retry_gives_up_on_non_retryable_and_after_the_time_limit():
    calls = []

    def refused():
        calls.append(1)
        raise TransportError("PERMISSION_DENIED", "no")
    with pytest.raises(TransportError):
        retry(refused, sleep=lambda s: None)
    assert len(calls) == 1

    clock = iter(range(1000))

    def down():
        raise TransportError("UNAVAILABLE", "down")
    with pytest.raises(TransportError, match="down"):
        retry(down, backoff=Backoff(base=1, cap=1), give_up_after=5, sleep=lambda s: None,
              clock=lambda: next(clock))


def test_site_reconnects_when_the_server_comes_up(pki, site):
    from secure_fedrl.transport.grpc_transport import GrpcServer
    from secure_fedrl.transport.pki import load_server_identity

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = GrpcServer(Hub(), load_server_identity(pki.dir), address=f"127.0.0.1:{port}")
    timer = threading.Timer(1.0, server.start)
    timer.start()
    try:
        s1 = site("s1", f"127.0.0.1:{port}", call_timeout_s=2)
        info = retry(s1.join, backoff=Backoff(base=0.1, cap=0.5), give_up_after=20)
        assert info.site_number == 1
    finally:
        timer.join()
        server.stop(0)


def test_json_log_lines():
    from secure_fedrl.transport.logs import LOGGER

    rec = LOGGER.makeRecord(LOGGER.name, logging.WARNING, __file__, 1, "peer_refused", (), None,
                            extra={"event": "peer_refused", "fields": {"peer": "ipv4:1.2.3.4", "n": 3, "b": b"x"}})
    line = JsonFormatter().format(rec)
    obj = json.loads(line)
    assert obj["event"] == "peer_refused" and obj["peer"] == "ipv4:1.2.3.4" and obj["n"] == 3
    assert obj["level"] == "warning" and "\n" not in line


def test_policy_streams_in_chunks_and_arrives_intact(pki, serve, site):
    hub, _, address = serve()
    policy = np.random.default_rng(0).standard_normal(300_000).astype(np.float32)  # 1.2 MB: 5 chunks
    anns, _ = announcements(pki.dir, SITES, policy=policy)
    s1 = site("s1", address)
    s1.join()
    hub.open_round(anns)
    got = s1.await_round(0, 5).announcement
    np.testing.assert_array_equal(got.policy, policy)
    assert got.config.digest == anns["s1"].config.digest and got.roster == anns["s1"].roster


class _FakeContext:
    """What the interceptor reads from a call: the auth context (the peer's PEM) and abort()."""

    def __init__(self, pem):
        self.pem = pem

    def auth_context(self):
        return {"x509_pem_cert": [self.pem]} if self.pem else {}

    def peer(self):
        return "ipv4:127.0.0.1:1"

    def abort(self, code, details):
        raise grpc.RpcError(code.name, details)


@pytest.mark.parametrize("case, status, reason", [
    ("none", "UNAUTHENTICATED", "client certificate"),
    ("expired", "UNAUTHENTICATED", "validity period"),
    ("foreign", "UNAUTHENTICATED", "not issued by the federation CA"),
    ("server", "UNAUTHENTICATED", "expected a site"),
])
def test_interceptor_rechecks_the_certificate_itself(pki, tmp_path, events, case, status, reason):
    """Defence in depth: even a certificate TLS let through is checked against CA, dates, CRL."""
    import datetime as dt

    from secure_fedrl.transport.grpc_transport import PeerAuthInterceptor
    from secure_fedrl.transport.pki import TrustStore

    now = dt.datetime.now(dt.timezone.utc)
    if case == "expired":
        d = pki.issue_site("lapsed", not_before=now - dt.timedelta(days=3), not_after=now - dt.timedelta(days=1))
        pem = (d / "tls.crt").read_bytes()
    elif case == "foreign":
        rogue = CertificateAuthority.init(tmp_path / "rogue")
        pem = (rogue.issue_site("s1") / "tls.crt").read_bytes()
    elif case == "server":
        pem = (pki.dir / "server" / "tls.crt").read_bytes()
    else:
        pem = None
    icpt = PeerAuthInterceptor(TrustStore.from_dir(pki.dir), Limits())
    with pytest.raises(grpc.RpcError) as e:
        icpt._authenticate(_FakeContext(pem), "/x/Join")
    assert e.value.args[0] == status and reason in e.value.args[1]
    assert any(ev == "peer_refused" and reason in f["reason"] for ev, f in events())
    good = (pki.dir / "sites" / "s1" / "tls.crt").read_bytes()
    assert icpt._authenticate(_FakeContext(good), "/x/Join").name == "s1"


# ---------------------------------------------------------------- FedBuff: model fetch and readiness
def test_fedbuff_model_fetch_and_ready_over_mtls(pki, serve, site, events):
    hub, _, address = serve()
    s1, s2 = site("s1", address), site("s2", address)
    s1.join()
    s2.join()
    with pytest.raises(TransportError) as exc:
        s1.fetch_model()  # synchronous federation: nothing published
    assert _status(exc) == "FAILED_PRECONDITION"
    model = np.random.default_rng(1).standard_normal(200_000).astype(np.float32)  # several chunks
    hub.publish_model(3, model)
    version, got = s1.fetch_model()
    assert version == 3
    np.testing.assert_array_equal(got, model)
    assert s1.fetch_model(values=200_000)[1].size == 200_000
    assert got.dtype == np.float32
    with pytest.raises(TransportError) as exc:
        s1.fetch_model(values=200_001)  # a smaller model than the site's: read, then refused
    assert _status(exc) == "INVALID_ARGUMENT" and "200000 values, expected 200001" in str(exc.value)
    with pytest.raises(TransportError) as exc:
        s1.fetch_model(values=199_999)  # a larger model than the site's is refused from its header
    assert _status(exc) == "RESOURCE_EXHAUSTED"
    with pytest.raises(TransportError) as exc:
        s1.ready(4)  # a version the server never published
    assert _status(exc) == "INVALID_ARGUMENT"
    s2.ready(3)
    s1.ready(2)
    s2.ready(3)  # said again: keeps its place
    assert list(hub.wait_ready(2, {"s1", "s2"}, timeout=1.0).items()) == [("s2", 3), ("s1", 2)]
    with pytest.raises(grpc.RpcError) as raw:  # a Ready under another site's name
        _raw(s1, "Ready", pb.ReadyRequest(site="s2", session=b"x", version=1).SerializeToString())
    assert raw.value.code() == grpc.StatusCode.PERMISSION_DENIED
