"""gamma mode (`secure_aggregation.colluding_fraction`): at most floor(gamma N) of the N sites
collude with the server, fixed before the round. A round of n sites may hold all
C = min(floor(gamma N), n) of them; each holder set holds <= c_max (exactly C on the complete
graph; the hypergeometric bound at 2^-40 under SecAgg+), and that c_max sizes every threshold,
the DDG noise shares, the site's own check, the ledger row and the delta (SPEC 2, 7.2, 8)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from secure_fedrl.config import config_from_dict
from secure_fedrl.errors import ConfigError, PrivacyError, ProtocolError
from secure_fedrl.runtime.aggregation import build_aggregator
from secure_fedrl.runtime.privacy_plan import PrivacyPlan
from secure_fedrl.runtime.round import announced_max_colluding
from secure_fedrl.runtime.secure_aggregation import GRAPH_SIGMA, corrupt_sites
from secure_fedrl.secagg.client import check_threshold_policy
from secure_fedrl.secagg.graph import (colluders_per_holder_set, effective_degree, holders_per_site,
                                      secagg_plus_parameters, secagg_plus_parameters_detail, secure_threshold)
from secure_fedrl.secagg.protocol import RoundConfig

REPO = Path(__file__).resolve().parents[2]


def _config(num_sites=20, *, sa=None, privacy=None, sampling=None):
    raw = {
        "federation": {"rounds": 10, "seed": 1},
        "local": {"algorithm": "ppo", "steps": 64},
        "strategy": {"name": "fedavg", "weighting": "uniform"},
        "sampling": sampling or {"fraction": 0.5, "poisson": True},
        "secure_aggregation": {"enabled": True, "threshold": 0.6, "neighbors": -1, **(sa or {})},
        "sites": [{"name": "s", "env": "CartPole-v1", "count": num_sites}],
    }
    if privacy is not False:
        raw["privacy"] = {"unit": "client", "clip": 1.0, "target_epsilon": 8.0, "noise_multiplier": 1.0,
                          **(privacy or {})}
    return config_from_dict(raw)


def _plan(config):
    names = [f"s-{i}" for i in range(config.num_sites)]
    plan = PrivacyPlan(config, names, ledger_path=None)
    agg = build_aggregator(config, dim=100, privacy=plan)
    plan.bind(agg)
    return plan, agg


# ----------------------------------------------------------------------------- config


@pytest.mark.parametrize("sa, needle", [
    ({"colluding_fraction": 0.5}, "secure_aggregation.colluding_fraction"),
    ({"colluding_fraction": -0.01}, "secure_aggregation.colluding_fraction"),
    ({"colluding_fraction": 0.7}, "secure_aggregation.colluding_fraction"),
    ({"colluding_fraction": 0.1, "max_colluding_sites": 1}, "not both"),
])
def test_colluding_fraction_is_validated(sa, needle):
    with pytest.raises(ConfigError) as err:
        _config(sa=sa)
    msg = str(err.value)
    assert needle in msg and "secure_aggregation.colluding_fraction" in msg and len(msg.splitlines()) == 1


def test_colluding_fraction_needs_secure_aggregation():
    with pytest.raises(ConfigError) as err:
        _config(sa={"colluding_fraction": 0.2, "enabled": False}, privacy=False)
    msg = str(err.value)
    assert "secure_aggregation.colluding_fraction" in msg and "disabled" in msg and len(msg.splitlines()) == 1


def test_colluding_fraction_with_no_colluder_is_refused():
    """floor(gamma N) = 0 (0.05 x 19): gamma mode would protect against no colluder."""
    with pytest.raises(ConfigError) as err:
        _config(19, sa={"colluding_fraction": 0.05})
    msg = str(err.value)
    assert "= 0 colluders" in msg and len(msg.splitlines()) == 1
    assert _config(20, sa={"colluding_fraction": 0.05}).secure_aggregation.colluding_fraction == 0.05


def test_colluding_fraction_edges_are_accepted():
    assert _config(sa={"colluding_fraction": 0.0}).secure_aggregation.colluding_fraction == 0.0
    assert _config(sa={"colluding_fraction": 0.49}).secure_aggregation.colluding_fraction == 0.49


def test_floor_gamma_n_is_read_as_the_decimal_written():
    assert math.floor(0.29 * 100) == 28  # what binary floating point gives
    assert corrupt_sites(0.29, 100) == 29 and corrupt_sites(0.1, 10) == 1 and corrupt_sites(0.05, 19) == 0


# ----------------------------------------------------------------------------- graph.py


def test_graph_takes_an_explicit_corrupt_count_and_reports_c_max():
    # gamma = 0.05 at n = 100 is floor(gamma n) = 5 colluders: the same parameters and c_max
    a = secagg_plus_parameters_detail(100, gamma=0.05)
    b = secagg_plus_parameters_detail(100, colluders=5)
    assert a == b and (a.k, a.t) == (39, 23)  # the SPEC table, unchanged
    assert 2 * a.t > a.k + 1 + a.c_max
    c_max, lp = colluders_per_holder_set(100, a.k, 5, sigma=40.0)
    assert c_max == a.c_max and lp <= -40
    # more colluders than floor(gamma n): a larger bound
    assert secagg_plus_parameters_detail(100, colluders=20).c_max > a.c_max
    with pytest.raises(ValueError, match="only one of"):
        secagg_plus_parameters(100, gamma=0.05, colluders=5)


@pytest.mark.parametrize("n, C", [(5, 3), (10, 1), (16, 4), (30, 7)])
def test_complete_graph_c_max_is_exactly_the_corrupt_count(n, C):
    assert colluders_per_holder_set(n, None, C) == (C, -math.inf)
    assert colluders_per_holder_set(n, n - 1, C) == (C, -math.inf)
    assert colluders_per_holder_set(n, None, n) == (n - 1, -math.inf)  # an honest site's other n-1


def test_sparse_graph_c_max_meets_the_tail():
    from scipy.stats import hypergeom

    n, k, C = 200, 40, 20
    c_max, lp = colluders_per_holder_set(n, k, C, sigma=40.0)
    h = effective_degree(n, k) + 1
    assert n * hypergeom.sf(c_max, n - 1, C, h - 1) <= 2.0 ** -40
    assert n * hypergeom.sf(c_max - 1, n - 1, C, h - 1) > 2.0 ** -40  # the least such c


# ----------------------------------------------------------------------------- C = min(floor(gamma N), n)


def test_a_small_round_gets_all_colluders():
    """N = 20, gamma = 0.2: 4 colluders. A round of 6 may hold all 4 (floor(gamma n) = 1 would
    give t = 4 on the complete graph); so t >= secure_threshold(6, 4) = 6."""
    _, agg = _plan(_config(sa={"colluding_fraction": 0.2}, privacy=False, sampling={"fraction": 1.0}))
    assert math.floor(0.2 * 6) == 1
    assert agg.colluders(6) == 4 and agg.max_colluding(6) == 4
    assert agg.protocol_threshold(6) == secure_threshold(6, max_colluding=4) == 6
    assert agg.colluders(3) == 3 and agg.max_colluding(3) == 2  # an honest site's other 2 holders
    # SecAgg+ at n = 20 (automatic degree): k from the bound with C = 4, not floor(gamma n)
    _, auto = _plan(_config(sa={"colluding_fraction": 0.2, "neighbors": 0}, privacy=False,
                            sampling={"fraction": 1.0}))
    k = auto.degree(40)
    assert k == secagg_plus_parameters(40, colluders=4, dropout=0.05, sigma=GRAPH_SIGMA)[0]
    c_max = auto.max_colluding(40)
    assert c_max == colluders_per_holder_set(40, k, 4, sigma=GRAPH_SIGMA)[0]
    assert auto.protocol_threshold(40) >= secure_threshold(holders_per_site(40, k), max_colluding=c_max)


def test_ddg_noise_shares_are_t_minus_c_max():
    """N = 20, q = 0.5: rounds planned at 10 sites; gamma = 0.2 puts all 4 colluders in a round
    (floor(gamma 10) = 2 would give t = 7, m = 5). Complete graph: t = 8, m = t - 4 = 4."""
    plan, agg = _plan(_config(sa={"colluding_fraction": 0.2}))
    assert agg.plan_sites == 10 and agg.max_colluding(10) == 4
    t = agg.protocol_threshold(10)
    assert t == 8 and agg.noise_shares() == t - 4 == 4
    assert agg.ddg_params().expected_sites == 4
    assert plan.round_cost(10).noise_shares == 4
    # the same numbers as c mode with c = C = 4
    _, hard = _plan(_config(sa={"max_colluding_sites": 4}))
    assert hard.noise_shares() == 4 and hard.protocol_threshold(10) == 8
    # every round that runs keeps t - c_max >= m; a round of 6 (all 4 colluders in it) cannot
    for n in (8, 10, 12, 16):
        t_n = agg.ddg_threshold(n)
        assert t_n - agg.max_colluding(n) >= 4 and 2 * t_n > holders_per_site(n, agg.degree(n)) + agg.max_colluding(n)
    p6 = agg.plan(1, planned=6, round_seed=3)
    assert agg.cannot_run(p6, 6) is not None


def test_a_planned_round_smaller_than_the_colluders_leaves_one_honest_share():
    """gamma = 0.45 of 20 sites = 9 colluders, rounds planned at 4: every other site of an honest
    site's round may collude (c_max = 3), so t = 4 and the one honest share carries all the noise."""
    _, agg = _plan(_config(sa={"colluding_fraction": 0.45}, sampling={"fraction": 0.2, "poisson": True}))
    assert agg.plan_sites == 4 and agg.colluders(4) == 4 and agg.max_colluding(4) == 3
    assert agg.protocol_threshold(4) == 4 and agg.noise_shares() == 1


