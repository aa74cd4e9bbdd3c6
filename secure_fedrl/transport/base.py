"""The transport contract: a server-side `Hub` and a site-side `SiteTransport`, wire-agnostic.

The round code is written once against these two: the server's round driver talks to a `Hub`
(open a round, collect a phase's uploads until a deadline, deliver the next messages), each site
talks to a `SiteTransport` (join, await a round, upload, download). `InMemorySite` calls the hub
directly (simulate, tests); `grpc_transport.GrpcSite` reaches the same hub through
`grpc_transport.FederationServicer` over mutual TLS. The hub applies every check that does not
depend on the wire (session, round, phase, duplicate, size, sender id in the SecAgg header), so
both transports refuse the same things with the same `TransportError.status`.

Payloads are the canonical SecAgg encodings (protocols/SPEC.md); the hub never decodes them
beyond the fixed header and never holds more than one upload per site and phase.
"""

from __future__ import annotations

import hashlib
import os
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Protocol

import numpy as np

from secure_fedrl.errors import ProtocolError
from secure_fedrl.secagg import messages as M
from secure_fedrl.secagg.protocol import PHASES, RoundConfig

from .logs import log_event

#: The SecAgg message type a site uploads in each phase.
UPLOAD_TYPES = {
    "advertise_keys": M.T_ADVERTISE, "graph_reveal": M.T_GRAPH_REVEAL, "share_keys": M.T_SHARE_KEYS, "masked_input": M.T_MASKED_INPUT,
    "consistency_check": M.T_CONSISTENCY, "unmasking": M.T_UNMASK,
}


#: Witness signatures one site may have pending (a quota per site: no site crowds out the others).
WITNESSES_PER_SITE = 2


class TransportError(ProtocolError):
    """A call refused by the transport; `status` names the gRPC status code it maps to."""

    def __init__(self, status: str, message: str) -> None:
        super().__init__(message)
        self.status = status


class Dropped(TransportError):
    """The site is no longer counted in this round (late, refused or the round aborted)."""

    def __init__(self, message: str, status: str = "FAILED_PRECONDITION") -> None:
        super().__init__(status, message)


@dataclass(frozen=True)
class RosterEntry:
    site_id: int
    name: str
    certificate: bytes = b""  # DER, CA-signed, binds the site's protocol key (empty without a PKI)


@dataclass(frozen=True)
class RoundAnnouncement:
    """What a site learns when it is sampled into a round (the broadcast)."""

    config: RoundConfig
    roster: tuple[RosterEntry, ...]
    policy: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    extras: bytes = b""

    @property
    def round_id(self) -> int:
        return self.config.round_id


@dataclass(frozen=True)
class Broadcast:
    """Answer of `await_round`: finished, not sampled into `round_id`, or an announcement."""

    finished: bool = False
    round_id: int = 0
    announcement: RoundAnnouncement | None = None
    notice: bytes = b""
    """The previous round's outcome (runtime-defined JSON): who was included, the ledger head."""


@dataclass(frozen=True)
class JoinInfo:
    session: bytes
    site_number: int
    federation: str = ""
    heartbeat_interval_s: float = 5.0


class SiteTransport(Protocol):
    """A site's end of the federation (in-memory or gRPC)."""

    name: str

    def join(self) -> JoinInfo: ...
    def heartbeat(self) -> tuple[int, bool]: ...
    def await_round(self, after_round: int, timeout: float) -> Broadcast: ...
    def upload(self, round_id: int, phase: str, payload: bytes) -> None: ...
    def download(self, round_id: int, phase: str, timeout: float) -> bytes: ...
    def leave(self, round_id: int) -> None: ...
    def witness(self, seq: int, row_hash: str, signature: bytes) -> None: ...
    def fetch_model(self, values: int | None = None) -> tuple[int, np.ndarray]:
        """The published model and its version; with `values`, a model of any other size is refused
        (over the wire: before it is buffered)."""
        ...

    def ready(self, version: int) -> None: ...


@dataclass(frozen=True)
class PhaseDeadlines:
    """Seconds the server waits for each phase's uploads; late sites are dropouts."""

    advertise_keys: float = 30.0
    graph_reveal: float = 30.0
    share_keys: float = 30.0
    masked_input: float = 120.0
    consistency_check: float = 30.0
    unmasking: float = 30.0

    def seconds(self, phase: str) -> float:
        return float(getattr(self, phase))

    def deadline(self, phase: str, clock: Callable[[], float] = time.monotonic) -> float:
        return clock() + self.seconds(phase)


