"""Security review of the split runtime (site.py, round.py, deploy.py, server.py, the hub's new
leave / witness / notice, the gRPC Witness rpc): attacks by a malicious coordinating server
(possibly with `max_colluding_sites` colluding sites) and by hostile sites against the server.

Everything runs in process: the real `SiteRuntime` + `take_part` at the sites, the real `Hub`
+ `run_server_round` + `SecAggServer` as the (possibly lying) server. Local training is replaced
by a fixed update (what the site would send is all that matters here).

Every finding of the review (F1-F7) is fixed; each test asserts the secure behaviour and failed
before its fix. (They were `xfail(strict=True)` while open: fixing one turned the suite red,
telling whoever fixed it to drop the marker.
"""

from __future__ import annotations

import json
import pickle
import threading
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from secure_fedrl.config import config_from_dict
from secure_fedrl.errors import ConfigError
from secure_fedrl.ledger.witness import sign_witness, verify_witness
from secure_fedrl.runtime.aggregation import SiteUpload, build_aggregator
from secure_fedrl.runtime.deploy import SiteProcess
from secure_fedrl.runtime.privacy_plan import PrivacyPlan
from secure_fedrl.runtime.round import take_part
from secure_fedrl.runtime.site import RoundOrder, SiteRuntime
from secure_fedrl.runtime.sites import expand_sites
from secure_fedrl.secagg.protocol import RoundConfig
from secure_fedrl.transport.base import (Hub, InMemorySite, PhaseDeadlines, RosterEntry, RoundAnnouncement,
                                         TransportError)
from secure_fedrl.transport.rounds import run_server_round

DIM = 24
FAST = PhaseDeadlines(advertise_keys=20, share_keys=20, masked_input=20, consistency_check=20, unmasking=20)


def make_config(n: int = 4, *, unit: str = "client", colluding: int = 1, **extra):
    raw = {
        "federation": {"name": "attack-fed", "rounds": 3, "seed": 3},
        "local": {"algorithm": "ppo", "steps": 32, "ppo": {"num_steps": 32, "update_epochs": 1}},
        "strategy": {"name": "fedavg", "weighting": "uniform"},
        "evaluation": {"every": 100, "episodes": 1},
        "secure_aggregation": {"enabled": True, "max_colluding_sites": colluding},
        "sampling": {"fraction": 1.0},
        "sites": [{"name": "s", "env": "CartPole-v1", "num_envs": 1, "seed": 10, "count": n}],
    }
    if unit == "client":
        raw["privacy"] = {"unit": "client", "clip": 0.5, "noise_multiplier": 1.0, "target_epsilon": 50.0}
    for k, v in extra.items():
        raw.setdefault(k, {}).update(v)
    return config_from_dict(raw)


