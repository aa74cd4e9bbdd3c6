import json
import shutil

import pytest

from secure_fedrl.secagg.conformance import DEFAULT_DIR, FILES, check_vectors, format_table, generate_vectors


def test_repository_vectors_pass():
    results = check_vectors(DEFAULT_DIR)
    assert results and all(r.passed for r in results), format_table(results)
    names = {r.name.split("/")[0] for r in results}
    assert names >= {"x25519", "hkdf", "prg", "shamir", "encoding", "round_5sites", "round_secagg_plus",
                     "round_spare_share", "round_split_view"}


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
        ("round_5sites.json", ("messages", 10, "hex"), "round_5sites/replay-every-message"),
        ("round_5sites.json", ("sum", 0), "round_5sites/sum-equals-plain-sum"),
        ("round_secagg_plus.json", ("messages", 40, "hex"), "round_secagg_plus/replay-every-message"),
        ("round_spare_share.json", ("bad_share", "delta"), "round_spare_share/replay-every-message"),
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
    assert len(results) >= len(FILES) and not any(r.passed for r in results)
    assert f"0/{len(results)} passed" in format_table(results)


def test_round_vectors_cover_what_they_claim():
    from secure_fedrl.secagg import messages as M
    from secure_fedrl.secagg import protocol as R
    from secure_fedrl.secagg import shamir
    from secure_fedrl.secagg.conformance import _config_from_json

    plus = json.loads((DEFAULT_DIR / "round_secagg_plus.json").read_text())
    cfg = _config_from_json(plus["config"])
    assert cfg.degree % 2 == 1 and cfg.n % 2 == 0 and not cfg.complete  # odd k, even n
    assert len(set(plus["dropouts"].values())) == 2  # dropouts in two phases
    assert set(plus["accepted"]) == set(cfg.site_ids) - {1}

    spare = json.loads((DEFAULT_DIR / "round_spare_share.json").read_text())
    cfg = _config_from_json(spare["config"])
    bad = spare["bad_share"]
    ups = {m["site"]: M.decode(bytes.fromhex(m["hex"])) for m in spare["messages"]
           if m["phase"] == "unmasking" and m["direction"] == "site->server"}
    assert len(ups) == cfg.n > cfg.threshold  # spare responders
    shares = {s: shamir.share_from_bytes(dict((p, sh) for p, k, sh in r.shares if k == M.KIND_B)[bad["peer"]])
              for s, r in ups.items()}
    commit = next(M.decode(bytes.fromhex(m["hex"])) for m in spare["messages"] if m["phase"] == "share_keys"
                  and m["direction"] == "site->server" and m["site"] == bad["peer"]).b_commitment
    first = shamir.reconstruct({x: shares[x] for x in (1, 2, 3)}, threshold=3)
    assert R.b_commitment(cfg, bad["peer"], first) != commit  # the first t shares fail: retry path
    retry = shamir.reconstruct({x: shares[x] for x in (1, 3, 4)}, threshold=3)
    assert R.b_commitment(cfg, bad["peer"], retry) == commit


def _plus_vector():
    from secure_fedrl.secagg.conformance import _config_from_json

    v = json.loads((DEFAULT_DIR / "round_secagg_plus.json").read_text())
    return v, _config_from_json(v["config"])


def test_seeded_config_refuses_a_reveal_signed_for_another_view():
    """A checker that took any logged reveal would accept a transcript of a split view: each
    GraphReveal must sign the hash of the one logged view (SPEC 2)."""
    from secure_fedrl.errors import ProtocolError
    from secure_fedrl.secagg import messages as M
    from secure_fedrl.secagg import primitives as P
    from secure_fedrl.secagg import protocol as R
    from secure_fedrl.secagg.conformance import seeded_config

    v, cfg = _plus_vector()
    msgs = v["messages"]
    assert seeded_config(cfg, msgs).graph_seed.hex() == v["seeded_graph_seed"]
    i = next(j for j, m in enumerate(msgs) if M.message_type(bytes.fromhex(m["hex"])) == M.T_GRAPH_REVEAL)
    g = M.GraphReveal.decode(bytes.fromhex(msgs[i]["hex"]))
    view = next(M.GraphView.decode(bytes.fromhex(m["hex"])).commits for m in msgs
                if M.message_type(bytes.fromhex(m["hex"])) == M.T_GRAPH_VIEW)
    sk = P.ed25519_keypair(lambda n: bytes.fromhex(v["identity_private_keys"][str(g.sender)]))[0]
    other = M.GraphReveal(g.config_digest, g.sender, g.nonce, view_hash=R.view_hash(cfg, view[:-1])).signed(sk)
    forged = msgs[:i] + [dict(msgs[i], hex=other.encode().hex())] + msgs[i + 1:]
    with pytest.raises(ProtocolError, match="a GraphReveal signs another view than the logged one"):
        seeded_config(cfg, forged)


def test_seeded_config_refuses_a_log_with_two_views():
    from secure_fedrl.errors import ProtocolError
    from secure_fedrl.secagg import messages as M
    from secure_fedrl.secagg.conformance import seeded_config

    v, cfg = _plus_vector()
    msgs = v["messages"]
    i = next(j for j, m in enumerate(msgs) if M.message_type(bytes.fromhex(m["hex"])) == M.T_GRAPH_VIEW)
    gv = M.GraphView.decode(bytes.fromhex(msgs[i]["hex"]))
    split = M.GraphView(gv.config_digest, gv.receiver, gv.commits[:-1]).encode().hex()
    with pytest.raises(ProtocolError, match="must log one view, found 2"):
        seeded_config(cfg, msgs[:i] + [dict(msgs[i], hex=split)] + msgs[i + 1:])
