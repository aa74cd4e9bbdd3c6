"""`check_threshold_policy` argument checks and the client's default policy (mutmut survivors of
secagg/client.py, 2026-12-02): a bad policy value gets its one-line ValueError naming the
argument, and a client given only `max_colluding` requires exactly one honest input (t - c >= 1)."""

from __future__ import annotations

import numpy as np
import pytest

from secure_fedrl.errors import ProtocolError
from secure_fedrl.secagg import primitives as P
from secure_fedrl.secagg import protocol as R
from secure_fedrl.secagg.client import SecAggClient, check_threshold_policy


def _keys(n):
    return {i: P.ed25519_keypair(P.SeededRandom(b"policy-args/%d" % i))[0] for i in range(1, n + 1)}


def _cfg(keys, threshold):
    return R.RoundConfig(round_id=3, site_ids=tuple(keys), threshold=threshold, dim=4, bits=16,
                         identity_keys=tuple(P.ed25519_public_bytes(keys[i]) for i in keys))


@pytest.mark.parametrize("max_colluding, min_honest, message", [
    (-1, 1, "max_colluding must be an integer >= 0, got -1"),
    (True, 1, "max_colluding must be an integer >= 0, got True"),
    (1.0, 1, "max_colluding must be an integer >= 0, got 1.0"),
    (0, 0, "min_honest must be an integer >= 1, got 0"),
    (0, False, "min_honest must be an integer >= 1, got False"),
    (0, 2.0, "min_honest must be an integer >= 1, got 2.0"),
])
def test_a_bad_policy_value_is_a_named_value_error(max_colluding, min_honest, message):
    cfg = _cfg(_keys(5), 4)
    with pytest.raises(ValueError) as err:
        check_threshold_policy(cfg, max_colluding, min_honest=min_honest)
    assert str(err.value) == message


def test_the_default_policy_requires_exactly_one_honest_input():
    """n = 2, complete graph, t = 2, c = 1: 2t = 4 > h + c = 3 and t - c = 1, the least the
    default (min_honest_inputs unset) accepts; asking for 2 refuses it."""
    keys = _keys(2)
    cfg = _cfg(keys, 2)
    vec = np.zeros(cfg.dim, np.uint32)
    SecAggClient(config=cfg, site_id=1, identity_key=keys[1], vector=vec, max_colluding=1)  # accepted
    with pytest.raises(ProtocolError, match="guarantees only 1 honest inputs"):
        SecAggClient(config=cfg, site_id=1, identity_key=keys[1], vector=vec, max_colluding=1, min_honest_inputs=2)


def test_the_functions_default_and_the_2t_rule_message():
    keys = _keys(2)
    check_threshold_policy(_cfg(keys, 2), 1)  # t - c = 1 meets the default min_honest of 1
    with pytest.raises(ProtocolError) as err:
        check_threshold_policy(_cfg(_keys(5), 3), 1)  # h = 5, c = 1: needs 2t > 6
    assert str(err.value) == ("round 3: threshold 3 is too low for holder sets of 5 with up to 1 colluding sites "
                              "(needs 2t > 6)")
