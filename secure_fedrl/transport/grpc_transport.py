"""The gRPC transport: mutual TLS, the peer certificate as the only source of identity, limits.

Server: `GrpcServer(hub, identity)` serves `secure_fedrl.v1.Federation` and the standard gRPC
health service on one port. TLS (BoringSSL) refuses peers without a certificate from the
federation CA, and certificates outside their validity period, during the handshake. Every call
then passes `PeerAuthInterceptor`, which re-verifies the certificate from the auth context
against the CA and the current CRL (gRPC does not check CRLs), applies the per-peer rate limit
and a server-side call deadline (a peer that opens a call and sends nothing is cancelled), and
hands the verified peer to the servicer, which refuses any message whose claimed site differs.

Client: `GrpcSite(identity, address)` implements `SiteTransport`; every call has a deadline.
"""

from __future__ import annotations

import contextvars
import hashlib
import threading
import time
from concurrent import futures
from dataclasses import dataclass

import grpc
import numpy as np
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from google.protobuf.message import DecodeError

from secure_fedrl.secagg.protocol import RoundConfig

from ._pb import federation_pb2 as pb
from ._pb import federation_pb2_grpc as pb_grpc
from .base import Broadcast, Hub, JoinInfo, RosterEntry, RoundAnnouncement, TransportError
from .logs import log_event
from .pki import CertificateRejected, PeerCertificate, ServerIdentity, SiteIdentity, TrustStore

SERVICE = "secure_fedrl.v1.Federation"
PROTOCOL_VERSION = 1
_PHASE_TO_PB = {"advertise_keys": pb.ADVERTISE_KEYS, "graph_reveal": pb.GRAPH_REVEAL, "share_keys": pb.SHARE_KEYS,
                "masked_input": pb.MASKED_INPUT, "consistency_check": pb.CONSISTENCY_CHECK, "unmasking": pb.UNMASKING}
_PB_TO_PHASE = {v: k for k, v in _PHASE_TO_PB.items()}
_PEER: contextvars.ContextVar[PeerCertificate] = contextvars.ContextVar("secure_fedrl_peer")


@dataclass(frozen=True)
class Limits:
    """Resource limits; the defaults suit d ~ 1e6 (a 4 MB masked vector in 256 KiB chunks)."""

    chunk_bytes: int = 256 * 1024
    max_message_bytes: int = 1024 * 1024       # one gRPC message (a chunk plus envelope)
    max_payload_bytes: int = 512 * 1024 * 1024  # one reassembled payload (policy or masked vector)
    max_sites: int = 10_000
    rate_per_s: float = 50.0                    # sustained calls per peer
    rate_burst: int = 100
    call_timeout_s: float = 300.0               # server side: no call lives longer
    handshake_timeout_s: float = 10.0           # a TCP connection that never completes TLS
    max_workers: int = 64                       # concurrent calls (long polls hold one each)


class RateLimiter:
    """Token bucket per peer name."""

    def __init__(self, rate: float, burst: int, clock=time.monotonic) -> None:
        self.rate, self.burst, self.clock = rate, burst, clock
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def allow(self, peer: str) -> bool:
        with self._lock:
            now = self.clock()
            tokens, last = self._buckets.get(peer, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - last) * self.rate)
            ok = tokens >= 1.0
            self._buckets[peer] = (tokens - 1.0 if ok else tokens, now)
            return ok


class _Malformed:
    """Stands in for a request that did not parse, so the handler can answer INVALID_ARGUMENT."""


_MALFORMED = _Malformed()


def _peer_address(context) -> str:
    try:
        return context.peer()
    except Exception:  # pragma: no cover - defensive
        return "?"


