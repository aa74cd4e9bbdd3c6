"""Ledger key custody and rollback, as an attacker would try them: a key inside the run
directory, a key others can read, a wrong or missing passphrase, a resume with another key, a
ledger rolled back to an older (validly signed) copy; and the row is durable before the round's
aggregate touches the global policy."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ledger_helpers import CONFIG, client_entries
from secure_fedrl.cli import main
from secure_fedrl.errors import LedgerError
from secure_fedrl.ledger import (
    KEY_FILE,
    PASSPHRASE_ENV,
    PUBLIC_KEY_FILE,
    PrivacyLedger,
    default_key_dir,
    load_signing_key,
    read_ledger,
    read_passphrase,
)

AUDIT = Path(__file__).parents[2] / "audit" / "verify_ledger.py"


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


# -- store level ---------------------------------------------------------------------------------
def test_key_is_created_private_outside_the_run_directory(tmp_path: Path) -> None:
    keys, run = tmp_path / "keys", tmp_path / "run"
    run.mkdir()
    key = load_signing_key(keys, run_dir=run, create=True)
    assert _mode(keys) == 0o700 and _mode(keys / KEY_FILE) == 0o600
    assert (keys / KEY_FILE).read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    pub = (keys / PUBLIC_KEY_FILE).read_text().strip()
    again = load_signing_key(keys, run_dir=run, create=True)  # reused, never replaced
    with PrivacyLedger.open(run, config_hash=CONFIG, signing_key=key) as led:
        assert led.public_key_hex == pub
    with PrivacyLedger.open(run, config_hash=CONFIG, signing_key=again) as led:
        assert led.public_key_hex == pub


@pytest.mark.parametrize("inside", ["run/keys", "run", "run/a/../keys"])
def test_a_key_directory_inside_the_run_directory_is_refused(tmp_path: Path, inside: str) -> None:
    (tmp_path / "run").mkdir()
    with pytest.raises(LedgerError, match="inside the run directory"):
        PrivacyLedger.open(tmp_path / "run", config_hash=CONFIG, key_dir=tmp_path / inside)
    assert not (tmp_path / "run" / "keys").exists()
    assert not (tmp_path / "run" / KEY_FILE).exists()


def test_a_symlinked_key_directory_into_the_run_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "run" / "k").mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "run" / "k")
    with pytest.raises(LedgerError, match="inside the run directory"):
        PrivacyLedger.open(tmp_path / "run", config_hash=CONFIG, key_dir=tmp_path / "link")


@pytest.mark.parametrize("target, mode", [("file", 0o644), ("file", 0o640), ("file", 0o604),
                                          ("dir", 0o755), ("dir", 0o750)])
def test_a_key_others_can_access_is_refused(tmp_path: Path, target: str, mode: int) -> None:
    keys, run = tmp_path / "keys", tmp_path / "run"
    run.mkdir()
    load_signing_key(keys, run_dir=run, create=True)
    os.chmod(keys / KEY_FILE if target == "file" else keys, mode)
    with pytest.raises(LedgerError, match="accessible by group/others") as err:
        load_signing_key(keys, run_dir=run, create=False)
    # the one-line error names what is exposed and the command that fixes it
    what, fix = (("ledger signing key", f"chmod 600 {keys / KEY_FILE}") if target == "file"
                 else ("ledger key directory", f"chmod 700 {keys}"))
    assert str(err.value) == f"{what} {keys / KEY_FILE if target == 'file' else keys} is accessible by " \
                             f"group/others (mode {mode:04o}); {fix}"


def test_passphrase_encrypts_the_key_and_is_checked(tmp_path: Path) -> None:
    keys, run = tmp_path / "keys", tmp_path / "run"
    run.mkdir()
    key = load_signing_key(keys, run_dir=run, passphrase=b"correct horse", create=True)
    pem = (keys / KEY_FILE).read_bytes()
    assert pem.startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----") and b"correct" not in pem
    back = load_signing_key(keys, run_dir=run, passphrase=b"correct horse", create=False)
    assert back.private_bytes_raw() == key.private_bytes_raw()
    with pytest.raises(LedgerError, match="wrong passphrase"):
        load_signing_key(keys, run_dir=run, passphrase=b"wrong", create=False)
    with pytest.raises(LedgerError, match="is encrypted: set SECURE_FEDRL_LEDGER_PASSPHRASE"):
        load_signing_key(keys, run_dir=run, passphrase=None, create=False)
    plain = tmp_path / "plain"
    load_signing_key(plain, run_dir=run, create=True)
    with pytest.raises(LedgerError, match="not encrypted but a passphrase was given"):
        load_signing_key(plain, run_dir=run, passphrase=b"x", create=False)


def test_passphrase_sources(tmp_path: Path) -> None:
    f = tmp_path / "pass"
    f.write_bytes(b"s3cret\nignored\n")
    os.chmod(f, 0o600)
    assert read_passphrase(f, environ={}) == b"s3cret"
    assert read_passphrase(None, environ={PASSPHRASE_ENV: "env-pass"}) == b"env-pass"
    assert read_passphrase(None, environ={}) is None
    with pytest.raises(LedgerError, match="empty"):
        read_passphrase(None, environ={PASSPHRASE_ENV: ""})
    os.chmod(f, 0o644)
    with pytest.raises(LedgerError, match="readable by others"):
        read_passphrase(f, environ={})
    with pytest.raises(LedgerError, match="passphrase file"):
        read_passphrase(tmp_path / "absent", environ={})


def test_default_key_directory_is_per_user_and_per_federation(tmp_path: Path) -> None:
    d = default_key_dir("cartpole/../x y", environ={"XDG_CONFIG_HOME": str(tmp_path)})
    assert d.parent == tmp_path / "secure-fedrl" / "ledger-keys" and d.name == "cartpole_.._x_y"
    assert default_key_dir("..", environ={"XDG_CONFIG_HOME": str(tmp_path)}).name == "federation"
    assert default_key_dir("f", environ={}) == Path.home() / ".config" / "secure-fedrl" / "ledger-keys" / "f"


def test_rollback_is_refused_by_check_contains(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    (tmp_path / "run0").mkdir()
    with PrivacyLedger.open(tmp_path / "run0", config_hash=CONFIG, key_dir=keys) as led:
        for e in client_entries(2):
            led.append(e)
        old = {f.name: f.read_bytes() for f in (tmp_path / "run0").iterdir()}
        led.append(client_entries(3)[-1])
        head = led.head()
    for f in (tmp_path / "run0").iterdir():
        f.unlink()
    for name, data in old.items():  # the older copy, -wal included
        (tmp_path / "run0" / name).write_bytes(data)
    with PrivacyLedger.open(tmp_path / "run0", config_hash=CONFIG, key_dir=keys) as led:
        assert led.head()[0] == 2
        with pytest.raises(LedgerError, match="rolled back to an older copy"):
            led.check_contains(*head, what="the checkpoint")
        with pytest.raises(LedgerError, match="rewritten"):
            led.check_contains(2, "ab" * 32, what="the checkpoint")
        led.check_contains(*led.head(), what="the checkpoint")
        led.check_contains(0, "0" * 64, what="the checkpoint")


# -- through the command line and the runtime ----------------------------------------------------
FED = textwrap.dedent("""
    [federation]
    name = "keys-test"
    rounds = 2
    seed = 3
    [local]
    algorithm = "ppo"
    steps = 64
    [local.ppo]
    num_steps = 32
    update_epochs = 1
    num_minibatches = 1
    [strategy]
    name = "fedavg"
    weighting = "uniform"
    [sampling]
    fraction = 1.0
    [evaluation]
    every = 100
    episodes = 1
    [privacy]
    unit = "client"
    clip = 0.5
    noise_multiplier = 1.0
    target_epsilon = 50.0
    threat_model = "release"
    [[sites]]
    name = "s"
    env = "CartPole-v1"
    num_envs = 1
    seed = 10
    count = 3
