"""`secure-fedrl serve` and `secure-fedrl join`: the server and the sites as separate processes.

The same runtimes as `simulate` (`ServerRuntime`, `SiteRuntime` + `runtime.round.take_part`),
connected by gRPC with mutual TLS (`transport.grpc_transport`) instead of the in-memory hub.
The server holds the global model, protocol state and the ledger; a site's environment,
trajectories and plaintext update never leave its `join` process.

Crash safety: the server checkpoints after every round by atomic replace (RunDirectory); the
same `serve` command on an existing run directory resumes from the last complete round, the
ledger replayed (epsilon never lower). A site keeps its state (critic, control variate,
residual, its own budget, its SecAgg replay history) in `--state DIR`, saved by atomic replace
before its advert leaves and after every round, so a SIGKILLed site restarted with the same
command rejoins with it intact. When the federation ends, each site keeps its final global model
in `STATE/final_policy.pt`, the starting point of `secure-fedrl personalise` at that site.
"""

from __future__ import annotations

import io
import json
import logging
import os
import pickle
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from secure_fedrl.config import Config
from secure_fedrl.errors import ConfigError
from secure_fedrl.fl.strategies import FedAsync, make_strategy
from secure_fedrl.fsutil import atomic_write, check_private_dir
from secure_fedrl.rl.envs import make_site_env
from secure_fedrl.runtime.round import take_part
from secure_fedrl.runtime.rundir import head_record
from secure_fedrl.runtime.server import RunSummary, ServerRuntime
from secure_fedrl.runtime.site import site_row
from secure_fedrl.runtime.sites import expand_sites
from secure_fedrl.transport.backoff import RETRYABLE, Backoff, Heartbeater, retry
from secure_fedrl.transport.base import Hub, PhaseDeadlines, TransportError
from secure_fedrl.transport.logs import log_event

log = logging.getLogger(__name__)

#: Phase deadlines of a deployment: the first phase includes every site's local training.
DEPLOY_DEADLINES = PhaseDeadlines(advertise_keys=600.0, graph_reveal=60.0, share_keys=60.0, masked_input=120.0,
                                  consistency_check=60.0, unmasking=60.0)


#: How long a site waits for a phase to close: longer than any server deadline (waiting is free;
#: the server decides who is a dropout, and tells the site).
SITE_PHASE_WAIT_S = 3 * 3600.0


def check_deployable(config: Config) -> None:
    """A deployment sends masked updates only: refuse what would need plaintext at the server."""
    if not config.secure_aggregation.enabled:
        raise ConfigError("secure_aggregation.enabled: serve/join run with secure aggregation only (no site sends "
                          "a plaintext update); run plaintext baselines with `secure-fedrl simulate`")
    if isinstance(make_strategy(config.strategy.name, **dict(config.strategy.params)), FedAsync):
        raise ConfigError("strategy.name: fedasync applies each plaintext update on arrival; it has no "
                          "secure-aggregation deployment (use a synchronous strategy)")


def env_spaces(config: Config) -> tuple[Any, Any]:
    """Observation and action space of the federation's policy, from the config's first site."""
    spec = expand_sites(config.sites)[0]
    env = make_site_env(spec.env_id, overrides=spec.overrides, num_envs=1, seed=spec.seed, site=spec.name)
    try:
        return env.single_observation_space, env.single_action_space
    finally:
        env.close()


