"""Tests that kill mutants left alive in the DP attestation wire code (SPEC 7.1, commit b6e4667).

Found with mutmut 3.8.1 on secure_fedrl/secagg/{messages,server,client}.py, limited to the
functions that commit touched. Each test is named for what the surviving mutant broke: mostly
the one-line error messages (bad input must name the message and the problem), a dim-0
MaskedInput that decode must not crash on, and server error text.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from secure_fedrl.errors import ProtocolError
from secure_fedrl.secagg import messages as M
from secure_fedrl.secagg import primitives as P
from secure_fedrl.secagg import protocol as R
from secure_fedrl.secagg.client import SecAggClient
from secure_fedrl.secagg.server import SecAggServer

ROUND, N = 7, 4
FIELD = bytes(range(64))  # stands in for a 64-byte Ed25519 signature over A


def _keys():
    return {i: P.ed25519_keypair(P.SeededRandom(b"ddg-mutants/%d" % i))[0] for i in range(1, N + 1)}


def _cfg(keys, bits=16, dim=6):
    return R.RoundConfig(round_id=ROUND, site_ids=tuple(keys), threshold=3, dim=dim, bits=bits,
                         identity_keys=tuple(P.ed25519_public_bytes(keys[i]) for i in keys))


def _to_masked_input(fields=None, verify_dp=None, bits=16):
    """Clients and a server after phases 0-1; `out` is the server's phase-2 download."""
    keys = _keys()
    cfg = _cfg(keys, bits=bits)
    rng = np.random.default_rng(1)
    fields = fields or {}
    clients = {i: SecAggClient(config=cfg, site_id=i, identity_key=keys[i],
                               vector=rng.integers(0, 2**bits, cfg.dim, dtype=np.uint64).astype(np.uint32),
                               randbytes=P.SeededRandom(b"mm/%d" % i), dp_attestation=fields.get(i, b""))
               for i in keys}
    server = SecAggServer(config=cfg, verify_dp=verify_dp)
    for c in clients.values():
        server.receive(c.advertise_keys().encode())
    out = server.finish_phase()
    for i, c in clients.items():
        server.receive(c.share_keys(out[i]).encode())
    out = server.finish_phase()
    return keys, cfg, clients, server, out


# --------------------------------------------------------------------------- messages.py


def test_a_bad_field_length_names_maskedinput_and_the_length():
    """Kills `_dp_field` mutants 1-3 (default `what`) and 7 (message dropped)."""
    msg = M.MaskedInput(bytes(32), 1, (2,), (bytes(M.TAG_BYTES),), np.zeros(3, np.uint32), dp_attestation=bytes(63))
    with pytest.raises(ProtocolError, match=r"^MaskedInput: DP attestation must be 0 or 64 bytes, got 63$"):
        msg.body()
    with pytest.raises(ProtocolError, match=r"^MaskedInput: DP attestation must be 0 or 64 bytes, got 1$"):
        M.attestation_core(bytes(32), 1, (2,), b"x")


def test_a_bad_field_length_in_an_unmask_request_names_unmaskrequest():
    req = M.UnmaskRequest(bytes(32), 2, (1, 2, 3), attestations=((1, (2, 3), bytes(M.TAG_BYTES)),),
                          dp_attestations=((1, bytes(10)),))
    with pytest.raises(ProtocolError, match=r"^UnmaskRequest: DP attestation must be 0 or 64 bytes, got 10$"):
        req.encode()


def _wire(dp=FIELD, dim=3):
    keys = _keys()
    msg = M.MaskedInput(bytes(32), 1, (2, 3), (bytes(M.TAG_BYTES), bytes(M.TAG_BYTES)),
                        np.arange(dim, dtype=np.uint32), dp_attestation=dp).signed(keys[1])
    return msg, msg.encode()


def test_a_misframed_field_length_is_named_at_decode():
    """Kills `_read_dp_attestation` mutant 3 and `MaskedInput.decode` mutant 3 (reader name)."""
    msg, wire = _wire()
    off = M.HEADER.size + 4 + 4 * len(msg.paired)
    bad = bytearray(wire)
    bad[off] = 7
    with pytest.raises(ProtocolError, match=r"^MaskedInput: DP attestation length 7, must be 0 or 64$"):
        M.MaskedInput.decode(bytes(bad))


def test_a_vector_longer_than_the_message_is_a_named_truncation():
    """Kills `MaskedInput.decode` mutant 22 (message dropped)."""
    msg, wire = _wire()
    dim_at = M.HEADER.size + 4 + 4 * len(msg.paired) + 1 + 64 + M.TAG_BYTES * len(msg.paired)
    bad = bytearray(wire)
    bad[dim_at:dim_at + 4] = (10**6).to_bytes(4, "big")
    with pytest.raises(ProtocolError, match=r"^MaskedInput: truncated message$"):
        M.MaskedInput.decode(bytes(bad))


@pytest.mark.parametrize("dp", [b"", FIELD])
def test_an_empty_vector_round_trips(dp):
    """Kills `MaskedInput.decode` mutant 18 (`4 / dim`: ZeroDivisionError on dim 0)."""
    msg, wire = _wire(dp=dp, dim=0)
    back = M.MaskedInput.decode(wire)
    assert back.vector.size == 0 and back.dp_attestation == dp and back.signature == msg.signature


