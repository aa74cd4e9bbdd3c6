"""Readers of a run directory, for the privacy report. Every on-disk format the report depends on
is read HERE and nowhere else, so a change of the ledger, metrics or key layout is a one-place fix.

The readers are deliberately forgiving about columns and keys that may or may not exist (ledger
v1 records one `epsilon` object per row; v2 adds one per threat model), and strict about what
makes a directory unusable: no config and no metrics means it is not a run directory.
"""

from __future__ import annotations

import json
import re
import sqlite3
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from secure_fedrl.errors import LedgerError, RunDirectoryError

try:  # Python 3.11+
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - 3.10
    import tomli as tomllib  # type: ignore[no-redef]

CONFIG_FILE = "config.resolved.toml"
METRICS_FILE = "metrics.jsonl"
SITES_DIR = "sites"
LEDGER_FILE = "privacy_ledger.sqlite"
CANARY_FILE = "canary_audit.json"
# Key custody writes the public key as 64 hex digits into the key directory (outside the run
# directory) and a reference copy into the run directory. Only a key from outside the run
# directory (--public-key, or the operator's key directory) is a pin; the run-directory copy
# travels with the ledger and proves nothing about whose key it is.
PUBLIC_KEY_FILE = "ledger_public_key.hex"
_HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")


@dataclass
class LedgerView:
    """What the report needs from the ledger: raw rows (every column, as stored), meta, head,
    and the verdict of the project's own verifier."""

    present: bool
    rows: list[dict[str, Any]] = field(default_factory=list)
    meta: dict[str, str] = field(default_factory=dict)
    head: dict[str, Any] | None = None
    verified: bool = False
    verdict: str = "no ledger in this run directory"
    tables: list[str] = field(default_factory=list)


@dataclass
class RunData:
    root: Path
    config: dict[str, Any]
    metrics: list[dict[str, Any]]
    site_metrics: dict[str, list[dict[str, Any]]]
    ledger: LedgerView
    public_key: str | None
    public_key_source: str | None
    canary: dict[str, Any] | None
    public_key_out_of_band: bool = False


# -- the whole directory ---------------------------------------------------------------------------
def load_run(run_dir: str | Path, *, public_key: str | None = None, key_dir: str | Path | None = None,
             canary_path: str | Path | None = None) -> RunData:
    """Everything the report shows. `public_key` (hex) pins the ledger key; else the key
    directory's copy (`key_dir`, default: the federation's default key directory) if present;
    else the run directory's reference copy (integrity only)."""
    root = Path(run_dir)
    if not root.is_dir():
        raise RunDirectoryError(f"{root} is not a directory (expected a run directory)")
    cfg_path = root / CONFIG_FILE
    if not cfg_path.is_file():
        raise RunDirectoryError(f"{root} is not a run directory (no {CONFIG_FILE})")
    config = read_config(cfg_path)
    metrics = read_jsonl(root / METRICS_FILE)
    site_metrics = read_site_metrics(root / SITES_DIR)
    if public_key is not None:
        if not _HEX64.match(public_key.strip()):
            raise RunDirectoryError(f"--public-key: {public_key!r} is not 64 hex digits")
        key, source, oob = public_key.strip().lower(), "--public-key", True
    else:
        key, source, oob = find_public_key(root, config, key_dir)
    ledger = read_ledger_view(root / LEDGER_FILE, pinned_key=key)
    canary = read_canary(Path(canary_path) if canary_path else root / CANARY_FILE,
                         required=canary_path is not None)
    return RunData(root=root, config=config, metrics=metrics, site_metrics=site_metrics,
                   ledger=ledger, public_key=key, public_key_source=source, canary=canary,
                   public_key_out_of_band=oob)