class PeerAuthInterceptor(grpc.ServerInterceptor):
    """Authenticates every call from the TLS peer certificate; limits rate and duration."""

    def __init__(self, trust: TrustStore, limits: Limits) -> None:
        self.trust = trust
        self.limits = limits
        self.rate = RateLimiter(limits.rate_per_s, limits.rate_burst)
        self._lock = threading.Lock()

    def _authenticate(self, context, method: str) -> PeerCertificate:
        auth = context.auth_context()
        pems = auth.get("x509_pem_cert") or []
        if not pems:
            log_event("peer_refused", method=method, peer=_peer_address(context), reason="no client certificate")
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "no client certificate: one from the federation CA is required")
        try:
            with self._lock:
                self.trust.refresh()
            info = self.trust.verify(pems[0], expect="site")
        except CertificateRejected as exc:
            log_event("peer_refused", method=method, peer=_peer_address(context), reason=str(exc))
            context.abort(grpc.StatusCode.UNAUTHENTICATED, f"certificate refused: {exc}")
        if not self.rate.allow(info.name):
            log_event("rate_limited", method=method, site=info.name)
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, f"site {info.name!r}: rate limit exceeded")
        return info

    def _deserializer(self, orig, method: str):
        if orig is None:
            return None

        def parse(data: bytes):
            try:
                return orig(data)
            except (DecodeError, ValueError, TypeError):
                log_event("malformed_message", method=method, bytes=len(data))
                return _MALFORMED
        return parse

    def intercept_service(self, continuation, details):
        handler = continuation(details)
        if handler is None:
            return None
        method = details.method
        limits = self.limits

        def guard(context):
            peer = self._authenticate(context, method)
            timer = threading.Timer(limits.call_timeout_s, context.cancel)
            timer.daemon = True
            timer.start()
            return peer, timer

        def check(request, context):
            if request is _MALFORMED:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, "malformed protobuf message")
            return request

        def checked_iter(it, context):
            for item in it:
                yield check(item, context)

        def wrap(behavior, stream_in: bool, stream_out: bool):
            if stream_out:
                def call(req, context):
                    peer, timer = guard(context)
                    token = _PEER.set(peer)
                    try:
                        arg = checked_iter(req, context) if stream_in else check(req, context)
                        yield from behavior(arg, context)
                    finally:
                        timer.cancel()
                        _PEER.reset(token)
            else:
                def call(req, context):
                    peer, timer = guard(context)
                    token = _PEER.set(peer)
                    try:
                        arg = checked_iter(req, context) if stream_in else check(req, context)
                        return behavior(arg, context)
                    finally:
                        timer.cancel()
                        _PEER.reset(token)
            return call

        deser = self._deserializer(handler.request_deserializer, method)
        ser = handler.response_serializer
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(wrap(handler.unary_unary, False, False), deser, ser)
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(wrap(handler.unary_stream, False, True), deser, ser)
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(wrap(handler.stream_unary, True, False), deser, ser)
        return grpc.stream_stream_rpc_method_handler(wrap(handler.stream_stream, True, True), deser, ser)


# ============================================================================ conversions
def config_to_pb(cfg: RoundConfig) -> pb.RoundConfig:
    return pb.RoundConfig(round_id=cfg.round_id, site_ids=list(cfg.site_ids), identity_keys=list(cfg.identity_keys),
                          threshold=cfg.threshold, dim=cfg.dim, bits=cfg.bits, degree=cfg.degree or 0,
                          graph_seed=cfg.graph_seed)


def config_from_pb(m: pb.RoundConfig) -> RoundConfig:
    """RoundConfig validates everything (ConfigError on a malformed broadcast)."""
    return RoundConfig(round_id=m.round_id, site_ids=tuple(m.site_ids), identity_keys=tuple(m.identity_keys),
                       threshold=m.threshold, dim=m.dim, bits=m.bits, degree=m.degree or None,
                       graph_seed=bytes(m.graph_seed))


def _chunks(header: pb.PayloadHeader, payload: bytes, size: int):
    yield pb.Chunk(header=header)
    view = memoryview(payload)
    for i in range(0, len(payload), size):
        yield pb.Chunk(data=bytes(view[i:i + size]))


