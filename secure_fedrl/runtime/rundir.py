"""The run directory: resolved config, metrics.jsonl, checkpoints, resumable state.

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

    def append_metrics(self, row: dict[str, Any]) -> None:
        with open(self.metrics_path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(row, sort_keys=True) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def read_metrics(self) -> list[dict[str, Any]]:
        return list(iter_metrics(self.metrics_path))

    def truncate_metrics(self, last_round: int) -> None:
        """Drop metric rows of rounds after the last checkpoint (they will be re-run)."""
        if not self.metrics_path.exists():
            return
        rows = [r for r in self.read_metrics() if r["round"] <= last_round]
        atomic_write(self.metrics_path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows).encode())


def iter_metrics(path: Path) -> Iterator[dict[str, Any]]:
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            line = line.strip()
            if line:
                try:
                    yield json.loads(line)
                except json.JSONDecodeError:
                    return  # a torn last line from a crash: the round is re-run on resume