# ----------------------------------------------------------------------------- the site's own check


def _announced(n, *, threshold, degree=None):
    return RoundConfig(round_id=1, site_ids=tuple(range(1, n + 1)),
                       identity_keys=tuple(bytes([i % 256]) * 32 for i in range(1, n + 1)),
                       threshold=threshold, dim=8, bits=32, degree=degree, graph_seed=bytes(32))


def test_site_refuses_a_threshold_below_its_own_c_max():
    """The site computes c_max itself (its gamma and N, the announced n and degree): in a round
    of 6 it counts all 4 colluders, so t = 5 (enough for floor(gamma n) = 1) is refused."""
    _, agg = _plan(_config(sa={"colluding_fraction": 0.2}, privacy=False, sampling={"fraction": 1.0}))
    m = agg.min_honest()
    assert announced_max_colluding(agg, _announced(6, threshold=5)) == 4
    with pytest.raises(ProtocolError, match="too low"):
        check_threshold_policy(_announced(6, threshold=5), announced_max_colluding(agg, _announced(6, threshold=5)),
                               min_honest=m)
    # with floor(gamma n) = 1 the same announcement would have passed the 2t > h + c rule
    assert 2 * 5 > 6 + 1
    # a sparse degree announced for 40 sites (N = 40, C = 8): c_max from that degree, not the planned one
    _, agg = _plan(_config(40, sa={"colluding_fraction": 0.2}, privacy=False, sampling={"fraction": 1.0}))
    ann = _announced(40, threshold=4, degree=4)
    c = announced_max_colluding(agg, ann)
    assert c == colluders_per_holder_set(40, 4, 8, sigma=GRAPH_SIGMA)[0] >= 1
    with pytest.raises(ProtocolError):
        check_threshold_policy(ann, c, min_honest=1)


class _Transport:
    name = "s-0"

    def __init__(self):
        self.left = []

    def leave(self, round_id):
        self.left.append(round_id)

    def upload(self, round_id, phase, payload):
        self.left.append((round_id, phase))


def _stub_site(config, agg, name="s-0", dim=8):
    """The least of a SiteRuntime that take_part reads before run_site_round, with a real
    SiteGuard holding the GraphReveal count (graph_failure from the aggregator, as the site's)."""
    from types import SimpleNamespace

    from secure_fedrl.privacy.budget import SiteGuard
    from secure_fedrl.secagg.client import RoundHistory

    vec = np.full(dim, 0.01, np.float32)
    guard = SiteGuard(name, target_epsilon=8.0, delta=config.privacy.delta, enforce=False,
                      graph_failure=agg.graph_failure())
    site = SimpleNamespace(
        name=name, config=config, dim=dim, aggregator=agg, scaffold=None, fedbuff=None, history=RoundHistory(),
        identity_key=None, admits=lambda plan: True, charge=lambda plan: None, guard=guard,
        train=lambda policy, rid, round_seed, control=None: (SimpleNamespace(vector=vec), None),
        encode_attested=lambda plan, v: (v, b""))
    from secure_fedrl.runtime.site import SiteRuntime

    site.check_graph_reveal = lambda: SiteRuntime.check_graph_reveal(site)
    site.count_graph_reveal = lambda: SiteRuntime.count_graph_reveal(site)
    site.trained = []
    train = site.train
    site.train = lambda *a, **kw: site.trained.append(a[1]) or train(*a, **kw)
    return site


