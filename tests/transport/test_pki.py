"""PKI: the CA commands, the protocol-identity binding, and certificate/CRL verification."""

from __future__ import annotations

import datetime as dt
import json
import os
import stat

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from secure_fedrl.cli import main
from secure_fedrl.errors import ConfigError
from secure_fedrl.transport.pki import (
    PROTOCOL_IDENTITY_OID,
    CertificateAuthority,
    CertificateRejected,
    TrustStore,
    decode_identity_extension,
    encode_identity_extension,
    load_certificate,
    load_server_identity,
    load_site_identity,
)

NOW = dt.datetime.now(dt.timezone.utc)


@pytest.fixture()
def ca(tmp_path):
    ca = CertificateAuthority.init(tmp_path / "pki")
    ca.issue_site("alpha")
    ca.issue_site("beta")
    ca.issue_server()
    return ca


def _cert(ca, name):
    return (ca.dir / "sites" / name / "tls.crt").read_bytes()


def _trust(ca):
    return TrustStore.from_dir(ca.dir)


# ---------------------------------------------------------------- CLI
def test_cli_init_issue_revoke(tmp_path, capsys):
    d = tmp_path / "pki"
    assert main(["pki", "init", str(d)]) == 0
    assert main(["pki", "issue", str(d), "--site", "clinic-1"]) == 0
    assert main(["pki", "issue", str(d), "--server", "--host", "fl.example.org", "--host", "10.0.0.5"]) == 0
    assert main(["pki", "revoke", str(d), "--site", "clinic-1"]) == 0
    out = capsys.readouterr().out
    assert "SecAgg id 1" in out and "CRL number 2" in out
    for key in ("ca.key", "sites/clinic-1/tls.key", "sites/clinic-1/identity.key", "server/tls.key"):
        assert stat.S_IMODE(os.stat(d / key).st_mode) == 0o600, key
    assert stat.S_IMODE(os.stat(d / "sites" / "clinic-1").st_mode) & 0o077 == 0
    sans = load_certificate((d / "server" / "tls.crt").read_bytes()).extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["fl.example.org"]
    assert [str(a) for a in sans.get_values_for_type(x509.IPAddress)] == ["10.0.0.5"]


@pytest.mark.parametrize("argv, message", [
    (["pki", "init", "{d}"], "already exists"),
    (["pki", "revoke", "{d}", "--site", "nobody"], "unknown site 'nobody'"),
    (["pki", "issue", "{d}", "--site", "has space"], "site name 'has space'"),
    (["pki", "issue", "{d}", "--site", "server"], "reserved"),
    (["pki", "issue", "{d}", "--site", "alpha", "--host", "x"], "--host applies to --server only"),
    (["pki", "issue", "{d}", "--server", "--host", "bad_host!"], "not a hostname or an IP"),
    (["pki", "issue", "{d}/nope", "--site", "x"], "not a PKI directory"),
])
def test_cli_bad_input_is_one_line_exit_2(ca, capsys, argv, message):
    argv = [a.format(d=ca.dir) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_cli_revoke_twice_and_reissue_revoked(ca, capsys):
    assert main(["pki", "revoke", str(ca.dir), "--site", "alpha"]) == 0
    assert main(["pki", "revoke", str(ca.dir), "--site", "alpha"]) == 2
    assert main(["pki", "issue", str(ca.dir), "--site", "alpha"]) == 2
    assert "already revoked" in capsys.readouterr().err


def test_init_accepts_empty_directory_and_refuses_a_file(tmp_path):
    (tmp_path / "empty").mkdir()
    CertificateAuthority.init(tmp_path / "empty")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="already exists"):
        CertificateAuthority.init(tmp_path / "file")


# ---------------------------------------------------------------- identity binding
def test_site_certificate_binds_number_and_protocol_key(ca):
    ident = load_site_identity(ca.dir, "beta")
    info = _trust(ca).verify(_cert(ca, "beta"), expect="site")
    assert (info.name, info.site_number, info.protocol_key) == ("beta", 2, ident.protocol_public_key)
    assert ca.index["sites"]["beta"]["identity_key"] == ident.protocol_public_key.hex()