class Federation:
    """n real SiteRuntimes (training replaced by a fixed update) over an in-memory hub; the test
    plays the server and may lie in the broadcast."""

    def __init__(self, config, *, dim: int = DIM) -> None:
        self.config = config
        self.specs = expand_sites(config.sites)
        self.names = [s.name for s in self.specs]
        self.hub = Hub(federation=config.federation.name, liveness_s=float("inf"))
        self.mechanism = PrivacyPlan(config, self.names, ledger_path=None)
        self.aggregator = build_aggregator(config, dim=dim, privacy=self.mechanism)
        self.mechanism.bind(self.aggregator)
        self.sites: dict[str, SiteRuntime] = {}
        self.transports: dict[str, InMemorySite] = {}
        self.updates: dict[str, np.ndarray] = {}
        for i, spec in enumerate(self.specs):
            site = SiteRuntime(config, spec, i, env=None, policy=None, federated_params=[torch.zeros(dim)],
                               mechanism=self.mechanism, aggregator=self.aggregator)
            vec = np.random.default_rng(100 + i).normal(0, 0.05, dim).astype(np.float32)
            self.updates[spec.name] = vec
            site.train = (lambda g, r, *, round_seed, control=None, _n=spec.name, _v=vec:
                          (SiteUpload(site=_n, vector=_v.copy(), weight=1.0, nbytes=_v.nbytes),
                           SimpleNamespace(steps=1, episode_returns=[], diagnostics={})))
            self.sites[spec.name] = site
            self.transports[spec.name] = InMemorySite(self.hub, spec.name, i + 1, protocol_key=pub(site.identity_key))
            self.transports[spec.name].join()

    def announcement(self, r: int, members: list[str], *, planned: int | None = None, round_seed: int = 7,
                     threshold: int | None = None, extras: bytes | None = None) -> RoundAnnouncement:
        plan = self.aggregator.plan(r, planned=len(members) if planned is None else planned, round_seed=round_seed)
        order = sorted(members, key=lambda n: self.transports[n].number)
        cfg = RoundConfig(round_id=r, site_ids=tuple(self.transports[n].number for n in order),
                          identity_keys=tuple(pub(self.sites[n].identity_key) for n in order),
                          threshold=plan.threshold if threshold is None else threshold,
                          dim=self.aggregator.wire_dim(plan), bits=self.config.secure_aggregation.bits,
                          degree=plan.degree, graph_seed=self.aggregator.graph_seed(round_seed))
        roster = tuple(RosterEntry(self.transports[n].number, n) for n in order)
        if extras is None:
            extras = RoundOrder(round=r, round_seed=round_seed, planned=plan.planned, dim=DIM).encode()
        return RoundAnnouncement(cfg, roster, np.zeros(DIM, np.float32), extras)

    def verify_dp(self, ann: RoundAnnouncement):
        """The server's DP-attestation check for what it broadcast (None without DDG): since F2 a
        server without it refuses every MaskedInput that carries a DP field."""
        order = RoundOrder.decode(ann.extras)
        plan = self.aggregator.plan(ann.config.round_id, planned=order.planned, round_seed=order.round_seed)
        return self.aggregator.dp_verifier(plan, ann.config)

    def run(self, ann: RoundAnnouncement, *, transports: dict | None = None, sites: dict | None = None):
        """The server's side honestly over the hub; every roster site runs take_part on a thread."""
        members = [e.name for e in ann.roster]
        reports: dict[str, object] = {}
        threads = []

        def start():
            for n in members:
                tr = (transports or {}).get(n, self.transports[n])
                runtime = (sites or {}).get(n, self.sites.get(n))

                def go(n=n, tr=tr, runtime=runtime):
                    reports[n] = take_part(runtime, tr, ann, timeout=20) if runtime is not None else None
                t = threading.Thread(target=go, daemon=True)
                threads.append(t)
                t.start()
        result = run_server_round(self.hub, {n: ann for n in members}, deadlines=FAST, on_open=start,
                                  verify_dp=self.verify_dp(ann))
        for t in threads:
            t.join(30)
        return result, reports


def pub(key) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


# ============================================================================ 1. budget / noise
class AckLost:
    """A site transport whose masked_input upload reaches the hub, but the call then fails (a
    malicious server aborting the RPC after storing the payload, or simply a lost ack)."""

    def __init__(self, inner: InMemorySite) -> None:
        self.inner, self.name = inner, inner.name

    def __getattr__(self, item):
        return getattr(self.inner, item)

    def upload(self, round_id, phase, payload):
        self.inner.upload(round_id, phase, payload)
        if phase == "masked_input":
            raise TransportError("UNAVAILABLE", "connection reset after the server stored the upload")


def test_masked_input_whose_ack_is_lost_is_still_charged():
    """Finding F1. The site charges its own SiteGuard only if `masked_input` is in _Outbox.sent,
    which is appended after the upload call returns. A server that stores the masked input and then
    fails the RPC gets the input into the sum (the other sites unmask it) while the site never
    charges: repeated every round, the site's budget against the server is never spent.
    Fixed here by recording the phase as sent before the upload is attempted (round.py _Outbox)."""
    fed = Federation(make_config(4, colluding=1))
    victim = fed.names[0]
    ann = fed.announcement(1, fed.names)
    result, reports = fed.run(ann, transports={victim: AckLost(fed.transports[victim])})
    assert result.outcome is not None, result.aborted
    included = {e.name for e in ann.roster if e.site_id in result.outcome.accepted}
    assert victim in included  # the victim's noised input is in the released sum ...
    assert reports[victim].status.startswith("dropped")
    assert fed.sites[victim].guard.participations == 1  # ... so it must have been charged
    for other in fed.names[1:]:
        assert fed.sites[other].guard.participations == 1