def _announcement(agg, names, *, round_seed=7, degree="plan", threshold=None, planned=None, dim=8):
    from secure_fedrl.runtime.site import RoundOrder
    from secure_fedrl.transport.base import RosterEntry, RoundAnnouncement

    n = len(names)
    plan = agg.plan(1, planned=planned or n, round_seed=round_seed)
    cfg = RoundConfig(round_id=1, site_ids=tuple(range(1, n + 1)),
                      identity_keys=tuple(bytes([i % 256]) * 32 for i in range(1, n + 1)),
                      threshold=plan.threshold if threshold is None else threshold, dim=dim, bits=32,
                      degree=plan.degree if degree == "plan" else degree, graph_seed=agg.graph_seed(round_seed))
    roster = tuple(RosterEntry(site_id=i + 1, name=nm) for i, nm in enumerate(names))
    order = RoundOrder(round=1, round_seed=round_seed, planned=planned or n, dim=dim)
    return RoundAnnouncement(config=cfg, roster=roster, policy=np.zeros(dim, np.float32), extras=order.encode())


def _take_part(monkeypatch, config, agg, ann):
    import secure_fedrl.runtime.round as R

    seen = {}
    monkeypatch.setattr(R, "run_site_round", lambda *a, **kw: seen.update(kw) or "done")
    report = R.take_part(_stub_site(config, agg), _Transport(), ann)
    return report, seen


def test_take_part_passes_the_sites_own_c_max(monkeypatch):
    """round.take_part (the real code path, up to the SecAgg round) hands run_site_round the c_max
    of the ANNOUNCED round computed from the site's own config: all 4 colluders in a round of 6."""
    config = _config(sa={"colluding_fraction": 0.2}, privacy=False, sampling={"fraction": 1.0})
    _, agg = _plan(config)
    names = [f"s-{i}" for i in range(6)]
    report, seen = _take_part(monkeypatch, config, agg, _announcement(agg, names, threshold=6))
    assert report.status == "done"
    assert seen["max_colluding"] == agg.max_colluding(6, None) == 4
    assert seen["min_honest_inputs"] == agg.min_honest()


def test_site_refuses_a_roster_larger_than_its_n(monkeypatch):
    """A CA that vouches for more than the config's N sites cannot add colluders beyond
    floor(gamma N): a roster of N + 1 is refused before anything leaves the site."""
    config = _config(num_sites=20, sa={"colluding_fraction": 0.2}, privacy=False, sampling={"fraction": 1.0})
    _, agg = _plan(config)
    names = [f"s-{i}" for i in range(20)] + ["s-20"]
    report, seen = _take_part(monkeypatch, config, agg, _announcement(agg, names, planned=20))
    assert report.status.startswith("refused:") and "more than the config's 20" in report.status
    assert seen == {}
    with pytest.raises(PrivacyError, match="more than the config's 20"):
        announced_max_colluding(agg, _announced(21, threshold=21))


def test_site_refuses_a_roster_with_a_name_not_in_its_config(monkeypatch):
    config = _config(num_sites=20, sa={"colluding_fraction": 0.2}, privacy=False, sampling={"fraction": 1.0})
    _, agg = _plan(config)
    names = [f"s-{i}" for i in range(5)] + ["mallory"]
    report, seen = _take_part(monkeypatch, config, agg, _announcement(agg, names, threshold=6))
    assert report.status.startswith("refused:") and "not in this site's config" in report.status
    assert "mallory" in report.status and seen == {}


def test_c_mode_site_refuses_a_roster_larger_than_its_n(monkeypatch):
    config = _config(num_sites=6, sa={"max_colluding_sites": 1}, privacy=False, sampling={"fraction": 1.0})
    _, agg = _plan(config)
    report, seen = _take_part(monkeypatch, config, agg, _announcement(agg, [f"s-{i}" for i in range(7)], planned=6,
                                                                           threshold=7))
    assert report.status.startswith("refused:") and "more than the config's 6" in report.status and seen == {}


def test_site_checks_c_max_at_the_announced_degree(monkeypatch):
    """Automatic degree (neighbors = 0), N = 2000, gamma = 0.05: a server announcing a degree above
    the plan's makes each holder set larger, so it may hold more colluders; the site computes
    c_max at the ANNOUNCED degree, and refuses the plan's threshold there (2t <= h + c_max)."""
    config = _config(num_sites=2000, sa={"colluding_fraction": 0.05, "neighbors": 0}, privacy=False,
                     sampling={"fraction": 1.0, "poisson": False})
    _, agg = _plan(config)
    n = agg.plan_sites
    planned_k = agg.degree(n)
    assert planned_k is not None and planned_k < n - 1
    t_plan = agg.protocol_threshold(n)
    c_plan = announced_max_colluding(agg, _announced(n, threshold=t_plan, degree=planned_k))
    assert c_plan == agg.max_colluding(n)
    # a server announces a larger degree k (holder sets h = k + 1) with a threshold t that is
    # secure against the plan's c_max but not against c_max at k: h + c_plan < 2t <= h + c_max(k)
    C = agg.colluders(n)
    big_k = t_big = c_big = None
    for k in range(planned_k + 2, n - 1, 2):
        c = colluders_per_holder_set(n, k, C, sigma=GRAPH_SIGMA)[0]
        h = holders_per_site(n, k)
        t = (h + c_plan) // 2 + 1
        if c > c_plan and 2 * t <= h + c:
            big_k, t_big, c_big = k, t, c
            break
    assert big_k is not None
    ann_cfg = _announced(n, threshold=t_big, degree=big_k)
    assert announced_max_colluding(agg, ann_cfg) == c_big > c_plan
    check_threshold_policy(ann_cfg, c_plan, min_honest=1)  # would pass at the plan's c_max
    with pytest.raises(ProtocolError, match="too low"):
        check_threshold_policy(ann_cfg, announced_max_colluding(agg, ann_cfg), min_honest=1)
    # and through take_part: the announced degree reaches run_site_round's c_max
    names = [f"s-{i}" for i in range(n)]
    _, seen = _take_part(monkeypatch, config, agg, _announcement(agg, names, degree=big_k, threshold=t_big))
    assert seen["max_colluding"] == c_big


