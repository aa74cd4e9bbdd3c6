"""The reveal rules of SPEC.md section 4, phase 4, at their exact boundaries: a holder reveals
when exactly t holders confirmed U3, and a survivor's self-mask share when exactly t - 1 of its
paired peers survive (and are certified); one fewer of either and nothing is released."""

import numpy as np
import pytest

from secure_fedrl.errors import BelowThresholdError
from secure_fedrl.secagg import run_round

DIM = 16


def _inputs(n):
    rng = np.random.default_rng(n)
    return {i: rng.integers(0, 2**32, DIM, dtype=np.uint64).astype(np.uint32) for i in range(n)}


def _sum(inputs, keys):
    return (sum(inputs[k].astype(np.uint64) for k in keys) % 2**32).astype(np.uint32)


def test_exactly_t_confirmations_certify():
    # complete graph, n = 5, t = 3: two sites send their masked input and then drop, so the
    # (single) holder set holds exactly t = 3 confirmations of U3, and all five are in the sum
    inputs = _inputs(5)
    res = run_round(inputs, threshold=3, dropouts={3: "consistency_check", 4: "consistency_check"},
                    seed=b"boundary-t")
    assert sorted(res.accepted_sites) == [0, 1, 2, 3, 4]
    assert np.array_equal(res.sum, _sum(inputs, range(5)))


def test_t_minus_one_confirmations_release_nothing():
    inputs = _inputs(5)
    drops = {2: "consistency_check", 3: "consistency_check", 4: "consistency_check"}
    with pytest.raises(BelowThresholdError):
        run_round(inputs, threshold=3, dropouts=drops, seed=b"boundary-t")


def test_exactly_t_minus_one_paired_survivors_reveal_the_self_mask():
    # n = 4, t = 3: site 3 shares its keys and drops before its masked input, so each survivor
    # paired with exactly t - 1 = 2 survivors (plus the dropped site, whose mask is removed)
    inputs = _inputs(4)
    res = run_round(inputs, threshold=3, dropouts={3: "masked_input"}, seed=b"boundary-t")
    assert sorted(res.accepted_sites) == [0, 1, 2]
    assert np.array_equal(res.sum, _sum(inputs, [0, 1, 2]))


def test_a_site_with_too_few_share_ciphertexts_says_how_many_it_got():
    from secagg_attacker import attack, make_round

    cfg, clients, inputs, keys = make_round(5, threshold=4)
    out = attack(cfg, clients, inputs, keys, withhold={1: {2}})
    assert out.errors[1] == "site 1: 2 sites shared keys with it, threshold is 4"  # itself and site 2
    assert 1 not in out.recovered
