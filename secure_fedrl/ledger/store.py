"""The privacy ledger on disk: an append-only, hash-chained, signed SQLite table in the run dir.

Durability: WAL journal with synchronous=FULL, one transaction per append, so a row is on disk
(fsynced) when `append` returns. The round loop appends BEFORE it applies or releases a round's
aggregate: a crash can leave a row for a round that never finished (over-count), never the reverse.
Nothing here updates or deletes rows; SQLite triggers refuse it too (defence in depth — the hash
chain and signatures are the real check, verified in full on every open).

Key custody: the Ed25519 signing key never lives in the run directory (a key directory outside
it, 0700, key file 0600, optionally passphrase-encrypted PKCS#8), so a run directory that is
copied, archived or tampered with carries no means to re-sign a rewritten ledger. Signatures
alone cannot stop the key holder from rolling the ledger back to an older, consistently signed
copy: every checkpoint and metrics row records the ledger head (`head()`), and a resume (here,
`check_contains`) and the auditor compare them.
"""

from __future__ import annotations

import os
import sqlite3
import stat
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Mapping

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from secure_fedrl.fsutil import atomic_write, fsync_dir
from secure_fedrl.errors import LedgerError
from secure_fedrl.ledger.format import (
    CONFIG_HASH_MISMATCH,
    GENESIS_HASH,
    LedgerChainError,
    LedgerEntry,
    LedgerRow,
    SignedHead,
    _check_text,
    decode_epsilon,
    decode_v2,
    encode_epsilon,
    encode_v2,
    head_bytes,
    sign_row,
    verify_chain,
)
from secure_fedrl.ledger.witness import verify_witness

LEDGER_FILE = "privacy_ledger.sqlite"
KEY_FILE = "ledger_signing_key.pem"
PUBLIC_KEY_FILE = "ledger_public_key.hex"
PASSPHRASE_ENV = "SECURE_FEDRL_LEDGER_PASSPHRASE"
SCHEMA_VERSION = "2"  # v2 rows: epsilon_server / epsilon_release (FORMAT.md)
_PRIVATE_BITS = 0o077  # group/other permission bits: the key and its directory must have none

_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE rows (
    seq             INTEGER PRIMARY KEY,
    round           INTEGER NOT NULL,
    time            TEXT    NOT NULL,
    unit            TEXT    NOT NULL,
    site            TEXT,
    mechanism       TEXT    NOT NULL,
    clip            REAL    NOT NULL,
    sigma_planned   REAL    NOT NULL,
    sigma_effective REAL    NOT NULL,
    sample_rate     REAL    NOT NULL,
    steps           INTEGER NOT NULL,
    sites_planned   INTEGER NOT NULL,
    sites_survived  INTEGER NOT NULL,
    accountant      TEXT    NOT NULL,
    epsilon         TEXT    NOT NULL,
    delta           REAL    NOT NULL,
    config_hash     TEXT    NOT NULL,
    prev_hash       TEXT    NOT NULL,
    signature       TEXT    NOT NULL,
    privacy         TEXT    NOT NULL
);
CREATE TABLE head (
    id        INTEGER PRIMARY KEY CHECK (id = 1),
    seq       INTEGER NOT NULL,
    row_hash  TEXT    NOT NULL,
    signature TEXT    NOT NULL
);
CREATE TRIGGER rows_no_update BEFORE UPDATE ON rows
    BEGIN SELECT RAISE(ABORT, 'privacy ledger rows are append-only: UPDATE refused'); END;
CREATE TRIGGER rows_no_delete BEFORE DELETE ON rows
    BEGIN SELECT RAISE(ABORT, 'privacy ledger rows are append-only: DELETE refused'); END;
CREATE TRIGGER rows_seq_next BEFORE INSERT ON rows
    WHEN NEW.seq IS NOT (SELECT seq FROM head WHERE id = 1) + 1
    BEGIN SELECT RAISE(ABORT, 'privacy ledger rows must be appended with seq = head + 1'); END;
CREATE TRIGGER meta_no_update BEFORE UPDATE ON meta
    BEGIN SELECT RAISE(ABORT, 'privacy ledger meta is write-once: UPDATE refused'); END;
CREATE TRIGGER meta_no_delete BEFORE DELETE ON meta
    BEGIN SELECT RAISE(ABORT, 'privacy ledger meta is write-once: DELETE refused'); END;