def test_site_counts_its_graph_reveals_before_they_leave(monkeypatch):
    """gamma mode: each attempt in which the site sends a GraphReveal is counted (and persisted)
    before the reveal leaves, aborted or not: the site's own delta term A_u 2^-40 (SPEC 8)."""
    import secure_fedrl.runtime.round as R
    from secure_fedrl.runtime.site import SiteRuntime

    config = _config(sa={"colluding_fraction": 0.2}, privacy=False, sampling={"fraction": 1.0})
    _, agg = _plan(config)
    site = _stub_site(config, agg)
    saved = []
    seen = []  # (count, saved) as the transport saw them when the reveal left

    class Wire(_Transport):
        def upload(self, round_id, phase, payload):
            if phase == "graph_reveal":  # leaving now: the persisted count must already hold it
                seen.append((site.guard.graph_reveals, list(saved)))
            super().upload(round_id, phase, payload)

    def fake_round(out, ann, **kw):
        before = site.guard.graph_reveals
        out.upload(1, "advertise_keys", b"")
        assert site.guard.graph_reveals == before and saved == []
        out.upload(1, "graph_reveal", b"")
        assert seen[-1] == (before + 1, [before + 1])  # counted and saved before it left
        assert site.guard.graph_reveals == before + 1 and saved == [before + 1]
        return "dropped: the server aborted after the graph seed"

    monkeypatch.setattr(R, "run_site_round", fake_round)
    names = [f"s-{i}" for i in range(6)]
    for _ in range(3):  # three aborted attempts, none of them in any ledger
        saved.clear()
        R.take_part(site, Wire(), _announcement(agg, names, threshold=6),
                    persist=lambda: saved.append(site.guard.graph_reveals))
    assert site.guard.graph_reveals == 3 and [s[0] for s in seen] == [1, 2, 3]
    assert SiteRuntime.delta_graph_site(site) == 3 * 2.0 ** -40
    # c mode: nothing counted
    c_config = _config(sa={"max_colluding_sites": 1}, privacy=False, sampling={"fraction": 1.0})
    _, c_agg = _plan(c_config)
    c_site = _stub_site(c_config, c_agg)
    monkeypatch.setattr(R, "run_site_round", lambda out, ann, **kw: out.upload(1, "graph_reveal", b"") or "done")
    R.take_part(c_site, _Transport(), _announcement(c_agg, names, threshold=6))
    assert c_site.guard.graph_reveals == 0 and SiteRuntime.delta_graph_site(c_site) == 0.0


# ----------------------------------------------------------------------------- ledger / metrics / delta


def test_ledger_records_c_max_and_delta_grows_by_the_graph_failure(tmp_path):
    from types import SimpleNamespace

    from secure_fedrl.ledger import PrivacyLedger

    config = _config(sa={"colluding_fraction": 0.2})
    plan, agg = _plan(config)
    (tmp_path / "run").mkdir()
    plan.ledger_path = tmp_path / "run" / "ledger.sqlite"
    plan.open(config_hash=config.fingerprint(), resume_after_round=0, key_dir=tmp_path / "keys")
    assert plan.max_colluding == 4 and plan.graph_failure == 2.0 ** -40
    for r in (1, 2, 3):
        p = agg.plan(r, planned=10, round_seed=r)
        info = agg.round_info(p)
        info["participants"] = [f"s-{i}" for i in range(10)]
        plan.record_round(r, SimpleNamespace(privacy=info, included=[], dropped=[]))
    m = plan.round_metrics()
    assert m["max_colluding"] == 4 and m["colluding_fraction"] == 0.2
    assert m["delta"] == config.privacy.delta + 3 * 2.0 ** -40 and m["delta_graph"] == 3 * 2.0 ** -40
    rows = plan.ledger.rows()
    plan.close()
    assert [r.max_colluding for r in rows] == [4, 4, 4]
    assert [r.delta for r in rows] == [config.privacy.delta + i * 2.0 ** -40 for i in (1, 2, 3)]
    assert all(r.noise_shares == 4 for r in rows)
    # replay after a restart counts the rows again: the next delta keeps growing
    again, _ = _plan(config)
    again.ledger_path = tmp_path / "run" / "ledger.sqlite"
    again.open(config_hash=config.fingerprint(), resume_after_round=3, key_dir=tmp_path / "keys")
    assert again.delta_total() == config.privacy.delta + 3 * 2.0 ** -40
    again.close()


def test_c_mode_delta_is_unchanged():
    plan, agg = _plan(_config(sa={"max_colluding_sites": 2}))
    assert agg.graph_failure() == 0.0 and plan.delta_total(1000) == plan.p.delta


# ----------------------------------------------------------------------------- a federation run


def test_two_round_federation_in_gamma_mode(tmp_path):
    from secure_fedrl.ledger import PUBLIC_KEY_FILE, PrivacyLedger, default_key_dir
    from secure_fedrl.runtime.simulate import run_simulation

    c = config_from_dict({
        "federation": {"rounds": 2, "seed": 3},
        "local": {"algorithm": "ppo", "steps": 64, "ppo": {"num_steps": 32, "update_epochs": 1}},
        "strategy": {"name": "fedavg", "weighting": "uniform"},
        "evaluation": {"every": 100, "episodes": 1},
        "secure_aggregation": {"enabled": True, "threshold": 3, "colluding_fraction": 0.1},
        "privacy": {"unit": "client", "clip": 0.5, "noise_multiplier": 1.0, "target_epsilon": 50.0},
        "sampling": {"fraction": 1.0},
        "sites": [{"name": "s", "env": "CartPole-v1", "num_envs": 1, "seed": 10, "count": 10}],
    })
    run = tmp_path / "run"
    summary = run_simulation(c, run, progress=False)
    assert summary.rounds_done == 2
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2
    # N = 10, gamma = 0.1: one colluder, complete graph: c_max = 1; t = max(3, 6 + ...) from 2t > 10 + 1
    assert all(r["max_colluding"] == 1 and r["colluding_fraction"] == 0.1 for r in rows)
    assert rows[-1]["delta"] == pytest.approx(c.privacy.delta + 2 * 2.0 ** -40, rel=0, abs=1e-20)
    assert rows[-1]["sites_aggregated"] == 10
    ledger = PrivacyLedger.open(run / "privacy_ledger.sqlite", config_hash=c.fingerprint(),
                                key_dir=default_key_dir(c.federation.name))
    entries = ledger.rows()
    ledger.close()
    assert [e.max_colluding for e in entries] == [1, 1]
    assert entries[-1].delta > c.privacy.delta
    assert entries[0].noise_shares == secure_threshold(10, max_colluding=1) - 1
    pinned = default_key_dir(c.federation.name) / PUBLIC_KEY_FILE
    audit = subprocess.run([sys.executable, str(REPO / "audit" / "verify_ledger.py"), str(run),
                            "--public-key-file", str(pinned)], capture_output=True, text=True, timeout=300)
    assert audit.returncode == 0, audit.stdout + audit.stderr


# ----------------------------------------------------------------------------- mutation-testing gaps


def test_delta_total_counts_the_rows_given_and_is_capped_below_one():
    plan, _ = _plan(_config(sa={"colluding_fraction": 0.2}))
    assert plan.graph_failure == 2.0 ** -GRAPH_SIGMA
    assert plan.delta_total(3) == plan.p.delta + 3 * 2.0 ** -GRAPH_SIGMA != plan.delta_total()
    assert plan.delta_total(10 ** 15) == 1.0 - 1e-12