def _reassemble(chunks, cap: int, what: str) -> tuple[pb.PayloadHeader, bytes]:
    """Header first, then data up to the declared length (<= cap), then the hash must match."""
    it = iter(chunks)
    first = next(it, None)
    if first is None or first.WhichOneof("part") != "header":
        raise TransportError("INVALID_ARGUMENT", f"{what}: stream must start with a header")
    header = first.header
    if header.length > cap:
        raise TransportError("RESOURCE_EXHAUSTED", f"{what}: {header.length} bytes exceed the cap of {cap}")
    buf = bytearray()
    for c in it:
        if c.WhichOneof("part") != "data":
            raise TransportError("INVALID_ARGUMENT", f"{what}: second header in one stream")
        buf += c.data
        if len(buf) > header.length:
            raise TransportError("INVALID_ARGUMENT", f"{what}: more data than the declared {header.length} bytes")
    if len(buf) != header.length:
        raise TransportError("INVALID_ARGUMENT", f"{what}: {len(buf)} bytes, declared {header.length}")
    if hashlib.sha256(buf).digest() != header.sha256:
        raise TransportError("INVALID_ARGUMENT", f"{what}: SHA-256 does not match the header")
    return header, bytes(buf)


# ============================================================================ server
class FederationServicer(pb_grpc.FederationServicer):
    """Maps calls to the hub; the verified peer (from the interceptor) is who is calling."""

    def __init__(self, hub: Hub, trust: TrustStore, limits: Limits) -> None:
        self.hub, self.trust, self.limits = hub, trust, limits

    def _peer(self, claimed: str, context, method: str) -> PeerCertificate:
        peer = _PEER.get()
        if claimed != peer.name:
            log_event("site_id_mismatch", method=method, certificate=peer.name, claimed=claimed)
            context.abort(grpc.StatusCode.PERMISSION_DENIED,
                          f"message claims site {claimed!r} but the certificate is {peer.name!r}")
        return peer

    @staticmethod
    def _fail(context, err: TransportError, method: str, site: str):
        log_event("call_refused", method=method, site=site, status=err.status, reason=str(err),
                  level="info" if err.status == "DEADLINE_EXCEEDED" else "warning")
        context.abort(getattr(grpc.StatusCode, err.status), str(err))

    def _timeout(self, context) -> float:
        left = context.time_remaining()
        cap = self.limits.call_timeout_s
        return max(0.0, min(cap, left if left is not None else cap) - 0.25)

    def Join(self, request, context):
        peer = self._peer(request.site, context, "Join")
        if request.protocol_version != PROTOCOL_VERSION:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                          f"protocol version {request.protocol_version} unsupported (server speaks {PROTOCOL_VERSION})")
        try:
            pem = (context.auth_context().get("x509_pem_cert") or [b""])[0]
            der = x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)
            info = self.hub.join(peer.name, peer.site_number, peer.fingerprint, certificate=der,
                                 protocol_key=peer.protocol_key or b"")
        except TransportError as err:
            self._fail(context, err, "Join", peer.name)
        crl = self.trust.crl.public_bytes(_pem()) if self.trust.crl is not None else b""
        return pb.JoinResponse(session=info.session, federation=info.federation, site_number=info.site_number,
                               heartbeat_interval_s=info.heartbeat_interval_s, ca_certificate=self.trust.ca_pem,
                               crl=crl)

    def Heartbeat(self, request, context):
        peer = self._peer(request.site, context, "Heartbeat")
        try:
            current, finished = self.hub.heartbeat(peer.name, request.session)
        except TransportError as err:
            self._fail(context, err, "Heartbeat", peer.name)
        return pb.HeartbeatResponse(current_round=current, finished=finished)

    def AwaitRound(self, request, context):
        peer = self._peer(request.site, context, "AwaitRound")
        try:
            b = self.hub.await_round(peer.name, request.session, request.after_round, self._timeout(context))
        except TransportError as err:
            self._fail(context, err, "AwaitRound", peer.name)
        if b.finished:
            return pb.RoundBroadcast(finished=True, notice=b.notice)
        ann = b.announcement
        if ann is None:
            return pb.RoundBroadcast(sampled=False, config=pb.RoundConfig(round_id=b.round_id), notice=b.notice)
        pol = np.ascontiguousarray(ann.policy, dtype="<f4").tobytes()
        return pb.RoundBroadcast(
            sampled=True, config=config_to_pb(ann.config),
            roster=[pb.RosterEntry(site_id=e.site_id, site=e.name, certificate=e.certificate) for e in ann.roster],
            policy_length=ann.policy.size, policy_sha256=hashlib.sha256(pol).digest(), extras=ann.extras,
            notice=b.notice)

    def DownloadPolicy(self, request, context):
        peer = self._peer(request.site, context, "DownloadPolicy")
        try:
            ann = self.hub.announcement_for(peer.name, request.session, request.round_id)
        except TransportError as err:
            self._fail(context, err, "DownloadPolicy", peer.name)
        pol = np.ascontiguousarray(ann.policy, dtype="<f4").tobytes()
        header = pb.PayloadHeader(site=peer.name, round_id=request.round_id, length=len(pol),
                                  sha256=hashlib.sha256(pol).digest())
        yield from _chunks(header, pol, self.limits.chunk_bytes)

    def Upload(self, request_iterator, context):
        peer = _PEER.get()
        state = {}

        def checked():
            for i, c in enumerate(request_iterator):
                if i == 0 and c.WhichOneof("part") == "header":
                    h = c.header
                    self._peer(h.site, context, "Upload")
                    phase = _PB_TO_PHASE.get(h.phase)
                    if phase is None:
                        raise TransportError("INVALID_ARGUMENT", f"unknown phase {h.phase}")
                    self.hub.expected_length(peer.name, h.session, h.round_id, phase, h.length)
                    state["phase"] = phase
                yield c
        try:
            header, payload = _reassemble(checked(), self.limits.max_payload_bytes, f"upload from {peer.name!r}")
            self.hub.upload(peer.name, header.session, header.round_id, state["phase"], payload)
        except TransportError as err:
            self._fail(context, err, "Upload", peer.name)
        return pb.UploadAck(round_id=header.round_id, phase=header.phase)

    def Witness(self, request, context):
        peer = self._peer(request.site, context, "Witness")
        try:
            self.hub.witness(peer.name, request.session, request.seq, request.row_hash, request.signature)
        except TransportError as err:
            self._fail(context, err, "Witness", peer.name)
        return pb.WitnessAck(seq=request.seq)

    def FetchModel(self, request, context):
        peer = self._peer(request.site, context, "FetchModel")
        try:
            version, model = self.hub.fetch_model(peer.name, request.session)
        except TransportError as err:
            self._fail(context, err, "FetchModel", peer.name)
        data = np.ascontiguousarray(model, dtype="<f4").tobytes()
        header = pb.PayloadHeader(site=peer.name, round_id=version, length=len(data),
                                  sha256=hashlib.sha256(data).digest())
        yield from _chunks(header, data, self.limits.chunk_bytes)

    def Ready(self, request, context):
        peer = self._peer(request.site, context, "Ready")
        try:
            self.hub.ready(peer.name, request.session, request.version)
        except TransportError as err:
            self._fail(context, err, "Ready", peer.name)
        return pb.ReadyAck(version=request.version)

    def Download(self, request, context):
        peer = self._peer(request.site, context, "Download")
        phase = _PB_TO_PHASE.get(request.phase)
        try:
            if phase is None:
                raise TransportError("INVALID_ARGUMENT", f"unknown phase {request.phase}")
            msg = self.hub.download(peer.name, request.session, request.round_id, phase, self._timeout(context))
        except TransportError as err:
            self._fail(context, err, "Download", peer.name)
        header = pb.PayloadHeader(site=peer.name, round_id=request.round_id, phase=request.phase, length=len(msg),
                                  sha256=hashlib.sha256(msg).digest())
        yield from _chunks(header, msg, self.limits.chunk_bytes)


