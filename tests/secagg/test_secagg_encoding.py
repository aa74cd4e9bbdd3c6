import numpy as np
import pytest

from secure_fedrl.errors import ConfigError, ProtocolError, UpdateRejected
from secure_fedrl.secagg.encoding import (
    centered_lift, decode_sum, encode, encode_with_uniforms, ring_capacity_check, to_ring,
)


def _ring_sum(vs, bits=32):
    return (sum(v.astype(np.uint64) for v in vs) % (1 << bits)).astype(np.uint32)


def test_ring_primitives_keep_their_behaviour():
    v = np.array([-1, 0, 5, -(2**31)])
    r = to_ring(v)
    assert r.dtype == np.uint32 and r[0] == 2**32 - 1
    assert np.array_equal(centered_lift(r), v)
    assert np.array_equal(centered_lift(to_ring(v, 8), 8), np.array([-1, 0, 5, 0]))


def test_sum_of_encodings_decodes_to_the_float_sum():
    rng = np.random.default_rng(0)
    n, d, clip, scale = 20, 500, 1.0, 2.0**16
    xs = [rng.normal(size=d) * 0.02 for _ in range(n)]
    enc = [encode(x, clip=clip, scale=scale, rng=rng, num_sites=n) for x in xs]
    dec = decode_sum(_ring_sum(enc), scale=scale, num_sites=n, clip=clip)
    assert np.max(np.abs(dec - np.sum(xs, axis=0))) <= n / scale


def test_negative_sums_survive_the_centred_lift():
    rng = np.random.default_rng(1)
    xs = [-np.full(10, 0.1) for _ in range(5)]
    enc = [encode(x, clip=1.0, scale=1000.0, rng=rng, num_sites=5) for x in xs]
    dec = decode_sum(_ring_sum(enc), scale=1000.0, num_sites=5, clip=1.0)
    assert np.allclose(dec, -0.5, atol=5 / 1000)


def test_randomized_rounding_is_unbiased():
    rng = np.random.default_rng(2)
    x = np.full(20000, 0.3)  # 0.3 * 1 = 0.3: floor 0, rounds up with probability 0.3
    enc = encode(x, clip=50.0, scale=1.0, rng=rng)  # norm 42.4 < clip: no clipping
    assert abs(centered_lift(enc).mean() - 0.3) < 0.015
    assert set(np.unique(enc)) == {0, 1}


def test_clip_is_an_l2_clip():
    x = np.array([3.0, 4.0])  # norm 5, clipped to norm 1: (0.6, 0.8)
    enc = encode_with_uniforms(x, np.full(2, 0.5), clip=1.0, scale=10.0)
    assert np.array_equal(centered_lift(enc), [6, 8])


def test_capacity_check_refuses_a_ring_that_could_wrap():
    ring_capacity_check(num_sites=100, clip=1.0, scale=2.0**20, bits=32)
    with pytest.raises(ConfigError, match="does not fit"):
        ring_capacity_check(num_sites=5000, clip=1.0, scale=2.0**20, bits=32)
    with pytest.raises(ConfigError, match="does not fit"):
        encode(np.zeros(3), clip=1.0, scale=2.0**20, bits=16, rng=np.random.default_rng(0))
    with pytest.raises(ConfigError, match="does not fit"):
        decode_sum(np.zeros(3, np.uint32), scale=2.0**20, num_sites=5000, clip=1.0)


@pytest.mark.parametrize("kwargs", [dict(clip=0.0), dict(clip=float("nan")), dict(scale=-1.0), dict(bits=40)])
def test_invalid_encoding_parameters(kwargs):
    args = dict(clip=1.0, scale=10.0, bits=32, rng=np.random.default_rng(0)) | kwargs
    with pytest.raises((ConfigError, ValueError)):
        encode(np.zeros(3), **args)


def test_nan_update_is_rejected():
    with pytest.raises(UpdateRejected, match="NaN"):
        encode(np.array([0.0, np.nan]), clip=1.0, scale=10.0, rng=np.random.default_rng(0))


def test_decoder_refuses_a_sum_no_honest_sites_could_produce():
    # 3 sites each within norm 1 cannot sum to a vector of norm 4.
    bad = to_ring(np.array([4 * 2**16, 0, 0]))
    with pytest.raises(ProtocolError, match="refusing to release"):
        decode_sum(bad, scale=2.0**16, num_sites=3, clip=1.0)
    ok = decode_sum(bad, scale=2.0**16, num_sites=3, clip=1.0, extra_norm=1.5)
    assert ok[0] == 4.0