def _roster_ann(n_ids, names, round_id=5):
    from secure_fedrl.transport.base import RosterEntry, RoundAnnouncement

    cfg = _announced(n_ids, threshold=2)
    cfg = RoundConfig(round_id=round_id, site_ids=cfg.site_ids, identity_keys=cfg.identity_keys, threshold=2, dim=8,
                      bits=32, degree=None, graph_seed=bytes(32))
    roster = tuple(RosterEntry(site_id=i + 1, name=nm) for i, nm in enumerate(names))
    return RoundAnnouncement(config=cfg, roster=roster, policy=np.zeros(8, np.float32), extras=b"")


def test_roster_check_refuses_either_list_longer_than_n():
    from secure_fedrl.runtime.round import check_roster_against_config

    config = _config(num_sites=6, sa={"colluding_fraction": 0.2}, privacy=False, sampling={"fraction": 1.0})
    names = [f"s-{i}" for i in range(6)]
    check_roster_against_config(_roster_ann(6, names), config)  # exactly N: accepted
    with pytest.raises(PrivacyError, match=r"^round 5: a roster of 7 sites, more than the config's 6"):
        check_roster_against_config(_roster_ann(6, names + ["s-6"]), config)  # roster longer, ids not
    with pytest.raises(PrivacyError, match=r"^round 5: a roster of 7 sites"):
        check_roster_against_config(_roster_ann(7, names), config)  # ids longer, roster not
    with pytest.raises(PrivacyError) as err:
        check_roster_against_config(_roster_ann(6, names[:2] + ["m1", "m2", "m3", "m4"]), config)
    assert str(err.value).startswith("round 5: ") and "['m1', 'm2', 'm3']" in str(err.value)


def test_announced_max_colluding_bounds_on_n():
    from types import SimpleNamespace

    _, agg = _plan(_config(sa={"colluding_fraction": 0.2}, privacy=False, sampling={"fraction": 1.0}))
    assert announced_max_colluding(agg, _announced(2, threshold=2)) == 1  # two sites: the other may collude
    with pytest.raises(PrivacyError, match="round 1: a roster of 1 site"):  # (RoundConfig refuses it too)
        announced_max_colluding(agg, SimpleNamespace(round_id=1, site_ids=(1,), degree=None))
    # an aggregator without num_sites (a test double): only its own bound
    assert announced_max_colluding(SimpleNamespace(max_colluding=lambda n, d: 7), _announced(30, threshold=2)) == 7


def test_max_colluding_and_noise_shares_of_a_two_site_round():
    _, agg = _plan(_config(sa={"colluding_fraction": 0.2}, privacy=False, sampling={"fraction": 1.0}))
    assert agg.max_colluding(2) == 1 and agg.max_colluding(1) == 1
    assert agg.noise_shares(6) == 6 - 4 and agg.noise_shares(3) == 1
    _, c0 = _plan(_config(sa={"max_colluding_sites": 0, "threshold": 0.9}, privacy=False, sampling={"fraction": 1.0}))
    assert c0.noise_shares(2) == 2 and c0.noise_shares(3) == 3


def test_noise_shares_names_the_c_mode_key():
    _, agg = _plan(_config(sa={"max_colluding_sites": 5}, privacy=False, sampling={"fraction": 1.0}))
    with pytest.raises(ConfigError, match=r"^secure_aggregation\.max_colluding_sites: 5 colluders per holder set "
                                          r"leave no honest input guaranteed in a sum of 3 sampled sites"):
        agg.noise_shares(3)


def test_degree_explicit_and_automatic():
    _, fixed = _plan(_config(sa={"colluding_fraction": 0.2, "neighbors": 4}, privacy=False, sampling={"fraction": 1.0}))
    assert fixed.degree(10) == 4 and fixed.degree(16) == 4 and fixed.degree(4) == 3
    _, big = _plan(_config(sa={"colluding_fraction": 0.2, "neighbors": 10}, privacy=False, sampling={"fraction": 1.0}))
    assert big.degree(8) == 7
    # c mode, automatic degree: k from max_colluding_sites and the config's dropout
    _, c = _plan(_config(100, sa={"max_colluding_sites": 2, "neighbors": 0, "dropout_rate": 0.2}, privacy=False,
                         sampling={"fraction": 1.0}))
    assert c.degree(100) == secagg_plus_parameters(100, max_colluding=2, dropout=0.2)[0] == 84
    assert c.degree(16) is None
    # gamma mode, automatic degree: the config's dropout too
    _, g = _plan(_config(200, sa={"colluding_fraction": 0.1, "neighbors": 0, "dropout_rate": 0.2}, privacy=False,
                         sampling={"fraction": 1.0}))
    assert g.degree(200) == secagg_plus_parameters(200, colluders=20, dropout=0.2, sigma=GRAPH_SIGMA)[0] == 198


def test_protocol_threshold_is_exactly_the_max_of_its_bounds():
    # a fraction above the secure threshold: ceil(0.9 h) wins
    _, agg = _plan(_config(sa={"colluding_fraction": 0.2, "threshold": 0.9}, privacy=False, sampling={"fraction": 1.0}))
    assert agg.protocol_threshold(20) == 18
    # SecAgg+ in gamma mode: c_max of THIS degree (not the complete graph's C)
    _, auto = _plan(_config(200, sa={"colluding_fraction": 0.15, "neighbors": 40}, privacy=False,
                            sampling={"fraction": 1.0}))
    k = auto.degree(200)
    h = holders_per_site(200, k)
    c_max = colluders_per_holder_set(200, k, 30, sigma=GRAPH_SIGMA)[0]
    assert k == 40 and c_max == 23
    assert auto.protocol_threshold(200) == min(max(math.ceil(0.6 * h), secure_threshold(h, max_colluding=c_max)), h) \
        < min(max(math.ceil(0.6 * h), secure_threshold(h, max_colluding=30)), h)
    # three sites, no colluder: t = 2
    _, c0 = _plan(_config(sa={"max_colluding_sites": 0, "threshold": 0.5}, privacy=False, sampling={"fraction": 1.0}))
    assert c0.protocol_threshold(3) == 2


