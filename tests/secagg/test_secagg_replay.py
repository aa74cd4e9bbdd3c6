"""A server that runs the same RoundConfig twice (same digest D) must not be able to use the first
execution's consistency signatures to certify a second view (review finding, SPEC section 8 step (i)).

Run 1: every site signs U3 = all. Run 2, same config, fresh keys: the server withholds so the
victim pairs only with P (t-1 far neighbours), shows V_A = all to {victim} | P and V_B = all \\ P
to the rest, and certifies V_A with run 1's signatures. Without a per-site RoundHistory this
recovers the victim's input with no colluder; with it, every site refuses run 2 at its advert.
Also: a site refuses a server-chosen threshold below its own collusion bound.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from secure_fedrl.errors import ProtocolError, SecureFedRLError
from secure_fedrl.secagg import messages as M
from secure_fedrl.secagg import primitives as P
from secure_fedrl.secagg import protocol as R
from secure_fedrl.secagg import shamir
from secure_fedrl.secagg.client import RoundHistory, SecAggClient, check_threshold_policy
from secure_fedrl.secagg.graph import secure_threshold, site_order

from secagg_attacker import keys_bundles

N, K, DIM = 40, 12, 3


def _setup(degree=K):
    # complete graph: t = N/2 leaves both views (t and N - t + 1 sites) at least t large
    t = secure_threshold(K + 1) if degree else N // 2
    keys = {i: P.ed25519_keypair(P.SeededRandom(b"id-%d" % i))[0] for i in range(1, N + 1)}
    cfg = R.RoundConfig(round_id=7, site_ids=tuple(keys), threshold=t, dim=DIM, degree=degree,
                        identity_keys=tuple(P.ed25519_public_bytes(keys[i]) for i in keys),
                        graph_seed=bytes(range(32)))
    rng = np.random.default_rng(1)
    inputs = {i: rng.integers(0, 2**32, DIM, dtype=np.uint64).astype(np.uint32) for i in keys}
    return cfg, keys, inputs, t


def _clients(cfg, keys, inputs, run, histories):
    return {i: SecAggClient(config=cfg, site_id=i, identity_key=keys[i], vector=inputs[i],
                            randbytes=P.SeededRandom(b"run-%d-site-%d" % (run, i)),
                            history=None if histories is None else histories[i]) for i in cfg.site_ids}


def _share(cfg, cl):
    """Phases 0, 0b (SecAgg+) and 1, honestly; returns the run's seeded config too."""
    adverts = {i: cl[i].advertise_keys() for i in cfg.site_ids}
    seeded, bundles = keys_bundles(cfg, cl, adverts)
    share = {u: cl[u].share_keys(bundles[u]) for u in cfg.site_ids}
    return seeded, adverts, share


