"""Durable file writes shared by the I/O edges (run directory, ledger key)."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from secure_fedrl.errors import ConfigError


def fsync_dir(directory: Path) -> None:
    """Make a rename or a new file in `directory` durable (the entry lives in the directory)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, *, mode: int = 0o644, exclusive: bool = False) -> None:
    """Write `data` so that a crash leaves either the old file or the new one, never a torn one
    (the temporary file is created exclusively, with `mode` before umask). With `exclusive`, an
    existing `path` is never replaced: FileExistsError, even when another process created it
    between a caller's check and this write (the file appears by a hard link, which cannot
    overwrite)."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp" if exclusive else f".{path.name}.tmp")
    if not exclusive:
        try:
            tmp.unlink()  # a leftover of a crash (ours: the directory is the writer's)
        except FileNotFoundError:
            pass
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        if exclusive:
            os.link(tmp, path)
            tmp.unlink()
        else:
            os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def check_private_dir(d: Path, flag: str) -> None:
    """A directory holding a site's own data must be that user's alone: no group/other access
    (anyone who may write the directory may replace the files in it, whatever their modes)."""
    st = d.stat()
    if st.st_mode & 0o077 or (hasattr(os, "getuid") and st.st_uid != os.getuid()):
        raise ConfigError(f"{flag} {d}: must be a directory only this user can access (chmod 700 {d})")