def test_colluders_per_holder_set_validates_and_defaults():
    assert colluders_per_holder_set(2, None, 1) == (1, -math.inf)
    assert colluders_per_holder_set(100, 40, 30) == colluders_per_holder_set(100, 40, 30, sigma=40.0) == \
        (28, colluders_per_holder_set(100, 40, 30, sigma=40.0)[1])
    assert colluders_per_holder_set(20, 4, 20) == (4, -math.inf)  # all others corrupt: exactly h - 1
    assert colluders_per_holder_set(5, None, 2, sigma=0.5)[0] == 2
    for bad_n in (1, 0, 3.0, "3"):
        with pytest.raises(ValueError, match="n must be an integer >= 2"):
            colluders_per_holder_set(bad_n, None, 1)
    for bad_c in (-1, True, 1.5):
        with pytest.raises(ValueError, match="colluders must be a non-negative integer"):
            colluders_per_holder_set(10, None, bad_c)
    for bad_s in (0, 0.0, -1.0):
        with pytest.raises(ValueError, match="^sigma must be positive$"):
            colluders_per_holder_set(10, None, 1, sigma=bad_s)


def test_secagg_plus_parameters_defaults_and_detail_arguments():
    assert secagg_plus_parameters(36, colluders=2) == (28, 16)  # sigma 40 (41 gives (30, 17))
    assert secagg_plus_parameters(40, colluders=4) == (34, 20)  # eta 20 (21 gives (36, 21))
    assert secagg_plus_parameters(100, colluders=10) == (58, 35)
    d = secagg_plus_parameters_detail(100, max_colluding=2, dropout=0.2, sigma=40.0, eta=20.0)
    assert (d.n, d.k, d.t) == (100, 84, 44)
    assert (secagg_plus_parameters_detail(36, colluders=2, sigma=41.0).k,
            secagg_plus_parameters_detail(40, colluders=4, eta=21.0).k) == (30, 36)
    with pytest.raises(TypeError, match=r"unexpected arguments \['foo'\]"):
        secagg_plus_parameters_detail(100, colluders=5, foo=1)


def test_detail_defaults_and_c_mode_degree_with_c_above_n():
    assert secagg_plus_parameters_detail(36, colluders=2).k == 28  # sigma 40 by default
    # c mode, max_colluding_sites >= n - 1 at a sparse-eligible n: the bound capped at n - 1
    _, c = _plan(_config(30, sa={"max_colluding_sites": 20, "neighbors": 0}, privacy=False,
                         sampling={"fraction": 1.0}))
    assert c.degree(17) == secagg_plus_parameters(17, max_colluding=16, dropout=0.05)[0]


def test_secagg_plus_parameters_validates_an_explicit_colluder_count():
    """colluders in [0, n] (an int, not a bool): the ends are accepted, everything else refused by name."""
    assert secagg_plus_parameters(40, colluders=0) == secagg_plus_parameters(40, max_colluding=0)
    k, t = secagg_plus_parameters(20, colluders=20)  # every site colludes: still a well-defined answer
    assert k is None and t == 20
    for bad in (-1, 21, True, 1.5, "3"):
        with pytest.raises(ValueError, match=r"^colluders must be an integer in \[0, n\], got "):
            secagg_plus_parameters(20, colluders=bad)


# ----------------------------------------------------------------------------- the site's cap on A_u

#: privacy.delta at which the guard's cap floor(delta / (100 x 2^-40)) is 3 GraphReveals
THREE_ATTEMPTS_DELTA = 350 * 2.0 ** -40


def _sparse_gamma(delta=THREE_ATTEMPTS_DELTA, privacy=False):
    """gamma mode, SecAgg+ (explicit degree 4 on 6 sites: the round has a graph_reveal phase)."""
    config = _config(sa={"colluding_fraction": 0.2, "neighbors": 4, "threshold": 0.5},
                     privacy=privacy if privacy is not False else False, sampling={"fraction": 1.0})
    if privacy is False:
        import dataclasses

        config = dataclasses.replace(config, privacy=dataclasses.replace(config.privacy, delta=delta))
    _, agg = _plan(config)
    return config, agg


def _retrying_server(monkeypatch, site, log):
    """A malicious server: every attempt is aborted after the site's GraphReveal, then retried."""
    import secure_fedrl.runtime.round as R

    def fake_round(out, ann, **kw):
        out.upload(ann.round_id, "advertise_keys", b"advert")
        out.upload(ann.round_id, "graph_reveal", b"reveal")
        return "dropped: the server aborted after the graph seed"

    monkeypatch.setattr(R, "run_site_round", fake_round)
    return R


def test_a_server_that_retries_without_end_stops_at_the_sites_cap(monkeypatch):
    """The server aborts every SecAgg+ attempt after the graph reveal and retries: each attempt
    is another 2^-40 chance of a holder set with more than c_max colluders. The site sends
    exactly floor(delta / (100 x 2^-40)) = 3 reveals, then refuses the next attempt in one line
    (naming itself, its count and the cap) before it trains or sends anything, and its delta
    stays <= 1.01 privacy.delta. Without the cap the 4th reveal leaves."""
    config, agg = _sparse_gamma()
    site = _stub_site(config, agg)
    assert site.guard.max_graph_reveals == 3
    R = _retrying_server(monkeypatch, site, [])
    names = [f"s-{i}" for i in range(6)]
    statuses, sent = [], []
    for attempt in range(1, 6):
        t = _Transport()
        ann = _announcement(agg, names)
        assert "graph_reveal" in ann.config.phases
        statuses.append(R.take_part(site, t, ann).status)
        sent.append([x for x in t.left if isinstance(x, tuple)])
    assert [s.startswith("dropped:") for s in statuses] == [True, True, True, False, False]
    for refused, out in zip(statuses[3:], sent[3:]):
        assert refused.startswith("refused: ") and len(refused.splitlines()) == 1
        assert "site s-0" in refused and "3 SecAgg+ graph reveals sent" in refused and "the cap is 3" in refused
        assert out == []  # no advert, no reveal left the site
    assert site.trained == [1, 1, 1]  # refused before training
    assert site.guard.graph_reveals == 3
    eps, delta_u = site.guard.guarantee()
    assert delta_u == config.privacy.delta + 3 * 2.0 ** -40 <= 1.01 * config.privacy.delta


def test_the_reveal_itself_is_refused_past_the_cap(monkeypatch):
    """Defence in depth: were the check before training bypassed (a complete-graph announcement
    whose client still sent a reveal), the count at the reveal refuses it: it never reaches the
    transport and the count stays at the cap."""
    from secure_fedrl.errors import PrivacyBudgetExceeded
    import secure_fedrl.runtime.round as R

    config, agg = _sparse_gamma()
    site = _stub_site(config, agg)
    site.guard.restore_graph_reveals(3)
    raised = []

    def fake_round(out, ann, **kw):
        with pytest.raises(PrivacyBudgetExceeded, match="the cap is 3") as err:
            out.upload(ann.round_id, "graph_reveal", b"reveal")
        raised.append(str(err.value))
        return "refused: " + str(err.value)

    monkeypatch.setattr(R, "run_site_round", fake_round)
    t = _Transport()
    names = [f"s-{i}" for i in range(6)]
    complete = _announcement(agg, names, degree=None, threshold=6)
    assert "graph_reveal" not in complete.config.phases  # the check before training does not apply
    report = R.take_part(site, t, complete)
    assert raised and report.status.startswith("refused:")
    assert not any(isinstance(x, tuple) and x[1] == "graph_reveal" for x in t.left)
    assert site.guard.graph_reveals == 3


