"""Compression: wire sizes, unbiasedness, error-feedback bookkeeping, secagg composition."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from secure_fedrl.errors import ConfigError
from secure_fedrl.fl.compression import (
    MaskedCompressed,
    NoCompression,
    SharedRandomMask,
    StochasticQuantizer,
    TopK,
    _pack,
    _unpack,
    make_compressor,
    shared_mask_indices,
)
from secure_fedrl.fl.updates import VectorError


def f32(*xs: float) -> np.ndarray:
    return np.array(xs, dtype=np.float32)


def test_no_compression_is_exact_and_dense():
    c = NoCompression()
    x = f32(1.5, -2.0, 0.0)
    p = c.compress(x)
    assert p.nbytes == 12
    np.testing.assert_array_equal(c.decompress(p, 3), x)


def test_topk_keeps_largest_magnitudes_and_counts_bytes():
    c = TopK(0.4, error_feedback=False)
    x = f32(0.1, -5.0, 0.3, 4.0, -0.2)
    p = c.compress(x)
    assert p.indices.dtype == np.uint32 and p.values.dtype == np.float32
    np.testing.assert_array_equal(p.indices, [1, 3])
    np.testing.assert_array_equal(c.decompress(p, 5), [0, -5.0, 0, 4.0, 0])
    assert p.nbytes == 2 * 4 + 2 * 4  # uint32 indices + float32 values
    assert c.residual is None  # no error feedback, no memory


def test_topk_error_feedback_sends_dropped_mass_later():
    c = TopK(0.5)  # 1 of 2 coordinates per round
    p1 = c.compress(f32(3.0, 2.0))
    np.testing.assert_array_equal(c.decompress(p1, 2), [3.0, 0.0])
    np.testing.assert_array_equal(c.residual, [0.0, 2.0])
    # next round: target = [1, 1] + [0, 2] = [1, 3] → sends the 3 that was held back
    p2 = c.compress(f32(1.0, 1.0))
    np.testing.assert_array_equal(c.decompress(p2, 2), [0.0, 3.0])
    np.testing.assert_array_equal(c.residual, [1.0, 0.0])


def _ef_compressors():
    return [
        ("topk", lambda: TopK(0.1)),
        ("qsgd", lambda: StochasticQuantizer(4)),
        ("shared_mask", lambda: SharedRandomMask(0.2)),
    ]


@pytest.mark.parametrize(("name", "factory"), _ef_compressors())
@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), dim=st.integers(1, 60), rounds=st.integers(1, 6))
def test_error_feedback_telescopes(name, factory, seed, dim, rounds):
    """Σ sent + final residual = Σ inputs: error feedback never loses or invents mass."""
    rng = np.random.default_rng(seed)
    c = factory()
    total_in = np.zeros(dim, np.float64)
    total_sent = np.zeros(dim, np.float64)
    for r in range(rounds):
        x = rng.normal(size=dim).astype(np.float32)
        p = c.compress(x, rng, round_seed=r)
        total_in += x
        total_sent += c.decompress(p, dim)
    np.testing.assert_allclose(total_sent + c.residual, total_in, atol=1e-4)


def test_qsgd_is_unbiased_statistically():
    x = f32(0.3, -1.2, 0.05, 0.0, 2.0)
    q = StochasticQuantizer(2, error_feedback=False)
    rng = np.random.default_rng(11)
    n = 4000
    draws = np.stack([q.decompress(q.compress(x, rng), 5) for _ in range(n)])
    # each coordinate's error is at most norm/s, so the sd of the mean is <= (norm/s)/(2·sqrt(n))
    norm = float(np.linalg.norm(x))
    tol = 5 * (norm / 2) / (2 * np.sqrt(n))
    np.testing.assert_allclose(draws.mean(axis=0), x, atol=tol)
    # and not trivially: individual draws differ from x
    assert np.abs(draws - x).max() > 0.1
    # values are on the grid k·norm/s with the sign of x, never above the norm
    grid = draws / (norm / 2)
    np.testing.assert_allclose(grid, np.round(grid), atol=1e-4)
    assert np.all(np.abs(draws) <= norm * (1 + 1e-6))
    assert np.all(draws[:, 3] == 0) and np.all(draws[:, 1] <= 0)


def test_qsgd_wire_size_packs_levels():
    x = np.random.default_rng(0).normal(size=1000).astype(np.float32)
    rng = np.random.default_rng(0)
    # s levels + sign = 2s+1 codes: s=1 → 2 bits, s=127 → 8 bits, s=255 → 9 bits; + 4 B norm
    assert StochasticQuantizer(1).compress(x, rng).nbytes == 4 + 250
    assert StochasticQuantizer(127).compress(x, rng).nbytes == 4 + 1000
    assert StochasticQuantizer(255).compress(x, rng).nbytes == 4 + 1125


def test_qsgd_seeded_and_zero_vector():
    x = np.random.default_rng(0).normal(size=100).astype(np.float32)
    q = StochasticQuantizer(8, error_feedback=False)
    a = q.compress(x, np.random.default_rng(5))
    b = q.compress(x, np.random.default_rng(5))
    np.testing.assert_array_equal(a.packed, b.packed)
    z = q.compress(np.zeros(7, np.float32), np.random.default_rng(0))
    np.testing.assert_array_equal(q.decompress(z, 7), np.zeros(7))
    with pytest.raises(ConfigError, match="Generator"):
        q.compress(x)


@settings(max_examples=30, deadline=None)
@given(bits=st.integers(1, 17), data=st.data())
def test_pack_unpack_round_trip(bits, data):
    n = data.draw(st.integers(1, 50))
    codes = np.array(
        data.draw(st.lists(st.integers(0, 2**bits - 1), min_size=n, max_size=n)), np.uint32
    )
    packed = _pack(codes, bits)
    assert packed.nbytes == -(-n * bits // 8)
    np.testing.assert_array_equal(_unpack(packed, n, bits), codes)


def test_shared_mask_same_coordinates_for_all_sites_and_sum_composes():
    dim, seed = 1000, 123
    sites = [SharedRandomMask(0.05) for _ in range(3)]
    rng = np.random.default_rng(0)
    xs = [rng.normal(size=dim).astype(np.float32) for _ in sites]
    payloads = [c.compress(x, round_seed=seed) for c, x in zip(sites, xs)]
    idx = shared_mask_indices(dim, 0.05, seed)
    assert idx.shape == (50,) and payloads[0].nbytes == 50 * 4  # no indices on the wire
    # what secure aggregation does: sum the dense value vectors, decode the sum once
    summed = MaskedCompressed(dim=dim, round_seed=seed, values=sum(p.values for p in payloads))
    server = SharedRandomMask(0.05)
    want = sum(c.decompress(p, dim) for c, p in zip(sites, payloads))
    np.testing.assert_allclose(server.decompress(summed, dim), want, rtol=1e-6)
    assert not np.array_equal(idx, shared_mask_indices(dim, 0.05, seed + 1))


def test_shared_mask_without_feedback_is_unbiased_over_masks():
    x = np.linspace(-1, 1, 20).astype(np.float32)
    c = SharedRandomMask(0.25, error_feedback=False)
    n = 4000
    mean = sum(c.decompress(c.compress(x, round_seed=s), 20) for s in range(n)) / n
    # each coordinate: (dim/k)·x·Bernoulli(k/dim), sd of the mean = |x|·sqrt(3/n) <= 0.028
    np.testing.assert_allclose(mean, x, atol=5 * 0.028)
    with pytest.raises(ConfigError, match="round_seed"):
        c.compress(x)


@pytest.mark.parametrize(
    "factory", [lambda: TopK(0.2), lambda: StochasticQuantizer(3), lambda: SharedRandomMask(0.3)]
)
def test_state_dict_round_trip_gives_identical_next_payload(factory):
    rng = np.random.default_rng(4)
    a = factory()
    for r in range(3):
        a.compress(rng.normal(size=40).astype(np.float32), rng, round_seed=r)
    b = factory()
    b.load_state_dict(a.state_dict())
    x = rng.normal(size=40).astype(np.float32)
    pa = a.compress(x, np.random.default_rng(9), round_seed=7)
    pb = b.compress(x, np.random.default_rng(9), round_seed=7)
    np.testing.assert_array_equal(a.decompress(pa, 40), b.decompress(pb, 40))
    np.testing.assert_array_equal(a.residual, b.residual)


def test_secagg_compatibility_flags():
    # only schemes with one shared dense index space can be masked and summed
    assert NoCompression.secagg_compatible and SharedRandomMask.secagg_compatible
    assert not TopK.secagg_compatible and not StochasticQuantizer.secagg_compatible


def test_bad_payloads_and_configs():
    t = TopK(0.5)
    p = t.compress(f32(1, 2))
    with pytest.raises(VectorError, match="dim 2, expected 3"):
        t.decompress(p, 3)
    with pytest.raises(VectorError, match="cannot decompress a SparseCompressed"):
        NoCompression().decompress(p, 2)
    with pytest.raises(VectorError, match="residual has dim 2"):
        t.compress(f32(1, 2, 3))
    with pytest.raises(ConfigError, match="state is for compressor 'topk'"):
        SharedRandomMask(0.5).load_state_dict(t.state_dict())
    with pytest.raises(ConfigError, match="ratio"):
        TopK(0.25).load_state_dict(t.state_dict())
    for bad in (0.0, 1.5, float("nan"), "0.1"):
        with pytest.raises(ConfigError, match="ratio"):
            TopK(bad)  # type: ignore[arg-type]
    for bad in (0, 2.0, 2**16):
        with pytest.raises(ConfigError, match="levels"):
            StochasticQuantizer(bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="unknown compressor 'zip'"):
        make_compressor("zip")
    with pytest.raises(ConfigError, match="unknown parameter"):
        make_compressor("none", ratio=0.1)
    with pytest.raises(ConfigError, match="needs parameter"):
        make_compressor("topk")
    assert isinstance(make_compressor("qsgd", levels=4, error_feedback=False), StochasticQuantizer)


def test_shared_mask_payloads_survive_pairwise_masking_in_the_ring():
    """Fixed-point encode each site's k-vector, add cancelling pairwise masks mod 2^32 (what
    SecAgg does), sum: the unmasked sum decodes to the sum of the sites' sparse vectors."""
    from secure_fedrl.secagg.encoding import centered_lift, to_ring

    dim, seed, n_sites, scale = 500, 99, 4, 2.0**16
    rng = np.random.default_rng(3)
    comps = [SharedRandomMask(0.1) for _ in range(n_sites)]
    xs = [rng.normal(size=dim).astype(np.float32) for _ in range(n_sites)]
    payloads = [c.compress(x, round_seed=seed) for c, x in zip(comps, xs)]
    k = payloads[0].values.shape[0]
    pair = {
        (u, v): rng.integers(0, 2**32, size=k, dtype=np.uint64)
        for u in range(n_sites)
        for v in range(u + 1, n_sites)
    }
    masked = []
    for u, p in enumerate(payloads):
        y = np.round(p.values.astype(np.float64) * scale).astype(np.int64).astype(np.uint64)
        for (a, b), m in pair.items():
            if a == u:
                y = y + m
            elif b == u:
                y = y - m
        masked.append(to_ring(y.astype(np.int64, casting="unsafe")))
    ring_sum = np.zeros(k, dtype=np.uint64)
    for m in masked:
        ring_sum = (ring_sum + m.astype(np.uint64)) % np.uint64(2**32)
    total = (centered_lift(ring_sum.astype(np.uint32)) / scale).astype(np.float32)
    got = SharedRandomMask(0.1).decompress(
        MaskedCompressed(dim=dim, round_seed=seed, values=total), dim
    )
    want = sum(c.decompress(p, dim) for c, p in zip(comps, payloads))
    np.testing.assert_allclose(got, want, atol=n_sites / scale)
    assert np.count_nonzero(want) == k  # only the shared coordinates carry mass