def read_config(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise RunDirectoryError(f"{path} is unreadable: {exc}") from None


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Rows of a metrics file; a torn last line (crash) is ignored, as the runtime does."""
    if not path.is_file():
        return []
    out = []
    try:
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                line = line.strip()
                if not line:
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    break
                if isinstance(row, dict):
                    out.append(row)
    except (OSError, UnicodeDecodeError) as exc:
        raise RunDirectoryError(f"{path} is unreadable: {exc}") from None
    return out


def read_site_metrics(sites_dir: Path) -> dict[str, list[dict[str, Any]]]:
    """Per-site metrics (DIR/sites/<site>/metrics.jsonl) where the run writes them."""
    if not sites_dir.is_dir():
        return {}
    return {p.parent.name: read_jsonl(p) for p in sorted(sites_dir.glob("*/metrics.jsonl"))}


def find_public_key(root: Path, config: dict[str, Any],
                    key_dir: str | Path | None) -> tuple[str | None, str | None, bool]:
    """(hex key, where it came from, whether it is from outside the run directory)."""
    candidates: list[tuple[Path, bool]] = []
    if key_dir is not None:
        candidates.append((Path(key_dir) / PUBLIC_KEY_FILE, True))
    else:
        try:
            from secure_fedrl.ledger.store import default_key_dir

            name = str(config.get("federation", {}).get("name", ""))
            if name:
                candidates.append((default_key_dir(name) / PUBLIC_KEY_FILE, True))
        except ImportError:  # an older ledger module without key custody
            pass
    candidates.append((root / PUBLIC_KEY_FILE, False))
    for path, oob in candidates:
        try:
            if path.is_file():
                key = parse_public_key(path.read_bytes())
                if key:
                    where = f"key directory copy {path}" if oob else \
                        f"run-directory copy {path} (reference only: not an out-of-band pin)"
                    return key, where, oob
        except OSError:
            continue
    return None, None, False


def parse_public_key(data: bytes) -> str | None:
    text = data.decode("ascii", "replace").strip()
    if _HEX64.match(text):
        return text.lower()
    if "BEGIN PUBLIC KEY" in text:
        try:
            from cryptography.hazmat.primitives import serialization
            from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

            key = serialization.load_pem_public_key(data)
        except (ValueError, TypeError):
            return None
        if isinstance(key, Ed25519PublicKey):
            return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex()
    try:  # {"public_key": "..."} JSON
        obj = json.loads(text)
        value = obj.get("public_key") if isinstance(obj, dict) else None
        if isinstance(value, str) and _HEX64.match(value):
            return value.lower()
    except json.JSONDecodeError:
        pass
    return None


# -- ledger ---------------------------------------------------------------------------------------
def read_ledger_view(path: Path, *, pinned_key: str | None) -> LedgerView:
    """Raw rows (every column, v2 members flattened) plus the project's verifier's verdict."""
    if not path.is_file():
        return LedgerView(present=False)
    try:
        conn = sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True)
        try:
            conn.row_factory = sqlite3.Row
            tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
            meta = {r[0]: r[1] for r in conn.execute("SELECT key, value FROM meta")}
            rows = [normalize_row(dict(r)) for r in conn.execute("SELECT * FROM rows ORDER BY seq")]
            head_row = conn.execute("SELECT * FROM head WHERE id = 1").fetchone()
            head = dict(head_row) if head_row is not None else None
        finally:
            conn.close()
    except sqlite3.Error as exc:
        return LedgerView(present=True, verdict=f"unreadable: {exc}")
    view = LedgerView(present=True, rows=rows, meta=meta, head=head, tables=tables)
    view.verified, view.verdict = verify_ledger(path, pinned_key)
    return view


def verify_ledger(path: Path, pinned_key: str | None) -> tuple[bool, str]:
    """The project's own chain/signature/head check (the independent one is `audit verify`)."""
    from secure_fedrl.ledger import read_ledger

    try:
        rows = read_ledger(path, public_key=pinned_key)
    except LedgerError as exc:
        return False, f"FAILED: {exc}"
    pin = "the public key above" if pinned_key else "the key recorded in the ledger itself (not pinned)"
    return True, f"chain of {len(rows)} rows and signed head verified against {pin}"


def normalize_row(row: dict[str, Any]) -> dict[str, Any]:
    """Flatten a v2 row's `privacy` column (FORMAT.md, "Privacy semantics (v2)") into the row:
    epsilon_server / epsilon_release (floats), threat_model, site_epsilon_server ({site: float}),
    participants, noise_shares, max_colluding, sampling. v1 rows pass through unchanged."""
    raw = row.get("privacy")
    if not isinstance(raw, str):
        return row
    try:
        v2 = json.loads(raw)
    except json.JSONDecodeError:
        return row
    if not isinstance(v2, dict):
        return row
    for key, value in v2.items():
        if key in row and key != "privacy":
            continue
        if key in ("epsilon_server", "epsilon_release", "site_budget"):
            row[key] = decode_float(value)
        elif key == "site_epsilon_server" and isinstance(value, dict):
            row[key] = {str(k): decode_float(v) for k, v in value.items()}
        else:
            row[key] = value
    return row


def decode_float(value: Any) -> float | None:
    """A ledger float: 16 hex digits of big-endian binary64 (FORMAT.md), or a plain number."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        if re.fullmatch(r"[0-9a-f]{16}", value):
            return struct.unpack(">d", bytes.fromhex(value))[0]
        try:
            return float(value)
        except ValueError:
            return None
    return None


def row_epsilons(row: dict[str, Any], default_threat: str) -> dict[str, dict[str, float]]:
    """{threat model: {accountant: cumulative epsilon}} of one ledger row.

    v1 rows have one `epsilon` column, stated for the configured threat model. v2 rows add the
    row's own `threat_model` (what `epsilon` is stated for) and `epsilon_server` /
    `epsilon_release` (or any `epsilon_<model>`), each one number for the row's accountant (or a
    JSON object accountant -> value).
    """
    out: dict[str, dict[str, float]] = {}
    own = row.get("threat_model") if isinstance(row.get("threat_model"), str) else default_threat
    for col, raw in row.items():
        if not col.startswith("epsilon") or raw is None:
            continue
        threat = col[len("epsilon_"):] if col.startswith("epsilon_") else own
        values = _epsilon_object(raw, row.get("accountant") or "epsilon")
        if values:
            out.setdefault(threat, {}).update(values)
    return out


def _epsilon_object(raw: Any, accountant: str) -> dict[str, float]:
    obj = raw
    if isinstance(raw, str):
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError:
            obj = raw
    if isinstance(obj, dict):
        values = {str(k): decode_float(v) for k, v in obj.items()}
        return {k: v for k, v in values.items() if v is not None}
    value = decode_float(obj)
    return {} if value is None else {accountant: value}


def witness_info(view: LedgerView) -> dict[str, Any]:
    """Witness co-signatures, where the ledger format records them (a table or column named
    witness*). The report only states presence; `audit verify` checks them against pinned keys."""
    tables = [t for t in view.tables if "witness" in t.lower()]
    cols = sorted({c for r in view.rows for c in r if "witness" in c.lower()})
    if view.head:
        cols += [f"head.{c}" for c in view.head if "witness" in c.lower()]
    if not tables and not cols:
        return {"status": "none", "detail": "this ledger records no witness co-signatures"}
    where = ", ".join([f"table {t}" for t in tables] + [f"column {c}" for c in cols])
    return {"status": "present", "detail": f"witness records in {where}; check them against the "
                                           f"witnesses' pinned keys with `secure-fedrl audit verify`"}


def read_canary(path: Path, *, required: bool) -> dict[str, Any] | None:
    if not path.is_file():
        if required:
            raise RunDirectoryError(f"--canary: {path} does not exist")
        return None
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        if required:
            raise RunDirectoryError(f"--canary: {path} is not readable JSON: {exc}") from None
        return None
    return obj if isinstance(obj, dict) else None