CREATE TRIGGER head_no_delete BEFORE DELETE ON head
    BEGIN SELECT RAISE(ABORT, 'privacy ledger head cannot be deleted'); END;
CREATE TRIGGER head_advance_only BEFORE UPDATE ON head
    WHEN NEW.seq IS NOT OLD.seq + 1
    BEGIN SELECT RAISE(ABORT, 'privacy ledger head only advances by one row'); END;
"""

_WITNESS_SCHEMA = """
CREATE TABLE IF NOT EXISTS witnesses (
    seq        INTEGER NOT NULL,
    site       TEXT    NOT NULL,
    public_key TEXT    NOT NULL,
    signature  TEXT    NOT NULL,
    row_hash   TEXT    NOT NULL,
    PRIMARY KEY (seq, site)
);
CREATE TRIGGER IF NOT EXISTS witnesses_no_update BEFORE UPDATE ON witnesses
    BEGIN SELECT RAISE(ABORT, 'privacy ledger witnesses are append-only: UPDATE refused'); END;
CREATE TRIGGER IF NOT EXISTS witnesses_no_delete BEFORE DELETE ON witnesses
    BEGIN SELECT RAISE(ABORT, 'privacy ledger witnesses are append-only: DELETE refused'); END;
CREATE TRIGGER IF NOT EXISTS witnesses_known_seq BEFORE INSERT ON witnesses
    WHEN NEW.seq < 1 OR NEW.seq > (SELECT seq FROM head WHERE id = 1)
    BEGIN SELECT RAISE(ABORT, 'privacy ledger witnesses must countersign a row the ledger holds'); END;
"""
"""Witness countersignatures of ledger heads (FORMAT.md, "Witnesses"). Added without a schema
version bump: a ledger written before it has no such table, and `PrivacyLedger.open` creates
it; readers treat a missing table as no witnesses."""

Witness = tuple[int, str, str, str]
"""(seq, site, public key hex, signature hex), as `PrivacyLedger.witnesses()` returns them."""

_COLUMNS = ("seq, round, time, unit, site, mechanism, clip, sigma_planned, sigma_effective, "
            "sample_rate, steps, sites_planned, sites_survived, accountant, epsilon, delta, "
            "config_hash, prev_hash, signature, privacy")


def _utc_now() -> datetime:
    return datetime.now(timezone.utc)


def _format_time(t: datetime) -> str:
    if t.tzinfo is None:
        raise LedgerError("ledger clock returned a naive datetime; it must be timezone-aware")
    return t.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def default_key_dir(federation: str, *, environ: Mapping[str, str] | None = None) -> Path:
    """Where the server's ledger key lives when the operator names no key directory:
    ``$XDG_CONFIG_HOME/secure-fedrl/ledger-keys/<federation>`` (``~/.config`` without XDG), a
    per-user place that is never inside a run directory, so copying or publishing a run dir
    never hands over the key. One key per federation name: re-runs keep one public key to pin."""
    env = os.environ if environ is None else environ
    base = Path(env["XDG_CONFIG_HOME"]) if env.get("XDG_CONFIG_HOME") else Path.home() / ".config"
    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in federation).strip(".") or "federation"
    return base / "secure-fedrl" / "ledger-keys" / safe


def read_passphrase(passphrase_file: str | os.PathLike[str] | None = None, *,
                    environ: Mapping[str, str] | None = None) -> bytes | None:
    """The key's passphrase: from `passphrase_file` (first line; the file must be private, like
    the key), else from $SECURE_FEDRL_LEDGER_PASSPHRASE, else None (unencrypted key)."""
    env = os.environ if environ is None else environ
    if passphrase_file is not None:
        f = Path(passphrase_file)
        try:
            st = f.stat()
            text = f.read_bytes()
        except OSError as exc:
            raise LedgerError(f"ledger passphrase file {f}: {exc.strerror or exc}") from None
        if stat.S_IMODE(st.st_mode) & _PRIVATE_BITS:
            raise LedgerError(f"ledger passphrase file {f} is readable by others (mode "
                              f"{stat.S_IMODE(st.st_mode):04o}); chmod 600 {f}")
        value = text.split(b"\n", 1)[0].rstrip(b"\r")
        if not value:
            raise LedgerError(f"ledger passphrase file {f} is empty")
        return value
    value = env.get(PASSPHRASE_ENV)
    if value is None:
        return None
    if not value:
        raise LedgerError(f"{PASSPHRASE_ENV} is set but empty")
    return value.encode()


def _is_within(inner: Path, outer: Path) -> bool:
    try:
        inner.resolve().relative_to(outer.resolve())
        return True
    except ValueError:
        return False


def _check_private(path: Path, what: str, fix: str) -> None:
    """Refuse a key (or key directory) that another local user could read or replace."""
    st = path.stat()
    mode = stat.S_IMODE(st.st_mode)
    if mode & _PRIVATE_BITS:
        raise LedgerError(f"{what} {path} is accessible by group/others (mode {mode:04o}); {fix}")
    if hasattr(os, "getuid") and st.st_uid != os.getuid():
        raise LedgerError(f"{what} {path} belongs to another user (uid {st.st_uid})")


def public_key_hex(key: Ed25519PrivateKey) -> str:
    return key.public_key().public_bytes(serialization.Encoding.Raw,
                                         serialization.PublicFormat.Raw).hex()


def load_signing_key(key_dir: str | os.PathLike[str], *, run_dir: str | os.PathLike[str],
                     passphrase: bytes | None = None, create: bool) -> Ed25519PrivateKey:
    """The server's ledger key from `key_dir` (created there, 0600 in a 0700 directory, when
    `create` and absent). Refuses a key directory inside the run directory, a key or directory
    others can access, a wrong or missing passphrase. With a passphrase the PEM is encrypted
    PKCS#8 (cryptography's BestAvailableEncryption)."""
    d = Path(key_dir)
    if _is_within(d, Path(run_dir)):
        raise LedgerError(f"ledger key directory {d} is inside the run directory {run_dir}: keep "
                          f"the signing key outside it (whoever gets the run directory must not "
                          f"get the key)")
    key_path = d / KEY_FILE
    if not key_path.exists():
        if not create:
            raise LedgerError(f"no ledger signing key in {d} ({KEY_FILE} missing); resuming needs "
                              f"the key the ledger was created with")
        return _create_key(d, passphrase)
    return _load_key(d, passphrase)


