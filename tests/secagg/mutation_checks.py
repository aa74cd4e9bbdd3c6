"""Targeted mutation check (issue 7 point 7): delete each validation check named in the issue, and
each check of the pairing defence, in a scratch copy of the repository, run tests/secagg, and
report KILLED (a test failed) or SURVIVED. Not collected by pytest (no test_ prefix).

    .venv/bin/python tests/secagg/mutation_checks.py [name-substring ...]
"""
import pathlib
import shutil
import subprocess
import sys
import tempfile

REPO = pathlib.Path(__file__).resolve().parents[2]
R = pathlib.Path(tempfile.mkdtemp(prefix="secagg-mutation-"))
for part in ("secure_fedrl", "tests", "protocols"):
    shutil.copytree(REPO / part, R / part, ignore=shutil.ignore_patterns("__pycache__"))
shutil.copy(REPO / "pyproject.toml", R / "pyproject.toml")
C = "secure_fedrl/secagg/client.py"; S = "secure_fedrl/secagg/server.py"
MUTANTS = [
 ("signer in holders/U3 (client)", C, "if signer not in alive or signer == self.id or (signer in tags and signer not in holders):", "if False:"),
 ("site itself in U3", C, "if self.id not in alive:", "if False:"),
 ("|U3| >= t", C, "if len(survivors) < self.cfg.threshold:\n            raise BelowThresholdError(f\"site {self.id}: {len(survivors)} survivors", "if False:\n            raise BelowThresholdError(f\"site {self.id}: {len(survivors)} survivors"),
 ("own-advert byte comparison", C, "if wire != self._advert.encode():", "if False:"),
 ("distinct advertised keys", C, "if len(set(pks)) != len(pks):", "if False:"),
 ("advert config digest", C, "if adv.config_digest != base.digest:\n                    raise ProtocolError(f\"AdvertiseKeys from site {adv.sender} is for another round\")", "pass"),
 ("share plaintext header", C, "if len(pt) != _PT_BYTES or struct.unpack(\">II\", pt[:8]) != (v, self.id):", "if len(pt) != _PT_BYTES:"),
 ("reused-key rejection (server)", S, "if msg.c_pk in self._used_keys or msg.s_pk in self._used_keys:", "if False:"),
 ("share-kind check (server)", S, "if kind != expected:", "if False:"),
 ("self-mask commitment check (server)", S, "lambda b, u=u, c=commit: R.b_commitment(cfg, u, b) == c)", "lambda b, u=u, c=commit: True)"),
 ("NEW attestation required", C, "if peer not in attested:\n                        raise ProtocolError", "if False:\n                        raise ProtocolError"),
 ("NEW attestation authentic", C, "if self.id not in paired or not P.tags_equal(", "if False and not P.tags_equal("),
 ("NEW |M(u) ∩ U3| >= t-1", C, "if len(survivors) + 1 < t:", "if False:"),
 ("NEW t-1 paired survivors certified", C, "if safe < t - 1:", "if False:"),
 ("NEW peer certified", C, "if not certify(peer):", "if False:"),
 ("NEW attestation only from paired", C, "if u not in alive or u == self.id or u not in self._pairs:", "if False:"),
 ("NEW forged confirmation aborts", C, "            if not ok:\n                raise ProtocolError(\n                    f\"site {self.id}: consistency check failed: site {s} signed", "            if False:\n                raise ProtocolError(\n                    f\"site {self.id}: consistency check failed: site {s} signed"),
 ("NEW server attestation within delivered", S, "if not paired <= delivered:", "if False:"),
 ("BIND server drops a site not paired with", S, "if u in self._refused_by:", "if False:"),
 ("BIND server refuses leaving out a counted peer", S, "if counted:", "if False:"),
 ("BIND server keeps only mutual pairs", S, "self._pairs[v] = self._pairs[v] - {u}", "pass"),
 ("NEW server survivor pre-check", S, "if alive + 1 < t:", "if False:"),
 ("NEW server low-order key", S, "P.check_x25519_public(msg.c_pk, what=f\"AdvertiseKeys from site {msg.sender}: encryption key\")", "pass"),
 ("NEW site skips low-order peer", C, "                enc = P.x25519(self._c_key, keys[v][0])\n                mask = P.x25519(self._s_key, keys[v][1])\n            except ProtocolError as err:", "                enc = P.x25519(self._c_key, keys[v][0])\n                mask = P.x25519(self._s_key, keys[v][1])\n            except KeyError as err:"),
 ("NEW refuse to mask |M|+1<t", C, "if len(shares) + 1 < self.cfg.threshold:", "if False:"),
 ("GRAPH own commitment in the view", C, "if commits.get(self.id) != self._advert.graph_commit:", "if False:"),
 ("GRAPH view within the round", C, "if not commits.keys() <= self.cfg.identity.keys():", "if False:"),
 ("GRAPH view >= t", C, "if len(commits) < self.cfg.threshold:", "if False:"),
 ("GRAPH reveals cover the view", C, "if len(bundle.reveals) != len(self._view):", "if False:"),
 ("GRAPH reveal opens its commitment", "secure_fedrl/secagg/protocol.py", "if graph_commitment(cfg, v, nonce) != commit:", "if False:"),
 ("GRAPH holder advert carries the view's commitment", C, "if not base.complete and view.get(adv.sender) != adv.graph_commit:", "if False:"),
 ("GRAPH complete graph refuses reveals", C, "            if bundle.reveals:\n                raise ProtocolError", "            if False:\n                raise ProtocolError"),
 ("GRAPH server checks the reveal", S, "if R.graph_commitment(self.cfg, msg.sender, msg.nonce) != self._adverts[msg.sender].graph_commit:", "if False:"),
 ("BIND site pairs only with peers whose ciphertext decrypts", C, "            seen.add(v)\n            try:", "            seen.add(v)\n            shares[v] = self._shares.get(v, (b'', b''))\n            try:"),
 ("BIND site signs its own view's hash", C, "view_hash=R.view_hash(self.cfg, view.commits)).signed(self._sk)", "view_hash=bytes(32)).signed(self._sk)"),
 ("BIND server checks the reveal's view hash", S, "if msg.view_hash != R.view_hash(self.cfg, self._view):", "if False:"),
 ("GRAPH server aborts on a missing reveal", S, "            if missing:  # a reveal", "            if False:  # a reveal"),
]
only = sys.argv[1:]
for name, f, old, new in MUTANTS:
    if only and not any(o in name for o in only):
        continue
    p = R / f
    src = p.read_text()
    assert src.count(old) == 1, (name, src.count(old))
    p.write_text(src.replace(old, new))
    try:
        r = subprocess.run([sys.executable, "-m", "pytest", "tests/secagg", "-x", "-q",
                            "-p", "no:cacheprovider", "--hypothesis-seed=0"], cwd=R, capture_output=True, text=True, timeout=900)
        killed = r.returncode != 0
        first = next((l for l in r.stdout.splitlines() if l.startswith("FAILED")), "")
    finally:
        p.write_text(src)
    print(f"{'KILLED' if killed else 'SURVIVED'}  {name}  {first[:110]}", flush=True)
shutil.rmtree(R, ignore_errors=True)