# ================================================================================ server
class DeployedServer(ServerRuntime):
    """The server over gRPC: sites are remote; only the live ones can be sampled."""

    def __init__(self, config: Config, out: Path, *, hub: Hub, wait_s: float, min_sites: int, **kw: Any) -> None:
        check_deployable(config)
        super().__init__(config, out, spaces=env_spaces(config), hub=hub, **kw)
        self.wait_s, self.min_sites = wait_s, min_sites
        self.witnessed: dict[int, dict[str, str]] = {}

    def _sample(self, eligible: list[str], rng: np.random.Generator) -> list[str]:
        # Before the first round of this process: wait for the sites; later only briefly for restarts.
        first = self._first_round()
        live = self.hub.wait_for_sites(self.min_sites if first else len(self.site_names),
                                       self.wait_s if first else min(self.wait_s, 5.0))
        while len([n for n in live if n in self.site_names]) < 2:  # no round without two sites: keep waiting
            log_event("waiting_for_sites", live=len(live), level="info")
            live = self.hub.wait_for_sites(2, max(self.wait_s, 1.0))
        unknown = sorted(set(live) - set(self.site_names))
        if unknown:
            log_event("unknown_sites_ignored", sites=",".join(unknown))
        return super()._sample([n for n in eligible if n in live], rng)

    def buffered_arrivals(self, r: int, eligible: list[str]) -> dict[str, int]:
        if self._first_round():  # as _sample: wait for the sites before the first round
            self.hub.wait_for_sites(self.min_sites, self.wait_s)
        return super().buffered_arrivals(r, [n for n in eligible if n in self.site_names])

    def _first_round(self) -> bool:
        """True once: before the first round this process runs."""
        first = not self.__dict__.get("_waited")
        self._waited = True
        return first

    witnesses = True

    def await_final_witnesses(self, timeout: float = 15.0) -> None:
        """The closing notice's head: wait (briefly) for the last round's sites to countersign."""
        want = set(self._notice.get("included", [])) & set(self.hub.live_sites())
        got: list = []
        end = time.monotonic() + timeout
        while want - {w[0] for w in got} and time.monotonic() < end:
            time.sleep(0.2)
            got.extend(self.hub.take_witnesses())
        self.ingest_witnesses(got)

    def _round_seed(self, r: int) -> int:
        """Always fresh: a round re-run after a crash must not repeat a configuration digest
        (sites refuse a repeated D: their replay history)."""
        import secrets

        seeds = self.__dict__.setdefault("_round_seeds", {})
        if r not in seeds:
            seeds.clear()
            seeds[r] = secrets.randbits(63)
        return seeds[r]


def serve(config: Config, out: Path, *, pki: Path, address: str = "0.0.0.0:50051", wait_s: float = 300.0,
          min_sites: int | None = None, ledger_key: Path | None = None, ledger_passphrase: bytes | None = None,
          deadlines: PhaseDeadlines = DEPLOY_DEADLINES, ready_file: Path | None = None,
          liveness_s: float = 15.0) -> RunSummary:
    """Serve the federation until its last round. A site not heard from for `liveness_s`
    (it heartbeats every third of that while it trains) is a dropout of the open phase."""
    from secure_fedrl.transport.grpc_transport import GrpcServer, Limits
    from secure_fedrl.transport.pki import load_server_identity

    identity = load_server_identity(pki)
    n = config.num_sites
    hub = Hub(federation=config.federation.name, max_sites=n, liveness_s=liveness_s,
              heartbeat_interval_s=min(5.0, liveness_s / 3), buffered=config.strategy.name == "fedbuff",
              members=[s.name for s in expand_sites(config.sites)])
    from secure_fedrl.runtime.rundir import FINGERPRINT_FILE

    resume = (Path(out) / FINGERPRINT_FILE).exists()  # the same command resumes a killed server
    check_deployable(config)
    server = GrpcServer(hub, identity, address=address, limits=Limits(max_sites=n, max_workers=max(64, 3 * n + 16)))
    port = server.start()  # before the run directory is touched: a bad address changes nothing
    try:
        runtime = DeployedServer(config, Path(out), hub=hub, wait_s=wait_s,
                                 min_sites=n if min_sites is None else min_sites, resume=resume, progress=False,
                                 ledger_key=ledger_key, ledger_passphrase=ledger_passphrase, deadlines=deadlines)
    except BaseException:
        server.stop(grace=0)
        raise
    log_event("serve_started", address=address, port=port, resumed_at_round=runtime.round, level="info")
    if ready_file is not None:
        atomic_write(Path(ready_file), json.dumps({"port": port, "pid": os.getpid()}).encode())
    try:
        summary = runtime.run()
        # Stay up (bounded) until every site has heard that the federation is over and fetched the
        # final model it keeps, which it does as soon as it hears: the fetch is the only sign that
        # "finished" reached a live process (one sent to a killed site's last call reached nobody),
        # and a site that was reconnecting would otherwise retry until it gives up.
        names = set(runtime.site_names)
        unfetched = hub.wait_fetched_final(names, min(max(wait_s, 5.0), 60.0))
        missing = unfetched - hub.told_finished(unfetched)
        if missing:
            log_event("sites_not_told_finished", sites=",".join(sorted(missing)[:20]), count=len(missing))
        if unfetched - missing:
            log_event("final_model_not_fetched", sites=",".join(sorted(unfetched - missing)[:20]),
                      count=len(unfetched - missing))
    finally:
        server.stop(grace=2.0)
    return summary


