"""The federation's PKI: one CA, site and server TLS certificates, a CRL, bound protocol keys.

A site certificate carries, besides its TLS key (ECDSA P-256: what every TLS stack, BoringSSL
included, accepts), the site's long-term Ed25519 *protocol identity* key and its SecAgg site
number in a CA-signed extension. Every other site can therefore check each key in a round's
config against the CA: a server cannot add Sybil sites, nor swap a site's key, without the CA key.

Directory layout (`pki init DIR`; the CA key should then move offline, see docs/deployment.md):

    ca.key (0600)  ca.crt  crl.pem  index.json
    sites/NAME/    tls.key (0600)  tls.crt  identity.key (0600)
    server/        tls.key (0600)  tls.crt

A site's machine needs ca.crt, crl.pem and its own sites/NAME/; the server needs ca.crt,
crl.pem and server/. `index.json` is the CA's register (numbers, serials, revocations).
"""

from __future__ import annotations

import datetime as _dt
import ipaddress
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from secure_fedrl.errors import ConfigError, ProtocolError
from secure_fedrl.fsutil import atomic_write

#: OID of the protocol-identity extension (under the UUID arc 2.25, so no registration is needed).
PROTOCOL_IDENTITY_OID = x509.ObjectIdentifier("2.25.294076196998306857987400271268081922442")
SITE_URI_PREFIX = "urn:secure-fedrl:site:"
SERVER_NAME = "server"
CA_DAYS, CERT_DAYS, CRL_DAYS = 3650, 365, 30
MAX_SITE_NUMBER = 2**32 - 1
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")


class CertificateRejected(ProtocolError):
    """A peer certificate is not from the federation CA, expired, revoked, or of the wrong kind."""


def _now() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


def check_site_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name) or name == SERVER_NAME:
        raise ConfigError(f"site name {name!r}: use 1-63 letters, digits, '.', '_' or '-' "
                          f"(starting with a letter or digit; {SERVER_NAME!r} is reserved)")
    return name


# ------------------------------------------------------------------ DER of the identity extension
def _der_len(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(body)]) + body