""")


@pytest.fixture()
def fed(tmp_path: Path) -> Path:
    p = tmp_path / "fed.toml"
    p.write_text(FED)
    return p


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_cli_key_custody(tmp_path: Path, fed: Path, capsys, monkeypatch) -> None:
    run, keys = tmp_path / "run", tmp_path / "keys"
    assert main(["simulate", str(fed), "--out", str(run), "--ledger-key", str(run / "keys"),
                 "--no-progress"]) == 2
    assert "inside the run directory" in _one_line_error(capsys)
    shutil.rmtree(run)
    assert main(["simulate", str(fed), "--out", str(run), "--ledger-key", str(keys),
                 "--rounds", "1", "--no-progress"]) == 0
    out = capsys.readouterr().out
    pub = (keys / PUBLIC_KEY_FILE).read_text().strip()
    assert f"ledger public key {pub}" in out
    assert (run / PUBLIC_KEY_FILE).read_text().strip() == pub
    assert not list(run.rglob("*.pem"))  # nothing secret in the run directory
    # Resume with another key directory: refused (a new key would fork the ledger's identity).
    assert main(["simulate", str(fed), "--out", str(run), "--ledger-key", str(tmp_path / "other"),
                 "--resume", "--no-progress"]) == 2
    assert "no ledger signing key in" in _one_line_error(capsys)
    load_signing_key(tmp_path / "other2", run_dir=run, create=True)
    assert main(["simulate", str(fed), "--out", str(run), "--ledger-key", str(tmp_path / "other2"),
                 "--resume", "--no-progress"]) == 2
    assert "signing key does not match" in _one_line_error(capsys)
    os.chmod(keys / KEY_FILE, 0o644)
    assert main(["simulate", str(fed), "--out", str(run), "--ledger-key", str(keys), "--resume",
                 "--no-progress"]) == 2
    assert "accessible by group/others" in _one_line_error(capsys)
    os.chmod(keys / KEY_FILE, 0o600)
    monkeypatch.setenv(PASSPHRASE_ENV, "not-the-passphrase")
    assert main(["simulate", str(fed), "--out", str(run), "--ledger-key", str(keys), "--resume",
                 "--no-progress"]) == 2
    assert "not encrypted but a passphrase was given" in _one_line_error(capsys)


def test_cli_encrypted_key_wrong_passphrase(tmp_path: Path, fed: Path, capsys) -> None:
    run, keys, pw = tmp_path / "run", tmp_path / "keys", tmp_path / "pw"
    pw.write_text("open sesame\n")
    os.chmod(pw, 0o600)
    assert main(["simulate", str(fed), "--out", str(run), "--ledger-key", str(keys),
                 "--ledger-passphrase-file", str(pw), "--rounds", "1", "--no-progress"]) == 0
    capsys.readouterr()
    assert (keys / KEY_FILE).read_bytes().startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    pw.write_text("guess\n")
    assert main(["simulate", str(fed), "--out", str(run), "--ledger-key", str(keys),
                 "--ledger-passphrase-file", str(pw), "--resume", "--no-progress"]) == 2
    assert "wrong passphrase" in _one_line_error(capsys)
    assert main(["simulate", str(fed), "--out", str(run), "--ledger-key", str(keys), "--resume",
                 "--no-progress"]) == 2
    assert "is encrypted" in _one_line_error(capsys)


def test_a_rolled_back_ledger_is_refused_on_resume_and_by_the_audit(tmp_path: Path, fed: Path,
                                                                     capsys) -> None:
    run, keys = tmp_path / "run", tmp_path / "keys"
    args = ["simulate", str(fed), "--out", str(run), "--ledger-key", str(keys), "--no-progress"]
    assert main(args + ["--rounds", "1"]) == 0
    old = {f.name: f.read_bytes() for f in run.glob("privacy_ledger.sqlite*")}
    assert main(args + ["--rounds", "2", "--resume"]) == 0
    pinned = keys / PUBLIC_KEY_FILE
    ok = subprocess.run([sys.executable, str(AUDIT), str(run), "--public-key-file", str(pinned),
                         "--quiet"], capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stdout
    # The attacker (holding the key, even) puts back the ledger as it was after round 1.
    for f in run.glob("privacy_ledger.sqlite*"):
        f.unlink()
    for name, data in old.items():
        (run / name).write_bytes(data)
    assert len(read_ledger(run)) == 1  # a consistent, validly signed ledger
    capsys.readouterr()
    assert main(args + ["--rounds", "3", "--resume"]) == 2
    assert "rolled back" in _one_line_error(capsys)
    bad = subprocess.run([sys.executable, str(AUDIT), str(run), "--public-key-file", str(pinned),
                          "--quiet"], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "rolled back" in bad.stdout, bad.stdout


def test_the_row_is_durable_before_the_aggregate_is_applied(tmp_path: Path, fed: Path,
                                                             monkeypatch) -> None:
    from secure_fedrl.runtime import simulate

    seen: list[tuple[int, int]] = []
    original = simulate.Simulation._apply

    def spy(self, agg):
        # A second, read-only reader: what a crash right now would leave on disk.
        rows = read_ledger(self.run_dir.root)
        seen.append((len(rows), rows[-1].round if rows else -1))
        return original(self, agg)

    monkeypatch.setattr(simulate.Simulation, "_apply", spy)
    run = tmp_path / "run"
    assert main(["simulate", str(fed), "--out", str(run), "--ledger-key", str(tmp_path / "k"),
                 "--no-progress"]) == 0
    assert seen == [(1, 1), (2, 2)]


# Encrypted (passphrase "correct horse") from Ed25519 private bytes 0..31. "wrong-406" leaves
# valid CBC padding over garbage, so cryptography reports an ASN.1 error, not "bad decrypt":
# it is still a wrong passphrase (CI once drew such a case at random).
_PEM_PADDING_COLLISION = b"""-----BEGIN ENCRYPTED PRIVATE KEY-----
MIGjMF8GCSqGSIb3DQEFDTBSMDEGCSqGSIb3DQEFDDAkBBADd1+pVuWQnh0Kk/E8
y5YHAgIIADAMBggqhkiG9w0CCQUAMB0GCWCGSAFlAwQBKgQQUFgDp8wESqweUtSZ
jgLenQRAzU9kG5hAXTBckR+gRCg4Nr9oWVaInT2eLlrtJjpLFQPSn0TYxGfhaMzH
dWoZiDwAcDMcJVEX1VkQn8fUNGEWdg==
-----END ENCRYPTED PRIVATE KEY-----
"""


def test_a_wrong_passphrase_that_passes_the_padding_is_still_a_wrong_passphrase(
        tmp_path: Path) -> None:
    keys, run = tmp_path / "keys", tmp_path / "run"
    run.mkdir()
    keys.mkdir(mode=0o700)
    (keys / KEY_FILE).write_bytes(_PEM_PADDING_COLLISION)
    os.chmod(keys / KEY_FILE, 0o600)
    assert load_signing_key(keys, run_dir=run, passphrase=b"correct horse",
                            create=False).private_bytes_raw() == bytes(range(32))
    with pytest.raises(LedgerError, match="wrong passphrase"):
        load_signing_key(keys, run_dir=run, passphrase=b"wrong-406", create=False)


def test_a_damaged_plain_key_is_unreadable_not_a_passphrase_problem(tmp_path: Path) -> None:
    keys, run = tmp_path / "keys", tmp_path / "run"
    run.mkdir()
    load_signing_key(keys, run_dir=run, create=True)
    (keys / KEY_FILE).write_bytes(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    with pytest.raises(LedgerError, match="is unreadable"):
        load_signing_key(keys, run_dir=run, create=False)


def test_a_wrong_passphrase_is_recognised_behind_leading_blank_lines(tmp_path: Path) -> None:
    keys, run = tmp_path / "keys", tmp_path / "run"
    run.mkdir()
    keys.mkdir(mode=0o700)
    (keys / KEY_FILE).write_bytes(b"\n\n" + _PEM_PADDING_COLLISION)
    os.chmod(keys / KEY_FILE, 0o600)
    with pytest.raises(LedgerError, match="wrong passphrase"):
        load_signing_key(keys, run_dir=run, passphrase=b"wrong-406", create=False)


def test_a_damaged_plain_key_with_a_passphrase_is_unreadable_not_a_wrong_passphrase(tmp_path: Path) -> None:
    keys, run = tmp_path / "keys", tmp_path / "run"
    run.mkdir()
    load_signing_key(keys, run_dir=run, create=True)
    (keys / KEY_FILE).write_bytes(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    with pytest.raises(LedgerError, match="is unreadable"):
        load_signing_key(keys, run_dir=run, passphrase=b"x", create=False)


def test_a_key_of_another_type_is_refused(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    keys, run = tmp_path / "keys", tmp_path / "run"
    run.mkdir()
    load_signing_key(keys, run_dir=run, create=True)
    pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    (keys / KEY_FILE).write_bytes(pem)
    with pytest.raises(LedgerError, match=r"ledger_signing_key.pem is not an Ed25519 private key"):
        load_signing_key(keys, run_dir=run, create=False)
