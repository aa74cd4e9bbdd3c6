import json
import shutil

import pytest

from secure_fedrl.secagg.conformance import DEFAULT_DIR, FILES, check_vectors, format_table, generate_vectors


def test_repository_vectors_pass():
    results = check_vectors(DEFAULT_DIR)
    assert results and all(r.passed for r in results), format_table(results)
    names = {r.name.split("/")[0] for r in results}
    assert names == {"x25519", "hkdf", "prg", "shamir", "encoding", "round"}


def test_generation_is_deterministic(tmp_path):
    generate_vectors(tmp_path)
    for name in FILES:
        assert (tmp_path / name).read_text() == (DEFAULT_DIR / name).read_text(), name


@pytest.mark.parametrize(
    "name, path, check",
    [
        ("prg.json", ("cases", 2, "words", 5), "prg/2-b16"),
        ("shamir.json", ("cases", 0, "secret"), "shamir/0-t3"),
        ("x25519.json", ("cases", 0, "shared"), "x25519/rfc7748-6.1"),
        ("round_5sites.json", ("messages", 10, "hex"), "round/replay-every-message"),
        ("round_5sites.json", ("sum", 0), "round/sum-equals-plain-sum"),
    ],
)
def test_a_changed_vector_fails(tmp_path, name, path, check):
    for f in FILES:
        shutil.copy(DEFAULT_DIR / f, tmp_path / f)
    data = json.loads((tmp_path / name).read_text())
    node = data
    for key in path[:-1]:
        node = node[key]
    old = node[path[-1]]
    node[path[-1]] = (old ^ 1) if isinstance(old, int) else ("00" if old[:2] != "00" else "01") + old[2:]
    (tmp_path / name).write_text(json.dumps(data))
    results = {r.name: r for r in check_vectors(tmp_path)}
    assert not results[check].passed
    assert "FAIL" in format_table(list(results.values()))


def test_missing_directory_is_reported_not_raised(tmp_path):
    results = check_vectors(tmp_path / "nope")
    assert len(results) == len(FILES) and not any(r.passed for r in results)
    assert f"0/{len(FILES)} passed" in format_table(results)