def test_site_price_ignores_the_servers_planned_count():
    """`planned` is the server's word; under DDG the site's price and noise must not depend on it."""
    fed = Federation(make_config(4, colluding=1))
    site = fed.sites[fed.names[0]]
    prices = {p: site.round_price(fed.aggregator.plan(1, planned=p, round_seed=5)) for p in (1, 2, 4, 1000)}
    assert len({repr(v) for v in prices.values()}) == 1
    params = {p: fed.aggregator.ddg_params(p) for p in (1, 2, 4, 1000)}
    assert len({repr(v) for v in params.values()}) == 1


def test_lying_planned_cannot_lower_the_threshold_below_the_sites_noise_shares():
    """A server announcing planned=1 and a threshold with t - c below the DDG noise shares m is
    refused by the site (check_threshold_policy with min_honest = m): nothing leaves the site."""
    fed = Federation(make_config(4, colluding=1))
    m = fed.aggregator.noise_shares()
    assert m >= 2
    members = fed.names[:3]
    ann = fed.announcement(1, members, planned=1, threshold=1 + m - 1)  # t - c = m - 1
    result, reports = fed.run(ann)
    assert result.outcome is None
    for n in members:
        assert reports[n].status.startswith("refused"), reports[n].status
        assert fed.sites[n].guard.participations == 0


def test_spent_budget_refuses_before_training():
    fed = Federation(make_config(4, colluding=1))
    site = fed.sites[fed.names[0]]
    trained = []
    orig = site.train
    site.train = lambda *a, **k: trained.append(1) or orig(*a, **k)
    price = site.round_price(fed.aggregator.plan(1, planned=4, round_seed=1))
    while site.guard.admits(price):
        site.guard.charge(price)
    report = take_part(site, fed.transports[site.name], fed.announcement(1, fed.names), timeout=1)
    assert report.status.startswith("refused") and "budget" in report.status
    assert not trained


@pytest.mark.parametrize("unit", ["client", "trajectory"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, 1e39])  # 1e39: finite as float64, inf as the float32 trained on
def test_non_finite_global_policy_is_refused_before_training(unit, bad):
    """A server broadcasting NaN/inf parameters gets no training and no charge (a trajectory-level
    site charges as soon as DP-SGD ran)."""
    privacy = {"privacy": {"unit": "trajectory", "clip": 1.0, "target_epsilon": 50.0, "sample_rate": 0.5,
                           "noisy_steps": 2}, "local": {"steps": 0, "episodes": 2}} if unit == "trajectory" else {}
    fed = Federation(make_config(4, unit=unit, colluding=1, **privacy))
    site = fed.sites[fed.names[0]]
    spent = site.privacy_metrics()
    trained = []
    orig = site.train
    site.train = lambda *a, **k: trained.append(1) or orig(*a, **k)
    ann = fed.announcement(1, fed.names)
    policy = ann.policy.astype(np.float64)
    policy[3] = bad
    report = take_part(site, fed.transports[site.name], RoundAnnouncement(ann.config, ann.roster, policy, ann.extras),
                       timeout=1)
    assert report.status.startswith("refused") and "non-finite" in report.status
    assert not trained and site.privacy_metrics() == spent


@pytest.mark.parametrize("unit", ["client", "none"])
def test_a_non_finite_local_update_is_sent_as_zero_not_withheld(unit):
    """A broadcast of huge finite values can make local training overflow or not depending on the
    site's own trajectories; a site that then left the round would tell the server that bit with no
    noise and no charge. The site sends a zero update instead, charged like any other."""
    fed = Federation(make_config(4, unit=unit, colluding=1))
    victim = fed.names[0]
    bad = np.full(DIM, np.nan, np.float32)
    bad[1] = np.inf
    fed.sites[victim].train = lambda g, r, *, round_seed, control=None: (
        SiteUpload(site=victim, vector=bad.copy(), weight=1.0, nbytes=bad.nbytes),
        SimpleNamespace(steps=1, episode_returns=[], diagnostics={}))
    ann = fed.announcement(1, fed.names)
    result, reports = fed.run(ann)
    assert {n: r.status for n, r in reports.items()} == {n: "done" for n in fed.names}
    assert result.outcome is not None and len(result.outcome.accepted) == 4
    assert fed.sites[victim].pending is None  # no residual or control-variate proposal from NaN
    if unit == "client":
        assert fed.sites[victim].guard.participations == 1  # charged: its (zero) input left, noised
    else:  # no noise: the sum shows the zero exactly
        plan = fed.aggregator.plan(1, planned=4, round_seed=7)
        mean = fed.aggregator.server_decode(plan, result.outcome.sum, survivors=4)
        others = sum(fed.updates[n] for n in fed.names[1:])
        np.testing.assert_allclose(4 * mean, others, atol=1e-3)


