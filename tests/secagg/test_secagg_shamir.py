import itertools

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from secure_fedrl.errors import BelowThresholdError, ProtocolError
from secure_fedrl.secagg import primitives as P
from secure_fedrl.secagg import shamir


@given(
    secret=st.binary(min_size=32, max_size=32),
    n=st.integers(1, 12),
    data=st.data(),
)
@settings(max_examples=40, deadline=None)
def test_any_t_shares_reconstruct_the_secret(secret, n, data):
    t = data.draw(st.integers(1, n))
    xs = data.draw(st.lists(st.integers(1, 2**32 - 1), min_size=n, max_size=n, unique=True))
    shares = shamir.split(secret, threshold=t, xs=xs)
    subset = data.draw(st.lists(st.sampled_from(xs), min_size=t, max_size=n, unique=True))
    assert shamir.reconstruct({x: shares[x] for x in subset}, threshold=t) == secret


def test_fewer_than_t_shares_abort():
    shares = shamir.split(b"s" * 32, threshold=3, xs=[1, 2, 3, 4])
    with pytest.raises(BelowThresholdError, match="2 shares, threshold is 3"):
        shamir.reconstruct({1: shares[1], 2: shares[2]}, threshold=3)


def test_t_minus_one_shares_are_consistent_with_every_secret():
    # Perfect secrecy, checked constructively: for t=2 one share y1 at x=1 fits any secret s with
    # the line through (0, s) and (1, y1); reconstructing with a forged second share hits s.
    shares = shamir.split(b"\x07" * 32, threshold=2, xs=[1, 2])
    for s in (0, 1, 2**255):
        slope = (shares[1] - s) % shamir.PRIME
        forged = (s + 2 * slope) % shamir.PRIME
        assert shamir.reconstruct({1: shares[1], 2: forged}, threshold=2) == s.to_bytes(32, "big")


def test_t_minus_one_shares_are_uniform_and_independent_of_the_secret():
    """t-1 = 2 shares of a fixed secret are uniform in GF(p): their bytes pass a chi-square test,
    and never equal (or reveal) the secret. A split that leaked the secret into a share (e.g.
    every share = secret, or a zero coefficient) fails here."""
    from scipy.stats import chisquare

    secret = b"\x42" * 32
    s_int = int.from_bytes(secret, "big")
    low, high = [], []
    for i in range(400):
        sh = shamir.split(secret, threshold=3, xs=[1, 2, 3, 4], randbytes=P.SeededRandom(b"u%d" % i))
        for x in (1, 2):
            assert sh[x] != s_int
            b = sh[x].to_bytes(66, "big")
            low.append(b[-1])
            high.append(b[1])  # bits 512..519: a share confined below 2^256 would be all zero here
    for sample in (low, high):
        assert chisquare(np.bincount(sample, minlength=256)).pvalue > 1e-4
    # two shares of secret A and of secret B: same marginal distribution (a keyed test would not be)
    a = shamir.split(b"\x00" * 32, threshold=3, xs=[1, 2, 3], randbytes=P.SeededRandom(b"x"))
    b = shamir.split(b"\xff" * 32, threshold=3, xs=[1, 2, 3], randbytes=P.SeededRandom(b"x"))
    assert (a[1] - b[1]) % shamir.PRIME == (0 - (2**256 - 1)) % shamir.PRIME  # shift by the secret only


def test_corrupted_share_is_detected_when_result_is_not_a_secret():
    shares = shamir.split(b"\x01" * 32, threshold=2, xs=[1, 2, 3])
    shares[2] = (shares[2] + 2**300) % shamir.PRIME  # lambda_2 = -1: result shifts by -2^300
    with pytest.raises(ProtocolError, match="not a 32-byte secret"):
        shamir.reconstruct({1: shares[1], 2: shares[2]}, threshold=2)


@pytest.mark.parametrize("xs", [[0, 1], [1, 1], [-1, 2]])
def test_invalid_x_coordinates_rejected(xs):
    with pytest.raises(ValueError):
        shamir.split(b"a" * 32, threshold=1, xs=xs)


def test_threshold_validation_and_share_encoding():
    with pytest.raises(ValueError, match="threshold"):
        shamir.split(b"a" * 32, threshold=3, xs=[1, 2])
    with pytest.raises(ValueError, match="32 bytes"):
        shamir.split(b"a" * 31, threshold=1, xs=[1])
    y = shamir.PRIME - 1
    assert shamir.share_from_bytes(shamir.share_to_bytes(y)) == y
    with pytest.raises(ProtocolError, match="field element"):
        shamir.share_from_bytes(shamir.PRIME.to_bytes(66, "big"))
    with pytest.raises(ProtocolError, match="66 bytes"):
        shamir.share_from_bytes(b"\0" * 65)


def test_lagrange_coefficients_are_reused_for_the_same_x_set():
    shamir.lagrange_at_zero.cache_clear()
    for s in itertools.islice(itertools.count(), 20):
        sh = shamir.split(s.to_bytes(32, "big"), threshold=3, xs=[4, 5, 6, 7])
        shamir.reconstruct(sh, threshold=3)
    info = shamir.lagrange_at_zero.cache_info()
    assert info.misses == 1 and info.hits == 19


def test_result_just_above_32_bytes_is_rejected_and_x_must_be_below_p():
    shares = shamir.split(b"\x01" * 32, threshold=2, xs=[1, 2])
    lam2 = shamir.lagrange_at_zero((1, 2))[1]
    shifted = (shares[2] + 2**260 * pow(lam2, -1, shamir.PRIME)) % shamir.PRIME  # secret + 2^260
    with pytest.raises(ProtocolError, match="not a 32-byte secret"):
        shamir.reconstruct({1: shares[1], 2: shifted}, threshold=2)
    with pytest.raises(ValueError):
        shamir.split(b"a" * 32, threshold=1, xs=[shamir.PRIME])
