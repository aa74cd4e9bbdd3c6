"""What a deployed site keeps of a (possibly malicious) server's final model: `SiteProcess.keep_final_model`."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from secure_fedrl.runtime.deploy import FINAL_MODEL_FILE, SiteProcess
from secure_fedrl.runtime.personalise import read_global_model
from secure_fedrl.transport.base import Hub, InMemorySite


def _site(tmp_path, hub: Hub, dim: int = 4) -> SiteProcess:
    """A SiteProcess around an in-memory transport: only what keep_final_model uses."""
    process = SiteProcess.__new__(SiteProcess)
    process.site = SimpleNamespace(name="a", dim=dim, signed_heads={})
    process.config = SimpleNamespace(federation=SimpleNamespace(name="fed"))
    process.state_dir = tmp_path
    process.transport = InMemorySite(hub, "a", 1)
    process.transport.join()
    return process


def _stale(tmp_path) -> None:
    torch.save({"global_params": torch.ones(4), "round": 1, "federation": "fed"}, tmp_path / FINAL_MODEL_FILE)


def test_keeps_the_final_model_in_the_checkpoint_format(tmp_path):
    hub = Hub()
    process = _site(tmp_path, hub)
    hub.finish(final_model=(9, np.arange(4)))
    process.keep_final_model()
    kept = read_global_model(tmp_path / FINAL_MODEL_FILE)
    assert kept.round == 9 and kept.federation == "fed" and kept.params.tolist() == [0, 1, 2, 3]
    assert (tmp_path / FINAL_MODEL_FILE).stat().st_mode & 0o777 == 0o600
    assert kept.ledger_head is None  # this site countersigned no head: it cannot vouch for a run


def test_the_final_model_names_the_run_by_the_last_head_the_site_countersigned(tmp_path):
    hub = Hub()
    process = _site(tmp_path, hub)
    process.site.signed_heads = {3: "a" * 64, 7: "b" * 64}
    hub.finish(final_model=(9, np.arange(4)))
    process.keep_final_model()
    assert read_global_model(tmp_path / FINAL_MODEL_FILE).ledger_head == {"seq": 7, "row_hash": "b" * 64}


def test_only_the_run_id_is_taken_from_the_file(tmp_path):
    """Other keys beside it (the server writes the file) never reach personalise.json."""
    torch.save({"global_params": torch.ones(4), "round": 1, "federation": "fed",
                "ledger_head": {"seq": 7, "row_hash": "b" * 64, "note": "trust me"}}, tmp_path / FINAL_MODEL_FILE)
    assert read_global_model(tmp_path / FINAL_MODEL_FILE).ledger_head == {"seq": 7, "row_hash": "b" * 64}


@pytest.mark.parametrize("head", [{"seq": "7", "row_hash": "b" * 64}, {"seq": True, "row_hash": "b" * 64},
                                  {"seq": 7, "row_hash": "B" * 64}, {"seq": 7, "row_hash": "b" * 63},
                                  {"seq": 7}, "b" * 64, {"seq": -1, "row_hash": "b" * 64},
                                  {"seq": 2**63, "row_hash": "b" * 64}])
def test_a_malformed_run_id_is_refused_in_one_line(tmp_path, head):
    from secure_fedrl.errors import ConfigError

    torch.save({"global_params": torch.ones(4), "round": 1, "federation": "fed", "ledger_head": head},
               tmp_path / FINAL_MODEL_FILE)
    with pytest.raises(ConfigError, match="not a secure-fedrl run checkpoint"):
        read_global_model(tmp_path / FINAL_MODEL_FILE)


@pytest.mark.parametrize("case", ["withheld", "wrong_size", "nan", "inf"])
def test_a_bad_or_withheld_final_model_leaves_no_file_not_even_an_earlier_runs(tmp_path, case, capsys):
    hub = Hub()
    process = _site(tmp_path, hub)
    _stale(tmp_path)
    model = {"wrong_size": np.zeros(5), "nan": np.array([0, np.nan, 0, 0]), "inf": np.array([0, 0, np.inf, 0])}
    hub.finish(final_model=None if case == "withheld" else (9, model[case]))
    process.keep_final_model()  # logs and returns: the site still exits 0
    assert not (tmp_path / FINAL_MODEL_FILE).exists()


def test_a_failed_write_is_logged_not_raised(tmp_path, monkeypatch):
    import secure_fedrl.runtime.deploy as deploy

    hub = Hub()
    process = _site(tmp_path, hub)
    hub.finish(final_model=(9, np.zeros(4)))

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(deploy, "atomic_write", full_disk)
    process.keep_final_model()
    assert not (tmp_path / FINAL_MODEL_FILE).exists()
