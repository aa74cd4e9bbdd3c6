"""Security review of FedBuff (buffered asynchronous rounds, docs/deployment.md section 5): attacks
by a malicious coordinating server that controls delivery and knows who takes part (it picks the
round's sites, names the model version, says how many sites a round plans for) and by hostile
sites against the server's ready queue.

In process, as tests/deploy/test_deploy_attacks.py: the real `SiteRuntime` + `take_part` (with
`ahead=`) at the sites, the real `Hub` + `run_server_round` as the (possibly lying) server; local
training replaced by a fixed update.

Findings fixed here (each test failed before its fix):
  B1  audit: verify_ledger accepted any recorded sample_rate for a FedBuff run whose config also
      names `sampling.clients_per_round` (ignored by FedBuff), so a server could claim an
      amplification-by-sampling discount on epsilon_release that the audit never caught.
  B2  a deployed FedBuff server waited forever (never stopped with PrivacyBudgetExceeded) once
      fewer sites than a round needs could still afford one.
  B3  unit = "none": the staleness weight was applied before the SecAgg clip, so an update above
      the clip counted fully however stale (weighting must come after the clip).
The other tests pin defences that hold (see their docstrings).
"""

from __future__ import annotations

import importlib.util
import json
import struct
import sys
import threading
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from test_deploy_attacks import DIM, FAST, ChargedBeforeSend, Federation, make_config  # noqa: E402

from secure_fedrl.errors import ConfigError, PrivacyBudgetExceeded
from secure_fedrl.runtime.aggregation import SiteUpload
from secure_fedrl.runtime.round import SiteRoundReport, TrainedAhead, staleness_scaled, take_part
from secure_fedrl.runtime.site import RoundOrder
from secure_fedrl.transport.base import Hub, InMemorySite, RosterEntry, RoundAnnouncement, TransportError
from secure_fedrl.transport.rounds import run_server_round

K = 4


def fedbuff_config(n: int = 6, *, unit: str = "client", colluding: int = 1, **extra):
    strategy = {"strategy": {"name": "fedbuff", "weighting": "uniform", "params": {"buffer_size": K}}}
    return make_config(n, unit=unit, colluding=colluding, **strategy, **extra)


def ahead_of(fed: Federation, name: str, version: int, vector: np.ndarray | None = None) -> TrainedAhead:
    vec = fed.updates[name] if vector is None else vector
    upload = SiteUpload(site=name, vector=np.asarray(vec, np.float32).copy(), weight=1.0, nbytes=vec.nbytes)
    return TrainedAhead(version, upload, SimpleNamespace(steps=1, episode_returns=[], diagnostics={}), 0.0)


def buffered_announcement(fed: Federation, r: int, members: list[str], *, version: int,
                          planned: int | None = None, threshold: int | None = None) -> RoundAnnouncement:
    ann = fed.announcement(r, members, planned=planned, threshold=threshold)
    plan = fed.aggregator.plan(r, planned=len(members) if planned is None else planned, round_seed=7)
    extras = RoundOrder(round=r, round_seed=7, planned=plan.planned, dim=DIM, version=version).encode()
    return RoundAnnouncement(ann.config, ann.roster, ann.policy, extras)


def run_buffered(fed: Federation, ann: RoundAnnouncement, aheads: dict[str, TrainedAhead], *,
                 transports: dict | None = None, persist: dict | None = None):
    """The server's side honestly over the hub; every roster site runs take_part(ahead=...)."""
    members = [e.name for e in ann.roster]
    reports: dict[str, SiteRoundReport] = {}
    threads = []

    def start():
        for n in members:
            tr = (transports or {}).get(n, fed.transports[n])
            kw = {"persist": persist[n]} if persist and n in persist else {}

            def go(n=n, tr=tr, kw=kw):
                reports[n] = take_part(fed.sites[n], tr, ann, timeout=20, ahead=aheads[n], **kw)
            t = threading.Thread(target=go, daemon=True)
            threads.append(t)
            t.start()
    result = run_server_round(fed.hub, {n: ann for n in members}, deadlines=FAST, on_open=start,
                              verify_dp=fed.verify_dp(ann))
    for t in threads:
        t.join(30)
    return result, reports