def upload_bounds(config: RoundConfig, phase: str) -> tuple[int, int]:
    """Least and largest upload accepted in a phase: a MaskedInput carries 4*dim bytes of vector
    plus O(n) metadata, the other messages O(n) bytes. Checked on the declared length, before any
    chunk is buffered; the exact vector length is checked on the decoded message."""
    meta = 4096 + 256 * config.n
    if phase == "masked_input":
        return 4 * config.dim, 4 * config.dim + meta
    return 0, meta


@dataclass
class _Site:
    name: str
    number: int
    fingerprint: bytes
    session: bytes
    last_seen: float
    certificate: bytes = b""  # DER, as the TLS handshake presented it (the roster entry)
    protocol_key: bytes = b""  # the Ed25519 key the certificate binds


@dataclass
class _Round:
    announcements: dict[str, RoundAnnouncement]
    phase: str = "advertise_keys"
    uploads: dict[str, dict[str, bytes]] = field(default_factory=lambda: {p: {} for p in PHASES})  # not yet taken
    seen: dict[str, set[str]] = field(default_factory=lambda: {p: set() for p in PHASES})
    delivered: dict[str, dict[str, bytes]] = field(default_factory=dict)
    aborted: str | None = None
    sessions: dict[str, bytes] = field(default_factory=dict)  # each site's session when the round opened
    seeded_digest: bytes | None = None  # SecAgg+: D' from the KeysBundles on (SPEC.md section 2)

    @property
    def config(self) -> RoundConfig:
        return next(iter(self.announcements.values())).config


