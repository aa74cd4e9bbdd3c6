"""Suite-wide: ledger signing keys go to a throwaway per-session config dir, never ~/.config."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(autouse=True, scope="session")
def _private_ledger_key_home(tmp_path_factory: pytest.TempPathFactory):
    # The runtime's default key directory is $XDG_CONFIG_HOME/secure-fedrl/ledger-keys/<name>.
    old = os.environ.get("XDG_CONFIG_HOME")
    os.environ["XDG_CONFIG_HOME"] = str(tmp_path_factory.mktemp("xdg-config"))
    os.environ.pop("SECURE_FEDRL_LEDGER_PASSPHRASE", None)
    yield
    if old is None:
        os.environ.pop("XDG_CONFIG_HOME", None)
    else:
        os.environ["XDG_CONFIG_HOME"] = old
