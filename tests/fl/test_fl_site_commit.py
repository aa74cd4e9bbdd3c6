"""Commit-on-accept: a site's control variate and residual move only if its upload is aggregated."""

from __future__ import annotations

import numpy as np
import pytest

from secure_fedrl.errors import ProtocolError
from secure_fedrl.fl.compression import NoCompression, SharedRandomMask, TopK
from secure_fedrl.fl.site import PendingCommit, commit_accepted
from secure_fedrl.fl.strategies import Scaffold, ScaffoldClient

DIM = 6


def _round(sites, server, rng, round_seed):
    """Every site proposes [Δy, Δc] with a fresh option-I gradient; returns pending and uploads."""
    pending, uploads = {}, {}
    c = server.control_variate
    for name, (compressor, client) in sites.items():
        grad = rng.normal(size=DIM).astype(np.float32)
        control = client.propose(grad)
        dy = rng.normal(size=DIM).astype(np.float32)
        proposal = compressor.propose(np.concatenate([dy, control.delta]), rng, round_seed=round_seed)
        pending[name] = PendingCommit(compressor, proposal, client, control)
        uploads[name] = compressor.decompress(proposal.payload, 2 * DIM)
    assert c is not None
    return pending, uploads


@pytest.mark.parametrize("make", [NoCompression, lambda: TopK(0.5), lambda: SharedRandomMask(0.5)])
def test_server_c_tracks_mean_of_site_controls_under_drops_and_rejections(make):
    """Over 30 rounds with random dropouts and rejections: c + mean_i e_i[Δc part] = mean_i c_i.

    Without compression the residual is zero and this is the algorithm's c = mean(c_i); with error
    feedback the part of Δc not delivered yet waits in the residual. Dropped and rejected sites'
    c_i and residual stay exactly as they were."""
    rng = np.random.default_rng(0)
    names = [f"s{i}" for i in range(5)]
    sites = {n: (make(), ScaffoldClient(DIM)) for n in names}
    server = Scaffold(dim=DIM)
    x = np.zeros(DIM, dtype=np.float32)
    for r in range(30):
        before = {n: (cl.control_variate, comp.residual) for n, (comp, cl) in sites.items()}
        pending, uploads = _round(sites, server, rng, round_seed=r)
        accepted = [n for n in names if rng.random() < 0.6]  # the rest dropped out or were rejected
        if accepted:
            mean = np.mean([uploads[n] for n in accepted], axis=0)
            x = server.apply_scaffold(x, mean[:DIM], mean[DIM:], num_sampled=len(accepted), num_total=len(names))
        others = commit_accepted(pending, accepted)
        assert others == sorted(set(names) - set(accepted))
        for n in others:
            comp, cl = sites[n]
            np.testing.assert_array_equal(cl.control_variate, before[n][0])
            if before[n][1] is None:
                assert comp.residual is None or not comp.error_feedback
            else:
                np.testing.assert_array_equal(comp.residual, before[n][1])
        residual_c = [comp.residual[DIM:] if comp.residual is not None else np.zeros(DIM)
                      for comp, _ in sites.values()]
        mean_c = np.mean([cl.control_variate for _, cl in sites.values()], axis=0)
        np.testing.assert_allclose(server.control_variate + np.mean(residual_c, axis=0), mean_c, atol=1e-5)


def test_committing_every_proposal_breaks_the_invariant():
    """What the old code did (keep c_i⁺ at once, dropped or not) leaves c ≠ mean(c_i)."""
    rng = np.random.default_rng(1)
    names = ["a", "b", "c", "d"]
    sites = {n: (NoCompression(), ScaffoldClient(DIM)) for n in names}
    server = Scaffold(dim=DIM)
    pending, uploads = _round(sites, server, rng, 0)
    accepted = ["a", "b"]
    mean = np.mean([uploads[n] for n in accepted], axis=0)
    server.apply_scaffold(np.zeros(DIM, np.float32), mean[:DIM], mean[DIM:], num_sampled=2, num_total=4)
    for p in pending.values():
        p.commit()
    mean_c = np.mean([cl.control_variate for _, cl in sites.values()], axis=0)
    assert np.abs(server.control_variate - mean_c).max() > 0.1


def test_commit_accepted_refuses_an_aggregate_of_an_unknown_site_and_double_commits():
    comp, cl = TopK(0.5), ScaffoldClient(2)
    rng = np.random.default_rng(0)
    control = cl.propose(np.ones(2, dtype=np.float32))
    p = PendingCommit(comp, comp.propose(np.ones(4, dtype=np.float32), rng), cl, control)
    with pytest.raises(ProtocolError, match="ghost"):
        commit_accepted({"a": p}, ["a", "ghost"])
    assert not p.done and comp.residual is None  # nothing committed on a bad report
    assert commit_accepted({"a": p}, ["a"]) == []
    with pytest.raises(ProtocolError, match="already committed"):
        p.commit()
    with pytest.raises(ProtocolError, match="needs its ScaffoldClient"):
        PendingCommit(comp, comp.propose(np.ones(4, dtype=np.float32), rng), None, control)