def test_renewal_keeps_number_and_protocol_key(ca):
    before = load_site_identity(ca.dir, "alpha")
    ca.issue_site("alpha")
    after = load_site_identity(ca.dir, "alpha")
    assert after.number == before.number and after.protocol_public_key == before.protocol_public_key
    assert after.tls_cert_pem != before.tls_cert_pem
    assert ca.issue_site and CertificateAuthority(ca.dir).index["next_site_number"] == 3


def test_extension_encoding_is_strict():
    key = bytes(range(32))
    for n in (1, 127, 128, 255, 256, 2**31, 2**32 - 1):
        assert decode_identity_extension(encode_identity_extension(n, key)) == (n, key)
    good = encode_identity_extension(5, key)
    bad = [good[:-1], good + b"\0", b"\x31" + good[1:], good[:3] + b"\x02\x00\x05" + good[5:],  # non-minimal int
           good[:5] + b"\x04\x1f" + good[7:]]
    for der in bad:
        with pytest.raises(CertificateRejected, match="malformed protocol-identity"):
            decode_identity_extension(der)
    for n in (0, 2**32):
        with pytest.raises(ConfigError):
            encode_identity_extension(n, key)


def test_load_site_identity_refuses_a_swapped_identity_key(ca):
    other = (ca.dir / "sites" / "beta" / "identity.key").read_bytes()
    (ca.dir / "sites" / "alpha" / "identity.key").write_bytes(other)
    with pytest.raises(ConfigError, match="not the key bound"):
        load_site_identity(ca.dir, "alpha")
    with pytest.raises(ConfigError, match="no credentials"):
        load_site_identity(ca.dir, "gamma")


def test_load_server_identity(ca):
    ident = load_server_identity(ca.dir)
    assert ident.trust.verify(ident.tls_cert_pem, expect="server").is_server