def test_replayed_round_is_refused_by_the_persisted_history(monkeypatch):
    """A restarted server replaying the very same announcement (same digest): the site's history,
    persisted before the advert, refuses it; a fresh round seed is a new round, charged again."""
    fed = Federation(make_config(4, colluding=1))
    ann = fed.announcement(1, fed.names)
    result, _ = fed.run(ann)
    assert result.outcome is not None
    site = fed.sites[fed.names[0]]
    monkeypatch.setattr("secure_fedrl.runtime.site.capture_env_state", lambda env: None)
    saved = site.state_dict()
    restarted = Federation(make_config(4, colluding=1))
    again = restarted.sites[fed.names[0]]
    again.identity_key = site.identity_key
    again.load_state_dict(pickle.loads(pickle.dumps(saved)), env=False)
    assert again.guard.participations == 1
    hub = Hub(federation="attack-fed", liveness_s=float("inf"))
    tr = InMemorySite(hub, site.name, 1, protocol_key=pub(site.identity_key))
    tr.join()
    hub.open_round({site.name: ann})
    report = take_part(again, tr, ann, timeout=1)
    assert report.status.startswith("refused") and "configuration digest" in report.status
    assert again.guard.participations == 1


def test_round_order_must_match_the_announcement():
    fed = Federation(make_config(4, colluding=1))
    site = fed.sites[fed.names[0]]
    for extras in (RoundOrder(round=2, round_seed=1, planned=4, dim=DIM).encode(),
                   RoundOrder(round=1, round_seed=1, planned=4, dim=DIM + 1).encode(),
                   b"\xff not json", json.dumps({"round": 1}).encode()):
        ann = fed.announcement(1, fed.names, extras=extras)
        report = take_part(site, fed.transports[site.name], ann, timeout=1)
        assert report.status.startswith("refused"), extras


def _plain_fed():
    """unit = none (secure aggregation is the only protection), 4 sites, c = 1 colluder: the
    site's own plan (a round of 4) has t = 3, i.e. t - c = 2 honest inputs in any sum."""
    return Federation(make_config(4, unit="none", colluding=1))


def test_server_with_one_colluder_cannot_isolate_one_plaintext_update():
    fed = _plain_fed()
    victim, colluder = fed.names[0], fed.names[1]
    assert fed.aggregator.protocol_threshold(4) - 1 >= 2  # what the site's own config plans for
    # A round of just the victim and the colluder: t = 2, complete graph: 2t = 4 > h + c = 3.
    ann = fed.announcement(1, [victim, colluder], planned=2, threshold=2)
    result, reports = fed.run(ann)
    if result.outcome is None:
        return  # the site refused: secure
    plan = fed.aggregator.plan(1, planned=2, round_seed=7)
    mean = fed.aggregator.server_decode(plan, result.outcome.sum, survivors=len(result.outcome.accepted))
    recovered = 2 * mean - fed.updates[colluder]  # the colluder tells the server its own update
    assert not np.allclose(recovered, fed.updates[victim], atol=1e-3), "victim's plaintext update recovered"


def test_server_cannot_isolate_one_ddg_input_below_the_noise_shares():
    """The same isolation attack under DDG is refused: take_part passes min_honest = m."""
    fed = Federation(make_config(4, colluding=1))
    victim, colluder = fed.names[0], fed.names[1]
    ann = fed.announcement(1, [victim, colluder], planned=2, threshold=2)
    result, reports = fed.run(ann)
    assert result.outcome is None
    assert reports[victim].status.startswith("refused") and "threshold" in reports[victim].status
    assert fed.sites[victim].guard.participations == 0


# ============================================================================ 2. witnesses
class _WitnessRecorder:
    name = "s-0"

    def __init__(self) -> None:
        self.sent: list[tuple[int, str, bytes]] = []

    def witness(self, seq, row_hash, signature):
        self.sent.append((seq, row_hash, signature))


