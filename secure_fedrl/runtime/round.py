"""One site's part in a secure-aggregation round, over any transport (simulate and join alike).

The server's part is `ServerRuntime.run_round` (runtime/server.py) around
`transport.rounds.run_server_round`; this is the site's: read the broadcast, check it against
the site's own config and budget, train, encode and add noise at home, then run the SecAgg
client phase by phase through the transport. Nothing here knows whether the transport is a
function call or a TLS channel.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from secure_fedrl.errors import PrivacyError, SecureFedRLError, UpdateRejected
from secure_fedrl.fl.updates import check_update
from secure_fedrl.runtime.site import RoundOrder, SiteRuntime
from secure_fedrl.secagg.protocol import PHASES
from secure_fedrl.transport.base import Dropped, RoundAnnouncement, SiteTransport, TransportError
from secure_fedrl.transport.logs import log_event
from secure_fedrl.transport.rounds import run_site_round

log = logging.getLogger(__name__)

#: Longest single wait for a phase to close (the gRPC server ends any call after Limits.call_timeout_s).
POLL_S = 120.0


@dataclass(frozen=True)
class TrainedAhead:
    """FedBuff: an update a site trained from global model `version` before any round took it."""

    version: int
    upload: Any  # SiteUpload
    result: Any
    seconds: float


def train_ahead(site: SiteRuntime, version: int, policy: np.ndarray) -> TrainedAhead:
    """Local training from a fetched global model, at the site's own pace (FedBuff)."""
    t0 = time.perf_counter()
    upload, result = site.train(np.asarray(policy, dtype=np.float32)[:site.dim], version + 1, round_seed=0)
    return TrainedAhead(version, upload, result, time.perf_counter() - t0)


def staleness_scaled(site: SiteRuntime, vector: np.ndarray, weight: float) -> np.ndarray:
    """s(tau) * update, after the L2 clip the site's encoder applies (client level: C; else the
    SecAgg encoding's clip) so that weighting can only shrink a site's contribution (its
    sensitivity stays the clip norm; s <= 1) and a stale update above the clip does not count fully."""
    if weight == 1.0:
        return vector
    from secure_fedrl.secagg.encoding import clip_l2

    clip = site.config.privacy.clip if site.config.privacy.unit == "client" else site.aggregator.clip
    return (clip_l2(np.asarray(vector, dtype=np.float64), clip) * weight).astype(np.float32)


@dataclass
class SiteRoundReport:
    """What a site knows of its round (stays at the site: sites/<site>/metrics.jsonl)."""

    status: str  # "done", "dropped: ...", "refused: ...", "rejected: ..."
    result: Any = None  # the local training result, if it trained
    train_seconds: float = 0.0


class _Outbox:
    """The site's transport, watched: which phases left the site; an optional planned stop
    (simulated dropouts: the site goes silent from `stop_at` on, as a killed process would)."""

    def __init__(self, inner: SiteTransport, stop_at: str | None, before_masked_input=None,
                 before_graph_reveal=None) -> None:
        self.inner, self.stop_at, self.sent = inner, stop_at, []
        self.before_masked_input = before_masked_input
        self.before_graph_reveal = before_graph_reveal
        self.name = inner.name

    def upload(self, round_id: int, phase: str, payload: bytes) -> None:
        if self.stop_at is not None and PHASES.index(phase) >= PHASES.index(self.stop_at):
            # at or after: a phase the round skips (graph_reveal on the complete graph) stops the next one
            raise Dropped(f"site {self.name!r} stops before {phase!r}")
        if phase == "masked_input" and self.before_masked_input is not None:
            self.before_masked_input()  # charged and saved before the input can leave (never under-counted)
        if phase == "graph_reveal" and self.before_graph_reveal is not None:
            self.before_graph_reveal()  # gamma mode: counted and saved before the reveal can leave
        self.sent.append(phase)  # before the call: an upload the server stored, then failed, was sent
        self.inner.upload(round_id, phase, payload)

    def download(self, round_id: int, phase: str, timeout: float) -> bytes:
        """Wait up to `timeout` for the phase to close, in long polls of at most POLL_S (a call
        the server ends at its own cap is polled again, not taken for a dropout)."""
        end = time.monotonic() + timeout
        while True:
            try:
                return self.inner.download(round_id, phase, max(0.0, min(POLL_S, end - time.monotonic())))
            except TransportError as err:
                if err.status != "DEADLINE_EXCEEDED" or time.monotonic() >= end:
                    raise