def encode_identity_extension(number: int, public_key: bytes) -> bytes:
    """DER of  SEQUENCE { siteNumber INTEGER, ed25519Key OCTET STRING (32) }."""
    if not 1 <= number <= MAX_SITE_NUMBER or len(public_key) != 32:
        raise ConfigError("protocol identity: site number must be in [1, 2^32-1] and the key 32 bytes")
    i = number.to_bytes((number.bit_length() + 8) // 8, "big")  # +8: room for a clear sign bit
    body = b"\x02" + _der_len(len(i)) + i + b"\x04\x20" + public_key
    return b"\x30" + _der_len(len(body)) + body


def decode_identity_extension(der: bytes) -> tuple[int, bytes]:
    """Strict inverse of `encode_identity_extension` (exactly one valid encoding)."""
    try:
        if len(der) < 4 or der[0] != 0x30 or der[2] != 0x02:
            raise ValueError
        ilen = der[3]
        number, key = int.from_bytes(der[4:4 + ilen], "big"), der[4 + ilen + 2:]
        if encode_identity_extension(number, key) != der:  # re-encoding is the canonical-form check
            raise ValueError
        return number, key
    except (ValueError, IndexError, ConfigError):
        raise CertificateRejected("certificate: malformed protocol-identity extension") from None


# ------------------------------------------------------------------ PEM helpers
def _key_pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _write_private(path: Path, data: bytes) -> None:
    """Private keys: created 0600 from the start (never world-readable, not even briefly)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _write_public(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, data)


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{what}: cannot read {path} ({exc.strerror or exc})") from None


def load_certificate(data: bytes, what: str = "certificate") -> x509.Certificate:
    try:
        if data.lstrip().startswith(b"-----"):
            return x509.load_pem_x509_certificate(data)
        return x509.load_der_x509_certificate(data)
    except ValueError:
        raise CertificateRejected(f"{what}: not a valid X.509 certificate") from None


def _load_key(path: Path, what: str):
    try:
        return serialization.load_pem_private_key(_read(path, what), password=None)
    except (ValueError, TypeError):
        raise ConfigError(f"{what}: {path} is not an unencrypted PEM private key") from None


# ------------------------------------------------------------------ the CA side
class CertificateAuthority:
    """The federation CA over a PKI directory (needs ca.key: the commands `init`, `issue`, `revoke`)."""

    def __init__(self, directory: Path) -> None:
        self.dir = Path(directory)
        if not (self.dir / "index.json").is_file():
            raise ConfigError(f"{self.dir}: not a PKI directory (run `secure-fedrl pki init {self.dir}`)")
        self.key = _load_key(self.dir / "ca.key", "CA key")
        self.cert = load_certificate(_read(self.dir / "ca.crt", "CA certificate"), "CA certificate")
        try:
            self.index = json.loads(_read(self.dir / "index.json", "PKI index"))
        except json.JSONDecodeError:
            raise ConfigError(f"{self.dir / 'index.json'}: corrupt PKI index") from None

    # -------------------------------------------------------------- init
    @classmethod
    def init(cls, directory: Path, *, name: str = "secure-fedrl federation CA") -> "CertificateAuthority":
        d = Path(directory)
        if d.exists() and (not d.is_dir() or any(d.iterdir())):
            raise ConfigError(f"{d}: already exists; `pki init` needs a new or empty directory")
        d.mkdir(parents=True, exist_ok=True)
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = _now()
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _dt.timedelta(minutes=5))
            .not_valid_after(now + _dt.timedelta(days=CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        _write_private(d / "ca.key", _key_pem(key))
        _write_public(d / "ca.crt", cert.public_bytes(serialization.Encoding.PEM))
        index = {"version": 1, "next_site_number": 1, "crl_number": 0, "sites": {}, "servers": [], "revoked": []}
        _write_public(d / "index.json", json.dumps(index, indent=2, sort_keys=True).encode())
        ca = cls(d)
        ca.write_crl()
        return ca

    def _save_index(self) -> None:
        _write_public(self.dir / "index.json", json.dumps(self.index, indent=2, sort_keys=True).encode())

    def _builder(self, subject: x509.Name, public_key, not_before, not_after) -> x509.CertificateBuilder:
        now = _now()
        return (
            x509.CertificateBuilder()
            .subject_name(subject).issuer_name(self.cert.subject).public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before or now - _dt.timedelta(minutes=5))
            .not_valid_after(not_after or now + _dt.timedelta(days=CERT_DAYS))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                         crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False)
        )

    # -------------------------------------------------------------- issue
    def issue_site(self, name: str, *, not_before: _dt.datetime | None = None,
                   not_after: _dt.datetime | None = None, out: Path | None = None) -> Path:
        """TLS key + certificate and a fresh Ed25519 protocol key, bound in the certificate.

        Re-issuing a known (unrevoked) site keeps its number and protocol key (a renewal): its
        SecAgg identity is long-term. A revoked site cannot be re-issued under the same name.
        """
        check_site_name(name)
        entry = self.index["sites"].get(name)
        if entry and entry.get("revoked"):
            raise ConfigError(f"site {name!r} is revoked; issue a certificate under a new name")
        site_dir = Path(out) if out is not None else self.dir / "sites" / name
        if entry:
            number = entry["number"]
            identity = _load_key(site_dir / "identity.key", f"identity key of site {name!r}")
        else:
            number = self.index["next_site_number"]
            if number > MAX_SITE_NUMBER:
                raise ConfigError("the federation has used every site number")
            identity = Ed25519PrivateKey.generate()
        ident_pub = identity.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        tls_key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        cert = (
            self._builder(subject, tls_key.public_key(), not_before, not_after)
            .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(SITE_URI_PREFIX + name)]),
                           critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .add_extension(x509.UnrecognizedExtension(PROTOCOL_IDENTITY_OID,
                                                      encode_identity_extension(number, ident_pub)), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        site_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        _write_private(site_dir / "tls.key", _key_pem(tls_key))
        _write_private(site_dir / "identity.key", _key_pem(identity))
        _write_public(site_dir / "tls.crt", cert.public_bytes(serialization.Encoding.PEM))
        serials = (entry or {}).get("serials", []) + [str(cert.serial_number)]
        self.index["sites"][name] = {"number": number, "serials": serials, "revoked": False,
                                     "identity_key": ident_pub.hex()}
        if not entry:
            self.index["next_site_number"] = number + 1
        self._save_index()
        return site_dir

    def issue_server(self, hosts: list[str] | None = None, *, not_before=None, not_after=None) -> Path:
        """The server's TLS certificate for the names/addresses the sites dial (default localhost)."""
        hosts = hosts or ["localhost", "127.0.0.1"]
        sans: list[x509.GeneralName] = []
        for h in hosts:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(h)))
            except ValueError:
                if not re.fullmatch(r"[A-Za-z0-9*]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?", h):
                    raise ConfigError(f"--host {h!r}: not a hostname or an IP address") from None
                sans.append(x509.DNSName(h))
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, SERVER_NAME)])
        cert = (
            self._builder(subject, key.public_key(), not_before, not_after)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        d = self.dir / "server"
        _write_private(d / "tls.key", _key_pem(key))
        _write_public(d / "tls.crt", cert.public_bytes(serialization.Encoding.PEM))
        self.index["servers"].append(str(cert.serial_number))
        self._save_index()
        return d

    # -------------------------------------------------------------- revoke
    def revoke_site(self, name: str) -> int:
        """Revoke every certificate ever issued to `name`; returns the new CRL number."""
        entry = self.index["sites"].get(name)
        if entry is None:
            raise ConfigError(f"unknown site {name!r} (not issued by this CA)")
        if entry["revoked"]:
            raise ConfigError(f"site {name!r} is already revoked")
        entry["revoked"] = True
        when = _now().isoformat()
        self.index["revoked"] += [{"serial": s, "site": name, "date": when} for s in entry["serials"]]
        self._save_index()
        return self.write_crl()

    def write_crl(self) -> int:
        now = _now()
        self.index["crl_number"] += 1
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.cert.subject)
            .last_update(now - _dt.timedelta(minutes=5))
            .next_update(now + _dt.timedelta(days=CRL_DAYS))
            .add_extension(x509.CRLNumber(self.index["crl_number"]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False)
        )
        for r in self.index["revoked"]:
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(int(r["serial"]))
                .revocation_date(_dt.datetime.fromisoformat(r["date"])).build())
        crl = builder.sign(self.key, hashes.SHA256())
        _write_public(self.dir / "crl.pem", crl.public_bytes(serialization.Encoding.PEM))
        self._save_index()
        return self.index["crl_number"]