# ================================================================================ site
class SiteProcess:
    """One site of a `join` process: its runtime, its channel, its state directory."""

    def __init__(self, config: Config, name: str, *, server: str, pki: Path, state: Path) -> None:
        from secure_fedrl.runtime.site_build import SiteBuilder
        from secure_fedrl.transport.grpc_transport import GrpcSite
        from secure_fedrl.transport.pki import load_site_identity

        check_deployable(config)
        names = [s.name for s in expand_sites(config.sites)]
        if name not in names:
            raise ConfigError(f"--site {name!r}: not a site of this federation's config "
                              f"(sites: {', '.join(sorted(names)[:5])}{', ...' if len(names) > 5 else ''})")
        self.identity = load_site_identity(pki, name)
        self.config = config
        self.state_dir = Path(state)
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        check_private_dir(self.state_dir, "--state")  # its budget account, replay history, residuals
        torch.set_num_threads(config.federation.torch_threads)
        # Everything from the config alone (env, the server's initial policy, the public mechanism):
        # the same construction as a Ray site host's (runtime/site_build.py).
        self.site = SiteBuilder(config, secure=True).build(names.index(name), identity_key=self.identity.identity_key)
        self.transport = GrpcSite(self.identity, server)
        self.took_part: set[int] = set()  # recent rounds this site was handed (it countersigns their heads)
        self.load()

    # -- state ----------------------------------------------------------------------------------
    @property
    def state_file(self) -> Path:
        return self.state_dir / "site_state.pkl"

    def _state_mac(self, blob: bytes) -> bytes:
        """HMAC-SHA256 of the state under a key derived from the site's identity key: a state file
        written by anyone else (it is a pickle: loading it runs code) is refused before it is read."""
        import hmac

        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.kdf.hkdf import HKDF

        raw = self.site.identity_key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                                   serialization.NoEncryption())
        key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                   info=b"secure-fedrl/site-state/v1\0" + self.site.name.encode()).derive(raw)
        return hmac.new(key, blob, "sha256").digest()

    def save(self) -> None:
        state = self.site.state_dict()
        state["config_fingerprint"] = self.config.fingerprint()
        blob = pickle.dumps(state)
        atomic_write(self.state_file, STATE_MAGIC + self._state_mac(blob) + blob, mode=0o600)

    def load(self) -> None:
        if not self.state_file.exists():
            return
        import hmac

        data = self.state_file.read_bytes()
        head, mac, blob = data[:len(STATE_MAGIC)], data[len(STATE_MAGIC):len(STATE_MAGIC) + 32], data[len(STATE_MAGIC) + 32:]
        if head != STATE_MAGIC or not hmac.compare_digest(mac, self._state_mac(blob)):
            raise ConfigError(f"--state {self.state_dir}: site_state.pkl was not written by site {self.site.name!r} "
                              "(bad authentication tag); refusing to load it")
        try:
            state = pickle.loads(blob)
        except Exception as exc:  # noqa: BLE001 - a corrupt state file is a user-visible error
            raise ConfigError(f"--state {self.state_dir}: unreadable site state ({exc})") from None
        if state.get("name") != self.site.name or state.get("config_fingerprint") != self.config.fingerprint():
            raise ConfigError(f"--state {self.state_dir}: holds the state of another site or federation config")
        self.site.load_state_dict(state)
        log_event("site_state_restored", site=self.site.name, last_round=self.site.last_round, level="info")

    def append_metrics(self, row: dict[str, Any]) -> None:
        with open(self.state_dir / "metrics.jsonl", "a", encoding="utf-8") as fh:
            fh.write(json.dumps(row, sort_keys=True) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    # -- the loop -------------------------------------------------------------------------------
    def join_server(self, backoff: Backoff, give_up_after: float, what: str):
        """Join (or rejoin) with backoff; after `give_up_after` seconds without getting in, stop
        with one line that says so (a server gone for good must not keep a site waiting for ever).

        ALREADY_EXISTS is retried too: the session of this site's previous process (killed,
        restarted) has not lapsed yet; the server frees the name after its liveness window."""
        transient = RETRYABLE | {"ALREADY_EXISTS"}
        try:
            return retry(self.transport.join, backoff=backoff, give_up_after=give_up_after,
                         what=f"{self.site.name}: {what}", retry_on=transient)
        except TransportError as err:
            if err.status not in transient:
                raise
            raise TransportError(err.status, f"site {self.site.name!r}: could not {what} the server at "
                                 f"{self.transport.address} within {give_up_after:g} s (--give-up-after); "
                                 f"last error: {err}") from None

    def run(self, *, give_up_after: float = 600.0) -> int:
        name = self.site.name
        backoff = Backoff()
        info = self.join_server(backoff, give_up_after, "join")
        log_event("site_joined_server", site=name, number=info.site_number, level="info")
        # `after`: the last round this site has seen. After a reconnect it falls back to the last
        # round whose outcome the server announced: a restarted server re-runs an unfinished round
        # (with a fresh configuration digest, so the replay history lets the site take part again).
        after = self.site.last_round
        buffered = self.site.fedbuff is not None
        ahead = None  # FedBuff: the update this site trained from a fetched model, waiting for a round
        spent = False  # FedBuff: our own budget refused a round; train no more, wait for the end
        refusals, refused_until = 0, 0.0  # FedBuff: refused models so far, and when to fetch again
        while True:
            try:
                # (a site that rejoins after the end hears it below at once, not after training)
                if (buffered and ahead is None and not spent and time.monotonic() >= refused_until
                        and not self.transport.heartbeat()[1]):
                    ahead = self.train_ahead(info)
                    if ahead is None:  # a refused model: fetch again only after a pause (doubling)
                        refusals += 1
                        refused_until = time.monotonic() + min(60.0, 2.0 ** refusals)
                b = self.transport.await_round(after, timeout=60.0)
            except TransportError as err:
                if err.status == "DEADLINE_EXCEEDED":
                    continue
                if err.status in ("PERMISSION_DENIED", "UNAVAILABLE", "RESOURCE_EXHAUSTED", "CANCELLED"):
                    # Session gone (server restarted) or server unreachable: join again, with backoff.
                    time.sleep(backoff.delay(2))
                    info = self.join_server(backoff, give_up_after, "rejoin")
                    after = self.site.last_round
                    self.site.witnessed.clear()  # a restarted server may have lost them: sign again
                    log_event("site_rejoined", site=name, after_round=after, level="info")
                    if ahead is not None:  # the new session starts with an empty queue: say ready again
                        try:
                            self.transport.ready(ahead.version)
                        except TransportError:
                            ahead = None  # e.g. the restarted server is behind our version: train again
                    continue
                if err.status == "FAILED_PRECONDITION" and buffered:
                    raise ConfigError(f"site {name!r}: this config runs strategy 'fedbuff' but the server "
                                      f"does not ({err})") from None
                raise
            self.read_notice(b.notice)
            if b.finished:
                self.save()
                self.keep_final_model()
                log_event("federation_finished", site=name, level="info")
                return 0
            ann = b.announcement
            if ann is not None:
                self.took_part = {x for x in self.took_part if x > ann.round_id - 8} | {ann.round_id}
                with Heartbeater(self.transport, max(1.0, info.heartbeat_interval_s)):
                    report = take_part(self.site, self.transport, ann, trust=self.identity.trust, persist=self.save,
                                       timeout=SITE_PHASE_WAIT_S, ahead=ahead)
                ahead = None  # sent, refused or lost with the round: train again from the model now
                spent = spent or "budget" in report.status and report.status.startswith("refused")
                row = {"round": ann.round_id, "site": name, "round_status": report.status}
                # the site's own guarantee: epsilon_site at privacy.delta, delta_site = privacy.delta
                # + A_u 2^-40 (gamma mode: A_u its GraphReveals over every attempt, SPEC 8)
                row.update(self.site.privacy_metrics())
                if report.result is not None:
                    row.update(site_row(ann.round_id, name, report.result, report.train_seconds))
                    row["round_status"] = report.status
                self.append_metrics(row)
            elif ahead is not None:  # a round went without us: still ready (a no-op if still queued)
                self.transport.ready(ahead.version)
            after = max(after, b.round_id)
            self.save()

    def keep_final_model(self) -> None:
        """Fetch the federation's final global model into STATE/final_policy.pt (the run
        checkpoint's format: `secure-fedrl personalise --model` reads it). A DP release, not
        the site's data. An earlier run's file is removed first, so a server that withholds the
        model leaves none; a missing, mis-sized or non-finite model, or a failed write, is logged
        and the site still exits 0: only its fine-tune start is lost."""
        path = self.state_dir / FINAL_MODEL_FILE
        path.unlink(missing_ok=True)
        try:
            round_id, params = self.transport.fetch_model(values=self.site.dim)
            if not np.isfinite(params).all():
                raise TransportError("INVALID_ARGUMENT", "the server's final model has non-finite values")
        except TransportError as err:
            log_event("final_model_unavailable", site=self.site.name, reason=str(err))
            return
        signed = self.site.signed_heads  # the run, as this site countersigned its ledger (none yet: no head)
        head = head_record((max(signed), signed[max(signed)]) if signed else None)
        buffer = io.BytesIO()
        torch.save({"global_params": torch.from_numpy(np.asarray(params, dtype=np.float32).copy()),
                    "round": int(round_id), "federation": self.config.federation.name, "ledger_head": head}, buffer)
        try:
            atomic_write(path, buffer.getvalue(), mode=0o600)
        except OSError as err:
            log_event("final_model_unavailable", site=self.site.name, reason=f"cannot write {path}: {err}")
            return
        log_event("final_model_kept", site=self.site.name, round=int(round_id), level="info")

    def train_ahead(self, info: Any):
        """FedBuff: fetch the model now, train on it at this site's pace, report ready."""
        from secure_fedrl.runtime.round import train_ahead

        version, model = self.transport.fetch_model(values=self.site.dim)  # refused before buffering
        if not np.isfinite(model).all():
            log_event("model_refused", site=self.site.name, version=version, reason="non-finite values")
            return None  # nothing trained ahead, no Ready: take_part refuses a round without an update
        with Heartbeater(self.transport, max(1.0, info.heartbeat_interval_s)):
            ahead = train_ahead(self.site, version, model)
        self.save()  # the local critic moved; the update itself is re-trained after a restart
        self.transport.ready(ahead.version)
        log_event("site_ready", site=self.site.name, version=version, level="info")
        return ahead

    def read_notice(self, notice: bytes) -> None:
        """The previous round's outcome: keep our proposals if included; countersign the head."""
        if not notice:
            return
        parsed = parse_notice(notice)
        if parsed is None:
            log_event("notice_malformed", site=self.site.name)
            return
        r, included, head, rows = parsed
        self.site.last_round = max(self.site.last_round, r)  # the server closed round r
        if self.site.pending is not None and self.site.pending_round == r:
            self.site.settle(r, self.site.name in included)
        if head is not None and r in self.took_part and r not in self.site.witnessed:
            self.witness(r, *head, rows=rows)

    def witness(self, r: int, seq: int, row_hash: str, rows: list[str] = ()) -> None:
        """Countersign one ledger head, never two histories: a seq signed before is re-signed only
        with the same hash, and never a seq below the highest signed (the log is in the state,
        saved before the signature leaves)."""
        from secure_fedrl.ledger.witness import sign_witness

        from secure_fedrl.errors import LedgerError
        from secure_fedrl.ledger.witness import check_extension

        signed = self.site.signed_heads
        if signed.get(seq, row_hash) != row_hash or (seq not in signed and signed and seq < max(signed)):
            log_event("witness_refused", site=self.site.name, seq=seq,
                      reason="the server shows a head that contradicts one this site countersigned")
            return
        if seq not in signed and signed:  # the new head must extend the last one we signed
            last = max(signed)
            try:
                check_extension(signed_seq=last, signed_hash=signed[last], rows=rows_since(rows, last),
                                seq=seq, row_hash=row_hash, config_hash=self.config.fingerprint())
            except LedgerError as exc:
                log_event("witness_refused", site=self.site.name, seq=seq, reason=str(exc))
                return
        if seq not in signed:
            signed[seq] = row_hash
            while len(signed) > 64:
                del signed[min(signed)]
            self.save()
        sig = sign_witness(self.site.identity_key, federation=self.config.federation.name, seq=seq,
                           row_hash=row_hash, config_hash=self.config.fingerprint())
        try:
            self.transport.witness(seq, row_hash, sig)
            self.site.witnessed.add(r)
        except TransportError as err:
            log_event("witness_failed", site=self.site.name, seq=seq, status=err.status, reason=str(err))


STATE_MAGIC = b"secure-fedrl site state v1\n"
FINAL_MODEL_FILE = "final_policy.pt"  # the federation's last global model, kept by each site


def rows_since(rows: list[str], seq: int) -> list[str]:
    """The shown rows after `seq` (the notice may start earlier, for sites that signed less)."""
    out = []
    for text in rows:
        try:
            if json.loads(text).get("seq", 0) > seq:
                out.append(text)
        except (ValueError, AttributeError):
            out.append(text)  # check_extension refuses it
    return out


def parse_notice(notice: bytes) -> tuple[int, set[str], tuple[int, str] | None, list[str]] | None:
    """(round, included sites, (seq, row hash) or None, canonical rows shown) of a notice, or
    None when malformed."""
    try:
        data = json.loads(notice.decode())
        r = data["round"]
        included = data.get("included", [])
        head = data.get("ledger_head")
        if not isinstance(r, int) or isinstance(r, bool) or r < 0 or not isinstance(included, list) or \
                not all(isinstance(n, str) for n in included):
            return None
        if head is not None:
            seq, row_hash = head["seq"], head["row_hash"]
            if not isinstance(seq, int) or isinstance(seq, bool) or seq < 1 or not isinstance(row_hash, str) or \
                    len(row_hash) != 64 or any(c not in "0123456789abcdef" for c in row_hash):
                return None
            head = (seq, row_hash)
        rows = data.get("rows", [])
        if not isinstance(rows, list) or not all(isinstance(x, str) for x in rows):
            return None
        return r, set(included), head, rows
    except (ValueError, UnicodeDecodeError, KeyError, TypeError, AttributeError):
        return None


def join(config: Config, names: list[str], *, server: str, pki: Path, state: Path | None,
         give_up_after: float = 600.0) -> int:
    """Run one or more sites (one channel and state directory each) until the federation ends,
    or until a site has not reached the server for `give_up_after` seconds."""
    base = Path(state) if state is not None else Path("site-state")
    procs = [SiteProcess(config, n, server=server, pki=pki, state=base / n if len(names) > 1 or state is None else base)
             for n in names]
    if len(procs) == 1:
        return procs[0].run(give_up_after=give_up_after)
    codes: dict[str, int] = {}

    def run(p: SiteProcess) -> None:
        try:
            codes[p.site.name] = p.run(give_up_after=give_up_after)
        except Exception as exc:  # noqa: BLE001 - one site's failure is reported, the others go on
            log_event("site_failed", site=p.site.name, reason=str(exc), level="error")
            codes[p.site.name] = 1

    threads = [threading.Thread(target=run, args=(p,), name=f"join-{p.site.name}") for p in procs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return max(codes.values(), default=1)
