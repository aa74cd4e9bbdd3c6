"""The `secure-fedrl` command line: exit codes and one-line errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from secure_fedrl.cli import main

REPO = Path(__file__).resolve().parents[2]


def test_conformance_passes_on_shipped_vectors(capsys):
    assert main(["conformance"]) == 0
    out = capsys.readouterr().out
    assert "FAIL" not in out and "passed" in out


def test_conformance_fails_on_a_tampered_vector(tmp_path, capsys):
    vectors = tmp_path / "vectors"
    shutil.copytree(REPO / "protocols" / "vectors", vectors)
    prg = json.loads((vectors / "prg.json").read_text())
    prg["cases"][0]["words"][0] ^= 1  # one bit of one expected keystream word
    (vectors / "prg.json").write_text(json.dumps(prg))
    assert main(["conformance", "--vectors", str(vectors)]) == 1
    assert "FAIL" in capsys.readouterr().out


def test_conformance_missing_directory_is_a_user_error(tmp_path, capsys):
    assert main(["conformance", "--vectors", str(tmp_path / "absent")]) == 2
    err = capsys.readouterr().err.strip()
    assert "absent" in err and len(err.splitlines()) == 1