def take_part(site: SiteRuntime, transport: SiteTransport, ann: RoundAnnouncement, *, trust: Any = None,
              stop_at: str | None = None, timeout: float = 600.0, persist=None,
              ahead: TrainedAhead | None = None) -> SiteRoundReport:
    """Train on the broadcast policy and send only the masked, noised update.

    `trust` (a PKI TrustStore) makes the site refuse a roster the CA does not vouch for;
    `persist()` saves the site's state (its replay history) before its advert leaves. In a
    buffered (FedBuff) round the site sends the update it trained `ahead`, scaled by the
    staleness weight its own config gives (the broadcast names the model version now).
    """
    rid = ann.round_id
    try:
        order = RoundOrder.decode(ann.extras)
        if order.round != rid or order.dim != site.dim:
            raise PrivacyError(f"round broadcast names round {order.round} / dim {order.dim}, "
                               f"expected round {rid} / dim {site.dim}")
        plan = site.aggregator.plan(rid, planned=order.planned, round_seed=order.round_seed)
        if not site.admits(plan):
            raise PrivacyError(f"site {site.name!r}: its own budget against the server is spent")
        width = site.dim * (2 if site.scaffold is not None else 1)
        if ann.policy.shape != (width,):
            raise PrivacyError(f"round broadcast: policy of {ann.policy.size} values, expected {width}")
        with np.errstate(over="ignore"):  # the float32 it is trained on: 1e39 is inf there
            finite = bool(np.isfinite(np.asarray(ann.policy, dtype=np.float32)).all())
        if ahead is None and not finite:
            # nothing to learn from: refused before training, so a trajectory-level site spends nothing
            raise PrivacyError("round broadcast: the global policy has non-finite values")
        check_roster_against_config(ann, site.config)
        number = _number(ann, site)
        weight = _staleness_weight(site, order, ahead)
        if ann.config.graph_seed != site.aggregator.graph_seed(order.round_seed):
            # The config digest D binds the graph seed, a hash of the round seed: so D binds the round
            # seed too, and no two sites of one round can be handed different rotations or masks.
            raise PrivacyError("round broadcast: the graph seed is not the one the round seed gives")
        if "graph_reveal" in ann.config.phases:
            # gamma mode: a SecAgg+ attempt past the guard's cap on A_u is refused before we train
            # (a server that aborts and retries without end gets no more than the cap)
            site.check_graph_reveal()
    except SecureFedRLError as exc:
        log_event("site_round_refused", site=site.name, round=rid, reason=str(exc))
        _leave(transport, rid)
        return SiteRoundReport(f"refused: {exc}")
    policy = np.asarray(ann.policy, dtype=np.float32)
    if ahead is not None:
        upload, result, seconds = ahead.upload, ahead.result, ahead.seconds
        site.pending_round = rid  # the proposals of that training settle with this round
    else:
        t0 = time.perf_counter()
        upload, result = site.train(policy[:site.dim], rid, round_seed=order.round_seed,
                                    control=policy[site.dim:] if site.scaffold is not None else None)
        seconds = time.perf_counter() - t0
    if site.config.privacy.unit == "trajectory":
        site.charge(plan)  # DP-SGD ran at the site: spent, whatever becomes of the update
    vector = upload.vector
    if isinstance(vector, np.ndarray) and vector.shape == (width,) and not np.isfinite(vector).all():
        # Whether training overflowed can depend on the site's data (a broadcast of huge finite
        # values makes it so): leaving the round would tell the server that bit outside DP. Send a
        # zero update instead, clipped, noised and charged as any other; keep none of its proposals.
        log_event("site_update_non_finite", site=site.name, round=rid, reason="sent zero instead")
        upload = dataclasses.replace(upload, vector=np.zeros(width, np.float32))
        site.pending = None
    try:
        check_update(upload.vector, dim=width, site=site.name)
        encoded, dp_attestation = site.encode_attested(plan, staleness_scaled(site, upload.vector, weight))
    except (UpdateRejected, PrivacyError) as exc:
        log.warning("round %d: %s", rid, exc)
        _leave(transport, rid)
        return SiteRoundReport(f"rejected: {exc}", result, seconds)

    def charge_then_persist() -> None:
        site.charge(plan)  # our noised input is about to leave the site
        if persist is not None:
            persist()

    def count_graph_reveal() -> None:
        # gamma mode: every attempt whose graph this site helped seed may fail c_max w.p. 2^-40,
        # aborted or not (SPEC 8): the site's own count, authoritative for its delta. Past the
        # cap the guard raises PrivacyBudgetExceeded: the reveal never leaves, the round is left.
        site.count_graph_reveal()
        if persist is not None:
            persist()

    gamma = bool(getattr(site.aggregator, "gamma_mode", False))
    out = _Outbox(transport, stop_at, charge_then_persist if site.config.privacy.unit == "client" else None,
                  count_graph_reveal if gamma else None)
    # c_max from this site's own config (c, or gamma and its N) and the round as announced (n,
    # degree): never the server's word. The SecAggClient refuses unless 2t > h + c_max and
    # t - c_max >= the honest inputs (DDG noise shares) this site's config plans for.
    status = run_site_round(out, ann, number=number, identity_key=site.identity_key, vector=encoded,
                            trust=trust, timeout=timeout, history=site.history,
                            max_colluding=announced_max_colluding(site.aggregator, ann.config),
                            min_honest_inputs=site.aggregator.min_honest(), before_advert=persist,
                            dp_attestation=dp_attestation)
    if status != "done":
        _leave(transport, rid)
    return SiteRoundReport(status, result, seconds)


