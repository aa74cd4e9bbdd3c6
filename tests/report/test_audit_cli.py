"""`secure-fedrl audit verify` is a thin wrapper: it runs audit/verify_ledger.py (loaded from the
audit package by path) with the arguments unchanged and passes its exit status through."""

from __future__ import annotations

import sys

from secure_fedrl.cli import main
from secure_fedrl.report import cli as report_cli


class FakeVerifier:
    def __init__(self, status: int) -> None:
        self.status, self.argv = status, None

    def main(self, argv):
        self.argv = list(argv)
        return self.status


def test_verify_passes_arguments_and_status_through(monkeypatch):
    for status in (0, 1, 2, 3):
        fake = FakeVerifier(status)
        monkeypatch.setattr(report_cli, "load_audit_module", lambda name, fake=fake: fake)
        assert main(["audit", "verify", "RUN", "--public-key", "ab" * 32, "--quiet"]) == status
        assert fake.argv == ["RUN", "--public-key", "ab" * 32, "--quiet"]


def test_verify_loads_the_real_auditor_package():
    mod = report_cli.load_audit_module("verify_ledger")
    assert mod.__file__.endswith("audit/verify_ledger.py") and callable(mod.main)
    assert sys.modules["audit"].__file__.endswith("audit/__init__.py")


def test_verify_missing_run_dir_fails(tmp_path, capsys):
    assert main(["audit", "verify", str(tmp_path / "nope")]) != 0
    out = capsys.readouterr()
    assert "FAIL" in out.out + out.err and "Traceback" not in out.err


def test_verify_a_real_run_then_a_tampered_one(small_private_run, tmp_path, capsys):
    import shutil
    import sqlite3

    run = tmp_path / "run"
    shutil.copytree(small_private_run, run)
    key = (run / "ledger_public_key.hex").read_text().strip()
    assert main(["audit", "verify", str(run), "--public-key", key]) == 0
    assert "OK" in capsys.readouterr().out
    conn = sqlite3.connect(run / "privacy_ledger.sqlite")
    conn.execute("DROP TRIGGER IF EXISTS rows_no_update")
    conn.execute("UPDATE rows SET sigma_effective = sigma_effective * 2 WHERE seq = 1")
    conn.commit()
    conn.close()
    assert main(["audit", "verify", str(run), "--public-key", key]) != 0
    assert "FAIL" in capsys.readouterr().out
