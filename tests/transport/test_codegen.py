"""The checked-in generated code is what protoc makes of protocols/secure_fedrl/v1/*.proto."""

from __future__ import annotations

import re

import pytest

from secure_fedrl.transport import codegen


def _generated_with() -> str:
    text = (codegen.OUT_DIR / "federation_pb2_grpc.py").read_text()
    return re.search(r"GRPC_GENERATED_VERSION = '([^']+)'", text).group(1)


def test_generated_code_is_current():
    tools = pytest.importorskip("grpc_tools", reason="grpcio-tools not installed (pip install -e '.[dev]')")
    from importlib.metadata import version

    have = version("grpcio-tools")
    if have != _generated_with():
        pytest.skip(f"generated with grpcio-tools {_generated_with()}, installed {have}: output embeds the version")
    assert tools and codegen.stale() == [], "run: python -m secure_fedrl.transport.codegen"


def test_stale_check_notices_an_edit(tmp_path):
    pytest.importorskip("grpc_tools", reason="grpcio-tools not installed")
    codegen.generate(tmp_path)
    (tmp_path / "federation_pb2.py").write_text((tmp_path / "federation_pb2.py").read_text() + "\n# edited\n")
    (tmp_path / "old_pb2.py").write_text("")
    assert codegen.stale(tmp_path) == ["federation_pb2.py", "old_pb2.py"]


def test_every_phase_has_a_wire_enum():
    from secure_fedrl.secagg.protocol import PHASES
    from secure_fedrl.transport._pb import federation_pb2 as pb

    from secure_fedrl.transport.grpc_transport import _PB_TO_PHASE

    assert sorted(pb.Phase.Name(i).lower() for i in _PB_TO_PHASE) == sorted(PHASES)
    assert all(_PB_TO_PHASE[i] == pb.Phase.Name(i).lower() for i in _PB_TO_PHASE)