class Hub:
    """Server-side mailbox shared by every transport; thread-safe, holds no key material.

    max_sites: live sessions at most; liveness_s: a site not heard from for this long is no
    longer live (its name may join again, e.g. after a restart); trace: if a list, every
    accepted upload and every delivery is appended as (round, phase, direction, site, sha256);
    members: if given, the config's site names: only they may fetch a model (a certified name
    outside the config may join and is ignored by the rounds, but gets no model).
    """

    def __init__(self, *, federation: str = "", max_sites: int = 10_000, liveness_s: float = 30.0,
                 heartbeat_interval_s: float = 5.0, clock: Callable[[], float] = time.monotonic,
                 trace: list | None = None, buffered: bool = False, members: Iterable[str] | None = None) -> None:
        self.federation = federation
        self.members = None if members is None else frozenset(members)
        self.max_sites = max_sites
        self.liveness_s = liveness_s
        self.heartbeat_interval_s = heartbeat_interval_s
        self.clock = clock
        self.trace = trace
        self._cv = threading.Condition()
        self._sites: dict[str, _Site] = {}
        self._rounds: dict[int, _Round] = {}
        self._current: int | None = None
        self._finished = False
        self._notice = b""
        self._witnesses: list[tuple[str, int, str, bytes]] = []
        self._told_finished: set[str] = set()
        self._final: tuple[int, np.ndarray] | None = None  # the federation's last global model
        self._fetched_final: set[str] = set()
        # FedBuff (buffered asynchronous rounds): the current global model, and who is ready.
        self.buffered = buffered  # a FedBuff federation: until the model is published, sites retry
        self._model: tuple[int, np.ndarray] | None = None
        self._ready: dict[str, tuple[int, int]] = {}  # site -> (version it trained from, arrival number)
        self._arrivals = 0

    # ================================================================ site-facing
    def _live(self, s: _Site) -> bool:
        return self.clock() - s.last_seen < self.liveness_s

    def join(self, name: str, number: int, fingerprint: bytes = b"", *, certificate: bytes = b"",
             protocol_key: bytes = b"") -> JoinInfo:
        with self._cv:
            cur = self._sites.get(name)
            if cur is not None and self._live(cur):
                log_event("join_refused", site=name, reason="site already live under another connection")
                raise TransportError("ALREADY_EXISTS", f"site {name!r} is already connected (a second connection "
                                     "claiming a live site is refused)")
            if cur is None and sum(self._live(s) for s in self._sites.values()) >= self.max_sites:
                log_event("join_refused", site=name, reason="max_sites", max_sites=self.max_sites)
                raise TransportError("RESOURCE_EXHAUSTED", f"federation is full ({self.max_sites} sites)")
            if cur is not None and cur.number != number:
                raise TransportError("PERMISSION_DENIED", f"site {name!r} joined before with number {cur.number}")
            session = os.urandom(16)
            self._ready.pop(name, None)  # a new session has lost any update it trained before
            # ...and has neither heard that the federation is over nor kept its final model: the
            # "finished" a previous session was sent may have gone to a process that was dead.
            self._told_finished.discard(name)
            self._fetched_final.discard(name)
            self._sites[name] = _Site(name, number, fingerprint, session, self.clock(), certificate, protocol_key)
            log_event("site_joined", site=name, number=number, level="info")
            self._cv.notify_all()
            return JoinInfo(session, number, self.federation, self.heartbeat_interval_s)

    def _session(self, name: str, session: bytes) -> _Site:
        s = self._sites.get(name)
        if s is None or s.session != session:
            raise TransportError("PERMISSION_DENIED", f"site {name!r}: unknown or superseded session (join first)")
        s.last_seen = self.clock()
        return s

    def heartbeat(self, name: str, session: bytes) -> tuple[int, bool]:
        with self._cv:
            self._session(name, session)
            return (self._current or 0), self._finished

    def await_round(self, name: str, session: bytes, after_round: int, timeout: float) -> Broadcast:
        end = self.clock() + timeout
        with self._cv:
            while True:
                self._session(name, session)
                if self._current is not None and self._current > after_round:
                    ann = self._rounds[self._current].announcements.get(name)
                    return Broadcast(round_id=self._current, announcement=ann, notice=self._notice)
                if self._finished:
                    self._told_finished.add(name)
                    self._cv.notify_all()
                    return Broadcast(finished=True, notice=self._notice)
                left = end - self.clock()
                if left <= 0:
                    raise TransportError("DEADLINE_EXCEEDED", "no new round before the deadline")
                self._cv.wait(min(left, 1.0))

    def _round_for(self, name: str, round_id: int) -> _Round:
        r = self._rounds.get(round_id)
        if r is None:
            raise TransportError("NOT_FOUND", f"unknown round {round_id}")
        if name not in r.announcements:
            raise TransportError("PERMISSION_DENIED", f"site {name!r} is not part of round {round_id}")
        return r

    def announcement_for(self, name: str, session: bytes, round_id: int) -> RoundAnnouncement:
        with self._cv:
            self._session(name, session)
            return self._round_for(name, round_id).announcements[name]

    def expected_length(self, name: str, session: bytes, round_id: int, phase: str, length: int) -> None:
        """Early check of a declared upload length (before any chunk is buffered)."""
        with self._cv:
            self._session(name, session)
            r = self._round_for(name, round_id)
            self._check_length(r, phase, length)

    @staticmethod
    def _check_length(r: _Round, phase: str, length: int) -> None:
        if phase not in UPLOAD_TYPES:
            raise TransportError("INVALID_ARGUMENT", f"unknown phase {phase!r}")
        least, cap = upload_bounds(r.config, phase)
        if length < least:
            raise TransportError("INVALID_ARGUMENT", f"masked input of {length} bytes cannot hold a vector of "
                                 f"length {r.config.dim}")
        if length > cap:
            raise TransportError("RESOURCE_EXHAUSTED", f"{phase} upload of {length} bytes exceeds the cap of {cap}")

    def upload(self, name: str, session: bytes, round_id: int, phase: str, payload: bytes) -> None:
        with self._cv:
            site = self._session(name, session)
            r = self._round_for(name, round_id)
            self._check_length(r, phase, len(payload))
            if r.aborted:
                raise Dropped(f"round {round_id} aborted: {r.aborted}", "ABORTED")
            if r.phase != phase:
                raise TransportError("FAILED_PRECONDITION", f"round {round_id}: phase {phase!r} is not open "
                                     f"(open: {r.phase!r}); late uploads count as dropouts")
            try:
                mtype = M.message_type(payload)
                _, _, _, digest, party = M.HEADER.unpack_from(payload)
            except (ProtocolError, struct.error):
                raise TransportError("INVALID_ARGUMENT", f"{phase} upload is not a SecAgg message") from None
            if mtype != UPLOAD_TYPES[phase]:
                raise TransportError("INVALID_ARGUMENT", f"{phase} upload has message type 0x{mtype:02x}")
            if digest != (r.seeded_digest or r.config.digest):
                raise TransportError("INVALID_ARGUMENT", f"{phase} upload is for another round or configuration")
            if party != site.number:
                raise TransportError("PERMISSION_DENIED", f"site {name!r} (number {site.number}) sent a message "
                                     f"claiming site {party}")
            if phase == "masked_input":
                try:
                    size = M.MaskedInput.decode(payload).vector.size  # zero-copy view of the vector
                except ProtocolError as exc:
                    raise TransportError("INVALID_ARGUMENT", f"masked input does not decode: {exc}") from None
                if size != r.config.dim:
                    raise TransportError("INVALID_ARGUMENT", f"masked input vector of length {size}, "
                                         f"expected {r.config.dim}")
            if name in r.seen[phase]:
                raise TransportError("ALREADY_EXISTS", f"duplicate {phase} upload from site {name!r}")
            r.seen[phase].add(name)
            r.uploads[phase][name] = bytes(payload)
            self._record(round_id, phase, "up", name, payload)
            self._cv.notify_all()

    def download(self, name: str, session: bytes, round_id: int, phase: str, timeout: float) -> bytes:
        end = self.clock() + timeout
        with self._cv:
            while True:
                self._session(name, session)
                r = self._round_for(name, round_id)
                if phase in r.delivered:
                    msg = r.delivered[phase].get(name)
                    if msg is None:
                        raise Dropped(f"site {name!r} is not in round {round_id} after phase {phase!r}")
                    return msg
                if r.aborted:
                    raise Dropped(f"round {round_id} aborted: {r.aborted}", "ABORTED")
                left = end - self.clock()
                if left <= 0:
                    raise TransportError("DEADLINE_EXCEEDED", f"phase {phase!r} of round {round_id} did not close in time")
                self._cv.wait(min(left, 1.0))

    def _record(self, round_id: int, phase: str, direction: str, site: str, payload: bytes) -> None:
        if self.trace is not None:
            self.trace.append((round_id, phase, direction, site, hashlib.sha256(payload).hexdigest()))

    def leave(self, name: str, session: bytes, round_id: int) -> None:
        """The site stops taking part in `round_id` (it says so instead of going silent), so the
        server need not wait for its deadline; it counts as a dropout from the open phase on."""
        with self._cv:
            self._session(name, session)
            r = self._round_for(name, round_id)
            phases = r.config.phases
            for phase in phases[phases.index(r.phase) if r.phase in phases else len(phases):]:
                r.seen[phase].add(name)
            self._cv.notify_all()

    def witness(self, name: str, session: bytes, seq: int, row_hash: str, signature: bytes) -> None:
        """A site's countersignature of a ledger head; the server runtime verifies and stores it."""
        with self._cv:
            self._session(name, session)
            if len(signature) != 64 or len(row_hash) != 64:
                raise TransportError("INVALID_ARGUMENT", "witness: signature must be 64 bytes, row hash 64 hex digits")
            if sum(w[0] == name for w in self._witnesses) >= WITNESSES_PER_SITE:
                raise TransportError("RESOURCE_EXHAUSTED", f"site {name!r}: too many witness signatures pending")
            self._witnesses.append((name, int(seq), str(row_hash), bytes(signature)))

    def fetch_model(self, name: str, session: bytes) -> tuple[int, np.ndarray]:
        """FedBuff: (version, global model) to train from at the site's own pace. Once the
        federation has finished, any federation: (last round, final global model), which a site
        keeps to personalise from (`secure-fedrl personalise`)."""
        with self._cv:
            self._session(name, session)
            if self.members is not None and name not in self.members:
                raise TransportError("PERMISSION_DENIED", f"site {name!r} is not a site of this federation's config")
            if self._finished and self._final is not None:
                if name in self._told_finished:  # kept as the final model, not trained ahead from
                    self._fetched_final.add(name)
                    self._cv.notify_all()
                return self._final
            self._check_published()
            return self._model

    def ready(self, name: str, session: bytes, version: int) -> None:
        """FedBuff: the site holds an update trained from `version` and waits for a round."""
        with self._cv:
            self._session(name, session)
            self._check_published()
            if isinstance(version, bool) or not 0 <= int(version) <= self._model[0]:
                raise TransportError("INVALID_ARGUMENT", f"site {name!r}: ready with version {version}, which was "
                                     f"never published (current {self._model[0]})")
            if name not in self._ready:  # a repeated Ready keeps the site's place in the queue
                self._arrivals += 1
                self._ready[name] = (int(version), self._arrivals)
            self._cv.notify_all()

    def _check_published(self) -> None:
        if self._model is None:
            if self.buffered:  # the server is still starting (or resuming): try again shortly
                raise TransportError("UNAVAILABLE", "the global model is not published yet")
            raise TransportError("FAILED_PRECONDITION", "this federation runs synchronous rounds: no model to "
                                 "fetch, no ready queue")

    # ================================================================ server-facing
    def publish_model(self, version: int, model: np.ndarray) -> None:
        """FedBuff: the global model sites fetch from now on."""
        with self._cv:
            self._model = (int(version), np.asarray(model, dtype=np.float32).copy())
            self._cv.notify_all()

    def wait_ready(self, count: int, eligible: set[str], timeout: float, *, least: int = 1) -> dict[str, int]:
        """FedBuff: the first `count` live, eligible sites to report ready -> the version each trained
        from (they leave the queue when a round opens with them). Returns early with fewer (but at
        least `least`) when every live eligible site is ready, and with whatever is there at the timeout."""
        end = self.clock() + timeout
        with self._cv:
            while True:
                live = {n for n, s in self._sites.items() if self._live(s)} & set(eligible)
                queue = sorted((arrival, n) for n, (_, arrival) in self._ready.items() if n in live)
                if len(queue) >= count or (len(queue) >= max(least, 1) and len(queue) == len(live)) or \
                        self.clock() >= end or self._finished:
                    return {n: self._ready[n][0] for _, n in queue[:count]}
                self._cv.wait(min(max(end - self.clock(), 0.0), 1.0))

    def take_witnesses(self) -> list[tuple[str, int, str, bytes]]:
        """(site, seq, row hash, signature) received since the last call."""
        with self._cv:
            out, self._witnesses = self._witnesses, []
            return out

    def site_credentials(self, name: str) -> tuple[int, bytes, bytes]:
        """(site number, protocol key, certificate DER) of a joined site."""
        with self._cv:
            s = self._sites[name]
            return s.number, s.protocol_key, s.certificate

    def live_sites(self) -> dict[str, int]:
        with self._cv:
            return {n: s.number for n, s in self._sites.items() if self._live(s)}

    def wait_for_sites(self, count: int, timeout: float) -> dict[str, int]:
        end = self.clock() + timeout
        with self._cv:
            while True:
                live = {n: s.number for n, s in self._sites.items() if self._live(s)}
                if len(live) >= count or self.clock() >= end:
                    return live
                self._cv.wait(min(end - self.clock(), 1.0))

    def open_round(self, announcements: dict[str, RoundAnnouncement], *, notice: bytes | None = None) -> None:
        """Start a round; `notice` (if given) replaces what every site's next broadcast carries."""
        if not announcements:
            raise ProtocolError("a round needs at least one site")
        round_id = next(iter(announcements.values())).round_id
        with self._cv:
            if notice is not None:
                self._notice = bytes(notice)
            if self._current is not None and round_id <= self._current:
                raise ProtocolError(f"round {round_id} is not after round {self._current}")
            for old in [k for k in self._rounds if k < round_id - 1]:
                del self._rounds[old]  # keep the previous round for late downloads
            self._rounds[round_id] = _Round(dict(announcements),
                                            sessions={n: self._sites[n].session for n in announcements if n in self._sites})
            self._current = round_id
            for name in announcements:  # FedBuff: taking part uses up the site's ready update
                self._ready.pop(name, None)
            self._cv.notify_all()

    def collect(self, round_id: int, phase: str, expected: set[str], deadline: float):
        """Yield (site, payload) of `phase` as they arrive, until every expected site uploaded or
        the deadline passes. The hub drops each payload once yielded, so a consumer that folds
        masked inputs into a running sum keeps the server at O(dim) memory, not O(n * dim)."""
        r = self._rounds[round_id]
        if r.phase != phase:
            raise ProtocolError(f"round {round_id}: collecting {phase!r} while {r.phase!r} is open")
        while True:
            with self._cv:
                while not r.uploads[phase] and not expected <= r.seen[phase] | self._gone(expected, r) and \
                        self.clock() < deadline:
                    self._cv.wait(min(max(deadline - self.clock(), 0.0), 1.0))
                if not r.uploads[phase]:
                    r.phase = f"{phase} (closed)"  # from here on an upload is late: a dropout
                    return
                name = min(r.uploads[phase])
                payload = r.uploads[phase].pop(name)
            yield name, payload

    def _gone(self, names: set[str], r: _Round) -> set[str]:
        """Expected sites no longer live (not heard from within liveness_s: no heartbeat, no
        call) or joined again since the round opened (a restarted process has lost the round):
        their phase need not be waited for until the deadline."""
        return {n for n in names if n in self._sites and (not self._live(self._sites[n]) or
                                                           r.sessions.get(n, self._sites[n].session) != self._sites[n].session)}

    def deliver(self, round_id: int, phase: str, messages: dict[str, bytes]) -> None:
        """Close `phase`: these are the server messages that follow it; everyone else is dropped."""
        with self._cv:
            r = self._rounds[round_id]
            r.delivered[phase] = dict(messages)
            for name, msg in sorted(messages.items()):
                self._record(round_id, phase, "down", name, msg)
            if phase == "graph_reveal" and messages:  # the server's KeysBundles carry D'
                r.seeded_digest = M.HEADER.unpack_from(next(iter(messages.values())))[3]
            phases = r.config.phases
            i = phases.index(phase)
            r.phase = phases[i + 1] if i + 1 < len(phases) else "done"
            self._cv.notify_all()

    def abort_round(self, round_id: int, reason: str) -> None:
        with self._cv:
            self._rounds[round_id].aborted = reason
            self._rounds[round_id].phase = "aborted"
            self._cv.notify_all()

    def finish(self, *, notice: bytes | None = None, final_model: tuple[int, np.ndarray] | None = None) -> None:
        """No more rounds; `final_model` (round, global parameters) is what sites fetch from now on
        (FedBuff: the model published last, so a site that fetches it to train ahead before it hears
        "finished" holds a version the hub knows)."""
        with self._cv:
            if notice is not None:
                self._notice = bytes(notice)
            if final_model is not None and self.buffered and self._model is not None:
                self._final = self._model  # FedBuff: the last published model, its version the one sites know
            elif final_model is not None:
                self._final = (int(final_model[0]), np.asarray(final_model[1], dtype=np.float32).copy())
            self._finished = True
            self._cv.notify_all()

    @property
    def finished(self) -> bool:
        return self._finished

    def told_finished(self, names: set[str]) -> set[str]:
        """Which of these sites' current sessions have been sent "finished"."""
        with self._cv:
            return set(names) & self._told_finished

    def wait_fetched_final(self, names: set[str], timeout: float) -> set[str]:
        """After finish(final_model=...): wait until these sites have fetched it after hearing that
        the federation is over, in their current session (what a site does last; a fetch to train
        ahead does not count, and a site that joins again must fetch again); returns who has not."""
        end = self.clock() + timeout
        with self._cv:
            while not set(names) <= self._fetched_final and self.clock() < end:
                self._cv.wait(min(max(end - self.clock(), 0.0), 1.0))
            return set(names) - self._fetched_final