def site_process(tmp_path: Path, config=None, *, took_part=(5, 6, 7)) -> SiteProcess:
    """A SiteProcess without its environment and channel: read_notice / witness / load / save
    touch only these attributes."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    p = SiteProcess.__new__(SiteProcess)
    p.config = config or make_config(4)
    p.state_dir = tmp_path
    p.site = SimpleNamespace(name="s-0", identity_key=Ed25519PrivateKey.generate(), last_round=0, pending=None,
                             pending_round=0, witnessed=set(), signed_heads={},
                             state_dict=lambda: {"name": "s-0"})
    p.took_part = set(took_part)
    p.transport = _WitnessRecorder()
    return p


def notice(r: int, seq: int, row_hash: str, included=("s-0",)) -> bytes:
    return json.dumps({"round": r, "included": list(included),
                       "ledger_head": {"seq": seq, "row_hash": row_hash}}).encode()


A, B = "a" * 64, "b" * 64


def test_witness_is_domain_separated_and_bound_to_federation_config_and_head(tmp_path):
    p = site_process(tmp_path)
    p.read_notice(notice(5, 3, A))
    (seq, row_hash, sig), = p.transport.sent
    key = pub(p.site.identity_key)
    fp = p.config.fingerprint()
    assert verify_witness(key, sig, federation="attack-fed", seq=3, row_hash=A, config_hash=fp)
    for other in ({"federation": "other-fed"}, {"config_hash": "0" * 64}, {"seq": 4}, {"row_hash": B}):
        fields = {"federation": "attack-fed", "seq": 3, "row_hash": A, "config_hash": fp, **other}
        assert not verify_witness(key, sig, **fields), other
    # Not a round this site took part in: nothing signed.
    p.read_notice(notice(99, 4, B))
    assert len(p.transport.sent) == 1


@pytest.mark.parametrize("how", ["next round, same seq", "fake reconnect, same round", "seq goes back"])
def test_site_never_countersigns_two_histories(tmp_path, how):
    p = site_process(tmp_path)
    p.read_notice(notice(5, 3, A))
    if how == "next round, same seq":
        p.read_notice(notice(6, 3, B))
    elif how == "fake reconnect, same round":
        p.site.witnessed.clear()  # what SiteProcess.run does after any PERMISSION_DENIED / UNAVAILABLE
        p.read_notice(notice(5, 3, B))
    else:
        p.read_notice(notice(6, 2, B))
    signed = {}
    for seq, row_hash, _ in p.transport.sent:
        signed.setdefault(seq, set()).add(row_hash)
    assert all(len(v) == 1 for v in signed.values()), f"equivocation countersigned: {signed}"
    seqs = [s for s, _, _ in p.transport.sent]
    assert seqs == sorted(seqs), f"a rolled-back head countersigned: {seqs}"


def _ledger_rows(tmp_path, n, config_hash):
    """n signed rows of a real ledger: their canonical encodings and hashes."""
    from secure_fedrl.ledger import LedgerEntry, PrivacyLedger
    from secure_fedrl.ledger.format import canonical_bytes

    (tmp_path / "run").mkdir()
    led = PrivacyLedger.open(tmp_path / "run" / "l.sqlite", key_dir=tmp_path / "k", config_hash=config_hash)
    for r in range(1, n + 1):
        led.append(LedgerEntry(round=r, unit="client", mechanism="ddg", clip=1.0, sigma_planned=1.0,
                               sigma_effective=1.0, sample_rate=1.0, sites_planned=4, sites_survived=4,
                               accountant="rdp", epsilon={"rdp": 0.1 * r}, delta=1e-5))
    rows = led.rows()
    led.close()
    return [canonical_bytes(x).decode() for x in rows], [x.hash for x in rows]


def test_site_countersigns_a_new_head_only_if_it_extends_the_one_it_signed(tmp_path):
    p = site_process(tmp_path)
    texts, hashes = _ledger_rows(tmp_path, 3, p.config.fingerprint())
    p.read_notice(notice(5, 1, hashes[0]))
    assert [s for s, _, _ in p.transport.sent] == [1]
    # A head whose rows do not chain from the signed one (a rewritten row 2): refused.
    forged = texts[1].replace('"round":2', '"round":9')
    bad = json.loads(notice(6, 3, hashes[2]))
    bad["rows"] = [forged, texts[2]]
    p.read_notice(json.dumps(bad).encode())
    assert [s for s, _, _ in p.transport.sent] == [1]
    # No rows shown at all: nothing proves the extension: refused.
    p.read_notice(notice(6, 3, hashes[2]))
    assert [s for s, _, _ in p.transport.sent] == [1]
    # The right rows but a head hash they do not end at; a row that is not a JSON object: refused.
    from secure_fedrl.errors import LedgerError
    from secure_fedrl.ledger.witness import check_extension

    for rows, head in (([texts[1]], (2, hashes[2])), (["[]", texts[2]], (3, hashes[2]))):
        with pytest.raises(LedgerError):
            check_extension(signed_seq=1, signed_hash=hashes[0], rows=rows, seq=head[0], row_hash=head[1],
                            config_hash=p.config.fingerprint())
    # The real chain 1 -> 3: signed.
    good = json.loads(notice(7, 3, hashes[2]))
    good["rows"] = texts  # may start before the signed head
    p.read_notice(json.dumps(good).encode())
    assert [s for s, _, _ in p.transport.sent] == [1, 3]


@pytest.mark.parametrize("data", [{"round": "x"}, {"round": 5, "ledger_head": {"seq": "x", "row_hash": A}},
                                  {"round": 5, "ledger_head": ["x"]}, {"round": None}])
def test_malformed_notice_is_ignored(tmp_path, data):
    p = site_process(tmp_path)
    p.read_notice(json.dumps(data).encode())


def test_notice_outcome_only_settles_the_round_it_names(tmp_path):
    p = site_process(tmp_path)
    calls = []
    p.site.pending, p.site.pending_round = object(), 6
    p.site.settle = lambda r, inc: calls.append((r, inc))
    p.read_notice(notice(5, 3, A))
    assert calls == []
    p.read_notice(notice(6, 4, A, included=()))
    assert calls == [(6, False)]


# ============================================================================ 3. the state file
class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.mkdir, (str(self.marker),))


def test_state_file_cannot_run_code(tmp_path):
    p = site_process(tmp_path / "state")
    p.state_dir.mkdir()
    marker = tmp_path / "code-ran"
    p.state_file.write_bytes(pickle.dumps({"name": _Payload(marker)}))
    with pytest.raises(ConfigError):
        p.load()
    assert not marker.exists()


def test_state_of_another_site_or_config_is_refused(tmp_path):
    from secure_fedrl.runtime.deploy import STATE_MAGIC

    p = site_process(tmp_path)

    def write(blob: bytes) -> None:  # authenticated as this site's (the MAC is not what is tested here)
        p.state_file.write_bytes(STATE_MAGIC + p._state_mac(blob) + blob)

    write(pickle.dumps({"name": "s-1", "config_fingerprint": p.config.fingerprint()}))
    with pytest.raises(ConfigError, match="another site"):
        p.load()
    write(pickle.dumps({"name": "s-0", "config_fingerprint": "0" * 64}))
    with pytest.raises(ConfigError, match="another site"):
        p.load()
    write(b"garbage")
    with pytest.raises(ConfigError, match="unreadable"):
        p.load()
    p.state_file.write_bytes(b"garbage")  # not written by this site at all
    with pytest.raises(ConfigError, match="not written by site"):
        p.load()


def test_state_directory_others_can_read_is_refused(tmp_path):
    from secure_fedrl.fsutil import check_private_dir

    d = tmp_path / "state"
    d.mkdir(mode=0o755)
    d.chmod(0o755)
    with pytest.raises(ConfigError, match="--state .*chmod 700"):
        check_private_dir(d, "--state")
    d.chmod(0o700)
    check_private_dir(d, "--state")


# ============================================================================ 4. hostile sites
def _hub_with(*names, max_sites=4):
    hub = Hub(federation="attack-fed", max_sites=max_sites, liveness_s=float("inf"))
    ts = {}
    for i, n in enumerate(names):
        ts[n] = InMemorySite(hub, n, i + 1)
        ts[n].join()
    return hub, ts


def test_one_site_cannot_crowd_out_the_others_witnesses():
    hub, ts = _hub_with("evil", "honest")
    for i in range(64):
        try:
            ts["evil"].witness(i + 1, A, b"\0" * 64)
        except TransportError:
            break
    ts["honest"].witness(1, A, b"\1" * 64)
    assert ("honest", 1, A, b"\1" * 64) in hub.take_witnesses()


def test_witness_and_leave_are_bound_to_the_callers_session():
    hub, ts = _hub_with("evil", "honest", "third")
    with pytest.raises(TransportError) as err:  # the honest site's name with the evil site's session
        hub.witness("honest", ts["evil"]._session, 1, A, b"\0" * 64)
    assert err.value.status == "PERMISSION_DENIED"
    for bad in ((1, "short", b"\0" * 64), (1, A, b"\0" * 63)):
        with pytest.raises(TransportError):
            ts["evil"].witness(*bad)
    assert hub.take_witnesses() == []
    cfg = RoundConfig(round_id=1, site_ids=(2, 3), identity_keys=(b"\2" * 32, b"\3" * 32), threshold=2, dim=4,
                      graph_seed=b"\0" * 32)
    ann = RoundAnnouncement(cfg, (RosterEntry(2, "honest"), RosterEntry(3, "third")))
    hub.open_round({"honest": ann, "third": ann})
    with pytest.raises(TransportError) as err:  # leave a round it is not in
        ts["evil"].leave(1)
    assert err.value.status == "PERMISSION_DENIED"
    with pytest.raises(TransportError):
        hub.leave("honest", ts["evil"]._session, 1)
    assert hub._rounds[1].seen["advertise_keys"] == set()  # nobody was marked as gone


def test_forged_or_foreign_witness_is_not_stored(tmp_path):
    """ingest_witnesses: a witness verifies over THIS ledger's row hash under the sender's own key
    (the one its certificate bound at Join), so one site cannot store a witness under another's name,
    nor a signature over a head the ledger does not hold."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "ledger"))
    from ledger_helpers import client_entries  # noqa: E402

    from secure_fedrl.ledger import PrivacyLedger
    from secure_fedrl.runtime.server import ServerRuntime

    keys = {n: Ed25519PrivateKey.generate() for n in ("evil", "honest")}
    hub = Hub(federation="attack-fed", liveness_s=float("inf"))
    for i, n in enumerate(keys):
        hub.join(n, i + 1, protocol_key=pub(keys[n]))
    (tmp_path / "run").mkdir()
    ledger = PrivacyLedger.open(tmp_path / "run" / "ledger.sqlite", config_hash="c" * 64,
                                signing_key=Ed25519PrivateKey.generate(), federation="attack-fed")
    ledger.append(client_entries(1)[0])
    seq, row_hash = ledger.head()

    class Server:
        witnesses = True
        ingest_witnesses = ServerRuntime.ingest_witnesses
        _record_witness_keys = ServerRuntime._record_witness_keys

        def site_credentials(self, name):
            return hub.site_credentials(name)
    srv = Server()
    srv.privacy = SimpleNamespace(ledger=ledger)
    srv.hub, srv._notice = hub, {}
    srv.config = SimpleNamespace(federation=SimpleNamespace(name="attack-fed"))
    srv.run_dir = SimpleNamespace(root=tmp_path)

    def sig(key, **kw):
        fields = {"federation": "attack-fed", "seq": seq, "row_hash": row_hash, "config_hash": "c" * 64, **kw}
        return sign_witness(key, **fields)
    srv.ingest_witnesses([
        ("honest", seq, row_hash, sig(keys["evil"])),  # evil's signature under honest's name
        ("evil", seq, row_hash, sig(keys["evil"], row_hash=B)),  # over a head this ledger does not hold
        ("evil", seq, row_hash, sig(keys["evil"], federation="other")),
        ("evil", seq + 5, row_hash, sig(keys["evil"])),
        ("ghost", seq, row_hash, sig(keys["evil"])),
    ])
    assert list(ledger.witnesses()) == []
    srv.ingest_witnesses([("evil", seq, row_hash, sig(keys["evil"]))])
    assert [w[1] for w in ledger.witnesses()] == ["evil"]