class _Gone:
    """A transport that only lets the site leave (take_part stops before its advert)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def leave(self, round_id: int) -> None:
        pass


# ============================================================================ 1. the server's word
@pytest.mark.parametrize("claimed", [3, 4, 10, 10**6, 2**62])
def test_no_claimed_version_lifts_a_contribution_above_the_clip(monkeypatch, claimed):
    """Defence holds. The site trained from version 3; the server names any version >= 3 now
    (older is refused: test_fl_fedbuff). Claiming the update fresh (3) gives weight 1, the most
    any lie can get (s <= 1): what the DDG encoder clips and noises has norm <= C either way."""
    import secure_fedrl.privacy.ddg as ddg

    fed = Federation(fedbuff_config(4))
    name = fed.names[0]
    clip = fed.config.privacy.clip
    seen: list[float] = []
    orig = ddg.clip_l2

    def spy(x, c):
        out = orig(x, c)
        seen.append(float(np.linalg.norm(out[0] if isinstance(out, tuple) else out)))
        return out
    monkeypatch.setattr(ddg, "clip_l2", spy)
    big = np.full(DIM, 10.0 * clip / np.sqrt(DIM), np.float32)  # 10 C before any clip
    ann = buffered_announcement(fed, 1, fed.names, version=claimed)
    report = take_part(fed.sites[name], _Gone(name), ann, stop_at="advertise_keys", ahead=ahead_of(fed, name, 3, big))
    assert report.status.startswith("dropped"), report.status
    weight = fed.sites[name].fedbuff.staleness_weight(claimed - 3)
    assert 0 < weight <= 1.0
    assert seen and seen[-1] <= clip * (1 + 1e-6)
    assert seen[-1] == pytest.approx(clip * weight, rel=1e-5)


def test_buffered_round_shrunk_below_the_noise_shares_is_refused():
    """Defence holds. `planned` and the round's size are the server's word, but a site's DDG
    share and its floor on honest inputs (m, from K in its own config) are not: a round of the
    victim and one colluder, announced as planned = 2 with t = 2, is refused; nothing leaves."""
    fed = Federation(fedbuff_config(6, colluding=1))
    m = fed.aggregator.noise_shares()
    assert fed.aggregator.plan_sites == K and m >= 2
    victim, colluder = fed.names[0], fed.names[1]
    ann = buffered_announcement(fed, 1, [victim, colluder], version=0, planned=2, threshold=2)
    result, reports = run_buffered(fed, ann, {n: ahead_of(fed, n, 0) for n in (victim, colluder)})
    assert result.outcome is None
    assert reports[victim].status.startswith("refused") and "threshold" in reports[victim].status
    assert fed.sites[victim].guard.participations == 0


def test_buffered_site_price_and_noise_ignore_the_servers_planned_count():
    """Defence holds: under FedBuff too, the site's price and DDG parameters do not depend on
    `planned` (K while the round holds fewer, or more than K)."""
    fed = Federation(fedbuff_config(6))
    site = fed.sites[fed.names[0]]
    prices = {p: repr(site.round_price(fed.aggregator.plan(1, planned=p, round_seed=5))) for p in (1, 2, K, 6, 1000)}
    assert len(set(prices.values())) == 1
    assert len({repr(fed.aggregator.ddg_params(p)) for p in (1, 2, K, 1000)}) == 1


def test_buffered_charge_is_persisted_before_the_ahead_update_leaves():
    """Defence holds: the update trained ahead is charged and the charge saved before its
    masked input reaches the wire, as in a synchronous round."""
    fed = Federation(fedbuff_config(4))
    victim = fed.sites[fed.names[0]]
    persisted: list[int] = []
    tr = ChargedBeforeSend(fed.transports[victim.name], victim, persisted)
    ann = buffered_announcement(fed, 1, fed.names, version=2)
    aheads = {n: ahead_of(fed, n, i % 3) for i, n in enumerate(fed.names)}
    result, reports = run_buffered(fed, ann, aheads, transports={victim.name: tr},
                                   persist={victim.name: lambda: persisted.append(victim.guard.participations)})
    assert result.outcome is not None, result.aborted
    assert all(r.status == "done" for r in reports.values()), reports
    assert tr.at_send == (1, 1), f"(charged, persisted) when the masked input left: {tr.at_send}"


# ============================================================================ 2. one update, one round
class _ScriptedServer:
    """A malicious server as a deployed site sees it: announces the site into rounds back to
    back (and skips it once), then finishes."""

    name = "s-0"

    def __init__(self, script: list[tuple[int, bool]]) -> None:
        self.script = list(script)
        self.fetched = 0
        self.readies: list[int] = []

    def join(self):
        return SimpleNamespace(site_number=1, heartbeat_interval_s=3600.0)

    def heartbeat(self):
        return 0, False

    model = np.zeros(DIM, np.float32)

    def fetch_model(self, values=None):
        self.fetched += 1
        return self.fetched, self.model.copy()

    def ready(self, version: int) -> None:
        self.readies.append(version)

    def await_round(self, after: int, timeout: float):
        if not self.script:
            return SimpleNamespace(finished=True, notice=b"", announcement=None, round_id=after)
        r, ours = self.script.pop(0)
        return SimpleNamespace(finished=False, notice=b"", round_id=r, announcement=SimpleNamespace(round_id=r) if ours else None)


def test_a_deployed_site_never_sends_one_trained_update_in_two_rounds(monkeypatch, tmp_path):
    """Defence holds. However the server schedules rounds (the site named in rounds 1 and 2 back
    to back, skipped in 3, named in 4), each round gets an update trained for it alone, and a
    skipped round keeps the update for the next (said Ready again). A restarted site holds none
    (`ahead` is never saved): it trains again."""
    from secure_fedrl.runtime import deploy
    from secure_fedrl.runtime.deploy import SiteProcess

    trained: list[TrainedAhead] = []

    def fake_train_ahead(site, version, policy):
        trained.append(TrainedAhead(version, object(), None, 0.0))
        return trained[-1]
    sent: list[TrainedAhead | None] = []

    def fake_take_part(site, transport, ann, **kw):
        sent.append(kw.get("ahead"))
        return SiteRoundReport("done")
    monkeypatch.setattr("secure_fedrl.runtime.round.train_ahead", fake_train_ahead)
    monkeypatch.setattr(deploy, "take_part", fake_take_part)
    p = SiteProcess.__new__(SiteProcess)
    p.site = SimpleNamespace(name="s-0", last_round=0, fedbuff=object(), witnessed=set(), dim=DIM,
                             privacy_metrics=dict)
    p.transport = _ScriptedServer([(1, True), (2, True), (3, False), (4, True)])
    p.took_part = set()
    p.identity = SimpleNamespace(trust=None)
    p.keep_final_model = lambda: None  # its own test: tests/deploy/test_serve_join.py
    p.save = p.append_metrics = p.read_notice = lambda *a, **k: None
    assert p.run() == 0
    assert len(sent) == 3 and all(a is not None for a in sent)
    assert len({id(a) for a in sent}) == 3, "one trained update went into two rounds"
    assert sent == trained[:3]
    assert p.transport.readies == [1, 2, 3, 3, 4]  # round 3 went without us: the same update, ready again


def test_a_non_finite_model_is_not_trained_ahead(monkeypatch, caplog):
    """A server handing out NaN/inf parameters for FedBuff's train-ahead gets no training and no
    Ready: the site logs it, and fetches again only after a pause (else each instant reply of a
    lying server would cost one whole model download)."""
    from secure_fedrl.runtime import deploy
    from secure_fedrl.runtime.deploy import SiteProcess

    trained, sent = [], []
    monkeypatch.setattr("secure_fedrl.runtime.round.train_ahead",
                        lambda site, version, policy: trained.append(version))
    monkeypatch.setattr(deploy, "take_part", lambda site, transport, ann, **kw: sent.append(kw.get("ahead"))
                        or SiteRoundReport("done"))
    p = SiteProcess.__new__(SiteProcess)
    p.site = SimpleNamespace(name="s-0", last_round=0, fedbuff=object(), witnessed=set(), dim=DIM,
                             privacy_metrics=dict)
    p.transport = _ScriptedServer([(1, True), (2, True)] + [(r, False) for r in range(3, 2000)])
    p.transport.model = np.full(DIM, np.nan, np.float32)
    p.took_part = set()
    p.identity = SimpleNamespace(trust=None)
    p.keep_final_model = lambda: None
    p.save = p.append_metrics = p.read_notice = lambda *a, **k: None
    assert p.run() == 0
    assert trained == [] and p.transport.readies == [] and sent == [None, None]
    assert p.transport.fetched == 1  # 2000 instant replies, one download: the next waits 2 s
    assert any(getattr(r, "event", None) == "model_refused" and r.fields["reason"] == "non-finite values"
               for r in caplog.records)


def test_after_the_pause_a_finite_model_is_trained_ahead_again(monkeypatch):
    from secure_fedrl.runtime import deploy
    from secure_fedrl.runtime.deploy import SiteProcess

    trained = []
    monkeypatch.setattr("secure_fedrl.runtime.round.train_ahead",
                        lambda site, version, policy: trained.append(version) or TrainedAhead(version, object(), None, 0.0))
    monkeypatch.setattr(deploy, "take_part", lambda site, transport, ann, **kw: SiteRoundReport("done"))
    clock = iter(range(0, 10_000, 10))  # every look at the clock: 10 s later
    monkeypatch.setattr(deploy.time, "monotonic", lambda: float(next(clock)))

    class Healing(_ScriptedServer):
        def fetch_model(self, values=None):
            self.model = np.full(DIM, np.nan if self.fetched == 0 else 0.0, np.float32)
            return super().fetch_model(values)

    p = SiteProcess.__new__(SiteProcess)
    p.site = SimpleNamespace(name="s-0", last_round=0, fedbuff=object(), witnessed=set(), dim=DIM,
                             privacy_metrics=dict)
    p.transport = Healing([(1, False), (2, False), (3, False)])
    p.took_part = set()
    p.identity = SimpleNamespace(trust=None)
    p.keep_final_model = lambda: None
    p.save = p.append_metrics = p.read_notice = lambda *a, **k: None
    assert p.run() == 0
    assert p.transport.fetched == 2 and trained == [2]


# ============================================================================ 3. hostile sites
def _ready_hub(*names):
    hub = Hub(federation="attack-fed", liveness_s=float("inf"))
    ts = {n: InMemorySite(hub, n, i + 1) for i, n in enumerate(names)}
    for t in ts.values():
        t.join()
    hub.publish_model(5, np.zeros(3, np.float32))
    return hub, ts


def _open(hub: Hub, r: int, members: list[str], ts: dict) -> None:
    from secure_fedrl.secagg.protocol import RoundConfig

    ids = tuple(ts[n].number for n in members)
    cfg = RoundConfig(round_id=r, site_ids=ids, identity_keys=tuple(bytes([i]) * 32 for i in ids),
                      threshold=min(2, len(ids)), dim=4, graph_seed=b"\0" * 32)
    ann = RoundAnnouncement(cfg, tuple(RosterEntry(ts[n].number, n) for n in members))
    hub.open_round({n: ann for n in members})


def test_ready_is_bound_to_a_joined_session_and_a_published_version():
    """Defence holds: Ready before Join, under another site's name, or naming a version that was
    never published (negative, ahead of the model, bool) is refused and queues nothing."""
    hub, ts = _ready_hub("evil", "honest")
    with pytest.raises(TransportError) as err:
        hub.ready("stranger", b"", 0)  # never joined
    assert err.value.status == "PERMISSION_DENIED"
    with pytest.raises(TransportError) as err:
        hub.ready("honest", ts["evil"]._session, 5)  # another site's name
    assert err.value.status == "PERMISSION_DENIED"
    for bad in (-1, 6, 2**63, True):
        with pytest.raises(TransportError) as err:
            ts["evil"].ready(bad)
        assert err.value.status == "INVALID_ARGUMENT", bad
    assert hub.wait_ready(2, {"evil", "honest"}, timeout=0.0) == {}


def test_ready_spam_cannot_grow_the_queue_or_jump_it():
    """Defence holds: a site is queued once (repeats keep their place); the queue is first come,
    first served, and a round uses its sites' entries up, so a site that says Ready again the
    moment its round opens queues behind the sites already waiting: it cannot stay in front."""
    hub, ts = _ready_hub("evil", "a", "b", "c")
    everyone = {"evil", "a", "b", "c"}
    for _ in range(500):
        ts["evil"].ready(5)
    for n in ("a", "b", "c"):
        ts[n].ready(4)
    assert len(hub._ready) == 4
    rounds = []
    for r in range(1, 4):
        members = list(hub.wait_ready(2, everyone, timeout=0.0))
        rounds.append(members)
        _open(hub, r, members, ts)
        for _ in range(50):
            ts["evil"].ready(5)  # evil is ready again at once, every time
        for n in members:
            if n != "evil":
                ts[n].ready(5)
    assert rounds == [["evil", "a"], ["b", "c"], ["evil", "a"]]


def test_a_new_session_loses_its_place_and_its_update():
    """Defence holds: a (re)joined session starts unqueued (its update died with the old
    process), so a restarted site can only take part with an update it trains again."""
    hub, ts = _ready_hub("a", "b")
    ts["a"].ready(5)
    ts["b"].ready(5)
    hub._sites["a"].last_seen = -float("inf")  # the old process is gone
    ts["a"].join()
    assert hub.wait_ready(2, {"a", "b"}, timeout=0.0) == {"b": 5}


# ============================================================================ 4. findings
def _verify_ledger():
    path = Path(__file__).resolve().parents[2] / "audit" / "verify_ledger.py"
    spec = importlib.util.spec_from_file_location("verify_ledger_fedbuff_attacks", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def _f64(x: float) -> str:
    return struct.pack(">d", x).hex()


def test_b1_audit_refuses_a_sampling_discount_on_a_fedbuff_run_with_clients_per_round():
    """Finding B1 (audit, medium). FedBuff samples nobody: sample_rate must be 1. The check was
    skipped whenever the config also named `sampling.clients_per_round` (FedBuff ignores it), so a
    ledger recording sample_rate 0.05 passed and `recheck_epsilon` recomputed epsilon_release with
    that discount. Fixed in audit/verify_ledger.py check_config: q = 1 for FedBuff, always."""
    vl = _verify_ledger()
    config = {"strategy": {"name": "fedbuff", "params": {"buffer_size": K}},
              "secure_aggregation": {"enabled": True, "max_colluding_sites": 1},
              "sampling": {"poisson": False, "clients_per_round": 3},
              "privacy": {"unit": "client", "clip": 0.5, "noise_multiplier": 1.0, "target_epsilon": 50.0}}
    with pytest.raises(ConfigError, match="sampling"):  # such a config no longer validates; the audit still refuses
        make_config(6, strategy=config["strategy"], sampling=config["sampling"])
    v2 = {"epsilon_release": _f64(1.0), "epsilon_server": _f64(1.0), "max_colluding": 1, "noise_shares": 2,
          "params": {}, "participants": [], "sampling": "secret", "site_budget": _f64(50.0),
          "site_epsilon_server": {}, "threat_model": "server"}

    def row(q: float) -> dict:
        return {"seq": 1, "unit": "client", "mechanism": "ddg", "delta": 1e-5, "clip": 0.5, "sigma_planned": 1.0,
                "sigma_effective": 1.0, "sample_rate": q, "privacy": json.dumps(v2)}
    found = vl.check_config([row(0.05)], config)
    assert any("sample_rate" in f.detail for f in found), found
    assert vl.check_config([row(1.0)], config) == []


def test_b2_deployed_server_stops_when_too_few_sites_can_afford_a_round():
    """Finding B2 (availability, low). `_buffer_eligible` stopped the run only when NO site could
    afford a round; with some but fewer than `_least_runnable` left (budgets only shrink), the
    deployed server's `buffered_arrivals` waited deadline after deadline for ever. Fixed in
    server.py `_buffer_eligible`: PrivacyBudgetExceeded (the run ends) below the least runnable."""
    from secure_fedrl.runtime.server import ServerRuntime

    fake = SimpleNamespace(privacy=SimpleNamespace(planned_sites=lambda: K, can_afford=lambda names, k: names[:2]),
                           _least_runnable=lambda: 3)
    with pytest.raises(PrivacyBudgetExceeded):
        ServerRuntime._buffer_eligible(fake, ["a", "b", "c", "d"])
    fake.privacy.can_afford = lambda names, k: names[:3]
    assert ServerRuntime._buffer_eligible(fake, ["a", "b", "c", "d"]) == ["a", "b", "c"]


def test_b3_staleness_weight_applies_after_the_secagg_clip_without_dp():
    """Finding B3 (correctness, low). With unit = "none" `staleness_scaled` weighted the raw update
    and the SecAgg encoder clipped afterwards: an update above `secure_aggregation.clip` counted
    fully however stale. Fixed in round.py staleness_scaled: clip to the encoder's clip first."""
    fed = Federation(fedbuff_config(4, unit="none", secure_aggregation={"clip": 0.5}))
    site = fed.sites[fed.names[0]]
    assert site.aggregator.clip == 0.5
    big = np.full(DIM, 5.0 / np.sqrt(DIM), np.float32)  # norm 5, ten times the clip
    assert np.linalg.norm(staleness_scaled(site, big, 0.5)) == pytest.approx(0.25, rel=1e-5)
    small = np.full(DIM, 1e-3, np.float32)
    assert np.allclose(staleness_scaled(site, small, 0.5), small * 0.5)