def check_roster_against_config(ann: RoundAnnouncement, config: Any) -> None:
    """Refuse a roster this site's own config does not allow: more sites than its N
    (`num_sites`), or a site name not among its config's expanded site names. The CA check
    (`verify_roster`) says each member is a real site; this says it is one of THIS federation's
    N, so a server with a CA that vouches for more cannot add colluders beyond floor(gamma N)
    (gamma mode) or Sybils beyond the config's federation (c mode)."""
    from secure_fedrl.config import expand_site_names

    rid = ann.config.round_id
    n, big_n = len(ann.config.site_ids), config.num_sites
    if n > big_n or len(ann.roster) > big_n:
        raise PrivacyError(f"round {rid}: a roster of {max(n, len(ann.roster))} sites, more than the "
                           f"config's {big_n}")
    names = {name for section in config.sites for name in expand_site_names(section)}
    unknown = sorted({e.name for e in ann.roster} - names)
    if unknown:
        raise PrivacyError(f"round {rid}: roster names site(s) {unknown[:3]} not in this site's config")


def announced_max_colluding(aggregator: Any, config: Any) -> int:
    """c_max a site checks an announced round (SecAgg RoundConfig) against: its own aggregator's
    bound for the announced roster size n and graph degree, with C = min(floor(gamma N), n) from
    the site's own config in gamma mode (`SecureAggregator.max_colluding`). A roster larger than
    the config's N is refused (it would let the server add colluders beyond floor(gamma N))."""
    n = len(config.site_ids)
    if n < 2:
        raise PrivacyError(f"round {config.round_id}: a roster of {n} site(s)")
    big_n = getattr(aggregator, "num_sites", None)
    if big_n is not None and n > big_n:
        raise PrivacyError(f"round {config.round_id}: a roster of {n} sites, more than the config's {big_n}")
    return aggregator.max_colluding(n, config.degree)


def _staleness_weight(site: SiteRuntime, order: RoundOrder, ahead: TrainedAhead | None) -> float:
    """1 in a synchronous round; FedBuff's s(version now - version trained from) in a buffered one."""
    if site.fedbuff is None:
        if order.version is not None or ahead is not None:
            raise PrivacyError("round broadcast: a buffered round, but this site's config runs synchronous rounds")
        return 1.0
    if order.version is None or ahead is None:
        raise PrivacyError("round broadcast: a synchronous round, but this site's config runs fedbuff")
    staleness = order.version - ahead.version
    if staleness < 0:
        raise PrivacyError(f"round broadcast: model version {order.version} is older than version "
                           f"{ahead.version}, which this site trained from")
    weight = site.fedbuff.staleness_weight(staleness)
    if weight <= 0.0:
        raise PrivacyError(f"update is {staleness} versions stale, beyond strategy max_staleness "
                           f"{site.fedbuff.max_staleness}: trained again instead")
    return weight


def _number(ann: RoundAnnouncement, site: SiteRuntime) -> int:
    """Our SecAgg id: the roster entry under our name (the config lists our key there)."""
    for e in ann.roster:
        if e.name == site.name:
            return e.site_id
    raise PrivacyError(f"round {ann.round_id}: site {site.name!r} is not on the roster")


def _leave(transport: SiteTransport, round_id: int) -> None:
    try:
        transport.leave(round_id)
    except TransportError:
        pass  # the round is gone already: nothing to withdraw from
