import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from secure_fedrl.errors import ProtocolError
from secure_fedrl.secagg import prg
from secure_fedrl.secagg import primitives as P


def test_prg_known_answer_aes256_zero_key():
    # AES-256(key=0^32, block=0^16) = dc95c078a2408989ad48a21492842087 (FIPS-197 style KAT)
    words = prg(bytes(32), 4)
    assert words.dtype == np.uint32
    assert words.astype("<u4").tobytes().hex() == "dc95c078a2408989ad48a21492842087"


@given(seed=st.binary(min_size=32, max_size=32), bits=st.integers(1, 32), n=st.integers(0, 300))
@settings(max_examples=40, deadline=None)
def test_prg_reduces_mod_2_to_the_bits_and_is_a_prefix_stream(seed, bits, n):
    full = prg(seed, n + 5, 32)
    part = prg(seed, n, bits)
    assert part.shape == (n,)
    assert np.array_equal(part, full[:n] & np.uint32((1 << bits) - 1))


def test_prg_is_keyed_by_the_whole_seed():
    # Flower folds its seed to 32 bits for a Mersenne Twister; ours uses all 256 bits as the AES key.
    a = bytes(32)
    for pos in (0, 4, 16, 31):
        b = bytearray(a)
        b[pos] ^= 1
        assert not np.array_equal(prg(a, 64), prg(bytes(b), 64))


@pytest.mark.parametrize("bad", [b"", b"x" * 31, b"x" * 33])
def test_prg_rejects_wrong_seed_length(bad):
    with pytest.raises(ValueError, match="32 bytes"):
        prg(bad, 4)


def test_prg_rejects_bad_bits_and_length():
    with pytest.raises(ValueError, match="bits"):
        prg(bytes(32), 4, bits=33)
    with pytest.raises(ValueError, match="length"):
        prg(bytes(32), -1)


def test_mask_accumulator_matches_prg_with_wraparound():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 2**32, 1000, dtype=np.uint64).astype(np.uint32)
    s1, s2 = b"\x01" * 32, b"\x02" * 32
    acc = P.MaskAccumulator(1000)
    y = x.copy()
    acc.add(y, s1)
    acc.sub(y, s2)
    want = (x.astype(np.int64) + prg(s1, 1000).astype(np.int64) - prg(s2, 1000).astype(np.int64)) % 2**32
    assert np.array_equal(y, want.astype(np.uint32))


def test_mask_accumulator_combine_equals_one_stream_at_a_time_across_chunks():
    n = 2 * (1 << 16) + 7  # more than one 256 KiB chunk, and a ragged last chunk
    rng = np.random.default_rng(1)
    x = rng.integers(0, 2**32, n, dtype=np.uint64).astype(np.uint32)
    x0 = x.copy()
    seeds = [bytes([i]) * 32 for i in range(1, 5)]
    want = x.astype(np.int64)
    for s in seeds[:2]:
        want += prg(s, n).astype(np.int64)
    for s in seeds[2:]:
        want -= prg(s, n).astype(np.int64)
    want = (want % 2**32).astype(np.uint32)
    acc = P.MaskAccumulator(n)
    out = acc.combine(x, plus=seeds[:2], minus=seeds[2:], out=np.empty(n, np.uint32))
    assert np.array_equal(out, want)
    assert np.array_equal(x, x0)  # out= leaves the input alone
    y = x.copy()
    assert acc.combine(y, plus=seeds[:2], minus=seeds[2:]) is y and np.array_equal(y, want)
    assert np.array_equal(acc.combine(x, out=np.empty(n, np.uint32)), x)  # no streams: a copy
    with pytest.raises(ValueError, match="32 bytes"):
        acc.combine(x, plus=[b"short"])
    for bad_x, bad_out in ((x[:-1], None), (np.zeros(n + 1, np.uint32), None), (x, np.empty(n - 1, np.uint32))):
        with pytest.raises(ValueError, match=f"length {n}"):  # never a silently unmasked tail
            acc.combine(bad_x, plus=seeds[:1], out=bad_out)


def test_aead_detects_tampering_and_wrong_associated_data():
    key, nonce = b"k" * 32, b"n" * 12
    ct = P.aead_encrypt(key, nonce, b"share", b"ad")
    assert P.aead_decrypt(key, nonce, ct, b"ad") == b"share"
    bad = bytearray(ct)
    bad[0] ^= 1
    with pytest.raises(ProtocolError, match="AES-GCM"):
        P.aead_decrypt(key, nonce, bytes(bad), b"ad")
    with pytest.raises(ProtocolError, match="AES-GCM"):
        P.aead_decrypt(key, nonce, ct, b"other")


def test_signature_verification_rejects_other_data_and_key():
    sk, pk = P.ed25519_keypair()
    sig = P.sign(sk, b"data")
    P.verify(pk, sig, b"data")
    with pytest.raises(ProtocolError, match="invalid signature"):
        P.verify(pk, sig, b"datb")
    _, pk2 = P.ed25519_keypair()
    with pytest.raises(ProtocolError, match="invalid signature"):
        P.verify(pk2, sig, b"data")
    with pytest.raises(ProtocolError, match="signature length"):
        P.verify(pk, sig[:10], b"data")


def test_x25519_agreement_is_symmetric_and_rejects_small_order_points():
    a, pa = P.x25519_keypair()
    b, pb = P.x25519_keypair()
    assert P.x25519(a, pb) == P.x25519(b, pa)
    with pytest.raises(ProtocolError):
        P.x25519(a, bytes(32))  # the all-zero point gives an all-zero secret


def test_seeded_random_is_deterministic_and_seed_dependent():
    assert P.SeededRandom(b"a")(40) == P.SeededRandom(b"a")(40)
    assert P.SeededRandom(b"a")(40) != P.SeededRandom(b"b")(40)
    r = P.SeededRandom(b"a")
    assert r(10) + r(30) == P.SeededRandom(b"a")(40)