# --------------------------------------------------------------------------- server.py


def _resigned(msg, key, **changes):
    return replace(msg, **changes, signature=b"").signed(key).encode()


def test_the_server_names_a_wrong_length_vector():
    """Kills `_check_masked_input` mutant 5 (message dropped)."""
    keys, cfg, clients, server, out = _to_masked_input()
    msg = clients[1].masked_input(out[1])
    with pytest.raises(ProtocolError, match=r"^MaskedInput from site 1: length 5, expected 6$"):
        server.receive(_resigned(msg, keys[1], vector=msg.vector[:5].copy()))


def test_the_server_names_an_unreduced_vector():
    """Kills `_check_masked_input` mutant 11 (message dropped)."""
    keys, cfg, clients, server, out = _to_masked_input()
    msg = clients[1].masked_input(out[1])
    vec = msg.vector.copy()
    vec[0] = 2**16
    with pytest.raises(ProtocolError, match=r"^MaskedInput from site 1: values not reduced mod 2\^16$"):
        server.receive(_resigned(msg, keys[1], vector=vec))


# --------------------------------------------------------------------------- UnmaskRequest

BIG = 2**32 - 1  # ids are u32 on the wire (SPEC: u32(u)): the top of the range must encode


def test_an_unmask_request_with_u32_ids_at_the_top_of_the_range_round_trips():
    """Kills `UnmaskRequest.encode` mutants 23, 38, 64 (`>i`: struct.error for ids >= 2^31)."""
    tag, sig = bytes(range(32)), bytes(range(64))
    req = M.UnmaskRequest(bytes(32), 1, (1, BIG - 2, BIG - 1, BIG), tags=((BIG - 2, tag),),
                          signatures=((BIG - 1, sig),), attestations=((BIG, (1, BIG - 2), tag),),
                          dp_attestations=((BIG, FIELD),))
    assert M.UnmaskRequest.decode(req.encode()) == req


def test_a_field_without_its_attestation_is_a_named_error():
    """Kills `UnmaskRequest.encode` mutant 47 (message dropped)."""
    req = M.UnmaskRequest(bytes(32), 2, (1, 2, 3), attestations=((1, (2, 3), bytes(32)),),
                          dp_attestations=((1, FIELD), (1, FIELD)))  # a second field for site 1
    with pytest.raises(ProtocolError, match=r"^UnmaskRequest: a DP attestation for a site with no \(or a second\)"):
        req.encode()


def _unsorted(which):
    tag, sig = bytes(32), bytes(64)
    kw = {"tags": ((1, tag), (3, tag)), "signatures": ((1, sig), (3, sig)),
          "attestations": ((1, (2,), tag), (3, (2,), tag))}
    wire = M.UnmaskRequest(bytes(32), 2, (1, 2, 3), **kw).encode()
    # swap the ids of the two entries of `which` on the wire (3 then 1: not increasing)
    one, three = (1).to_bytes(4, "big"), (3).to_bytes(4, "big")
    entry = {"tags": tag, "signatures": sig, "attestations": (1).to_bytes(4, "big") + (2).to_bytes(4, "big")}[which]
    a = wire.index(one + entry, M.HEADER.size + 16)
    b = wire.index(three + entry, a)
    bad = bytearray(wire)
    bad[a:a + 4], bad[b:b + 4] = three, one
    return bytes(bad)


@pytest.mark.parametrize("which", ["tags", "signatures", "attestations"])
def test_unsorted_entries_of_an_unmask_request_are_named(which):
    """Kills `UnmaskRequest.decode` mutants 18, 28, 42 (`_check_sorted(..., None)`)."""
    with pytest.raises(ProtocolError, match=r"^UnmaskRequest: id list not strictly increasing \(duplicate id 1\?\)$"):
        M.UnmaskRequest.decode(_unsorted(which))


def test_a_misframed_field_in_an_unmask_request_is_named():
    """Kills `UnmaskRequest.decode` mutant 3 (reader name)."""
    req = M.UnmaskRequest(bytes(32), 2, (1, 2, 3), attestations=((1, (2, 3), bytes(32)),),
                          dp_attestations=((1, FIELD),))
    bad = bytearray(req.encode())
    bad[bad.index(FIELD) - 1] = 7
    with pytest.raises(ProtocolError, match=r"^UnmaskRequest: DP attestation length 7, must be 0 or 64$"):
        M.UnmaskRequest.decode(bytes(bad))


# --------------------------------------------------------------------------- client.py


def test_the_client_names_a_wrong_length_field():
    """Kills `SecAggClient.__init__` mutant 36 (message dropped)."""
    keys = _keys()
    cfg = _cfg(keys)
    with pytest.raises(ProtocolError, match=r"^site 1: DP attestation must be 0 or 64 bytes, got 32$"):
        SecAggClient(config=cfg, site_id=1, identity_key=keys[1], vector=np.zeros(cfg.dim, np.uint32),
                     dp_attestation=bytes(32))