# ----------------------------------------------------------------------------- QSGD + error feedback
def _ef_residual_norms(q: StochasticQuantizer, dim: int, rounds: int, seed: int = 0) -> list[float]:
    """Relative residual ‖e_t‖/‖g_t‖ over `rounds` unit-norm updates (a fresh direction each round)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(rounds):
        g = rng.normal(size=dim).astype(np.float32)
        g /= np.linalg.norm(g)
        q.compress(g, rng)
        out.append(float(np.linalg.norm(q.residual)))
        if not np.isfinite(out[-1]) or out[-1] > 1e12:
            break
    return out


def test_qsgd_error_feedback_residual_stays_bounded_at_d_10000():
    """Defaults (s = 16, EF on) at d = 10,000: ω = min(d/s², √d/s) = 6.25, so Q/(1+ω) is a
    δ = 1/(1+ω) contraction and the EF residual obeys ‖e‖ ≤ 2√(1−δ)/δ·max‖g‖ (Karimireddy et
    al. 2019); unscaled QSGD (variance 6.25‖g‖²) is no contraction and the residual explodes."""
    q = StochasticQuantizer(16)
    dim = 10_000
    assert q.omega(dim) == pytest.approx(6.25)
    delta = 1.0 / (1.0 + q.omega(dim))
    norms = _ef_residual_norms(q, dim, 200)
    assert len(norms) == 200
    assert max(norms) < 2 * np.sqrt(1 - delta) / delta  # 13.5; measured ≈ 2.2
    assert max(norms[100:]) < 1.5 * max(norms[:100])  # no growth in the second half


def test_unscaled_qsgd_error_feedback_diverges(monkeypatch):
    """The same run with the 1/(1+ω) scaling removed: the residual grows geometrically."""
    monkeypatch.setattr(StochasticQuantizer, "decode_scale", lambda self, dim: 1.0)
    norms = _ef_residual_norms(StochasticQuantizer(16), 10_000, 200)
    assert max(norms) > 1e3


def test_scaled_qsgd_is_contractive_statistically():
    """E‖x − C(x)‖² ≤ (1 − 1/(1+ω))‖x‖² for C = Q/(1+ω), at d ≫ s² (here ω = √d/s = 10)."""
    dim, s = 1600, 4
    q = StochasticQuantizer(s, error_feedback=True)
    assert q.omega(dim) == pytest.approx(10.0)
    rng = np.random.default_rng(5)
    x = rng.normal(size=dim).astype(np.float32)
    errs = [float(np.sum((x - q.decompress(q.propose(x, rng).payload, dim)) ** 2)) for _ in range(200)]
    ratio = np.mean(errs) / float(np.sum(x.astype(np.float64) ** 2))
    assert ratio <= 1 - 1 / (1 + q.omega(dim))
    unbiased = StochasticQuantizer(s, error_feedback=False)
    assert unbiased.decode_scale(dim) == 1.0  # without EF the payload stays unbiased
    raw = [float(np.sum((x - unbiased.decompress(unbiased.compress(x, rng), dim)) ** 2)) for _ in range(50)]
    assert np.mean(raw) / float(np.sum(x.astype(np.float64) ** 2)) > 1.0  # not a contraction


def test_qsgd_omega_is_the_smaller_bound():
    q = StochasticQuantizer(16)
    assert q.omega(100) == pytest.approx(100 / 256)  # d/s² < √d/s when d < s²
    assert q.omega(10_000) == pytest.approx(100 / 16)
    assert q.decode_scale(100) == pytest.approx(1 / (1 + 100 / 256))


# ----------------------------------------------------------------------------- propose / commit
@pytest.mark.parametrize("factory", [lambda: TopK(0.3), lambda: StochasticQuantizer(3),
                                     lambda: SharedRandomMask(0.3)])
def test_propose_leaves_the_residual_until_commit(factory):
    c = factory()
    rng = np.random.default_rng(2)
    first = c.compress(rng.normal(size=20).astype(np.float32), rng, round_seed=1)
    assert first is not None
    before = c.residual.copy()
    x = rng.normal(size=20).astype(np.float32)
    proposal = c.propose(x, rng, round_seed=2)
    np.testing.assert_array_equal(c.residual, before)  # a dropped / rejected upload changes nothing
    c.commit(proposal)
    sent = c.decompress(proposal.payload, 20)
    np.testing.assert_allclose(c.residual, before + x - sent, atol=1e-5)


def test_dropped_upload_keeps_its_mass_for_the_next_accepted_one():
    """Σ accepted sent + residual = Σ inputs of the accepted rounds + nothing from dropped ones."""
    c = TopK(0.2)
    rng = np.random.default_rng(4)
    total_in = np.zeros(30)
    total_sent = np.zeros(30)
    for r in range(12):
        x = rng.normal(size=30).astype(np.float32)
        p = c.propose(x, rng)
        if r % 3 == 1:
            continue  # dropped: never committed, its update is lost but the residual is not
        c.commit(p)
        total_in += x
        total_sent += c.decompress(p.payload, 30)
    np.testing.assert_allclose(total_sent + c.residual, total_in, atol=1e-4)


def test_stale_or_foreign_proposal_is_refused():
    from secure_fedrl.errors import ProtocolError

    c = TopK(0.5)
    rng = np.random.default_rng(0)
    p1 = c.propose(f32(1, 2, 3, 4), rng)
    p2 = c.propose(f32(4, 3, 2, 1), rng)
    c.commit(p1)
    with pytest.raises(ProtocolError, match="stale"):
        c.commit(p1)  # already committed
    with pytest.raises(ProtocolError, match="stale"):
        c.commit(p2)  # made on the residual p1 replaced: would double-count
    with pytest.raises(ProtocolError, match="not a proposal of this compressor"):
        TopK(0.5).commit(c.propose(f32(1, 1, 1, 1), rng))