# ============================================================================ 1b. charge before send
class ChargedBeforeSend:
    """Records, at the moment the masked input is handed to the wire, whether the site has already
    charged AND persisted that charge (a site killed right after the send must not come back
    with the budget unspent)."""

    def __init__(self, inner: InMemorySite, site: SiteRuntime, persisted: list) -> None:
        self.inner, self.name, self.site, self.persisted = inner, inner.name, site, persisted
        self.at_send: tuple[int, int] | None = None

    def __getattr__(self, item):
        return getattr(self.inner, item)

    def upload(self, round_id, phase, payload):
        if phase == "masked_input":
            self.at_send = (self.site.guard.participations, self.persisted[-1] if self.persisted else -1)
        self.inner.upload(round_id, phase, payload)


def test_charge_is_persisted_before_the_masked_input_leaves():
    fed = Federation(make_config(4, colluding=1))
    victim = fed.sites[fed.names[0]]
    persisted: list[int] = []
    tr = ChargedBeforeSend(fed.transports[victim.name], victim, persisted)
    ann = fed.announcement(1, fed.names)
    members = [e.name for e in ann.roster]
    threads = []

    def start():
        for n in members:
            kw = {"persist": lambda: persisted.append(victim.guard.participations)} if n == victim.name else {}
            t = threading.Thread(target=lambda n=n, kw=kw: take_part(
                fed.sites[n], tr if n == victim.name else fed.transports[n], ann, timeout=20, **kw), daemon=True)
            threads.append(t)
            t.start()
    run_server_round(fed.hub, {n: ann for n in members}, deadlines=FAST, on_open=start, verify_dp=fed.verify_dp(ann))
    for t in threads:
        t.join(30)
    assert tr.at_send == (1, 1), f"(charged, persisted) when the masked input left: {tr.at_send}"


