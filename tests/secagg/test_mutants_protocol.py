"""Tests that kill the mutants of secagg/protocol.py that survived mutmut 3.8.1 (run over tests/secagg).

Every survivor that is not a message-string change sat in RoundConfig.__post_init__ (the range
checks of round_id, site_ids, identity_keys, bits, dim, threshold and the normalisation of
site_ids / identity_keys) or in RoundConfig.within on the complete graph. The checks matter: every
field is packed into the config digest with a fixed width (round_id u64, ids u32, dim u32), the
site ids are the Shamir x-coordinates (0 is not allowed), and a missing identity key would be
silently dropped by the zip that builds the digest and the key table.
"""

from __future__ import annotations

import pytest

from secure_fedrl.errors import ConfigError
from secure_fedrl.secagg import primitives as P
from secure_fedrl.secagg.graph import effective_degree
from secure_fedrl.secagg.protocol import MAX_ID, RoundConfig

KEYS = tuple(P.ed25519_keypair(P.SeededRandom(b"mutants-protocol-%d" % i))[1] for i in range(12))


def cfg(**kw) -> RoundConfig:
    n = len(kw.get("site_ids", (1, 2, 3)))
    base = dict(round_id=1, site_ids=(1, 2, 3), identity_keys=KEYS[:n], threshold=2, dim=4)
    return RoundConfig(**(base | kw))


# ------------------------------------------------------------------ normalisation (mutants 10, 11, 18, 19)


def test_site_ids_and_identity_keys_are_normalised_to_tuples_of_int_and_bytes():
    c = cfg(site_ids=[1, 2, 3], identity_keys=[bytearray(k) for k in KEYS[:3]])
    assert type(c.site_ids) is tuple and c.site_ids == (1, 2, 3)
    assert all(type(i) is int for i in c.site_ids)
    assert type(c.identity_keys) is tuple and c.identity_keys == KEYS[:3]
    assert all(type(k) is bytes for k in c.identity_keys)
    hash(c)  # frozen dataclass of tuples: hashable (a list field would not be)
    assert c == cfg() and c.digest == cfg().digest


# ------------------------------------------------------------------ round_id (mutants 25-28)


@pytest.mark.parametrize("round_id", [0, 128, 2**63, 2**64 - 1])
def test_round_id_accepted_across_u64(round_id):
    c = cfg(round_id=round_id)
    assert len(c.digest) == 32


@pytest.mark.parametrize("round_id", [-1, 2**64, 2**65, 3**64])
def test_round_id_outside_u64_rejected(round_id):
    with pytest.raises(ConfigError, match="round_id"):
        cfg(round_id=round_id)


# ------------------------------------------------------------------ site ids (mutants 33, 34, 39, 42, 43)


@pytest.mark.parametrize("ids", [(1, MAX_ID), (1, 2, MAX_ID), (7, 8, 9, 10)])
def test_site_ids_at_the_edges_of_the_range_accepted(ids):
    assert cfg(site_ids=ids).site_ids == ids


@pytest.mark.parametrize(
    "ids",
    [
        (0, 1, 2),  # 0 is no Shamir x-coordinate
        (0, 5),
        (1, 2, MAX_ID + 1),  # does not fit the u32 of the digest
        (1, 2, 3, MAX_ID + 1),
        (1, MAX_ID + 1),
        (2, 1, 3),  # not increasing
        (1, 1, 2),  # duplicate
        (1, 3, 2),
    ],
)
def test_bad_site_ids_rejected(ids):
    with pytest.raises(ConfigError, match="site_ids"):
        cfg(site_ids=ids)


# ------------------------------------------------------------------ identity keys (mutant 48)


@pytest.mark.parametrize("keys", [KEYS[:2], KEYS[:4], ()])
def test_one_identity_key_per_site(keys):
    with pytest.raises(ConfigError, match="one 32-byte Ed25519 public key per site"):
        cfg(identity_keys=keys)


def test_identity_key_of_wrong_length_rejected():
    with pytest.raises(ConfigError, match="one 32-byte Ed25519 public key per site"):
        cfg(identity_keys=(KEYS[0], KEYS[1], KEYS[2] + b"\0"))


# ------------------------------------------------------------------ bits (mutants 61, 64, 65, 67)


@pytest.mark.parametrize("bits", [1, 2, 32])
def test_bits_accepted_in_1_to_32(bits):
    assert cfg(bits=bits).bits == bits


@pytest.mark.parametrize("bits", [0, -1, 33, 64])
def test_bits_outside_1_to_32_rejected(bits):
    with pytest.raises(ConfigError, match="bits"):
        cfg(bits=bits)


# ------------------------------------------------------------------ dim (mutants 69, 72-74, 76, 77)


@pytest.mark.parametrize("dim", [1, 2, 2**30 - 1])
def test_dim_accepted_below_2_30(dim):
    assert cfg(dim=dim).dim == dim


@pytest.mark.parametrize("dim", [0, -1, 2**30, 2**31, 3**30])
def test_dim_outside_range_rejected(dim):
    with pytest.raises(ConfigError, match="dim"):
        cfg(dim=dim)


# ------------------------------------------------------------------ threshold vs holder set (mutant 94)


def test_threshold_is_bounded_by_the_sparse_holder_set_not_by_n():
    ids = tuple(range(1, 11))
    assert effective_degree(10, 2) + 1 == 3
    assert cfg(site_ids=ids, degree=2, threshold=3).threshold == 3
    for t in (4, 10):  # <= n, but more than a site plus its 2 neighbours: nobody could be unmasked
        with pytest.raises(ConfigError, match=r"threshold must be an integer in \[1, 3\]"):
            cfg(site_ids=ids, degree=2, threshold=t)
    # the complete graph still allows t = n
    assert cfg(site_ids=ids, threshold=10).threshold == 10


# ------------------------------------------------------------------ within (mutant within_1)


def test_within_on_the_complete_graph_is_every_site():
    c = cfg(site_ids=(1, 2, 3, 4), threshold=3)
    assert c.complete
    for hops in (0, 1, 2):
        assert c.within(1, hops) == frozenset({1, 2, 3, 4})


def test_within_on_a_sparse_graph_follows_the_edges():
    ids = tuple(range(1, 11))
    c = cfg(site_ids=ids, degree=2, threshold=2)
    assert not c.complete
    for u in ids:
        assert c.within(u, 0) == {u}
        assert c.within(u, 1) == c.holders(u)
        assert c.within(u, 2) == frozenset().union(*(c.holders(v) for v in c.holders(u)))
