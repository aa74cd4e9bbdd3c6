"""The run directory: resolved config, metrics, checkpoints, resumable state.

`metrics.jsonl` is the server's file: only what a coordinating server legitimately sees (who was
sampled / aggregated / dropped / rejected, bytes, the global update's norm, privacy spend, the
ledger head, timings, and evaluation aggregates the sites report). Site-local diagnostics
(training returns, env steps, losses, per-site evaluation) go to `sites/<site>/metrics.jsonl`,
which a deployment keeps at the site. `state.json` mirrors the round and ledger head of the
(pickled) state for auditors, who must not unpickle a run directory they are auditing.

Every file that a resume depends on is written atomically (temp file, fsync, rename, fsync of the
directory), so a crash leaves either the old or the new version, never a torn one.
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path
from typing import Any, Iterator

from secure_fedrl.errors import RunDirectoryError
from secure_fedrl.fsutil import atomic_write

CONFIG_FILE = "config.resolved.toml"
FINGERPRINT_FILE = "config.fingerprint"
METRICS_FILE = "metrics.jsonl"
STATE_FILE = "state.pkl"
CHECKPOINT_DIR = "checkpoints"
LEDGER_FILE = "privacy_ledger.sqlite"
PUBLIC_KEY_FILE = "ledger_public_key.hex"
STATE_SUMMARY_FILE = "state.json"
SITES_DIR = "sites"


def site_dirname(site: str) -> str:
    """A site id as one safe path component (ids are free text in the config)."""
    if site and site[0] != "." and all(c.isalnum() or c in "._-" for c in site):
        return site
    return "".join(c if c.isalnum() or c in "_-" else f"%{ord(c):02x}" for c in site) or "%"


def head_record(head: tuple[int, str] | None) -> dict[str, Any] | None:
    """A ledger head (seq, row hash) as written in files and notices: which run, at which row."""
    return None if head is None else {"seq": int(head[0]), "row_hash": str(head[1])}


class RunDirectory:
    """Owns the layout of one run directory."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    # -- creation / resume -------------------------------------------------------------------
    def create(self, config_toml: str, fingerprint: str) -> None:
        """Start a fresh run; refuses a directory that already holds one."""
        if self.root.exists() and not self.root.is_dir():
            raise RunDirectoryError(f"--out {self.root} exists and is not a directory")
        if (self.root / STATE_FILE).exists() or (self.root / METRICS_FILE).exists():
            raise RunDirectoryError(f"--out {self.root} already holds a run; pass --resume to continue it "
                                    f"or choose another directory")
        (self.root / CHECKPOINT_DIR).mkdir(parents=True, exist_ok=True)
        atomic_write(self.root / CONFIG_FILE, config_toml.encode())
        atomic_write(self.root / FINGERPRINT_FILE, fingerprint.encode())

    def check_resume(self, fingerprint: str) -> None:
        """Refuse to resume a run made by a different config (rounds may differ)."""
        fp = self.root / FINGERPRINT_FILE
        if not fp.exists():
            raise RunDirectoryError(f"--resume: {self.root} holds no run (no {FINGERPRINT_FILE})")
        if fp.read_text().strip() != fingerprint:
            raise RunDirectoryError(f"--resume: {self.root} was made by a different config "
                                    f"(see {CONFIG_FILE} there); only federation.rounds may change on resume")

    def update_config(self, config_toml: str) -> None:
        atomic_write(self.root / CONFIG_FILE, config_toml.encode())

    # -- state -------------------------------------------------------------------------------
    def save_state(self, state: dict[str, Any]) -> None:
        atomic_write(self.root / STATE_FILE, pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL))
        summary = {"round": state["round"], "ledger_head": head_record(state.get("ledger_head"))}
        atomic_write(self.root / STATE_SUMMARY_FILE, (json.dumps(summary, sort_keys=True) + "\n").encode())

    def write_public_key(self, public_key_hex: str) -> None:
        """The ledger's public key, for reference: an auditor pins the copy obtained out of band
        (the key directory's, or the one the CLI printed), not this one."""
        atomic_write(self.root / PUBLIC_KEY_FILE, (public_key_hex + "\n").encode())

    def load_state(self) -> dict[str, Any] | None:
        path = self.root / STATE_FILE
        if not path.exists():
            return None
        try:
            with open(path, "rb") as fh:
                return pickle.load(fh)
        except Exception as exc:  # noqa: BLE001 - any unreadable state is the same user-facing problem
            raise RunDirectoryError(f"--resume: {path} is unreadable ({type(exc).__name__}: {exc})") from None

    def checkpoint_path(self, round_id: int) -> Path:
        return self.root / CHECKPOINT_DIR / f"round-{round_id:05d}.pt"

    # -- metrics -----------------------------------------------------------------------------
    @property
    def metrics_path(self) -> Path:
        return self.root / METRICS_FILE

    @property
    def ledger_path(self) -> Path:
        return self.root / LEDGER_FILE

    def site_metrics_path(self, site: str) -> Path:
        return self.root / SITES_DIR / site_dirname(site) / METRICS_FILE

    def append_metrics(self, row: dict[str, Any]) -> None:
        _append_json_line(self.metrics_path, row)

    def append_site_metrics(self, site: str, row: dict[str, Any]) -> None:
        """One row of a site's own diagnostics (kept at the site in a deployment)."""
        path = self.site_metrics_path(site)
        path.parent.mkdir(parents=True, exist_ok=True)
        _append_json_line(path, row)

    def read_metrics(self) -> list[dict[str, Any]]:
        return list(iter_metrics(self.metrics_path))

    def read_site_metrics(self, site: str) -> list[dict[str, Any]]:
        path = self.site_metrics_path(site)
        return list(iter_metrics(path)) if path.exists() else []

    def truncate_metrics(self, last_round: int) -> None:
        """Drop metric rows (server's and sites') of rounds after the last checkpoint (re-run)."""
        paths = [self.metrics_path]
        if (self.root / SITES_DIR).is_dir():
            paths += sorted((self.root / SITES_DIR).glob(f"*/{METRICS_FILE}"))
        for path in paths:
            if not path.exists():
                continue
            rows = [r for r in iter_metrics(path) if r["round"] <= last_round]
            atomic_write(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows).encode())


def _append_json_line(path: Path, row: dict[str, Any]) -> None:
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(row, sort_keys=True) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def iter_metrics(path: Path) -> Iterator[dict[str, Any]]:
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            line = line.strip()
            if line:
                try:
                    yield json.loads(line)
                except json.JSONDecodeError:
                    return  # a torn last line from a crash: the round is re-run on resume
