"""One secure-aggregation round over any transport: the server's side and a site's side.

These drive the pure state machines (`SecAggServer`, `SecAggClient`) phase by phase through a
`Hub` / `SiteTransport`, so the round loop of the coming site/server runtimes calls them
unchanged in `simulate` (in-memory) and `serve`/`join` (gRPC).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from secure_fedrl.errors import BelowThresholdError, ProtocolError, SecureFedRLError
from secure_fedrl.secagg import messages as M
from secure_fedrl.secagg.client import RoundHistory, SecAggClient
from secure_fedrl.secagg.protocol import RoundConfig
from secure_fedrl.secagg.server import SecAggServer, ServerOutcome

from .base import Hub, PhaseDeadlines, RosterEntry, RoundAnnouncement, SiteTransport, TransportError
from .logs import log_event
from .pki import CertificateRejected, TrustStore


def verify_roster(ann: RoundAnnouncement, trust: TrustStore) -> None:
    """Every (site id, key) in the round config must be vouched for by a valid CA certificate.

    This is what stops a malicious server from adding Sybil sites (keys it holds) to a round, or
    from swapping an honest site's key: the site refuses the round (ProtocolError) instead.
    """
    cfg = ann.config
    by_id = {e.site_id: e for e in ann.roster}
    if len(by_id) != len(ann.roster) or sorted(by_id) != list(cfg.site_ids):
        raise ProtocolError(f"round {cfg.round_id}: roster does not list exactly the config's site ids")
    if len({e.name for e in ann.roster}) != len(ann.roster):
        raise ProtocolError(f"round {cfg.round_id}: roster names one site twice")
    trust.refresh()
    for sid, key in zip(cfg.site_ids, cfg.identity_keys):
        e = by_id[sid]
        try:
            trust.verify_site_key(e.certificate, site_number=sid, protocol_key=key, name=e.name)
        except CertificateRejected as exc:
            raise ProtocolError(f"round {cfg.round_id}: site {sid} ({e.name!r}) refused: {exc}") from None


@dataclass
class ServerRoundResult:
    outcome: ServerOutcome | None
    rejected: list[tuple[str, str, str]]  # (site, phase, reason)
    aborted: str | None = None
    bytes_per_site: dict[str, int] | None = None  # SecAgg payload bytes up + down, per site


def run_server_round(hub: Hub, announcements: dict[str, RoundAnnouncement], *,
                     deadlines: PhaseDeadlines = PhaseDeadlines(), notice: bytes | None = None,
                     on_open=None, verify_dp=None) -> ServerRoundResult:
    """Open the round, then per phase: collect until the deadline, feed SecAggServer, deliver.

    `notice` goes to every site with the broadcast (the previous round's outcome); `on_open()`
    runs once the round is open (the in-memory federation starts its site threads there).
    `verify_dp(site_id, field)` (distributed DP rounds; `SecureAggregator.dp_verifier`) makes
    the server refuse, like any invalid upload, a MaskedInput whose signed DP attestation is
    missing or does not verify (SPEC 7.1)."""
    cfg = next(iter(announcements.values())).config
    names = {e.site_id: e.name for e in next(iter(announcements.values())).roster}
    number = {v: k for k, v in names.items()}
    server = SecAggServer(config=cfg, verify_dp=verify_dp)
    hub.open_round(announcements, notice=notice)
    if on_open is not None:
        on_open()
    live = set(announcements)
    nbytes = {name: 0 for name in announcements}
    rejected: list[tuple[str, str, str]] = []
    try:
        for phase in cfg.phases:
            got = set()
            for name, wire in hub.collect(cfg.round_id, phase, live, hub.clock() + deadlines.seconds(phase)):
                got.add(name)
                nbytes[name] += len(wire)
                try:
                    if server.receive(wire) != number[name]:  # the hub checked the header already
                        raise ProtocolError(f"message from {name!r} signed as another site")
                except ProtocolError as err:
                    rejected.append((name, phase, str(err)))
                    log_event("upload_rejected", round=cfg.round_id, phase=phase, site=name, reason=str(err))
                del wire  # a masked input is folded into the running sum; nothing else keeps it
            for name in sorted(live - got):
                log_event("site_dropped", round=cfg.round_id, phase=phase, site=name, reason="no upload by the deadline")
            out = server.finish_phase()
            msgs = {names[u]: m.encode() for u, m in out.items()}
            for name, msg in msgs.items():
                nbytes[name] += len(msg)
            live = set(msgs)
            hub.deliver(cfg.round_id, phase, msgs)
    except BelowThresholdError as err:
        hub.abort_round(cfg.round_id, str(err))
        log_event("round_aborted", round=cfg.round_id, reason=str(err))
        return ServerRoundResult(None, rejected, str(err), nbytes)
    return ServerRoundResult(server.outcome, rejected, None, nbytes)


_HANDLERS = {
    "graph_reveal": SecAggClient.graph_reveal,
    "share_keys": SecAggClient.share_keys,
    "masked_input": SecAggClient.masked_input,
    "consistency_check": SecAggClient.consistency_check,
    "unmasking": SecAggClient.unmask,
}


def run_site_round(site: SiteTransport, ann: RoundAnnouncement, *, number: int, identity_key: Ed25519PrivateKey,
                   vector: np.ndarray, trust: TrustStore | None, timeout: float = 60.0,
                   randbytes=os.urandom, history: RoundHistory | None = None,
                   max_colluding: int | None = None, min_honest_inputs: int | None = None,
                   before_advert=None, dp_attestation: bytes = b"") -> str:
    """Take part in one round; returns "done" or why the site stopped ("dropped: ...", "refused: ...").

    The site checks the roster against the CA before it sends anything: its keys go only to a
    round whose every member the CA vouches for. `history` (the site's, kept across rounds)
    refuses a repeated configuration, `max_colluding` / `min_honest_inputs` a threshold or degree
    too low for the site's own policy (SecAggClient). `dp_attestation` is the site's signed DDG
    attestation (SPEC 7.1; empty without distributed DP), carried in its MaskedInput.
    """
    rid = ann.round_id
    try:
        if trust is not None:
            verify_roster(ann, trust)
        client = SecAggClient(config=ann.config, site_id=number, identity_key=identity_key, vector=vector,
                              randbytes=randbytes, history=history, max_colluding=max_colluding,
                              min_honest_inputs=min_honest_inputs, dp_attestation=dp_attestation)
        advert = client.advertise_keys().encode()  # claims the digest in `history`
        if before_advert is not None:
            before_advert()  # a deployment persists the history here, before the advert leaves
        site.upload(rid, "advertise_keys", advert)
        phases = ann.config.phases
        for prev, phase in zip(phases, phases[1:]):
            msg = M.decode(site.download(rid, prev, timeout))
            site.upload(rid, phase, _HANDLERS[phase](client, msg).encode())
    except TransportError as err:
        log_event("site_round_stopped", site=site.name, round=rid, status=err.status, reason=str(err))
        return f"dropped: {err}"
    except SecureFedRLError as err:
        log_event("site_round_refused", site=site.name, round=rid, reason=str(err))
        return f"refused: {err}"
    return "done"


def announcement(config: RoundConfig, roster: tuple[RosterEntry, ...], policy=None, extras: bytes = b"") -> RoundAnnouncement:
    pol = np.zeros(0, np.float32) if policy is None else np.ascontiguousarray(policy, dtype=np.float32)
    return RoundAnnouncement(config, tuple(sorted(roster, key=lambda e: e.site_id)), pol, extras)
