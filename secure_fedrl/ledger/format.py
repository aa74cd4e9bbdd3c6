"""Pure core of the privacy ledger: rows, their canonical encoding, and the chain check.

No I/O here: `store.py` owns SQLite and the key file. Everything an auditor must reproduce
(canonical bytes, hashes, what is signed) lives in this file and is specified byte-for-byte in
FORMAT.md, so that `audit/verify_ledger.py` (or a verifier in another language) can re-implement it.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from secure_fedrl.errors import LedgerError

ROW_FORMAT = "secure-fedrl/ledger-row/v2"
HEAD_FORMAT = "secure-fedrl/ledger-head/v1"
GENESIS_HASH = "0" * 64
"""`prev_hash` of the first row (seq 1), and the head's `row_hash` of an empty ledger."""

UNITS = ("client", "trajectory")
THREAT_MODELS = ("server", "release")
SAMPLING = ("secret", "reproducible")
V2_KEYS = ("epsilon_release", "epsilon_server", "max_colluding", "noise_shares", "params",
           "participants", "sampling", "site_budget", "site_epsilon_server", "threat_model")
"""Members the v2 row encoding adds to v1's (FORMAT.md, "Privacy semantics (v2)"); stored
together in the `privacy` column as the canonical JSON object `encode_v2` writes."""
_MAX_STR = 256

# Why a chain check failed; `LedgerChainError.reason` is one of these.
EDITED = "edited"
DELETED = "deleted"
REORDERED = "reordered"
BAD_SIGNATURE = "bad signature"
CONFIG_HASH_MISMATCH = "config hash mismatch"
CHAIN_BROKEN = "chain broken"
STALE_HEAD = "stale head"


class LedgerChainError(LedgerError):
    """The ledger's content fails verification; `seq` names the first bad row, `reason` why."""

    def __init__(self, seq: int | None, reason: str, detail: str) -> None:
        self.seq = seq
        self.reason = reason
        self.detail = detail
        where = f"row seq {seq}" if seq is not None else "ledger"
        super().__init__(f"{where}: {reason}: {detail}")


def _check_text(name: str, value: Any, *, allow_none: bool = False) -> None:
    """Strings are printable ASCII without quote or backslash, so their JSON form needs no escaping."""
    if value is None and allow_none:
        return
    if not isinstance(value, str) or not value:
        raise LedgerError(f"ledger field {name!r} must be a non-empty string, got {value!r}")
    if len(value) > _MAX_STR:
        raise LedgerError(f"ledger field {name!r} is longer than {_MAX_STR} characters")
    bad = [c for c in value if not (0x20 <= ord(c) <= 0x7E) or c in '"\\']
    if bad:
        raise LedgerError(f"ledger field {name!r} has a character outside printable ASCII "
                          f"(or a quote/backslash): {bad[0]!r}")