def _replay_attack(histories, degree=K):
    """Returns the victim's input as the server recovers it, or None if the attack is stopped."""
    base, keys, inputs, t = _setup(degree)
    ids = list(base.site_ids)
    cl1 = _clients(base, keys, inputs, 1, histories)
    cfg, _, share1 = _share(base, cl1)
    for u in ids:
        cts = tuple((v, ct) for v in ids for r, ct in share1[v].ciphertexts if r == u)
        cl1[u].masked_input(M.CiphertextBundle(cfg.digest, u, cts))
    everyone = tuple(ids)
    run1_sig = {u: cl1[u].consistency_check(M.ConsistencyRequest(cfg.digest, u, everyone)).signature for u in ids}

    victim = ids[0]
    cl2 = _clients(base, keys, inputs, 2, histories)
    try:
        cfg, adverts2, share2 = _share(base, cl2)  # SecAgg+: run 2's reveals seed another D'
    except ProtocolError:
        return None
    if cfg.complete:
        far = set(ids[1:t])
    else:
        order = site_order(ids, cfg.graph_seed)
        pos = {s: i for i, s in enumerate(order)}
        rel = lambda s: ((pos[s] - pos[victim] + N // 2) % N) - N // 2  # noqa: E731
        far = set(sorted(cfg.graph[victim], key=lambda s: (-abs(rel(s)), rel(s)))[:t - 1])
    masked = {}
    for u in ids:
        cts = [(v, ct) for v in ids for r, ct in share2[v].ciphertexts if r == u]
        cts = [(v, ct) for v, ct in cts if v in far] if u == victim else \
            [(v, ct) for v, ct in cts if v != victim or u in far]
        masked[u] = cl2[u].masked_input(M.CiphertextBundle(cfg.digest, u, tuple(cts)))
    view_b = tuple(i for i in ids if i not in far)
    view = {u: everyone if u in far | {victim} else view_b for u in ids}
    conf2 = {u: cl2[u].consistency_check(M.ConsistencyRequest(cfg.digest, u, view[u])) for u in ids}
    shares: dict = {}
    for r in ids:
        if view[r] == everyone:
            sigs = tuple((s, run1_sig[s]) for s in ids if s != r)
        else:
            sigs = tuple((s, conf2[s].signature) for s in ids if s != r and view[s] == view_b)
        atts = tuple((u, masked[u].paired, dict(zip(masked[u].paired, masked[u].tags))[r])
                     for u in sorted(masked)
                     if u in view[r] and u != r and r in masked[u].paired and u in masked[r].paired)
        try:
            resp = cl2[r].unmask(M.UnmaskRequest(cfg.digest, r, view[r], (), sigs, atts))
        except SecureFedRLError:
            continue
        for peer, kind, sh in resp.shares:
            shares.setdefault((peer, kind), {})[r] = shamir.share_from_bytes(sh)

    def secret(peer, kind):
        got = shares.get((peer, kind), {})
        return shamir.reconstruct(got, threshold=t) if len(got) >= t else None

    b = secret(victim, M.KIND_B)
    if b is None:
        return None
    y = masked[victim].vector.copy()
    acc = P.MaskAccumulator(DIM)
    acc.sub(y, b)
    for v in sorted(far):
        s_v = secret(v, M.KIND_S)
        if s_v is None:
            return None
        seed = R.mask_seed(cfg, P.x25519(P.x25519_key(s_v), adverts2[victim].s_pk), victim, v)
        (acc.sub if v > victim else acc.add)(y, seed)
    return P.reduce_bits(y, cfg.bits), inputs[victim]


def test_without_a_round_history_the_replay_recovers_one_input():
    """Shows what the history defends against on the complete graph, where nothing else changes
    between two runs of one config (if this stops recovering x, the harness is stale)."""
    out = _replay_attack(histories=None, degree=None)
    assert out is not None and np.array_equal(*out)


def test_under_secagg_plus_the_graph_reveals_alone_stop_the_replay():
    """Run 2's fresh graph nonces give it another seeded digest D', so run 1's consistency
    signatures certify nothing in it, even without a history."""
    assert _replay_attack(histories=None, degree=K) is None


@pytest.mark.parametrize("degree", [None, K])
def test_a_round_history_refuses_the_repeated_round(degree):
    histories = {i: RoundHistory() for i in range(1, N + 1)}
    assert _replay_attack(histories, degree=degree) is None


def test_round_history_refuses_a_repeated_digest_and_survives_a_restart():
    cfg, keys, inputs, _ = _setup()
    h = RoundHistory()
    SecAggClient(config=cfg, site_id=1, identity_key=keys[1], vector=inputs[1], history=h).advertise_keys()
    restored = RoundHistory(h.state_dict())
    assert cfg.digest in restored
    for hist in (h, restored):
        again = SecAggClient(config=cfg, site_id=1, identity_key=keys[1], vector=inputs[1], history=hist)
        with pytest.raises(ProtocolError, match="already took part"):
            again.advertise_keys()
    other = dataclasses.replace(cfg, round_id=8)  # the next round is a new digest: accepted
    SecAggClient(config=other, site_id=1, identity_key=keys[1], vector=inputs[1], history=h).advertise_keys()


@pytest.mark.parametrize("n,degree,t,c,ok", [
    (8, None, 5, 1, True),    # 2*5 > 8 + 1
    (8, None, 4, 1, False),   # 8 <= 9
    (8, None, 2, 1, False),   # the review's t = 2 attack config
    (8, None, 5, 2, False),   # 10 <= 10
    (40, 12, 7, 0, True),     # h = 13: 14 > 13
    (40, 12, 6, 0, False),
])
def test_site_refuses_a_threshold_below_its_collusion_bound(n, degree, t, c, ok):
    keys = {i: P.ed25519_keypair(P.SeededRandom(b"id-%d" % i))[0] for i in range(1, n + 1)}
    cfg = R.RoundConfig(round_id=1, site_ids=tuple(keys), threshold=t, dim=2, degree=degree,
                        identity_keys=tuple(P.ed25519_public_bytes(keys[i]) for i in keys),
                        graph_seed=bytes(32))
    vec = np.zeros(2, np.uint32)
    if ok:
        check_threshold_policy(cfg, c)
        SecAggClient(config=cfg, site_id=1, identity_key=keys[1], vector=vec, max_colluding=c)
    else:
        with pytest.raises(ProtocolError, match="too low"):
            SecAggClient(config=cfg, site_id=1, identity_key=keys[1], vector=vec, max_colluding=c)


@pytest.mark.parametrize("n,degree,t,c,m,ok", [
    (40, 1, 2, 1, 1, True),    # 2t > h + c holds (4 > 3) and t - c = 1 >= 1
    (40, 1, 2, 1, 8, False),   # review: degree = c, t = c + 1 leaves ONE honest input: refused
    (40, 2, 3, 2, 8, False),
    (40, 1, 2, 0, 8, False),   # c = 0: a sum of 2 honest inputs where 8 were planned
    (40, 12, 8, 1, 7, True),   # h = 13: 16 > 14 and 8 - 1 = 7
    (40, 12, 8, 1, 8, False),
])
def test_site_refuses_a_degree_and_threshold_below_its_planned_honest_inputs(n, degree, t, c, m, ok):
    keys = {i: P.ed25519_keypair(P.SeededRandom(b"id-%d" % i))[0] for i in range(1, n + 1)}
    cfg = R.RoundConfig(round_id=1, site_ids=tuple(keys), threshold=t, dim=2, degree=degree,
                        identity_keys=tuple(P.ed25519_public_bytes(keys[i]) for i in keys),
                        graph_seed=bytes(32))
    make = lambda: SecAggClient(config=cfg, site_id=1, identity_key=keys[1], vector=np.zeros(2, np.uint32),  # noqa: E731
                                max_colluding=c, min_honest_inputs=m)
    if ok:
        make()
    else:
        with pytest.raises(ProtocolError, match="too low"):
            make()