_ENCRYPTED_PEM = b"-----BEGIN ENCRYPTED PRIVATE KEY-----"


def _load_key(d: Path, passphrase: bytes | None) -> Ed25519PrivateKey:
    key_path = d / KEY_FILE
    _check_private(d, "ledger key directory", f"chmod 700 {d}")
    _check_private(key_path, "ledger signing key", f"chmod 600 {key_path}")
    pem = key_path.read_bytes()
    try:
        key = serialization.load_pem_private_key(pem, password=passphrase)
    except TypeError as exc:
        if passphrase is None:
            raise LedgerError(f"ledger signing key {key_path} is encrypted: set {PASSPHRASE_ENV} "
                              f"or pass --ledger-passphrase-file") from None
        raise LedgerError(f"ledger signing key {key_path} is not encrypted but a passphrase was "
                          f"given ({exc})") from None
    except ValueError as exc:
        # A wrong passphrase usually fails the CBC padding ("bad decrypt"), but about 1 in 256
        # leaves valid padding over garbage, which fails as ASN.1 instead: both mean the same.
        if passphrase is not None and pem.lstrip().startswith(_ENCRYPTED_PEM):
            raise LedgerError(f"wrong passphrase for ledger signing key {key_path} (or the key "
                              f"file is damaged)") from None
        raise LedgerError(f"ledger signing key {key_path} is unreadable: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise LedgerError(f"ledger signing key {key_path} is not an Ed25519 private key")
    return key


def _create_key(d: Path, passphrase: bytes | None) -> Ed25519PrivateKey:
    if d.exists():
        _check_private(d, "ledger key directory", f"chmod 700 {d}")
    else:
        try:
            d.mkdir(parents=True, mode=0o700)
        except OSError as exc:
            raise LedgerError(f"cannot create ledger key directory {d}: {exc.strerror or exc}") from None
        os.chmod(d, 0o700)
    key = Ed25519PrivateKey.generate()  # os.urandom-backed
    enc = (serialization.BestAvailableEncryption(passphrase) if passphrase
           else serialization.NoEncryption())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, enc)
    key_path = d / KEY_FILE
    tmp = d / f".{KEY_FILE}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, pem)
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, key_path)  # never replaces a key another process created meanwhile
    except FileExistsError:
        os.unlink(tmp)
        return _load_key(d, passphrase)
    os.unlink(tmp)
    pub = d / PUBLIC_KEY_FILE
    atomic_write(pub, (public_key_hex(key) + "\n").encode())
    fsync_dir(d)
    return key