class InMemorySite:
    """A site's transport that calls the hub in-process: same checks, no wire."""

    def __init__(self, hub: Hub, name: str, number: int, *, protocol_key: bytes = b"") -> None:
        self.hub, self.name, self.number = hub, name, number
        self.protocol_key = protocol_key
        self._session = b""

    def join(self) -> JoinInfo:
        info = self.hub.join(self.name, self.number, protocol_key=self.protocol_key)
        self._session = info.session
        return info

    def heartbeat(self) -> tuple[int, bool]:
        return self.hub.heartbeat(self.name, self._session)

    def await_round(self, after_round: int, timeout: float) -> Broadcast:
        return self.hub.await_round(self.name, self._session, after_round, timeout)

    def upload(self, round_id: int, phase: str, payload: bytes) -> None:
        self.hub.upload(self.name, self._session, round_id, phase, payload)

    def download(self, round_id: int, phase: str, timeout: float) -> bytes:
        return self.hub.download(self.name, self._session, round_id, phase, timeout)

    def leave(self, round_id: int) -> None:
        self.hub.leave(self.name, self._session, round_id)

    def witness(self, seq: int, row_hash: str, signature: bytes) -> None:
        self.hub.witness(self.name, self._session, seq, row_hash, signature)

    def fetch_model(self, values: int | None = None) -> tuple[int, np.ndarray]:
        version, model = self.hub.fetch_model(self.name, self._session)
        if values is not None and model.size != values:
            raise TransportError("INVALID_ARGUMENT", f"the server's model has {model.size} values, expected {values}")
        return version, model.copy()

    def ready(self, version: int) -> None:
        self.hub.ready(self.name, self._session, version)