# ------------------------------------------------------------------ the verifying side
@dataclass(frozen=True)
class PeerCertificate:
    """A verified certificate: who it names and, for a site, its bound protocol identity."""

    name: str
    is_server: bool
    site_number: int | None
    protocol_key: bytes | None
    serial: int
    not_after: _dt.datetime
    fingerprint: bytes


class TrustStore:
    """The federation CA certificate plus its current CRL: verifies peers' certificates and keys.

    `refresh()` reloads the CRL when its file changed, so a revocation takes effect on the next
    call without a restart. A CRL not signed by the CA, or past its next-update time, fails
    closed: every certificate is then refused.
    """

    def __init__(self, ca_pem: bytes, crl_pem: bytes | None = None, *, crl_path: Path | None = None) -> None:
        self.ca = load_certificate(ca_pem, "CA certificate")
        self.ca_pem = self.ca.public_bytes(serialization.Encoding.PEM)
        self.crl_path = Path(crl_path) if crl_path else None
        self._crl_mtime: float | None = None
        self.crl: x509.CertificateRevocationList | None = None
        if crl_pem is not None:
            self.set_crl(crl_pem)
        self.refresh()

    @classmethod
    def from_dir(cls, pki_dir: Path) -> "TrustStore":
        d = Path(pki_dir)
        crl = d / "crl.pem"
        return cls(_read(d / "ca.crt", "CA certificate"), crl_path=crl if crl.exists() else None)

    def set_crl(self, crl_pem: bytes) -> None:
        try:
            crl = x509.load_pem_x509_crl(crl_pem)
        except ValueError:
            raise CertificateRejected("CRL: not a valid PEM CRL") from None
        if crl.issuer != self.ca.subject or not crl.is_signature_valid(self.ca.public_key()):
            raise CertificateRejected("CRL: not signed by the federation CA")
        number = self.crl_number
        new = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
        if number is not None and new < number:
            raise CertificateRejected(f"CRL: number {new} is older than the loaded one ({number}); rollback refused")
        self.crl = crl

    @property
    def crl_number(self) -> int | None:
        if self.crl is None:
            return None
        return self.crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number

    def refresh(self) -> None:
        if self.crl_path is None:
            return
        try:
            mtime = self.crl_path.stat().st_mtime_ns
        except OSError:
            raise CertificateRejected(f"CRL: cannot read {self.crl_path}") from None
        if mtime != self._crl_mtime:
            self.set_crl(self.crl_path.read_bytes())
            self._crl_mtime = mtime

    def verify(self, cert_data: "bytes | x509.Certificate", *, now: _dt.datetime | None = None,
               expect: str | None = None) -> PeerCertificate:
        """Check issuer signature, validity window, revocation and kind; raise CertificateRejected."""
        cert = cert_data if isinstance(cert_data, x509.Certificate) else load_certificate(cert_data)
        now = now or _now()
        try:
            cert.verify_directly_issued_by(self.ca)
        except (ValueError, TypeError, InvalidSignature):
            raise CertificateRejected("certificate not issued by the federation CA") from None
        if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
            raise CertificateRejected(
                f"certificate serial {cert.serial_number} is outside its validity period "
                f"({cert.not_valid_before_utc:%Y-%m-%d} .. {cert.not_valid_after_utc:%Y-%m-%d})")
        if self.crl is None:
            raise CertificateRejected("no CRL loaded: refusing every certificate (fail closed)")
        if self.crl.next_update_utc is not None and now > self.crl.next_update_utc:
            raise CertificateRejected("CRL is past its next-update time: refusing every certificate (fail closed)")
        if self.crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None:
            raise CertificateRejected(f"certificate serial {cert.serial_number} is revoked")
        try:
            eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
            cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
        except (x509.ExtensionNotFound, IndexError):
            raise CertificateRejected("certificate lacks a common name or extended key usage") from None
        fp = cert.fingerprint(hashes.SHA256())
        if ExtendedKeyUsageOID.SERVER_AUTH in eku and cn == SERVER_NAME:
            info = PeerCertificate(SERVER_NAME, True, None, None, cert.serial_number, cert.not_valid_after_utc, fp)
        elif ExtendedKeyUsageOID.CLIENT_AUTH in eku:
            try:
                sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
                ext = cert.extensions.get_extension_for_oid(PROTOCOL_IDENTITY_OID).value
            except x509.ExtensionNotFound:
                raise CertificateRejected("site certificate lacks its site URI or protocol identity") from None
            if sans.get_values_for_type(x509.UniformResourceIdentifier) != [SITE_URI_PREFIX + cn]:
                raise CertificateRejected("site certificate: common name and site URI disagree")
            number, key = decode_identity_extension(ext.value)
            info = PeerCertificate(cn, False, number, key, cert.serial_number, cert.not_valid_after_utc, fp)
        else:
            raise CertificateRejected("certificate is neither a site (clientAuth) nor the server (serverAuth)")
        if expect == "site" and info.is_server or expect == "server" and not info.is_server:
            raise CertificateRejected(f"expected a {expect} certificate, got one for {info.name!r}")
        return info

    def verify_site_key(self, cert_data: bytes, *, site_number: int, protocol_key: bytes,
                        name: str | None = None, now: _dt.datetime | None = None) -> PeerCertificate:
        """A round roster entry: the CA vouches that `protocol_key` is site `site_number`'s key."""
        info = self.verify(cert_data, now=now, expect="site")
        if info.site_number != site_number:
            raise CertificateRejected(f"certificate of {info.name!r} is for site number {info.site_number}, "
                                      f"not {site_number}")
        if info.protocol_key != bytes(protocol_key):
            raise CertificateRejected(f"protocol key of site {site_number} is not the one its certificate binds")
        if name is not None and info.name != name:
            raise CertificateRejected(f"certificate names {info.name!r}, not {name!r}")
        return info