def _check_int(name: str, value: Any, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise LedgerError(f"ledger field {name!r} must be an int, got {value!r}")
    if not minimum <= value < 2**53:
        raise LedgerError(f"ledger field {name!r} must be in [{minimum}, 2^53), got {value}")


def _as_float(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise LedgerError(f"ledger field {name!r} must be a number, got {value!r}")
    value = float(value)
    if math.isnan(value):
        raise LedgerError(f"ledger field {name!r} is NaN")
    return value + 0.0  # -0.0 -> 0.0: SQLite would not keep the sign, and the signature covers it


def _positive_finite(name: str, value: Any) -> float:
    v = _as_float(name, value)
    if not (0.0 < v < math.inf):
        raise LedgerError(f"ledger field {name!r} must be finite and > 0, got {value!r}")
    return v


@dataclass(frozen=True)
class LedgerEntry:
    """What the round loop knows about one round's privacy spend; the ledger adds seq, time, chain.

    `epsilon` is the CUMULATIVE epsilon after this row (per accountant name; for trajectory-level
    rows, of this row's site), not the round's increment, so a reader needs only the last row.
    """

    round: int
    """Round id; strictly increasing for client-level rows, unique per site for trajectory rows."""
    unit: str
    """"client" (site = None) or "trajectory" (site = the site whose spend this row records)."""
    mechanism: str
    """Mechanism name, e.g. "gaussian", "ddg", "dp-sgd" (FORMAT.md lists what the auditor knows)."""
    clip: float
    """Clipping norm C (> 0)."""
    sigma_planned: float
    """Noise multiplier the round was planned with (> 0)."""
    sigma_effective: float
    """Noise multiplier actually achieved (fewer survivors, rounding inflation) and accounted (> 0)."""
    sample_rate: float
    """Poisson sampling rate q in (0, 1] of the accounted unit (sites, or trajectories)."""
    sites_planned: int
    """Sites selected for the round (>= 1)."""
    sites_survived: int
    """Sites whose update made it into the released sum (0 <= survived <= planned)."""
    accountant: str
    """Name of the accountant whose epsilon the budget is enforced on; must be a key of epsilon."""
    epsilon: Mapping[str, float]
    """Cumulative epsilon per accountant after this row (>= 0; +inf allowed, NaN not)."""
    delta: float
    """The delta every epsilon above is stated for, in (0, 1)."""
    site: str | None = None
    """Site id for trajectory-level rows, None for client-level rows."""
    steps: int = 1
    """Number of noisy compositions this row accounts (1 per client-level round; local DP-SGD steps)."""
    # -- v2: both guarantees and what an auditor needs to recompute them (FORMAT.md) ------------
    threat_model: str = "server"
    """"server" or "release": the guarantee the budget targets; epsilon[accountant] is its value."""
    epsilon_server: float | None = None
    """Cumulative epsilon of the row's scope against the server (None: epsilon[accountant])."""
    epsilon_release: float | None = None
    """Cumulative epsilon of the row's scope against release-only observers (None: epsilon[accountant])."""
    noise_shares: int = 0
    """DDG: honest noise shares m every charge uses (min_honest_inputs); 0 for other mechanisms."""
    max_colluding: int = 0
    """secure_aggregation.max_colluding_sites the round ran against."""
    params: Mapping[str, float] = field(default_factory=dict)
    """Mechanism parameters (ddg: beta, bits, gamma, l2_bound, local_stddev, padded_dim)."""
    participants: Sequence[str] = ()
    """Client-level rows: the sites charged this round (their masked input or update left them)."""
    site_epsilon_server: Mapping[str, float] = field(default_factory=dict)
    """Client-level ddg rows: each participant's cumulative epsilon against the server after it."""
    sampling: str = "secret"
    """"secret" (OS CSPRNG) or "reproducible" (privacy.reproducible_noise: no guarantee)."""
    site_budget: float = math.inf
    """Epsilon (at `delta`) beyond which each site refuses rounds against the server; +inf when
    sites do not refuse (release threat model). The capped release bound uses it."""

    def __post_init__(self) -> None:
        _check_int("round", self.round, minimum=0)
        if self.unit not in UNITS:
            raise LedgerError(f"ledger field 'unit' must be one of {UNITS}, got {self.unit!r}")
        if self.unit == "client" and self.site is not None:
            raise LedgerError("client-level ledger rows have site=None; got a site id")
        if self.unit == "trajectory" and self.site is None:
            raise LedgerError("trajectory-level ledger rows need the site id")
        _check_text("site", self.site, allow_none=True)
        _check_text("mechanism", self.mechanism)
        _check_text("accountant", self.accountant)
        object.__setattr__(self, "clip", _positive_finite("clip", self.clip))
        object.__setattr__(self, "sigma_planned", _positive_finite("sigma_planned", self.sigma_planned))
        object.__setattr__(self, "sigma_effective",
                           _positive_finite("sigma_effective", self.sigma_effective))
        q = _as_float("sample_rate", self.sample_rate)
        if not 0.0 < q <= 1.0:
            raise LedgerError(f"ledger field 'sample_rate' must be in (0, 1], got {self.sample_rate!r}")
        object.__setattr__(self, "sample_rate", q)
        d = _as_float("delta", self.delta)
        if not 0.0 < d < 1.0:
            raise LedgerError(f"ledger field 'delta' must be in (0, 1), got {self.delta!r}")
        object.__setattr__(self, "delta", d)
        _check_int("sites_planned", self.sites_planned, minimum=0)  # a Poisson draw may pick nobody
        _check_int("sites_survived", self.sites_survived, minimum=0)
        if self.sites_survived > self.sites_planned:
            raise LedgerError(f"sites_survived ({self.sites_survived}) exceeds sites_planned "
                              f"({self.sites_planned})")
        _check_int("steps", self.steps, minimum=1)
        if not isinstance(self.epsilon, Mapping) or not self.epsilon:
            raise LedgerError("ledger field 'epsilon' must be a non-empty mapping accountant -> epsilon")
        eps: dict[str, float] = {}
        for name in sorted(self.epsilon):
            _check_text("epsilon key", name)
            e = _as_float(f"epsilon[{name}]", self.epsilon[name])
            if e < 0.0:
                raise LedgerError(f"ledger field 'epsilon[{name}]' must be >= 0, got {e!r}")
            eps[name] = e
        if self.accountant not in eps:
            raise LedgerError(f"accountant {self.accountant!r} has no value in epsilon {sorted(eps)}")
        object.__setattr__(self, "epsilon", eps)
        self._check_v2(eps[self.accountant])

    def _check_v2(self, enforced: float) -> None:
        if self.threat_model not in THREAT_MODELS:
            raise LedgerError(f"ledger field 'threat_model' must be one of {THREAT_MODELS}, got "
                              f"{self.threat_model!r}")
        if self.sampling not in SAMPLING:
            raise LedgerError(f"ledger field 'sampling' must be one of {SAMPLING}, got {self.sampling!r}")
        for name in ("epsilon_server", "epsilon_release"):
            v = getattr(self, name)
            v = enforced if v is None else _as_float(name, v)
            if v < 0.0:
                raise LedgerError(f"ledger field {name!r} must be >= 0, got {v!r}")
            object.__setattr__(self, name, v)
        b = _as_float("site_budget", self.site_budget)
        if not b > 0.0:
            raise LedgerError(f"ledger field 'site_budget' must be > 0 (+inf allowed), got {b!r}")
        object.__setattr__(self, "site_budget", b)
        _check_int("noise_shares", self.noise_shares, minimum=0)
        _check_int("max_colluding", self.max_colluding, minimum=0)
        if not isinstance(self.params, Mapping):
            raise LedgerError("ledger field 'params' must be a mapping name -> number")
        params: dict[str, float] = {}
        for name in sorted(self.params):
            _check_text("params key", name)
            v = _as_float(f"params[{name}]", self.params[name])
            if math.isinf(v):
                raise LedgerError(f"ledger field 'params[{name}]' must be finite")
            params[name] = v
        object.__setattr__(self, "params", params)
        if isinstance(self.participants, str) or not isinstance(self.participants, Sequence):
            raise LedgerError("ledger field 'participants' must be a sequence of site ids")
        for p in self.participants:
            _check_text("participants", p)
        parts = tuple(sorted(self.participants))
        if len(set(parts)) != len(parts):
            raise LedgerError("ledger field 'participants' lists a site twice")
        object.__setattr__(self, "participants", parts)
        if not isinstance(self.site_epsilon_server, Mapping):
            raise LedgerError("ledger field 'site_epsilon_server' must be a mapping site -> epsilon")
        per_site: dict[str, float] = {}
        for name in sorted(self.site_epsilon_server):
            _check_text("site_epsilon_server key", name)
            v = _as_float(f"site_epsilon_server[{name}]", self.site_epsilon_server[name])
            if v < 0.0:
                raise LedgerError(f"ledger field 'site_epsilon_server[{name}]' must be >= 0")
            per_site[name] = v
        if not set(per_site) <= set(parts):
            raise LedgerError("ledger field 'site_epsilon_server' names a site that is not a participant")
        object.__setattr__(self, "site_epsilon_server", per_site)


@dataclass(frozen=True)
class LedgerRow:
    """One stored row: the entry plus what the ledger adds. Immutable, like the table."""

    seq: int
    time: str
    """UTC time of the append, "YYYY-MM-DDTHH:MM:SS.ffffffZ"."""
    config_hash: str
    prev_hash: str
    signature: str
    """Ed25519 signature over canonical_bytes(row), 128 lowercase hex digits."""
    entry: LedgerEntry
    _hash: str = field(default="", init=False, repr=False, compare=False)

    # Read-through accessors, so callers write row.round rather than row.entry.round.
    @property
    def round(self) -> int:
        return self.entry.round

    @property
    def unit(self) -> str:
        return self.entry.unit

    @property
    def site(self) -> str | None:
        return self.entry.site

    @property
    def mechanism(self) -> str:
        return self.entry.mechanism

    @property
    def clip(self) -> float:
        return self.entry.clip

    @property
    def sigma_planned(self) -> float:
        return self.entry.sigma_planned

    @property
    def sigma_effective(self) -> float:
        return self.entry.sigma_effective

    @property
    def sample_rate(self) -> float:
        return self.entry.sample_rate

    @property
    def sites_planned(self) -> int:
        return self.entry.sites_planned

    @property
    def sites_survived(self) -> int:
        return self.entry.sites_survived

    @property
    def accountant(self) -> str:
        return self.entry.accountant

    @property
    def epsilon(self) -> Mapping[str, float]:
        return self.entry.epsilon

    @property
    def delta(self) -> float:
        return self.entry.delta

    @property
    def steps(self) -> int:
        return self.entry.steps

    @property
    def threat_model(self) -> str:
        return self.entry.threat_model

    @property
    def epsilon_server(self) -> float:
        return self.entry.epsilon_server

    @property
    def epsilon_release(self) -> float:
        return self.entry.epsilon_release

    @property
    def noise_shares(self) -> int:
        return self.entry.noise_shares

    @property
    def max_colluding(self) -> int:
        return self.entry.max_colluding

    @property
    def params(self) -> Mapping[str, float]:
        return self.entry.params

    @property
    def participants(self) -> Sequence[str]:
        return self.entry.participants

    @property
    def site_epsilon_server(self) -> Mapping[str, float]:
        return self.entry.site_epsilon_server

    @property
    def sampling(self) -> str:
        return self.entry.sampling

    @property
    def site_budget(self) -> float:
        return self.entry.site_budget

    @property
    def hash(self) -> str:
        """SHA-256 hex of canonical_bytes(self): what the next row's prev_hash must equal."""
        if not self._hash:
            object.__setattr__(self, "_hash", hashlib.sha256(canonical_bytes(self)).hexdigest())
        return self._hash


def f64(value: float) -> str:
    """IEEE-754 binary64, big-endian, 16 lowercase hex digits: exact and trivial in any language."""
    return struct.pack(">d", value).hex()


def from_f64(text: str) -> float:
    return struct.unpack(">d", bytes.fromhex(text))[0]


def _dumps(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      allow_nan=False).encode("ascii")


def _v2_members(e: LedgerEntry) -> dict[str, Any]:
    return {
        "epsilon_release": f64(e.epsilon_release),
        "epsilon_server": f64(e.epsilon_server),
        "max_colluding": e.max_colluding,
        "noise_shares": e.noise_shares,
        "params": {k: f64(v) for k, v in e.params.items()},
        "participants": list(e.participants),
        "sampling": e.sampling,
        "site_budget": f64(e.site_budget),
        "site_epsilon_server": {k: f64(v) for k, v in e.site_epsilon_server.items()},
        "threat_model": e.threat_model,
    }


def encode_v2(entry: LedgerEntry) -> str:
    """Storage form of the `privacy` column: the v2 members exactly as canonical_bytes embeds them."""
    return _dumps(_v2_members(entry)).decode("ascii")


def decode_v2(text: str) -> dict[str, Any]:
    """LedgerEntry keyword arguments from the `privacy` column (inverse of encode_v2)."""
    obj = json.loads(text)
    if not isinstance(obj, dict) or sorted(obj) != sorted(V2_KEYS):
        raise LedgerError(f"privacy column is not a v2 object with keys {V2_KEYS}: {text[:60]!r}")
    return {
        "epsilon_release": from_f64(obj["epsilon_release"]),
        "epsilon_server": from_f64(obj["epsilon_server"]),
        "max_colluding": obj["max_colluding"],
        "noise_shares": obj["noise_shares"],
        "params": {k: from_f64(v) for k, v in obj["params"].items()},
        "participants": tuple(obj["participants"]),
        "sampling": obj["sampling"],
        "site_budget": from_f64(obj["site_budget"]),
        "site_epsilon_server": {k: from_f64(v) for k, v in obj["site_epsilon_server"].items()},
        "threat_model": obj["threat_model"],
    }


def canonical_bytes(row: LedgerRow) -> bytes:
    """The bytes that are hashed (chain) and signed: sorted-key JSON, no whitespace (FORMAT.md)."""
    e = row.entry
    return _dumps({
        **_v2_members(e),
        "accountant": e.accountant,
        "clip": f64(e.clip),
        "config_hash": row.config_hash,
        "delta": f64(e.delta),
        "epsilon": {k: f64(v) for k, v in e.epsilon.items()},
        "format": ROW_FORMAT,
        "mechanism": e.mechanism,
        "prev_hash": row.prev_hash,
        "round": e.round,
        "sample_rate": f64(e.sample_rate),
        "seq": row.seq,
        "sigma_effective": f64(e.sigma_effective),
        "sigma_planned": f64(e.sigma_planned),
        "site": e.site,
        "sites_planned": e.sites_planned,
        "sites_survived": e.sites_survived,
        "steps": e.steps,
        "time": row.time,
        "unit": e.unit,
    })


def row_hash(row: LedgerRow) -> str:
    return row.hash


def head_bytes(*, seq: int, row_hash: str, config_hash: str) -> bytes:
    """What the signed head covers: the last row's seq and hash (detects a truncated tail)."""
    return _dumps({"config_hash": config_hash, "format": HEAD_FORMAT, "row_hash": row_hash,
                   "seq": seq})


def encode_epsilon(epsilon: Mapping[str, float]) -> str:
    """Storage form of the epsilon column: the same object canonical_bytes embeds."""
    return _dumps({k: f64(v) for k, v in epsilon.items()}).decode("ascii")


def decode_epsilon(text: str) -> dict[str, float]:
    obj = json.loads(text)
    if not isinstance(obj, dict):
        raise LedgerError(f"epsilon column is not a JSON object: {text[:60]!r}")
    return {k: from_f64(v) for k, v in obj.items()}


def sign_row(row: LedgerRow, key: Ed25519PrivateKey) -> LedgerRow:
    sig = key.sign(canonical_bytes(row)).hex()
    return LedgerRow(seq=row.seq, time=row.time, config_hash=row.config_hash,
                     prev_hash=row.prev_hash, signature=sig, entry=row.entry)


@dataclass(frozen=True)
class SignedHead:
    """The ledger's signed pointer to its last row; empty ledger: seq 0, row_hash GENESIS_HASH."""

    seq: int
    row_hash: str
    signature: str


def public_key_from(value: Ed25519PublicKey | bytes | str) -> Ed25519PublicKey:
    """Accept a key object, its 32 raw bytes, or their 64 hex digits."""
    if isinstance(value, Ed25519PublicKey):
        return value
    try:
        raw = bytes.fromhex(value) if isinstance(value, str) else bytes(value)
        return Ed25519PublicKey.from_public_bytes(raw)
    except ValueError as exc:
        raise LedgerError(f"not an Ed25519 public key (32 raw bytes / 64 hex digits): {exc}") from None


def _sig_ok(key: Ed25519PublicKey, signature: str, message: bytes) -> bool:
    try:
        key.verify(bytes.fromhex(signature), message)
        return True
    except (InvalidSignature, ValueError, TypeError):
        return False


def _with_seq(row: LedgerRow, seq: int) -> LedgerRow:
    return LedgerRow(seq=seq, time=row.time, config_hash=row.config_hash, prev_hash=row.prev_hash,
                     signature=row.signature, entry=row.entry)


def _signed_seq(row: LedgerRow, key: Ed25519PublicKey, candidates: range) -> int | None:
    """The seq the row was really signed with, if its signature is valid under another seq."""
    for s in candidates:
        if s != row.seq and _sig_ok(key, row.signature, canonical_bytes(_with_seq(row, s))):
            return s
    return None


def verify_chain(rows: Sequence[LedgerRow], public_key: Ed25519PublicKey | bytes | str, *,
                 config_hash: str | None = None, head: SignedHead | None = None) -> None:
    """Check seq numbering, hash links, signatures (and the signed head); raise on the first bad row.

    Raises LedgerChainError (a LedgerError) whose `seq` is the first bad row and whose `reason` is
    one of: edited, deleted, reordered, bad signature, config hash mismatch, chain broken, stale
    head. The classification is best-effort forensics; the detection itself is not.
    """
    key = public_key_from(public_key)
    if head is not None and config_hash is None:
        raise LedgerError("verify_chain: checking the signed head needs the ledger's config_hash")
    n = len(rows)
    candidates = range(1, n + 2 + (head.seq if head is not None else 0))
    prev = GENESIS_HASH
    for pos, row in enumerate(rows):
        expected = pos + 1
        if row.seq != expected:
            if any(r.seq == expected for r in rows[pos + 1:]):
                raise LedgerChainError(expected, REORDERED, f"row seq {expected} appears after row "
                                       f"seq {row.seq}")
            if row.seq > expected:
                missing = (f"seq {expected}" if row.seq == expected + 1
                           else f"seqs {expected}..{row.seq - 1}")
                raise LedgerChainError(expected, DELETED, f"{missing} missing before row seq {row.seq}")
            raise LedgerChainError(expected, REORDERED, f"found seq {row.seq} at position {expected}")
        if config_hash is not None and row.config_hash != config_hash:
            raise LedgerChainError(row.seq, CONFIG_HASH_MISMATCH,
                                   f"row written for config {row.config_hash!r}, ledger is for "
                                   f"{config_hash!r}")
        if not _sig_ok(key, row.signature, canonical_bytes(row)):
            _explain_bad_signature(rows, pos, key, candidates, head)
        if row.prev_hash != prev:
            raise LedgerChainError(row.seq, CHAIN_BROKEN,
                                   "prev_hash does not match the previous row although the row is "
                                   "signed (rows spliced from another ledger under the same key?)")
        prev = row.hash
    if head is None:
        return
    last_seq = n
    if not _sig_ok(key, head.signature, head_bytes(seq=head.seq, row_hash=head.row_hash,
                                                   config_hash=config_hash or "")):
        raise LedgerChainError(None, BAD_SIGNATURE, "the ledger head's signature is invalid")
    if head.seq > last_seq:
        missing = (f"seq {last_seq + 1}" if head.seq == last_seq + 1
                   else f"seqs {last_seq + 1}..{head.seq}")
        raise LedgerChainError(last_seq + 1, DELETED, f"{missing} missing: the signed head records "
                               f"{head.seq} rows, found {last_seq}")
    if head.seq < last_seq:
        raise LedgerChainError(head.seq + 1, STALE_HEAD, f"the signed head stops at seq {head.seq} "
                               f"(head rolled back, or row added outside the ledger)")
    if head.row_hash != prev:
        raise LedgerChainError(last_seq or None, EDITED, "last row does not match the signed head")


def _explain_bad_signature(rows: Sequence[LedgerRow], pos: int, key: Ed25519PublicKey,
                           candidates: range, head: SignedHead | None) -> None:
    """Name why rows[pos]'s signature fails: moved (reordered / renumbered), edited, or re-signed."""
    row = rows[pos]
    true_seq = _signed_seq(row, key, candidates)
    if true_seq is not None:
        if any(_signed_seq(r, key, range(row.seq, row.seq + 1)) == row.seq for r in rows):
            raise LedgerChainError(row.seq, REORDERED, f"the row stored as seq {row.seq} was signed "
                                   f"as seq {true_seq}")
        if true_seq > row.seq:
            raise LedgerChainError(row.seq, DELETED, f"the row stored as seq {row.seq} was signed as "
                                   f"seq {true_seq}: rows deleted and the rest renumbered")
        raise LedgerChainError(row.seq, REORDERED, f"the row stored as seq {row.seq} was signed as "
                               f"seq {true_seq}")
    h = row.hash
    if pos + 1 < len(rows):
        successor_link = rows[pos + 1].prev_hash
    elif head is not None and head.seq == row.seq:
        successor_link = head.row_hash
    else:
        raise LedgerChainError(row.seq, BAD_SIGNATURE,
                               "signature invalid under the ledger key (row edited or signed by "
                               "another key)")
    if successor_link != h:
        raise LedgerChainError(row.seq, EDITED, "content differs from what the next link committed "
                               "to, and the signature does not match it")
    raise LedgerChainError(row.seq, BAD_SIGNATURE, "content matches the chain but the signature is "
                           "not by the ledger key")
