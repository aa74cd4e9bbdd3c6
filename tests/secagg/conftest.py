"""Shared helpers for the secure-aggregation tests."""

from __future__ import annotations

import numpy as np
import pytest

from secure_fedrl.secagg import primitives as P


def _plain_sum(inputs, ids, bits=32):
    acc = np.zeros(len(next(iter(inputs.values()))), dtype=np.uint64)
    for i in ids:
        acc += inputs[i].astype(np.uint64)
    return (acc % (1 << bits)).astype(np.uint32)


@pytest.fixture
def plain_sum():
    """The reference: sum mod 2^bits of the inputs of `ids`, computed in the clear."""
    return _plain_sum


@pytest.fixture
def five_sites():
    rng = np.random.default_rng(11)
    inputs = {i: rng.integers(0, 2**32, 6, dtype=np.uint64).astype(np.uint32) for i in range(1, 6)}
    keys = {i: P.ed25519_keypair(P.SeededRandom(b"test-id-%d" % i))[0] for i in inputs}
    return inputs, keys
