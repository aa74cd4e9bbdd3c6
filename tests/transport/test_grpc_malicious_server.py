"""A malicious server against the site's model download (FetchModel), over real mutual TLS: the
site checks what it is given itself, since the honest hub never sends these streams."""

from __future__ import annotations

import hashlib
from concurrent import futures

import grpc
import numpy as np
import pytest

from secure_fedrl.transport._pb import federation_pb2 as pb
from secure_fedrl.transport._pb import federation_pb2_grpc as pb_grpc
from secure_fedrl.transport.base import TransportError
from secure_fedrl.transport.grpc_transport import Limits, PeerAuthInterceptor, server_credentials
from secure_fedrl.transport.pki import load_server_identity, load_site_identity

pytestmark = pytest.mark.timeout(60)

MODEL = np.arange(6, dtype=np.float32)


class _Lying(pb_grpc.FederationServicer):
    """Answers Join honestly and FetchModel with `stream(request)`: a list of Chunks it builds."""

    def __init__(self, ca, stream):
        self.ca, self.stream = ca, stream

    def Join(self, request, context):
        return pb.JoinResponse(session=b"s" * 16, federation="f", heartbeat_interval_s=5,
                               site_number=load_site_identity(self.ca.dir, request.site).number)

    def FetchModel(self, request, context):
        yield from self.stream(request)


def _stream(site: str, data: bytes, round_id: int = 3) -> list[pb.Chunk]:
    """A well-formed stream (header with the true length and hash) addressed to `site`."""
    header = pb.PayloadHeader(site=site, round_id=round_id, length=len(data), sha256=hashlib.sha256(data).digest())
    return [pb.Chunk(header=header), pb.Chunk(data=data)]


@pytest.fixture()
def lying_server(pki):
    servers = []

    def start(stream) -> str:
        identity = load_server_identity(pki.dir)
        server = grpc.server(futures.ThreadPoolExecutor(4), interceptors=[PeerAuthInterceptor(identity.trust, Limits())])
        pb_grpc.add_FederationServicer_to_server(_Lying(pki, stream), server)
        port = server.add_secure_port("127.0.0.1:0", server_credentials(identity))
        server.start()
        servers.append(server)
        return f"127.0.0.1:{port}"

    yield start
    for s in servers:
        s.stop(0)


def test_an_honest_looking_stream_is_taken(lying_server, site):
    s1 = site("s1", lying_server(lambda req: _stream(req.site, MODEL.tobytes())))
    s1.join()
    round_id, model = s1.fetch_model(values=MODEL.size)
    assert round_id == 3 and np.array_equal(model, MODEL) and model.dtype == np.float32


@pytest.mark.parametrize("attack, values", [
    ("another site's model", MODEL.size),      # a header addressed to s2, sent to s1
    ("another site's model", None),           # (FedBuff's fetch: no size expected)
    ("not whole float32s", None),             # 23 bytes, length and hash true
    ("one value short", MODEL.size),
    ("one value more", MODEL.size),
])
def test_a_mis_addressed_misaligned_or_wrong_size_model_is_refused(lying_server, site, attack, values):
    data = {"not whole float32s": MODEL.tobytes()[:-1], "one value short": MODEL[:-1].tobytes(),
            "one value more": np.append(MODEL, 1.0).astype(np.float32).tobytes()}.get(attack, MODEL.tobytes())
    addressee = "s2" if attack == "another site's model" else None
    s1 = site("s1", lying_server(lambda req: _stream(addressee or req.site, data)))
    s1.join()
    with pytest.raises(TransportError) as excinfo:
        s1.fetch_model(values=values)
    assert excinfo.value.status in ("INVALID_ARGUMENT", "RESOURCE_EXHAUSTED")
    message = str(excinfo.value)
    if attack == "another site's model" or attack == "not whole float32s":
        assert excinfo.value.status == "INVALID_ARGUMENT" and "another site or not float32" in message
