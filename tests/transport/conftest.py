"""Shared fixtures: a federation PKI (session-wide) and a loopback gRPC server over a fresh hub."""

from __future__ import annotations

import logging

import pytest

from secure_fedrl.transport.base import Hub
from secure_fedrl.transport.grpc_transport import GrpcServer, GrpcSite, Limits
from secure_fedrl.transport.pki import CertificateAuthority, load_server_identity, load_site_identity

from _fed import SITES


@pytest.fixture(scope="session")
def pki(tmp_path_factory):
    ca = CertificateAuthority.init(tmp_path_factory.mktemp("pki") / "ca")
    for name in SITES:
        ca.issue_site(name)
    ca.issue_server()
    return ca


@pytest.fixture()
def serve(pki):
    """serve(hub=None, limits=Limits(), ca=pki) -> (hub, server, address); stopped after the test."""
    servers = []

    def start(hub=None, limits=Limits(), ca=None):
        hub = hub or Hub()
        server = GrpcServer(hub, load_server_identity((ca or pki).dir), limits=limits)
        port = server.start()
        servers.append(server)
        return hub, server, f"127.0.0.1:{port}"

    yield start
    for s in servers:
        s.stop(0)


@pytest.fixture()
def site(pki):
    """site(name, address, ca=pki, **kw) -> GrpcSite (channels closed after the test)."""
    made = []

    def make(name, address, ca=None, **kw):
        s = GrpcSite(load_site_identity((ca or pki).dir, name), address, **kw)
        made.append(s)
        return s

    yield make
    for s in made:
        s.close()


@pytest.fixture()
def events(caplog):
    """The structured events logged by the transport, as a list of (event, fields)."""
    caplog.set_level(logging.INFO, logger="secure_fedrl.transport")

    def get():
        return [(r.event, r.fields) for r in caplog.records if hasattr(r, "event")]
    return get