def test_a_deployed_site_writes_its_own_epsilon_and_delta(monkeypatch):
    """gamma mode: a deployed site's metrics row of every round it was handed states its own
    guarantee from its guard: epsilon_site (at privacy.delta), delta_site = privacy.delta +
    A_u 2^-40, graph_reveals A_u (aborted attempts included) and the cap."""
    from secure_fedrl.privacy.budget import SiteGuard
    from secure_fedrl.runtime import deploy
    from secure_fedrl.runtime.deploy import SiteProcess
    from secure_fedrl.runtime.site import SiteRuntime

    guard = SiteGuard("s-0", target_epsilon=8.0, delta=1e-5, graph_failure=2.0 ** -40)

    def fake_take_part(site, transport, ann, **kw):
        guard.count_graph_reveal()  # the site sent its GraphReveal; the server then aborted
        return SiteRoundReport("dropped: aborted after the graph seed")
    monkeypatch.setattr(deploy, "take_part", fake_take_part)
    p = SiteProcess.__new__(SiteProcess)
    p.site = SimpleNamespace(name="s-0", last_round=0, fedbuff=None, witnessed=set(), dim=DIM, guard=guard,
                             config=SimpleNamespace(privacy=SimpleNamespace(unit="client")))
    p.site.privacy_metrics = lambda: SiteRuntime.privacy_metrics(p.site)
    p.transport = _ScriptedServer([(1, True), (2, True)])
    p.took_part = set()
    p.identity = SimpleNamespace(trust=None)
    p.keep_final_model = lambda: None  # its own test: tests/deploy/test_serve_join.py
    rows: list[dict] = []
    p.save = p.read_notice = lambda *a, **k: None
    p.append_metrics = rows.append
    assert p.run() == 0
    assert [r["graph_reveals"] for r in rows] == [1, 2]
    assert rows[-1]["delta_site"] == 1e-5 + 2 * 2.0 ** -40 and rows[-1]["delta_graph_site"] == 2 * 2.0 ** -40
    assert rows[-1]["epsilon_site"] == 0.0 and rows[-1]["max_graph_reveals"] == 109951