# ---------------------------------------------------------------- verification (attacker inputs)
def _foreign_site_cert(name="alpha", number=1, key=None):
    """A certificate shaped like ours, signed by a CA the federation never trusted."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        rogue = CertificateAuthority.init(os.path.join(tmp, "rogue"))
        rogue.issue_site(name)
        return (rogue.dir / "sites" / name / "tls.crt").read_bytes()


def test_foreign_ca_certificate_refused(ca):
    with pytest.raises(CertificateRejected, match="not issued by the federation CA"):
        _trust(ca).verify(_foreign_site_cert())


def test_expired_and_not_yet_valid_refused(ca):
    trust = _trust(ca)
    ca.issue_site("old", not_before=NOW - dt.timedelta(days=10), not_after=NOW - dt.timedelta(days=1))
    with pytest.raises(CertificateRejected, match="outside its validity period"):
        trust.verify(_cert(ca, "old"))
    ca.issue_site("future", not_before=NOW + dt.timedelta(days=1), not_after=NOW + dt.timedelta(days=10))
    with pytest.raises(CertificateRejected, match="outside its validity period"):
        trust.verify(_cert(ca, "future"))


def test_revoked_refused_after_refresh(ca):
    trust = _trust(ca)
    cert = _cert(ca, "alpha")
    trust.verify(cert)
    ca.revoke_site("alpha")
    os.utime(ca.dir / "crl.pem", ns=(1, 1))  # a new mtime even on coarse clocks
    trust.refresh()
    with pytest.raises(CertificateRejected, match="revoked"):
        trust.verify(cert)
    trust.verify(_cert(ca, "beta"))  # others unaffected


def test_crl_from_another_ca_and_rollback_refused(ca, tmp_path):
    trust = _trust(ca)
    rogue = CertificateAuthority.init(tmp_path / "rogue")
    with pytest.raises(CertificateRejected, match="not signed by the federation CA"):
        trust.set_crl((rogue.dir / "crl.pem").read_bytes())
    old = (ca.dir / "crl.pem").read_bytes()
    ca.revoke_site("alpha")
    trust.set_crl((ca.dir / "crl.pem").read_bytes())
    with pytest.raises(CertificateRejected, match="rollback refused"):
        trust.set_crl(old)  # replaying an older CRL would un-revoke alpha


def test_missing_or_stale_crl_fails_closed(ca):
    trust = TrustStore((ca.dir / "ca.crt").read_bytes())
    with pytest.raises(CertificateRejected, match="fail closed"):
        trust.verify(_cert(ca, "alpha"))
    trust = _trust(ca)
    with pytest.raises(CertificateRejected, match="next-update"):
        trust.verify(_cert(ca, "alpha"), now=NOW + dt.timedelta(days=60))


def test_server_certificate_is_not_a_site_and_vice_versa(ca):
    trust = _trust(ca)
    server = (ca.dir / "server" / "tls.crt").read_bytes()
    with pytest.raises(CertificateRejected, match="expected a site"):
        trust.verify(server, expect="site")
    with pytest.raises(CertificateRejected, match="expected a server"):
        trust.verify(_cert(ca, "alpha"), expect="server")


def _sign_like_site(ca, *, cn, uri, ext=None, eku=x509.ExtendedKeyUsageOID.CLIENT_AUTH):
    key = ec.generate_private_key(ec.SECP256R1())
    b = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, cn)]))
         .issuer_name(ca.cert.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(NOW - dt.timedelta(hours=1)).not_valid_after(NOW + dt.timedelta(days=1))
         .add_extension(x509.ExtendedKeyUsage([eku]), critical=False)
         .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]), critical=False))
    if ext is not None:
        b = b.add_extension(x509.UnrecognizedExtension(PROTOCOL_IDENTITY_OID, ext), critical=False)
    return b.sign(ca.key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def test_ca_signed_but_malformed_site_certificates_refused(ca):
    trust = _trust(ca)
    key = bytes(32)
    with pytest.raises(CertificateRejected, match="lacks its site URI or protocol identity"):
        trust.verify(_sign_like_site(ca, cn="x", uri="urn:secure-fedrl:site:x"))
    with pytest.raises(CertificateRejected, match="disagree"):
        trust.verify(_sign_like_site(ca, cn="x", uri="urn:secure-fedrl:site:y", ext=encode_identity_extension(9, key)))
    with pytest.raises(CertificateRejected, match="neither a site"):
        trust.verify(_sign_like_site(ca, cn="x", uri="urn:secure-fedrl:site:x", ext=encode_identity_extension(9, key),
                                     eku=x509.ExtendedKeyUsageOID.CODE_SIGNING))


def test_verify_site_key_catches_sybils_and_swaps(ca):
    trust = _trust(ca)
    alpha = load_site_identity(ca.dir, "alpha")
    cert = _cert(ca, "alpha")
    trust.verify_site_key(cert, site_number=1, protocol_key=alpha.protocol_public_key, name="alpha")
    fake = Ed25519PrivateKey.generate().public_key().public_bytes(serialization.Encoding.Raw,
                                                                  serialization.PublicFormat.Raw)
    with pytest.raises(CertificateRejected, match="not the one its certificate binds"):
        trust.verify_site_key(cert, site_number=1, protocol_key=fake)
    with pytest.raises(CertificateRejected, match="site number 1, not 7"):
        trust.verify_site_key(cert, site_number=7, protocol_key=alpha.protocol_public_key)
    with pytest.raises(CertificateRejected, match="names 'alpha', not 'beta'"):
        trust.verify_site_key(cert, site_number=1, protocol_key=alpha.protocol_public_key, name="beta")
    with pytest.raises(CertificateRejected, match="not a valid X.509"):
        trust.verify_site_key(b"garbage", site_number=1, protocol_key=fake)


def test_index_records_revocations(ca):
    ca.revoke_site("beta")
    index = json.loads((ca.dir / "index.json").read_text())
    assert index["sites"]["beta"]["revoked"] and index["crl_number"] == 2
    crl = x509.load_pem_x509_crl((ca.dir / "crl.pem").read_bytes())
    serial = int(index["sites"]["beta"]["serials"][0])
    assert crl.get_revoked_certificate_by_serial_number(serial) is not None
