"""`secure-fedrl pki ...`: the federation CA's commands (argument parsing and output only)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from secure_fedrl.errors import ConfigError


def add_pki_parser(sub) -> None:
    pki = sub.add_parser("pki", help="federation CA: certificates for the server and the sites, revocation")
    cmds = pki.add_subparsers(dest="pki_command", required=True, metavar="PKI_COMMAND")
    init = cmds.add_parser("init", help="create a federation CA in a new directory")
    init.add_argument("dir", type=Path, help="new (or empty) PKI directory")
    init.add_argument("--name", default="secure-fedrl federation CA", help="CA common name")
    issue = cmds.add_parser("issue", help="issue a site certificate (with its protocol key) or the server's")
    issue.add_argument("dir", type=Path, help="PKI directory made by `pki init`")
    who = issue.add_mutually_exclusive_group(required=True)
    who.add_argument("--site", metavar="NAME", help="site name (letters, digits, '.', '_', '-')")
    who.add_argument("--server", action="store_true", help="the server's TLS certificate")
    issue.add_argument("--host", action="append", metavar="HOST",
                       help="with --server: a DNS name or IP the sites dial (repeatable; default localhost, 127.0.0.1)")
    revoke = cmds.add_parser("revoke", help="revoke a site's certificates and publish a new CRL")
    revoke.add_argument("dir", type=Path, help="PKI directory made by `pki init`")
    revoke.add_argument("--site", metavar="NAME", required=True)
    keys = cmds.add_parser("keys", help="print the sites' CA-certified protocol keys as JSON (pin them for "
                                        "`audit verify --witness-keys`)")
    keys.add_argument("dir", type=Path, help="PKI directory (needs ca.crt, crl.pem and sites/NAME/tls.crt)")


def run_pki(args: argparse.Namespace) -> int:
    from .pki import CertificateAuthority

    if args.pki_command == "init":
        ca = CertificateAuthority.init(args.dir, name=args.name)
        print(f"CA created in {ca.dir} (ca.key is 0600: keep it offline; give sites ca.crt and crl.pem)")
        return 0
    if args.pki_command == "keys":
        print(json.dumps(certified_site_keys(args.dir), indent=1, sort_keys=True))
        return 0
    ca = CertificateAuthority(args.dir)
    if args.pki_command == "issue":
        if args.site is not None:
            if args.host:
                raise ConfigError("--host applies to --server only")
            out = ca.issue_site(args.site)
            number = ca.index["sites"][args.site]["number"]
            print(f"site {args.site!r} (SecAgg id {number}): {out}/tls.crt, tls.key, identity.key")
        else:
            out = ca.issue_server(args.host)
            print(f"server: {out}/tls.crt, tls.key")
        return 0
    number = ca.revoke_site(args.site)
    print(f"site {args.site!r} revoked; {ca.dir / 'crl.pem'} is CRL number {number}: copy it to the server")
    return 0


def certified_site_keys(pki_dir: Path) -> dict[str, str]:
    """{site: Ed25519 protocol key hex} of every site certificate the CA vouches for now
    (valid, not revoked): the keys the sites countersign ledger heads with."""
    from .pki import CertificateRejected, TrustStore

    d = Path(pki_dir)
    trust = TrustStore.from_dir(d)
    out = {}
    for cert in sorted((d / "sites").glob("*/tls.crt")):
        try:
            info = trust.verify(cert.read_bytes(), expect="site")
        except CertificateRejected:
            continue
        out[info.name] = info.protocol_key.hex()
    if not out:
        raise ConfigError(f"{d}: no valid site certificate under sites/*/tls.crt")
    return out