def _row_from_sql(r: tuple, *, strict: bool) -> LedgerRow:
    (seq, rnd, time, unit, site, mechanism, clip, sp, se, q, steps, planned, survived, accountant,
     eps, delta, config_hash, prev_hash, signature, v2) = r
    try:
        entry = LedgerEntry(round=rnd, unit=unit, site=site, mechanism=mechanism, clip=clip,
                            sigma_planned=sp, sigma_effective=se, sample_rate=q, steps=steps,
                            sites_planned=planned, sites_survived=survived, accountant=accountant,
                            epsilon=decode_epsilon(eps), delta=delta, **decode_v2(v2))
    except (LedgerError, ValueError, TypeError, AttributeError) as exc:
        if strict:
            raise LedgerChainError(seq, "edited", f"row no longer parses: {exc}") from None
        raise
    return LedgerRow(seq=seq, time=time, config_hash=config_hash, prev_hash=prev_hash,
                     signature=signature, entry=entry)


def _read_witness_rows(conn: sqlite3.Connection) -> list[tuple[int, str, str, str, str]]:
    """(seq, site, public_key, signature, row_hash) rows; none when the table is absent (a
    ledger written before witnesses existed)."""
    if conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'witnesses'"
                    ).fetchone() is None:
        return []
    return [tuple(r) for r in conn.execute(
        "SELECT seq, site, public_key, signature, row_hash FROM witnesses ORDER BY seq, site")]


def _check_witnesses(p: Path, stored: list[tuple[int, str, str, str, str]], rows: list[LedgerRow],
                     *, federation: str, config_hash: str) -> None:
    """Every stored witness countersigns the row the ledger holds at its seq (LedgerError if not)."""
    for seq, site, pub, sig, signed_hash in stored:
        try:
            ok = (isinstance(seq, int) and 1 <= seq <= len(rows) and verify_witness(
                bytes.fromhex(pub), bytes.fromhex(sig), federation=federation, seq=seq,
                row_hash=rows[seq - 1].hash, config_hash=config_hash))
        except (ValueError, TypeError):
            ok = False
        if not ok:
            what = ("the row was rewritten after the site countersigned it"
                    if isinstance(seq, int) and 1 <= seq <= len(rows)
                    and signed_hash != rows[seq - 1].hash else "the witness was altered or forged")
            raise LedgerError(f"privacy ledger {p}: witness of site {site!r} for row {seq} does "
                              f"not verify: {what}")


