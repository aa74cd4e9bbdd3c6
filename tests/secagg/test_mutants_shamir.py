"""Tests that kill the mutants of secagg/shamir.py that survived mutmut 3.8.1 (run over tests/secagg).

Survivors killed here (mutmut names):
  x_random_field_element__mutmut_11  `v < PRIME` -> `v <= PRIME`: p itself (all 521 bits set) leaked
                                     out as a "field element" instead of being rejected and redrawn
  x_random_field_element__mutmut_3   `& _MASK521` -> `| _MASK521`: every draw is p, rejection loops
                                     for ever (mutmut saw only a timeout); here it fails fast
  x_share_to_bytes__mutmut_2, _3     `0 <= y` -> `1 <= y` / `0 < y`: an honest share equal to 0
                                     could not be serialised
  x_share_to_bytes__mutmut_4         `y < PRIME` -> `y <= PRIME`: p (not a field element) was
                                     serialised, to be refused only by the receiver
"""

from __future__ import annotations

import pytest

from secure_fedrl.secagg import shamir


class _Script:
    """A RandBytes that hands out the given byte strings in order and counts the calls."""

    def __init__(self, *chunks: bytes):
        self.chunks = list(chunks)
        self.calls = 0

    def __call__(self, n: int) -> bytes:
        assert n == shamir.SHARE_BYTES
        self.calls += 1
        if not self.chunks:
            raise AssertionError("random_field_element asked for more randomness than scripted")
        out = self.chunks.pop(0)
        assert len(out) == n
        return out


def test_random_field_element_rejects_p_and_redraws():
    # 66 bytes of 0xff: the low 521 bits are all ones, i.e. exactly p = 2^521 - 1: not in GF(p).
    second = bytes(range(1, 67))
    rb = _Script(b"\xff" * 66, second)
    v = shamir.random_field_element(rb)
    assert rb.calls == 2
    assert v == int.from_bytes(second, "big") & ((1 << 521) - 1)
    assert 0 <= v < shamir.PRIME


def test_random_field_element_accepts_p_minus_one_and_masks_the_top_bits():
    # p - 1 is the largest field element: accepted on the first draw
    rb = _Script((shamir.PRIME - 1).to_bytes(66, "big"))
    assert shamir.random_field_element(rb) == shamir.PRIME - 1 and rb.calls == 1
    # the 7 bits above bit 520 are discarded, not kept and not set
    rb = _Script(b"\xfe" + b"\x00" * 64 + b"\x05")
    assert shamir.random_field_element(rb) == 5 and rb.calls == 1
    rb = _Script(b"\x00" * 65 + b"\x00")
    assert shamir.random_field_element(rb) == 0 and rb.calls == 1


def test_split_coefficients_never_reach_p():
    # threshold 2 draws one coefficient; a scripted p must be skipped, so f(x) = s + a*x with a = 3
    rb = _Script(b"\xff" * 66, (3).to_bytes(66, "big"))
    shares = shamir.split((7).to_bytes(32, "big"), threshold=2, xs=[1, 2], randbytes=rb)
    assert shares == {1: 10, 2: 13}


def test_a_zero_share_serialises():
    # an honest share can be 0 (here: secret 0, no coefficients); it must go on the wire as 66 zeros
    shares = shamir.split_with_coefficients(b"\x00" * 32, [], [1, 2])
    assert shares == {1: 0, 2: 0}
    wire = shamir.share_to_bytes(shares[1])
    assert wire == b"\x00" * 66
    assert shamir.share_from_bytes(wire) == 0


@pytest.mark.parametrize("y", [shamir.PRIME, shamir.PRIME + 1, -1])
def test_share_to_bytes_refuses_non_field_elements(y):
    with pytest.raises(ValueError, match="out of field range"):
        shamir.share_to_bytes(y)


def test_share_to_bytes_is_66_byte_big_endian():
    assert shamir.share_to_bytes(1) == b"\x00" * 65 + b"\x01"
    assert shamir.share_to_bytes(shamir.PRIME - 1) == b"\x01" + b"\xff" * 64 + b"\xfe"