def _pem():
    from cryptography.hazmat.primitives.serialization import Encoding

    return Encoding.PEM


def server_credentials(identity: ServerIdentity) -> grpc.ServerCredentials:
    return grpc.ssl_server_credentials([(identity.tls_key_pem, identity.tls_cert_pem)],
                                       root_certificates=identity.trust.ca_pem, require_client_auth=True)


class GrpcServer:
    """The federation's gRPC endpoint over a hub: mTLS, health service, limits. start() -> port."""

    def __init__(self, hub: Hub, identity: ServerIdentity, *, address: str = "127.0.0.1:0",
                 limits: Limits = Limits()) -> None:
        from grpc_health.v1 import health, health_pb2, health_pb2_grpc

        self.hub, self.identity, self.address, self.limits = hub, identity, address, limits
        hub.max_sites = min(hub.max_sites, limits.max_sites)
        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=limits.max_workers, thread_name_prefix="secure-fedrl-grpc"),
            interceptors=[PeerAuthInterceptor(identity.trust, limits)],
            options=[
                ("grpc.max_receive_message_length", limits.max_message_bytes),
                ("grpc.max_send_message_length", limits.max_message_bytes),
                ("grpc.server_handshake_timeout_ms", int(limits.handshake_timeout_s * 1000)),
                ("grpc.max_connection_idle_ms", int(limits.call_timeout_s * 1000) + 60_000),
                ("grpc.so_reuseport", 0),
            ],
            maximum_concurrent_rpcs=limits.max_workers * 4,
        )
        pb_grpc.add_FederationServicer_to_server(FederationServicer(hub, identity.trust, limits), self.server)
        self.health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self._serving = health_pb2.HealthCheckResponse.SERVING
        self._not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
        self.port: int | None = None

    def start(self) -> int:
        try:
            self.port = self.server.add_secure_port(self.address, server_credentials(self.identity))
        except RuntimeError:
            self.port = 0
        if not self.port:
            raise TransportError("UNAVAILABLE", f"cannot listen on {self.address}")
        self.server.start()
        for name in ("", SERVICE):
            self.health.set(name, self._serving)
        log_event("server_listening", address=self.address, port=self.port, level="info")
        return self.port

    def stop(self, grace: float = 1.0) -> None:
        for name in ("", SERVICE):
            self.health.set(name, self._not_serving)
        self.server.stop(grace).wait()