def _open_read_only(path: str | os.PathLike[str]) -> tuple[Path, sqlite3.Connection]:
    """(ledger file, read-only connection) for a ledger file or a run directory holding one."""
    p = Path(path)
    if p.is_dir():
        p = p / LEDGER_FILE
    if not p.is_file():
        raise LedgerError(f"privacy ledger {p} is missing")
    try:
        return p, sqlite3.connect(p.resolve().as_uri() + "?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise LedgerError(f"privacy ledger {p} is unreadable: {exc}") from None


def read_witnesses(path: str | os.PathLike[str]) -> list[Witness]:
    """A ledger's witness countersignatures (seq, site, public key hex, signature hex), read-only
    and NOT verified (verification needs the federation name: `PrivacyLedger.open(federation=)`
    or audit/verify_ledger.py with the sites' pinned keys)."""
    p, conn = _open_read_only(path)
    try:
        try:
            return [r[:4] for r in _read_witness_rows(conn)]
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise LedgerError(f"privacy ledger {p} is unreadable: {exc}") from None


def read_ledger(path: str | os.PathLike[str], *, config_hash: str | None = None,
                public_key: str | None = None) -> list[LedgerRow]:
    """Verify and return a ledger's rows without its signing key, writing nothing (reports,
    `--resume` checks). Pin `public_key` (hex) and `config_hash` where they are known."""
    p, conn = _open_read_only(path)
    try:
        try:
            meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
            raw_rows = conn.execute(f"SELECT {_COLUMNS} FROM rows ORDER BY seq").fetchall()
            head_row = conn.execute("SELECT seq, row_hash, signature FROM head WHERE id = 1").fetchone()
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise LedgerError(f"privacy ledger {p} is unreadable: {exc}") from None
    if meta.get("format") != "secure-fedrl-ledger" or meta.get("schema_version") != SCHEMA_VERSION:
        raise LedgerError(f"{p} is not a secure-fedrl privacy ledger")
    if config_hash is not None and meta.get("config_hash") != config_hash:
        raise LedgerChainError(1 if raw_rows else None, CONFIG_HASH_MISMATCH,
                               f"{p} was written for config {meta.get('config_hash')!r}, "
                               f"expected {config_hash!r}")
    if public_key is not None and meta.get("public_key") != public_key.lower():
        raise LedgerError(f"privacy ledger {p} is signed by {meta.get('public_key')}, not by the "
                          f"pinned key {public_key.lower()}")
    if head_row is None:
        raise LedgerChainError(None, "deleted", f"{p}: the signed head is missing")
    rows = [_row_from_sql(r, strict=True) for r in raw_rows]
    verify_chain(rows, meta.get("public_key", ""), config_hash=meta.get("config_hash", ""),
                 head=SignedHead(*head_row))
    return rows


class PrivacyLedger:
    """Append-only privacy ledger; open with `PrivacyLedger.open`, never construct directly."""

    def __init__(self, conn: sqlite3.Connection, path: Path, key: Ed25519PrivateKey,
                 config_hash: str, rows: list[LedgerRow], clock: Callable[[], datetime], *,
                 federation: str | None = None,
                 witnesses: list[tuple[int, str, str, str, str]] | None = None) -> None:
        self._conn: sqlite3.Connection | None = conn
        self.federation = federation
        self._witnesses = list(witnesses or [])
        self.path = path
        self._key = key
        self.config_hash = config_hash
        self._rows = rows
        self._clock = clock
        self._lock = threading.Lock()  # the round loop may append from a worker thread
        self.public_key_hex = public_key_hex(key)

    # -- opening ---------------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | os.PathLike[str], *, signing_key: Ed25519PrivateKey | None = None,
             key_dir: str | os.PathLike[str] | None = None, passphrase: bytes | None = None,
             config_hash: str, create: bool = True,
             clock: Callable[[], datetime] = _utc_now,
             federation: str | None = None) -> "PrivacyLedger":
        """Open (or create) the ledger at `path` (a file, or a run directory holding
        privacy_ledger.sqlite) and verify the whole chain; raise LedgerError naming the first bad row.

        The signing key is `signing_key`, or read from `key_dir` (created there with a new
        ledger; see `load_signing_key`): never from the run directory, so that whoever holds the
        run directory cannot re-sign a rewritten or rolled-back ledger. Pass create=False when
        resuming: a missing ledger (or key) is then an error rather than a fresh, zero-spend one.

        `federation` (the federation name) is what witness countersignatures bind besides the
        config hash: given, the stored witnesses are verified too, and `add_witness` needs it
        (here or in the call).
        """
        _check_text("config_hash", config_hash)
        if federation is not None and (not isinstance(federation, str) or not federation):
            raise LedgerError(f"federation must be a non-empty string, got {federation!r}")
        p = Path(path)
        if p.is_dir():
            p = p / LEDGER_FILE
        if not create and not p.exists():
            raise LedgerError(f"privacy ledger {p} is missing (resuming a run needs its ledger)")
        if not p.parent.is_dir():
            raise LedgerError(f"ledger directory {p.parent} does not exist")
        if signing_key is not None and not isinstance(signing_key, Ed25519PrivateKey):
            raise LedgerError("signing_key must be an Ed25519PrivateKey")
        if signing_key is None and key_dir is None:
            raise LedgerError("privacy ledger: no signing key (pass key_dir=, a directory outside "
                              "the run directory, or signing_key=)")
        if signing_key is None:
            assert key_dir is not None
            signing_key = load_signing_key(key_dir, run_dir=p.parent, passphrase=passphrase,
                                           create=create and not p.exists())
        try:
            conn = sqlite3.connect(p, isolation_level=None, timeout=30.0, check_same_thread=False)
        except sqlite3.Error as exc:
            raise LedgerError(f"cannot open privacy ledger {p}: {exc}") from None
        try:
            return cls._init(conn, p, signing_key, config_hash, clock, allow_create=create,
                             federation=federation)
        except BaseException:
            conn.close()
            raise

    @classmethod
    def _init(cls, conn: sqlite3.Connection, p: Path, key: Ed25519PrivateKey,
              config_hash: str, clock: Callable[[], datetime], *,
              allow_create: bool, federation: str | None = None) -> "PrivacyLedger":
        try:
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            conn.execute("PRAGMA synchronous=FULL")
            if mode.lower() != "wal" or conn.execute("PRAGMA synchronous").fetchone()[0] != 2:
                raise LedgerError(f"privacy ledger {p}: cannot enable WAL + synchronous=FULL")
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            if tables and not {"meta", "rows", "head"} <= tables:
                raise LedgerError(f"{p} is not a secure-fedrl privacy ledger (tables {sorted(tables)})")
            create = not tables  # an interrupted creation committed nothing: start over
            if create and not allow_create:
                raise LedgerError(f"privacy ledger {p} is empty (resuming a run needs its ledger)")
            pub = public_key_hex(key)
            if create:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    for stmt in (_SCHEMA + _WITNESS_SCHEMA).split(";\n"):
                        if stmt.strip():
                            conn.execute(stmt)
                    meta = {"format": "secure-fedrl-ledger", "schema_version": SCHEMA_VERSION,
                            "public_key": pub, "config_hash": config_hash,
                            "created": _format_time(clock())}
                    conn.executemany("INSERT INTO meta (key, value) VALUES (?, ?)", meta.items())
                    sig = key.sign(head_bytes(seq=0, row_hash=GENESIS_HASH, config_hash=config_hash))
                    conn.execute("INSERT INTO head (id, seq, row_hash, signature) VALUES (1, 0, ?, ?)",
                                 (GENESIS_HASH, sig.hex()))
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
                fsync_dir(p.parent)
            meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
            raw_rows = conn.execute(f"SELECT {_COLUMNS} FROM rows ORDER BY seq").fetchall()
            head_row = conn.execute("SELECT seq, row_hash, signature FROM head WHERE id = 1").fetchone()
            stored_witnesses = _read_witness_rows(conn)
        except sqlite3.Error as exc:
            raise LedgerError(f"privacy ledger {p} is unreadable: {exc}") from None
        if meta.get("format") != "secure-fedrl-ledger" or meta.get("schema_version") != SCHEMA_VERSION:
            raise LedgerError(f"{p} is not a secure-fedrl privacy ledger (schema "
                              f"{meta.get('schema_version')!r})")
        if meta.get("config_hash") != config_hash:
            raise LedgerChainError(1 if raw_rows else None, CONFIG_HASH_MISMATCH,
                                   f"{p} was written for config {meta.get('config_hash')!r}, "
                                   f"this run's is {config_hash!r}")
        if meta.get("public_key") != pub:
            raise LedgerError(f"privacy ledger {p}: the signing key does not match the ledger's "
                              f"public key {meta.get('public_key')} (this key: {pub}); resume "
                              f"with the key the ledger was created with")
        if head_row is None:
            raise LedgerChainError(None, "deleted", f"{p}: the signed head is missing")
        rows = [_row_from_sql(r, strict=True) for r in raw_rows]
        verify_chain(rows, pub, config_hash=config_hash, head=SignedHead(*head_row))
        if federation is not None:
            _check_witnesses(p, stored_witnesses, rows, federation=federation,
                             config_hash=config_hash)
        if not create and "witnesses" not in tables:
            try:
                cls._add_witness_table(conn)  # a ledger written before witnesses existed
            except sqlite3.Error as exc:
                raise LedgerError(f"privacy ledger {p}: cannot add the witnesses table: "
                                  f"{exc}") from None
        return cls(conn, p, key, config_hash, rows, clock, federation=federation,
                   witnesses=stored_witnesses)

    @staticmethod
    def _add_witness_table(conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            for stmt in _WITNESS_SCHEMA.split(";\n"):
                if stmt.strip():
                    conn.execute(stmt)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    # -- reading ---------------------------------------------------------------------------------
    def rows(self) -> list[LedgerRow]:
        """All rows, oldest first (verified on open, plus those appended since)."""
        return list(self._rows)

    def rows_after(self, round_id: int) -> list[LedgerRow]:
        """Rows of rounds > round_id: on resume from a checkpoint at round_id, the rounds whose
        spend is counted although their aggregate was never applied (they stay counted)."""
        return [r for r in self._rows if r.round > round_id]

    def head(self) -> tuple[int, str]:
        """(seq, row hash) of the last row, (0, GENESIS_HASH) when empty: recorded with every
        checkpoint and metrics row so that a rolled-back ledger is noticed."""
        if not self._rows:
            return 0, GENESIS_HASH
        return self._rows[-1].seq, self._rows[-1].hash

    def check_contains(self, seq: int, row_hash: str, *, what: str) -> None:
        """Refuse a ledger that does not hold row `seq` with hash `row_hash` (as recorded by
        `what`, e.g. the checkpoint): it was rolled back to an older copy, or rewritten."""
        if seq == 0 and row_hash == GENESIS_HASH:
            return
        if seq > len(self._rows):
            raise LedgerError(f"privacy ledger {self.path} ends at row {len(self._rows)} but {what} "
                              f"recorded row {seq}: the ledger was rolled back to an older copy")
        if seq < 1 or self._rows[seq - 1].hash != row_hash:
            raise LedgerError(f"privacy ledger {self.path} row {seq} is not the row {what} "
                              f"recorded: the ledger was rewritten")

    def witnesses(self) -> list[Witness]:
        """Stored witness countersignatures, (seq, site, public key hex, signature hex), by
        (seq, site)."""
        return [w[:4] for w in sorted(self._witnesses, key=lambda w: (w[0], w[1]))]

    def last_round(self) -> int | None:
        """Highest round id with a row, or None for an empty ledger; resume at last_round() + 1."""
        return max((r.round for r in self._rows), default=None)

    def cumulative_epsilon(self) -> dict[str, float]:
        """Epsilon spent so far per accountant: the last client-level row's, or for trajectory-level
        ledgers the worst site's (max over sites of each site's latest row)."""
        out: dict[str, float] = {}
        for eps in self.cumulative_epsilon_by_site().values():
            for name, value in eps.items():
                out[name] = max(out.get(name, 0.0), value)
        return out

    def cumulative_epsilon_by_site(self) -> dict[str | None, dict[str, float]]:
        """Latest cumulative epsilon per scope: key None for client-level, the site id otherwise."""
        latest: dict[str | None, dict[str, float]] = {}
        for r in self._rows:
            latest[r.site] = dict(r.epsilon)
        return latest

    # -- writing ---------------------------------------------------------------------------------
    def append(self, entry: LedgerEntry) -> LedgerRow:
        """Sign, chain and durably store one row; when this returns the row survives a crash.

        Call it BEFORE applying or releasing the round's aggregate. If it raises, nothing was
        recorded and the round must not be released.
        """
        if not isinstance(entry, LedgerEntry):
            raise LedgerError(f"append expects a LedgerEntry, got {type(entry).__name__}")
        with self._lock:
            return self._append(self._require_open(), entry)

    def _append(self, conn: sqlite3.Connection, entry: LedgerEntry) -> LedgerRow:
        self._check_order(entry)
        prev_hash = self._rows[-1].hash if self._rows else GENESIS_HASH
        seq = len(self._rows) + 1
        row = sign_row(LedgerRow(seq=seq, time=_format_time(self._clock()),
                                 config_hash=self.config_hash, prev_hash=prev_hash, signature="",
                                 entry=entry), self._key)
        head_sig = self._key.sign(head_bytes(seq=seq, row_hash=row.hash,
                                             config_hash=self.config_hash)).hex()
        e = entry
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                db_head = conn.execute("SELECT seq, row_hash FROM head WHERE id = 1").fetchone()
                if db_head != (seq - 1, prev_hash):
                    raise LedgerError(f"privacy ledger {self.path} was changed by another writer "
                                      f"(head {db_head}, expected seq {seq - 1})")
                conn.execute(
                    f"INSERT INTO rows ({_COLUMNS}) VALUES ({', '.join('?' * 20)})",
                    (seq, e.round, row.time, e.unit, e.site, e.mechanism, e.clip, e.sigma_planned,
                     e.sigma_effective, e.sample_rate, e.steps, e.sites_planned, e.sites_survived,
                     e.accountant, encode_epsilon(e.epsilon), e.delta, row.config_hash,
                     row.prev_hash, row.signature, encode_v2(e)))
                conn.execute("UPDATE head SET seq = ?, row_hash = ?, signature = ? WHERE id = 1",
                             (seq, row.hash, head_sig))
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise LedgerError(f"privacy ledger {self.path}: append of round {e.round} failed: "
                              f"{exc}") from None
        self._rows.append(row)
        return row

    def add_witness(self, *, seq: int, site: str, public_key: bytes, signature: bytes,
                    federation: str | None = None) -> None:
        """Store site `site`'s countersignature (`sign_witness`) of the ledger head at row `seq`,
        durably (its own fsynced transaction, like `append`), after checking it against the row
        hash THIS ledger holds at `seq`. Refuses (LedgerError) an unknown seq, a malformed key or
        signature, one that does not verify, and a second witness of the same seq by the same
        site. `federation` defaults to the one given to `open`."""
        fed = federation if federation is not None else self.federation
        if not isinstance(fed, str) or not fed:
            raise LedgerError("add_witness: the federation name is unknown (pass federation= to "
                              "PrivacyLedger.open or to add_witness)")
        _check_text("site", site)
        if not isinstance(public_key, (bytes, bytearray)) or len(public_key) != 32:
            raise LedgerError(f"witness of site {site!r}: public key must be 32 raw bytes")
        if not isinstance(signature, (bytes, bytearray)) or len(signature) != 64:
            raise LedgerError(f"witness of site {site!r}: signature must be 64 bytes")
        with self._lock:
            conn = self._require_open()
            n = len(self._rows)
            if isinstance(seq, bool) or not isinstance(seq, int) or not 1 <= seq <= n:
                raise LedgerError(f"witness of site {site!r}: unknown ledger row {seq!r} (the "
                                  f"ledger holds rows 1..{n})")
            if any(w[0] == seq and w[1] == site for w in self._witnesses):
                raise LedgerError(f"witness of site {site!r} for ledger row {seq} is already stored")
            row_hash = self._rows[seq - 1].hash
            if not verify_witness(bytes(public_key), bytes(signature), federation=fed, seq=seq,
                                  row_hash=row_hash, config_hash=self.config_hash):
                raise LedgerError(f"witness of site {site!r} for ledger row {seq} does not verify "
                                  f"over this ledger's row hash (wrong key, federation or config, "
                                  f"or the site countersigned another head)")
            record = (seq, site, bytes(public_key).hex(), bytes(signature).hex(), row_hash)
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    db_head = conn.execute("SELECT seq, row_hash FROM head WHERE id = 1").fetchone()
                    if db_head != self.head():
                        raise LedgerError(f"privacy ledger {self.path} was changed by another "
                                          f"writer (head {db_head}, expected {self.head()})")
                    conn.execute("INSERT INTO witnesses (seq, site, public_key, signature, "
                                 "row_hash) VALUES (?, ?, ?, ?, ?)", record)
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
            except sqlite3.IntegrityError:
                raise LedgerError(f"witness of site {site!r} for ledger row {seq} is already "
                                  f"stored") from None
            except sqlite3.Error as exc:
                raise LedgerError(f"privacy ledger {self.path}: storing the witness of site "
                                  f"{site!r} for row {seq} failed: {exc}") from None
            self._witnesses.append(record)

    def _check_order(self, e: LedgerEntry) -> None:
        """Rounds only move forward and cumulative epsilon never shrinks: a ledger that went
        backwards would under-count, which is the one thing it must never do."""
        last = self.last_round()
        if last is not None:
            if e.unit == "client" and e.round <= last:
                raise LedgerError(f"round {e.round} is not after the ledger's last round {last} "
                                  f"(a retried round takes a new id; the old row stays counted)")
            if e.round < last:
                raise LedgerError(f"round {e.round} is before the ledger's last round {last}")
            same_round = (r for r in reversed(self._rows) if r.round == e.round)
            if any(r.site == e.site for r in same_round):
                raise LedgerError(f"the ledger already has a row for round {e.round}, site {e.site}")
        prev = next((r for r in reversed(self._rows) if r.site == e.site), None)
        if prev is not None:
            for name, value in prev.epsilon.items():
                if name in e.epsilon and e.epsilon[name] < value:
                    raise LedgerError(f"cumulative epsilon[{name}] would decrease from {value!r} to "
                                      f"{e.epsilon[name]!r} (round {e.round}, site {e.site})")

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def _require_open(self) -> sqlite3.Connection:
        if self._conn is None:
            raise LedgerError(f"privacy ledger {self.path} is closed")
        return self._conn

    def __enter__(self) -> "PrivacyLedger":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
