"""The conformance checker's own DP-attestation checks, one by one (mutation testing of
secagg/conformance.py `_check_dp_metadata`: a tampered field of the federation's A is caught
by the check that names it, not only by a later mismatch)."""

from __future__ import annotations

import copy
import json

import pytest

from secure_fedrl.secagg.conformance import DEFAULT_DIR, _check_dp_metadata, _config_from_json

VECTOR = json.loads((DEFAULT_DIR / "round_ddg_attested.json").read_text())
DOM = b"secure-fedrl/ddg/attestation/v1"


def _with_a(edit) -> tuple[dict, object]:
    dp = copy.deepcopy(VECTOR["dp_attestation"])
    a = bytearray(bytes.fromhex(dp["federation"]))
    edit(a)
    dp["federation"] = a.hex()
    return dp, _config_from_json(VECTOR["config"])


def test_the_shipped_attestation_passes():
    dp, cfg = _with_a(lambda a: None)
    assert _check_dp_metadata(dp, cfg) is None


def _set(a: bytearray, at: int, value: bytes) -> None:
    a[at:at + len(value)] = value


@pytest.mark.parametrize("name, edit, message", [
    ("domain", lambda a: _set(a, 0, b"S"), "federation attestation is not SPEC 7.1's encoding (domain or length)"),
    ("length", lambda a: a.extend(b"\0"), "federation attestation is not SPEC 7.1's encoding (domain or length)"),
    ("round id", lambda a: _set(a, len(DOM) + 7, bytes([a[len(DOM) + 7] ^ 1])), "attested round id: got"),
    ("bits", lambda a: _set(a, len(DOM) + 40, bytes([a[len(DOM) + 40] - 1])), "attested bits: got"),
    ("padded dim, low byte", lambda a: _set(a, len(DOM) + 48, bytes([a[len(DOM) + 48] ^ 1])), "attested padded dim: got"),
    ("padded dim, top byte", lambda a: _set(a, len(DOM) + 45, b"\x01"), "attested padded dim: got"),
    ("rotation commitment", lambda a: _set(a, len(a) - 1, bytes([a[-1] ^ 1])), "rotation commitment: got"),
])
def test_each_field_of_the_federations_a_is_checked_by_name(name, edit, message):
    dp, cfg = _with_a(edit)
    got = _check_dp_metadata(dp, cfg)
    assert got is not None and got.startswith(message), (name, got)


def test_the_rotation_seed_must_follow_from_the_round_seed():
    dp, cfg = _with_a(lambda a: None)
    dp["rotation_seed"] = "00" * 32
    assert _check_dp_metadata(dp, cfg).startswith("rotation_seed from round_seed: got")


def _fields_result(edit):
    from secure_fedrl.secagg.conformance import _check_dp_fields

    v = copy.deepcopy(VECTOR)
    edit(v)
    return _check_dp_fields(v, _config_from_json(v["config"]))


def test_the_shipped_fields_pass():
    assert _fields_result(lambda v: None) is None


def test_a_vector_without_masked_inputs_is_not_a_vacuous_pass():
    def drop(v):
        v["messages"] = [m for m in v["messages"] if m["phase"] != "masked_input"]
    assert _fields_result(drop).startswith("sites whose DP field was checked: got []")


def test_a_cheat_not_refused_is_named():
    def forgive(v):
        cheat = next(int(k) for k, a in v["dp_attestation"]["signed"].items() if a != v["dp_attestation"]["federation"])
        v["rejected"] = [r for r in v["rejected"] if r[0] != cheat]
        v["accepted"] = sorted(v["accepted"] + [cheat])
    got = _fields_result(forgive)
    assert got.startswith("refused at masked_input: got")


def test_a_cheat_summed_is_named_even_when_the_refused_set_matches():
    cheat = next(int(k) for k, a in VECTOR["dp_attestation"]["signed"].items()
                 if a != VECTOR["dp_attestation"]["federation"])

    def summed(v):
        v["accepted"] = sorted(set(v["accepted"]) | {cheat})
    assert _fields_result(summed) == f"sites [{cheat}] summed"


def test_a_field_that_does_not_verify_is_named():
    def tamper(v):
        honest = next(k for k, a in v["dp_attestation"]["signed"].items() if a == v["dp_attestation"]["federation"])
        v["dp_attestation"]["signed"][honest] = v["dp_attestation"]["signed"][honest][:-2] + "00" \
            if not v["dp_attestation"]["signed"][honest].endswith("00") else v["dp_attestation"]["signed"][honest][:-2] + "01"
    with pytest.raises(Exception, match="DP attestation field of site"):
        _fields_result(tamper)