def test_a_restored_site_at_its_cap_still_refuses(monkeypatch):
    """The count is in the site's saved state (guard_state): a site restarted from it (the
    server hoping a restart forgets the count) refuses at once; a state saved before the guard
    held the count (top-level `graph_reveals`) is read too, and never lowers a higher count."""
    from secure_fedrl.privacy.budget import SiteGuard
    from secure_fedrl.runtime.site import guard_state, load_guard_state

    config, agg = _sparse_gamma()
    site = _stub_site(config, agg)
    R = _retrying_server(monkeypatch, site, [])
    names = [f"s-{i}" for i in range(6)]
    for _ in range(3):
        R.take_part(site, _Transport(), _announcement(agg, names))
    saved = json.loads(json.dumps(guard_state(site.guard)))
    assert saved["graph_reveals"] == 3
    again = _stub_site(config, agg)
    assert again.guard.graph_reveals == 0
    load_guard_state(again.guard, saved)
    assert again.guard.graph_reveals == 3
    t = _Transport()
    report = R.take_part(again, t, _announcement(agg, names))
    assert report.status.startswith("refused:") and "the cap is 3" in report.status and again.trained == []
    # an old state without the guard's count: the top-level count is taken, a lower one ignored
    old = dict(saved)
    del old["graph_reveals"]
    fresh = SiteGuard("s-0", target_epsilon=8.0, delta=THREE_ATTEMPTS_DELTA, graph_failure=2.0 ** -40)
    load_guard_state(fresh, old)
    assert fresh.graph_reveals == 0
    fresh.restore_graph_reveals(2)
    fresh.restore_graph_reveals(1)
    assert fresh.graph_reveals == 2


def test_c_mode_and_complete_graph_sites_have_no_cap(monkeypatch):
    """Outside gamma mode the failure is 0: no count, no cap, nothing refused."""
    import secure_fedrl.runtime.round as R

    config = _config(sa={"max_colluding_sites": 1, "neighbors": 4, "threshold": 0.5}, privacy=False,
                     sampling={"fraction": 1.0})
    _, agg = _plan(config)
    site = _stub_site(config, agg)
    assert site.guard.max_graph_reveals is None
    monkeypatch.setattr(R, "run_site_round", lambda out, ann, **kw: out.upload(1, "graph_reveal", b"") or "done")
    names = [f"s-{i}" for i in range(6)]
    for _ in range(3):
        assert R.take_part(site, _Transport(), _announcement(agg, names)).status == "done"
    assert site.guard.graph_reveals == 0


def _sim_config(rounds=1, delta=1e-5):
    return config_from_dict({
        "federation": {"rounds": rounds, "seed": 3, "name": "gamma-sim"},
        "local": {"algorithm": "ppo", "steps": 32, "ppo": {"num_steps": 32, "update_epochs": 1}},
        "strategy": {"name": "fedavg", "weighting": "uniform"},
        "evaluation": {"every": 100, "episodes": 1},
        "secure_aggregation": {"enabled": True, "colluding_fraction": 0.25, "neighbors": 4},
        "privacy": {"unit": "client", "clip": 0.5, "noise_multiplier": 1.0, "target_epsilon": 50.0, "delta": delta},
        "sampling": {"fraction": 1.0},
        "sites": [{"name": "s", "env": "CartPole-v1", "num_envs": 1, "seed": 10, "count": 8}],
    })


def test_simulate_counts_each_sites_graph_reveals_in_its_own_metrics(tmp_path):
    """`simulate` (SecAgg+ over the in-memory hub, runtime/round.py's take_part): every site
    counts its GraphReveal of each round and writes epsilon_site / delta_site = privacy.delta +
    A_u 2^-40 into sites/<site>/metrics.jsonl, as a deployed site does; the server's
    metrics.jsonl holds none of it. The count survives a restart through the site's state."""
    from secure_fedrl.runtime.simulate import Simulation

    c = _sim_config(rounds=2)
    run = tmp_path / "run"
    sim = Simulation(c, run, progress=False, ledger_key=tmp_path / "keys")
    assert sim.run().rounds_done == 2
    for site in sim.sites:
        assert site.graph_reveals == 2 and site.guard.graph_reveals == 2
        rows = [json.loads(x) for x in (run / "sites" / site.name / "metrics.jsonl").read_text().splitlines()]
        priv = [r for r in rows if "graph_reveals" in r]
        assert [r["graph_reveals"] for r in priv] == [1, 2], rows
        last = priv[-1]
        assert last["delta_graph_site"] == 2 * 2.0 ** -40
        assert last["delta_site"] == c.privacy.delta + 2 * 2.0 ** -40
        assert last["epsilon_site"] == site.guard.epsilon > 0
        assert last["max_graph_reveals"] == math.floor(1e-5 / 100 * 2 ** 40)
    server_rows = (run / "metrics.jsonl").read_text()
    for key in ("graph_reveals", "delta_site", "epsilon_site", "delta_graph_site"):
        assert key not in server_rows
    # restart: the saved state brings the count back
    state = sim.sites[0].state_dict()
    assert "graph_reveals" not in state and state["guard"]["graph_reveals"] == 2
    fresh = Simulation(c, tmp_path / "run2", progress=False, ledger_key=tmp_path / "keys").sites[0]
    assert fresh.graph_reveals == 0
    fresh.load_state_dict(state, env=False)
    assert fresh.graph_reveals == 2 and fresh.delta_graph_site() == 2 * 2.0 ** -40
    old = dict(state, graph_reveals=5, guard=dict(state["guard"]))  # a state saved before the guard held it
    del old["guard"]["graph_reveals"]
    fresh.load_state_dict(old, env=False)
    assert fresh.graph_reveals == 5
    with pytest.raises(PrivacyError, match="non-negative integer"):
        fresh.load_state_dict(dict(state, graph_reveals=-1), env=False)