# ============================================================================ client
def _rpc_error(err: grpc.RpcError, what: str) -> TransportError:
    code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
    details = err.details() if hasattr(err, "details") else str(err)
    return TransportError(code.name, f"{what}: {details}")


class GrpcSite:
    """`SiteTransport` over gRPC with mutual TLS; one channel per site (a process may host several)."""

    def __init__(self, identity: SiteIdentity, address: str, *, limits: Limits = Limits(),
                 call_timeout_s: float = 30.0, server_name: str | None = None) -> None:
        self.identity, self.address, self.limits = identity, address, limits
        self.name = identity.name
        self.call_timeout_s = call_timeout_s
        creds = grpc.ssl_channel_credentials(root_certificates=identity.trust.ca_pem,
                                             private_key=identity.tls_key_pem, certificate_chain=identity.tls_cert_pem)
        options = [("grpc.max_receive_message_length", limits.max_message_bytes),
                   ("grpc.max_send_message_length", limits.max_message_bytes)]
        if server_name:
            options.append(("grpc.ssl_target_name_override", server_name))
        self.channel = grpc.secure_channel(address, creds, options=options)
        self.stub = pb_grpc.FederationStub(self.channel)
        self._session = b""

    def close(self) -> None:
        self.channel.close()

    def _call(self, what: str, fn, *args, timeout: float | None = None):
        try:
            return fn(*args, timeout=timeout or self.call_timeout_s)
        except grpc.RpcError as err:
            terr = _rpc_error(err, f"{self.name}: {what}")
            log_event("call_failed", site=self.name, method=what, status=terr.status, reason=str(terr),
                      level="info" if terr.status == "DEADLINE_EXCEEDED" else "warning")
            raise terr from None

    def join(self) -> JoinInfo:
        r = self._call("Join", self.stub.Join, pb.JoinRequest(site=self.name, protocol_version=PROTOCOL_VERSION))
        if r.site_number != self.identity.number:
            raise TransportError("FAILED_PRECONDITION", f"server assigned number {r.site_number}, certificate says "
                                 f"{self.identity.number}")
        if r.crl:
            try:
                self.identity.trust.set_crl(r.crl)  # keep the newest CA-signed CRL (rollback refused)
            except CertificateRejected:
                pass
        self._session = r.session
        return JoinInfo(r.session, r.site_number, r.federation, r.heartbeat_interval_s)

    def heartbeat(self) -> tuple[int, bool]:
        r = self._call("Heartbeat", self.stub.Heartbeat, pb.HeartbeatRequest(site=self.name, session=self._session))
        return r.current_round, r.finished

    def await_round(self, after_round: int, timeout: float) -> Broadcast:
        req = pb.AwaitRoundRequest(site=self.name, session=self._session, after_round=after_round)
        r = self._call("AwaitRound", self.stub.AwaitRound, req, timeout=timeout)
        if r.finished:
            return Broadcast(finished=True, notice=bytes(r.notice))
        if not r.sampled:
            return Broadcast(round_id=r.config.round_id, notice=bytes(r.notice))
        try:
            cfg = config_from_pb(r.config)
        except Exception as exc:
            raise TransportError("INVALID_ARGUMENT", f"round broadcast: {exc}") from None
        if r.policy_length * 4 > self.limits.max_payload_bytes:
            raise TransportError("RESOURCE_EXHAUSTED", f"policy of {r.policy_length} floats exceeds the cap")
        policy = np.zeros(0, np.float32)
        if r.policy_length:
            chunks = self._stream("DownloadPolicy", self.stub.DownloadPolicy,
                                  pb.PolicyRequest(site=self.name, session=self._session, round_id=cfg.round_id))
            header, data = _reassemble(chunks, 4 * r.policy_length, "policy")
            if header.length != 4 * r.policy_length or header.sha256 != r.policy_sha256:
                raise TransportError("INVALID_ARGUMENT", "policy does not match the broadcast's length and hash")
            policy = np.frombuffer(data, dtype="<f4").astype(np.float32)
        roster = tuple(RosterEntry(e.site_id, e.site, bytes(e.certificate)) for e in r.roster)
        return Broadcast(round_id=cfg.round_id, announcement=RoundAnnouncement(cfg, roster, policy, bytes(r.extras)),
                         notice=bytes(r.notice))

    def _stream(self, what: str, fn, req, timeout: float | None = None):
        try:
            yield from fn(req, timeout=timeout or self.call_timeout_s)
        except grpc.RpcError as err:
            terr = _rpc_error(err, f"{self.name}: {what}")
            log_event("call_failed", site=self.name, method=what, status=terr.status, reason=str(terr))
            raise terr from None

    def upload(self, round_id: int, phase: str, payload: bytes) -> None:
        header = pb.PayloadHeader(site=self.name, session=self._session, round_id=round_id,
                                  phase=_PHASE_TO_PB[phase], length=len(payload),
                                  sha256=hashlib.sha256(payload).digest())
        self._call("Upload", self.stub.Upload, _chunks(header, payload, self.limits.chunk_bytes))

    def download(self, round_id: int, phase: str, timeout: float) -> bytes:
        req = pb.DownloadRequest(site=self.name, session=self._session, round_id=round_id, phase=_PHASE_TO_PB[phase])
        header, data = _reassemble(self._stream("Download", self.stub.Download, req, timeout=timeout),
                                   self.limits.max_payload_bytes, f"{phase} download")
        if header.round_id != round_id or header.phase != _PHASE_TO_PB[phase] or header.site != self.name:
            raise TransportError("INVALID_ARGUMENT", "download header is for another round, phase or site")
        return data

    def leave(self, round_id: int) -> None:
        """Nothing to send: over the wire a site that stops is a dropout at the phase deadline."""

    def witness(self, seq: int, row_hash: str, signature: bytes) -> None:
        self._call("Witness", self.stub.Witness, pb.WitnessRequest(site=self.name, session=self._session, seq=seq,
                                                                   row_hash=row_hash, signature=signature))

    def fetch_model(self, values: int | None = None) -> tuple[int, np.ndarray]:
        req = pb.ModelRequest(site=self.name, session=self._session)
        cap = self.limits.max_payload_bytes if values is None else min(self.limits.max_payload_bytes, 4 * values)
        header, data = _reassemble(self._stream("FetchModel", self.stub.FetchModel, req), cap, "model")
        if header.site != self.name or len(data) % 4:
            raise TransportError("INVALID_ARGUMENT", "model download is for another site or not float32")
        if values is not None and len(data) != 4 * values:
            raise TransportError("INVALID_ARGUMENT", f"the server's model has {len(data) // 4} values, expected {values}")
        return int(header.round_id), np.frombuffer(data, dtype="<f4").astype(np.float32)

    def ready(self, version: int) -> None:
        self._call("Ready", self.stub.Ready, pb.ReadyRequest(site=self.name, session=self._session, version=version))
