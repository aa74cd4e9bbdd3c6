"""The hub and the in-memory transport: the wire-independent checks both transports share."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from _fed import SITES, announcements, expected_sum, server_main, site_main

from secure_fedrl.errors import ProtocolError
from secure_fedrl.secagg import messages as M
from secure_fedrl.transport.base import Hub, InMemorySite, PhaseDeadlines, RosterEntry, TransportError
from secure_fedrl.transport.rounds import announcement, run_server_round, run_site_round, verify_roster


def _joined(hub, ids, names=SITES):
    out = {}
    for n in names:
        out[n] = InMemorySite(hub, n, ids[n].number)
        out[n].join()
    return out


def test_in_memory_round_with_a_dropout(pki):
    hub = Hub()
    anns, ids = announcements(pki.dir, SITES)
    stop = {"s3": "masked_input"}
    sites = {n: InMemorySite(hub, n, ids[n].number) for n in SITES}
    statuses = {}
    threads = [threading.Thread(target=lambda n=n: statuses.__setitem__(
        n, site_main(sites[n], ids[n], stop_before=stop.get(n)))) for n in SITES]
    for t in threads:
        t.start()
    res = server_main(hub, anns, expect=4)
    for t in threads:
        t.join()
    assert res.outcome.accepted == (1, 2, 4)
    np.testing.assert_array_equal(res.outcome.sum, expected_sum([1, 2, 4]))
    assert statuses["s3"].startswith("dropped") and statuses["s1"] == "done"


def test_masked_input_with_the_wrong_vector_length_refused(pki):
    hub = Hub()
    anns, ids = announcements(pki.dir, SITES)
    s1 = _joined(hub, ids)["s1"]
    hub.open_round(anns)
    cfg = anns["s1"].config
    hub._rounds[1].phase = "masked_input"  # as if the earlier phases had closed
    wire = M.MaskedInput(cfg.digest, 1, vector=np.zeros(cfg.dim + 1, np.uint32), signature=bytes(64)).encode()
    with pytest.raises(TransportError, match=f"vector of length {cfg.dim + 1}, expected {cfg.dim}") as e:
        s1.upload(1, "masked_input", wire)
    assert e.value.status == "INVALID_ARGUMENT"


def test_sessions_rounds_and_phases(pki):
    hub = Hub(liveness_s=60)
    anns, ids = announcements(pki.dir, SITES[:3])
    sites = _joined(hub, ids, SITES[:3])
    outsider = InMemorySite(hub, "s4", ids["s1"].number + 3)
    outsider.join()
    with pytest.raises(TransportError, match="unknown or superseded session") as e:
        hub.heartbeat("s1", b"\0" * 16)
    assert e.value.status == "PERMISSION_DENIED"
    hub.open_round(anns)
    b = outsider.await_round(0, 1)  # a round without it: not sampled, told which round to skip
    assert b.announcement is None and b.round_id == 1
    with pytest.raises(TransportError) as e:
        outsider.upload(1, "advertise_keys", b"x")
    assert e.value.status == "PERMISSION_DENIED"
    with pytest.raises(TransportError) as e:
        sites["s1"].download(1, "advertise_keys", 0.2)
    assert e.value.status == "DEADLINE_EXCEEDED"
    hub.deliver(1, "advertise_keys", {"s2": b"msg"})
    assert sites["s2"].download(1, "advertise_keys", 1) == b"msg"
    with pytest.raises(TransportError, match="not in round 1 after phase") as e:
        sites["s1"].download(1, "advertise_keys", 1)  # dropped: told at once, no wait
    assert e.value.status == "FAILED_PRECONDITION"
    hub.abort_round(1, "below threshold")
    with pytest.raises(TransportError) as e:
        sites["s2"].download(1, "share_keys", 1)
    assert e.value.status == "ABORTED"
    with pytest.raises(ProtocolError, match="not after round 1"):
        hub.open_round(anns)  # rounds only move forward
    hub.finish()
    assert sites["s1"].await_round(1, 1).finished


def _roster_attack(pki, tmp_path, attack):
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    from secure_fedrl.transport.pki import CertificateAuthority, load_site_identity

    anns, ids = announcements(pki.dir, SITES)
    ann = anns["s1"]
    cfg, roster = ann.config, list(ann.roster)
    keys = list(cfg.identity_keys)
    fake = Ed25519PrivateKey.generate().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    if attack == "sybil_foreign_ca":  # a site the server made up, "certified" by its own CA
        rogue = CertificateAuthority.init(tmp_path / "rogue")
        for n in ("s1", "s2", "s3", "s4"):
            rogue.issue_site(n)
        ident = load_site_identity(rogue.dir, "s4")
        roster[3] = RosterEntry(4, "s4", x509.load_pem_x509_certificate(ident.tls_cert_pem).public_bytes(Encoding.DER))
        keys[3] = ident.protocol_public_key
    elif attack == "key_swap":  # genuine certificate, but the server's key in the config
        keys[3] = fake
    elif attack == "certificate_reused":  # s2's certificate standing in for a fifth site
        roster[3] = RosterEntry(4, "s5", roster[1].certificate)
    elif attack == "duplicate_name":
        roster[3] = RosterEntry(4, "s2", roster[3].certificate)
    elif attack == "missing_entry":
        roster = roster[:3]
    import dataclasses
    cfg = dataclasses.replace(cfg, identity_keys=tuple(keys))
    return announcement(cfg, tuple(roster)), ids


@pytest.mark.parametrize("attack", ["sybil_foreign_ca", "key_swap", "certificate_reused", "duplicate_name",
                                    "missing_entry"])
def test_site_refuses_a_round_with_an_uncertified_member(pki, tmp_path, attack):
    ann, ids = _roster_attack(pki, tmp_path, attack)
    with pytest.raises(ProtocolError):
        verify_roster(ann, ids["s1"].trust)
    trace: list = []
    hub = Hub(trace=trace)
    s1 = _joined(hub, ids)["s1"]
    hub.open_round({n: ann for n in SITES})
    status = run_site_round(s1, ann, number=1, identity_key=ids["s1"].identity_key,
                            vector=np.zeros(ann.config.dim, np.uint32), trust=ids["s1"].trust)
    assert status.startswith("refused") and trace == []  # nothing sent to such a round


def test_revoked_member_refused(tmp_path):
    from secure_fedrl.transport.pki import CertificateAuthority, TrustStore

    ca = CertificateAuthority.init(tmp_path / "pki")
    for n in SITES:
        ca.issue_site(n)
    anns, ids = announcements(ca.dir, SITES)
    verify_roster(anns["s1"], ids["s1"].trust)
    ca.revoke_site("s3")
    with pytest.raises(ProtocolError, match="revoked"):
        verify_roster(anns["s1"], TrustStore.from_dir(ca.dir))


def test_server_round_aborts_cleanly_when_too_few_upload(pki):
    hub = Hub()
    anns, ids = announcements(pki.dir, SITES)
    _joined(hub, ids)
    res = run_server_round(hub, anns, deadlines=PhaseDeadlines(*(0.05,) * 5))
    assert res.outcome is None and "threshold" in res.aborted
    assert hub._rounds[1].aborted


def test_heartbeats_keep_a_busy_site_live(pki):
    import time

    from secure_fedrl.transport.backoff import Heartbeater

    hub = Hub(liveness_s=0.3)
    _, ids = announcements(pki.dir, SITES[:2])
    busy, idle = (InMemorySite(hub, n, ids[n].number) for n in SITES[:2])
    busy.join()
    idle.join()
    with Heartbeater(busy, 0.05):
        time.sleep(0.6)  # "local training"
        assert set(hub.live_sites()) == {"s1"}  # the silent one lapsed, the beating one did not
    hub.finish()
    with Heartbeater(busy, 0.05) as hb:
        time.sleep(0.2)
    assert hb.finished


def test_collect_streams_uploads_and_closes_the_phase_at_the_deadline(pki):
    import time

    from secure_fedrl.secagg.client import SecAggClient

    hub = Hub()
    anns, ids = announcements(pki.dir, SITES)
    sites = _joined(hub, ids)
    hub.open_round(anns)
    cfg = anns["s1"].config

    def advert(n):
        return SecAggClient(config=cfg, site_id=ids[n].number, identity_key=ids[n].identity_key,
                            vector=np.zeros(cfg.dim, np.uint32)).advertise_keys().encode()
    sites["s1"].upload(1, "advertise_keys", advert("s1"))
    it = hub.collect(1, "advertise_keys", set(SITES), time.monotonic() + 0.3)
    assert next(it)[0] == "s1" and hub._rounds[1].uploads["advertise_keys"] == {}  # handed over, not kept
    t0 = time.monotonic()
    assert list(it) == [] and time.monotonic() - t0 < 2
    with pytest.raises(TransportError, match="is not open") as e:
        sites["s2"].upload(1, "advertise_keys", advert("s2"))  # after the deadline: late, a dropout
    assert e.value.status == "FAILED_PRECONDITION"


def test_a_site_that_dies_or_rejoins_mid_round_is_not_waited_for(pki):
    """A site not heard from within liveness_s, or joined again (a restarted process has lost
    the round), is a dropout of the open phase at once, not at the phase deadline."""
    import time

    from secure_fedrl.secagg.client import SecAggClient

    now = [0.0]
    hub = Hub(liveness_s=5.0, clock=lambda: now[0])
    anns, ids = announcements(pki.dir, SITES)
    sites = _joined(hub, ids)
    hub.open_round(anns)
    cfg = anns["s1"].config
    for n in SITES[:-1]:
        sites[n].upload(1, "advertise_keys", SecAggClient(
            config=cfg, site_id=ids[n].number, identity_key=ids[n].identity_key,
            vector=np.zeros(cfg.dim, np.uint32)).advertise_keys().encode())
    now[0] = 6.0  # the last site went silent past the liveness window ...
    for n in SITES[:-1]:
        sites[n].heartbeat()
    sites[SITES[-1]].join()  # ... and its restarted process joined again: a new session
    got: list = []
    t = threading.Thread(target=lambda: got.extend(n for n, _ in hub.collect(1, "advertise_keys", set(SITES),
                                                                              now[0] + 3600)), daemon=True)
    t.start()
    t.join(10)
    assert not t.is_alive(), "the hub waited for a site that rejoined (until the phase deadline)"
    assert sorted(got) == sorted(SITES[:-1])


# ---------------------------------------------------------------- FedBuff readiness
def test_fedbuff_queue_is_first_come_live_only_and_consumed_by_a_round():
    from secure_fedrl.secagg.protocol import RoundConfig
    from secure_fedrl.transport.base import RoundAnnouncement

    now = [0.0]
    hub = Hub(liveness_s=10.0, clock=lambda: now[0])
    sites = {n: InMemorySite(hub, n, i + 1) for i, n in enumerate(("a", "b", "c"))}
    for s in sites.values():
        s.join()
    hub.publish_model(0, np.zeros(3, np.float32))
    sites["c"].ready(0)
    sites["a"].ready(0)
    assert list(hub.wait_ready(2, {"a", "b", "c"}, timeout=0.0).items()) == [("c", 0), ("a", 0)]
    assert hub.wait_ready(5, {"a", "c"}, timeout=0.0) == {"c": 0, "a": 0}  # every live eligible site is ready
    assert hub.wait_ready(2, {"a", "b"}, timeout=0.0) == {"a": 0}  # ineligible c is skipped; timed out
    now[0] = 11.0  # everyone silent; c restarts (its update is lost), a is heard from again
    sites["c"].join()
    sites["a"].heartbeat()
    assert hub.wait_ready(3, {"a", "b", "c"}, timeout=0.0) == {"a": 0}  # b is not live
    sites["b"].heartbeat()
    sites["b"].ready(0)
    sites["c"].ready(0)
    cfg = RoundConfig(round_id=1, site_ids=(2, 3), identity_keys=(b"\x02" * 32, b"\x03" * 32), threshold=2,
                      dim=4, bits=32, degree=None, graph_seed=b"\x00" * 32)
    ann = RoundAnnouncement(cfg, (RosterEntry(2, "b"), RosterEntry(3, "c")))
    hub.open_round({"b": ann, "c": ann})  # taking part uses the ready update up
    assert hub.wait_ready(2, {"b", "c"}, timeout=0.0) == {}
    with pytest.raises(TransportError) as exc:
        sites["b"].ready(1)  # never published
    assert exc.value.status == "INVALID_ARGUMENT"


def test_fedbuff_hub_says_unavailable_until_the_model_is_published():
    """A site that reaches a FedBuff server still starting (or resuming) retries instead of
    taking the server for a synchronous one (FAILED_PRECONDITION means exactly that)."""
    for buffered, status in ((True, "UNAVAILABLE"), (False, "FAILED_PRECONDITION")):
        hub = Hub(buffered=buffered)
        site = InMemorySite(hub, "a", 1)
        site.join()
        for call in (site.fetch_model, lambda: site.ready(0)):
            with pytest.raises(TransportError) as exc:
                call()
            assert exc.value.status == status


def test_the_final_model_is_fetched_only_after_the_federation_finished():
    """A synchronous federation has no model to fetch while it runs (the site gets its round's
    policy with the round); once it finishes, every joined site can fetch the final one."""
    hub = Hub()
    sites = {n: InMemorySite(hub, n, i + 1) for i, n in enumerate("ab")}
    for s in sites.values():
        s.join()
    with pytest.raises(TransportError) as exc:
        sites["a"].fetch_model()
    assert exc.value.status == "FAILED_PRECONDITION"
    final = np.arange(5, dtype=np.float32)
    hub.finish(final_model=(7, final))
    final[:] = -1  # the hub keeps its own copy
    version, model = sites["a"].fetch_model()
    assert version == 7 and model.dtype == np.float32 and model.tolist() == [0, 1, 2, 3, 4]
    hub.finish(final_model=(7, np.arange(5)))  # integers: the wire's float32 all the same
    assert sites["a"].fetch_model()[1].dtype == np.float32
    assert hub.wait_fetched_final({"a", "b"}, timeout=0.0) == {"a", "b"}  # not told yet: not kept
    for s in sites.values():
        assert s.await_round(0, timeout=0.0).finished
    sites["a"].fetch_model()
    assert hub.wait_fetched_final({"a", "b"}, timeout=0.0) == {"b"}
    sites["b"].fetch_model()
    assert hub.wait_fetched_final({"a", "b"}, timeout=0.0) == set()
    stranger = InMemorySite(hub, "c", 3)
    with pytest.raises(TransportError) as exc:
        stranger.fetch_model()  # never joined: no session
    assert exc.value.status == "PERMISSION_DENIED"


def test_only_the_configs_sites_fetch_a_model_and_only_of_the_expected_size():
    """A certified name outside the config may join (the rounds ignore it) but gets no model; a
    site that says how many values it expects refuses any other size."""
    hub = Hub(members=["a"])
    inside, outside = InMemorySite(hub, "a", 1), InMemorySite(hub, "x", 2)
    inside.join(), outside.join()
    hub.finish(final_model=(2, np.zeros(4)))
    with pytest.raises(TransportError) as exc:
        outside.fetch_model()
    assert exc.value.status == "PERMISSION_DENIED" and "not a site of this federation" in str(exc.value)
    assert hub.wait_fetched_final({"x"}, timeout=0.0) == {"x"}
    assert inside.fetch_model(values=4)[1].size == 4
    with pytest.raises(TransportError) as exc:
        inside.fetch_model(values=5)
    assert exc.value.status == "INVALID_ARGUMENT" and "4 values, expected 5" in str(exc.value)


def test_fedbuff_final_model_is_the_last_published_one():
    """A FedBuff site may fetch to train ahead just before it hears "finished": the final model
    it gets carries a version the hub published, so its Ready is not refused."""
    hub = Hub(buffered=True)
    site = InMemorySite(hub, "a", 1)
    site.join()
    hub.publish_model(3, np.ones(4, dtype=np.float32))
    hub.finish(final_model=(4, np.ones(4)))
    version, model = site.fetch_model()
    assert version == 3 and model.tolist() == [1, 1, 1, 1]
    site.ready(version)


def test_serve_waits_for_a_late_fetch_of_the_final_model():
    """wait_fetched_final waits (it does not just look once), and a FedBuff hub records the fetch
    of its last published model as the final one, so `serve` does not wait out its 10 s."""
    import threading

    hub = Hub(buffered=True)
    site = InMemorySite(hub, "a", 1)
    site.join()
    hub.publish_model(2, np.zeros(3, dtype=np.float32))
    hub.finish(final_model=(3, np.zeros(3)))
    assert site.await_round(0, timeout=0.0).finished
    late = threading.Timer(0.2, site.fetch_model)
    late.start()
    try:
        assert hub.wait_fetched_final({"a"}, timeout=30.0) == set()
    finally:
        late.join()


def test_serve_waits_for_a_site_that_rejoins_after_the_end_to_fetch_again():
    """Seen in a clean-clone CI run: a FedBuff site killed while long-polling AwaitRound was
    "told" finished on that dead call, and its restarted process fetched the final model to train
    ahead; `serve` counted both and exited while the new process still had to hear the end, which
    then failed to reconnect. A new session has heard nothing and kept nothing, and only a fetch
    after "finished" counts."""
    now = [0.0]
    hub = Hub(buffered=True, liveness_s=10.0, clock=lambda: now[0])
    dead = InMemorySite(hub, "a", 1)
    dead.join()
    hub.publish_model(2, np.zeros(3, dtype=np.float32))
    hub.finish(final_model=(3, np.zeros(3)))
    assert dead.await_round(0, timeout=0.0).finished  # sent to a process that was already killed
    now[0] = 11.0  # its session lapses; the restarted process joins
    restarted = InMemorySite(hub, "a", 1)
    restarted.join()
    assert hub.told_finished({"a"}) == set()
    restarted.fetch_model()  # to train ahead: it has not heard the end
    assert hub.wait_fetched_final({"a"}, timeout=0.0) == {"a"}
    assert restarted.await_round(0, timeout=0.0).finished
    restarted.fetch_model()  # the final model it keeps
    assert hub.wait_fetched_final({"a"}, timeout=0.0) == set()
    now[0] = 22.0  # it joins once more (say its reply was lost): it must hear and fetch again
    InMemorySite(hub, "a", 1).join()
    assert hub.wait_fetched_final({"a"}, timeout=0.0) == {"a"}