# ============================================================================ 5. simulate vs deploy
def test_simulated_server_checkpoint_holds_no_site_critic(tmp_path):
    from secure_fedrl.rl.policies import get_flat
    from secure_fedrl.runtime.simulate import Simulation

    raw = {"federation": {"name": "crit", "rounds": 1, "seed": 3},
           "local": {"algorithm": "ppo", "steps": 32, "federate_critic": False,
                     "ppo": {"num_steps": 32, "update_epochs": 1}},
           "strategy": {"name": "fedavg", "weighting": "uniform"}, "evaluation": {"every": 100, "episodes": 1},
           "secure_aggregation": {"enabled": True},
           "sites": [{"name": "s", "env": "CartPole-v1", "num_envs": 1, "seed": 10, "count": 3}]}
    sim = Simulation(config_from_dict(raw), tmp_path / "run", progress=False, ledger_key=tmp_path / "keys")
    initial = sim.initial_critic.copy()
    sim.run()
    ck = torch.load(sim.run_dir.checkpoint_path(1), weights_only=False)
    sim.policy.load_state_dict(ck["policy_state_dict"])
    saved = get_flat(list(sim.policy.critic_parameters()))
    for s in sim.sites:
        assert not np.allclose(saved, s.local_critic), f"server checkpoint holds {s.name}'s local critic"
    np.testing.assert_allclose(saved, initial)  # what a deployed server (no site trains in it) saves


def test_gamma_mode_graph_reveal_count_survives_a_restart(monkeypatch):
    """gamma mode, SecAgg+ (explicit degree): a real round over the hub counts one GraphReveal at
    every site; the count is in the site's saved state and comes back after a restart, with the
    site's own delta term A_u 2^-40 (SPEC 8). Dropping it from the state fails this test."""
    config = make_config(8, colluding=0, secure_aggregation={"colluding_fraction": 0.25, "neighbors": 4})
    fed = Federation(config)
    result, reports = fed.run(fed.announcement(1, fed.names))
    assert result.outcome is not None, reports
    assert {n: s.graph_reveals for n, s in fed.sites.items()} == dict.fromkeys(fed.names, 1)
    monkeypatch.setattr("secure_fedrl.runtime.site.capture_env_state", lambda env: None)
    name = fed.names[0]
    saved = pickle.loads(pickle.dumps(fed.sites[name].state_dict()))
    again = Federation(config).sites[name]
    assert again.graph_reveals == 0
    again.load_state_dict(saved, env=False)
    assert again.graph_reveals == 1 and again.delta_graph_site() == 2.0 ** -40