def test_gamma_mode_needs_a_delta_even_without_dp():
    """privacy.delta caps each site's SecAgg+ attempts in gamma mode, so it is checked even
    with privacy.unit = "none" (one line, the key named)."""
    def raw(sa, delta):
        return {"federation": {"rounds": 1}, "local": {"algorithm": "ppo", "steps": 64},
                "strategy": {"name": "fedavg", "weighting": "uniform"}, "secure_aggregation": {"enabled": True, **sa},
                "privacy": {"unit": "none", "delta": delta}, "sites": [{"name": "s", "env": "CartPole-v1", "count": 20}]}

    for bad in (0.0, 1.0):
        with pytest.raises(ConfigError, match="privacy.delta") as err:
            config_from_dict(raw({"colluding_fraction": 0.2}, bad))
        assert len(str(err.value).splitlines()) == 1 and "gamma mode" in str(err.value)
    config_from_dict(raw({"colluding_fraction": 0.2}, 1e-5))
    config_from_dict(raw({"max_colluding_sites": 1}, 0.0))  # c mode without DP: no cap, delta unused


def test_site_privacy_metrics_by_mode():
    """What a site writes of itself: epsilon_site / delta_site under DP; in gamma mode A_u, its
    delta term and the cap (also without DP, where there is no epsilon); nothing without either."""
    from types import SimpleNamespace

    from secure_fedrl.privacy.budget import SiteGuard
    from secure_fedrl.runtime.site import SiteRuntime

    def metrics(unit, failure, guard=True):
        g = SiteGuard("s", target_epsilon=8.0, delta=1e-5, graph_failure=failure) if guard else None
        if failure:
            g.count_graph_reveal()
        return SiteRuntime.privacy_metrics(SimpleNamespace(guard=g, config=SimpleNamespace(
            privacy=SimpleNamespace(unit=unit))))

    f = 2.0 ** -40
    assert metrics("none", 0.0, guard=False) == {}
    assert metrics("client", 0.0) == {"epsilon_site": 0.0, "delta_site": 1e-5}
    assert metrics("none", f) == {"graph_reveals": 1, "delta_graph_site": f, "max_graph_reveals": 109951,
                                  "delta_site": 1e-5 + f}
    assert metrics("trajectory", f) == {"epsilon_site": 0.0, "delta_site": 1e-5 + f, "graph_reveals": 1,
                                        "delta_graph_site": f, "max_graph_reveals": 109951}


def test_a_site_without_dp_in_gamma_mode_still_caps_its_attempts(tmp_path):
    """privacy.unit = "none": no epsilon, but the graph's failure still voids the "hidden among
    m honest inputs" statement, so the site has a guard for its GraphReveals (and none in c mode)."""
    import dataclasses

    from secure_fedrl.runtime.simulate import Simulation

    c = _sim_config()
    none = dataclasses.replace(c, privacy=dataclasses.replace(c.privacy, unit="none"))
    sim = Simulation(none, tmp_path / "a", progress=False, ledger_key=tmp_path / "keys")
    g = sim.sites[0].guard
    assert g is not None and g.max_graph_reveals == 109951 and g.graph_failure == 2.0 ** -40
    c_mode = dataclasses.replace(none, secure_aggregation=dataclasses.replace(
        none.secure_aggregation, colluding_fraction=0.0, max_colluding_sites=1))
    assert Simulation(c_mode, tmp_path / "b", progress=False, ledger_key=tmp_path / "keys").sites[0].guard is None
    assert Simulation(c, tmp_path / "c", progress=False,
                      ledger_key=tmp_path / "keys").sites[0].guard.max_graph_reveals == 109951


def test_a_resumed_simulation_never_under_counts_graph_reveals(tmp_path):
    """simulate saves the sites' states only at the end of a round, so a run stopped mid-round
    may have sent a GraphReveal after the last save: a resume counts one more attempt per site
    (over-count, never under-count); round 2 then adds its own."""
    from secure_fedrl.runtime.simulate import Simulation

    run = tmp_path / "run"
    first = Simulation(_sim_config(rounds=1), run, progress=False, ledger_key=tmp_path / "keys")
    first.run()
    assert [s.graph_reveals for s in first.sites] == [1] * 8
    again = Simulation(_sim_config(rounds=2), run, resume=True, progress=False, ledger_key=tmp_path / "keys")
    assert [s.graph_reveals for s in again.sites] == [2] * 8
    again.run()
    assert [s.graph_reveals for s in again.sites] == [3] * 8


def test_a_simulation_stopped_in_round_1_resumes_counting_its_graph_reveals(tmp_path, monkeypatch):
    """A run killed at the end of round 1, after every site sent its GraphReveal but before the
    first checkpoint, has no saved state: its resume still counts one more attempt per site
    (never A_u = 0 for a reveal that left)."""
    from secure_fedrl.runtime.server import ServerRuntime
    from secure_fedrl.runtime.simulate import Simulation

    class Killed(Exception):
        pass

    def die(self):
        raise Killed

    run = tmp_path / "run"
    with monkeypatch.context() as m:
        m.setattr(ServerRuntime, "_save", die)
        first = Simulation(_sim_config(rounds=2), run, progress=False, ledger_key=tmp_path / "keys")
        with pytest.raises(Killed):
            first.run()
    assert [s.graph_reveals for s in first.sites] == [1] * 8
    first.privacy.close()
    again = Simulation(_sim_config(rounds=2), run, resume=True, progress=False, ledger_key=tmp_path / "keys")
    assert again.round == 0
    assert [s.graph_reveals for s in again.sites] == [1] * 8
    again.run()
    assert [s.graph_reveals for s in again.sites] == [3] * 8


def test_gamma_mode_refuses_a_delta_that_caps_secagg_plus_attempts_at_zero(tmp_path):
    """Below 100 x 2^-40 the cap floor(delta / (100 x 2^-40)) is 0: every SecAgg+ round would be
    refused. The config says so in one line, naming privacy.delta and the minimum; at the minimum
    a site may send one reveal; the complete graph (no GraphReveal) is not capped."""
    from secure_fedrl.runtime.simulate import Simulation

    for delta in (9e-11, 2.0 ** -40, 1e-20):
        with pytest.raises(ConfigError) as err:
            _sim_config(delta=delta)
        msg = str(err.value)
        assert "\n" not in msg and msg.startswith("privacy.delta: must be >= 100 x 2^-40 (~9.09e-11) in gamma mode")
        assert "floor(delta / (100 x 2^-40))" in msg
    c = _sim_config(delta=100 * 2.0 ** -40)
    assert Simulation(c, tmp_path / "a", progress=False, ledger_key=tmp_path / "keys").sites[0].guard.max_graph_reveals == 1
    d = c.to_dict()
    d["privacy"]["delta"] = 1e-12
    d["secure_aggregation"]["neighbors"] = -1  # the complete graph: no GraphReveal to cap
    assert config_from_dict(d).privacy.delta == 1e-12
