"""Durable writes: an exclusive write never replaces a file, and leaves nothing behind."""

from __future__ import annotations

import pytest

from secure_fedrl.fsutil import atomic_write


def test_exclusive_write_refuses_an_existing_file_and_cleans_up(tmp_path):
    target = tmp_path / "policy.pt"
    atomic_write(target, b"first", mode=0o600, exclusive=True)
    with pytest.raises(FileExistsError):
        atomic_write(target, b"second", mode=0o600, exclusive=True)
    assert target.read_bytes() == b"first"
    assert [p.name for p in tmp_path.iterdir()] == ["policy.pt"]
    atomic_write(target, b"replaced", mode=0o600)  # the default replaces, atomically
    assert target.read_bytes() == b"replaced" and [p.name for p in tmp_path.iterdir()] == ["policy.pt"]