# ------------------------------------------------------------------ loading one's own identity
@dataclass(frozen=True)
class SiteIdentity:
    """What a site process holds: its TLS credentials, its protocol key, and the trust anchors."""

    name: str
    number: int
    tls_key_pem: bytes
    tls_cert_pem: bytes
    identity_key: Ed25519PrivateKey
    trust: TrustStore

    @property
    def protocol_public_key(self) -> bytes:
        return self.identity_key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


@dataclass(frozen=True)
class ServerIdentity:
    tls_key_pem: bytes
    tls_cert_pem: bytes
    trust: TrustStore


def load_site_identity(pki_dir: Path, name: str) -> SiteIdentity:
    """Load sites/NAME/ and check that it is valid now and that the protocol key is the bound one."""
    check_site_name(name)
    d = Path(pki_dir)
    site_dir = d / "sites" / name
    if not site_dir.is_dir():
        raise ConfigError(f"site {name!r}: no credentials in {site_dir} (run `secure-fedrl pki issue {d} --site {name}`)")
    trust = TrustStore.from_dir(d)
    cert_pem = _read(site_dir / "tls.crt", f"certificate of site {name!r}")
    key_pem = _read(site_dir / "tls.key", f"TLS key of site {name!r}")
    identity = _load_key(site_dir / "identity.key", f"identity key of site {name!r}")
    if not isinstance(identity, Ed25519PrivateKey):
        raise ConfigError(f"identity key of site {name!r} is not an Ed25519 key")
    try:
        info = trust.verify(cert_pem, expect="site")
    except CertificateRejected as exc:
        raise ConfigError(f"site {name!r}: own certificate unusable: {exc}") from None
    pub = identity.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    if info.name != name or info.protocol_key != pub:
        raise ConfigError(f"site {name!r}: identity.key is not the key bound in tls.crt")
    tls_pub = serialization.load_pem_private_key(key_pem, None).public_key()
    if load_certificate(cert_pem).public_key() != tls_pub:
        raise ConfigError(f"site {name!r}: tls.key does not match tls.crt")
    return SiteIdentity(name, info.site_number, key_pem, cert_pem, identity, trust)


def load_server_identity(pki_dir: Path) -> ServerIdentity:
    d = Path(pki_dir)
    trust = TrustStore.from_dir(d)
    cert_pem = _read(d / "server" / "tls.crt", "server certificate")
    key_pem = _read(d / "server" / "tls.key", "server TLS key")
    try:
        trust.verify(cert_pem, expect="server")
    except CertificateRejected as exc:
        raise ConfigError(f"server certificate unusable: {exc}") from None
    return ServerIdentity(key_pem, cert_pem, trust)


def ed25519_public_key(raw: bytes) -> Ed25519PublicKey:
    return Ed25519PublicKey.from_public_bytes(raw)
