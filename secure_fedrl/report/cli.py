"""Subcommands `report`, `audit verify` and `audit canary` (wired into secure_fedrl/cli.py).

`audit ...` runs the auditor's package `audit/` (beside the secure_fedrl package in a source
checkout), loaded by path: the auditor's code imports nothing of secure_fedrl's accounting, and
secure_fedrl depends on it only here, at the command line.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from secure_fedrl.errors import ConfigError

AUDIT_DIR = Path(__file__).resolve().parent.parent.parent / "audit"


def add_parsers(sub: argparse._SubParsersAction) -> None:
    rep = sub.add_parser("report", help="privacy-budget report of a run directory (HTML, JSON or PDF)")
    rep.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="run directory written by simulate/serve")
    rep.add_argument("--out", type=Path, required=True, help="output file")
    rep.add_argument("--format", choices=("html", "json", "pdf"), default=None,
                     help="default: from --out's suffix, else html")
    rep.add_argument("--public-key", metavar="HEX", help="pin the ledger's Ed25519 public key (64 hex digits)")
    rep.add_argument("--key-dir", type=Path, help="ledger key directory whose public key to check against")
    rep.add_argument("--canary", type=Path, help="canary_audit.json to show (default: RUN_DIR/canary_audit.json)")

    aud = sub.add_parser("audit", help="the auditor's tools: independent ledger verifier, canary audit")
    asub = aud.add_subparsers(dest="audit_command", required=True, metavar="AUDIT_COMMAND")
    ver = asub.add_parser("verify", help="verify a run's ledger independently (audit/verify_ledger.py)",
                          add_help=False)
    ver.add_argument("verifier_args", nargs=argparse.REMAINDER, metavar="RUN_DIR [--public-key HEX] ...",
                     help="passed to audit/verify_ledger.py unchanged")
    can = asub.add_parser("canary", help="empirical epsilon lower bound with canaries (Steinke et al. 2023)")
    can.add_argument("config", type=Path, help="federation config (TOML)")
    can.add_argument("--out", type=Path, required=True, help="output directory (canary_audit.json)")
    can.add_argument("--mode", choices=("fast", "run"), default="fast",
                     help="fast: canary sites through the real aggregator, no training (default); "
                          "run: a real simulate run with canary sites added")
    can.add_argument("--level", choices=("client", "trajectory"), default=None,
                     help="canary unit (default: the config's privacy.unit; needed when DP is off)")
    can.add_argument("--canaries", type=int, default=256, help="number of canaries m (default 256)")
    can.add_argument("--dim", type=int, default=2048, help="fast mode: update dimension (default 2048)")
    can.add_argument("--rounds", type=int, help="override federation.rounds")
    can.add_argument("--seed", type=int, default=0, help="seed of canary membership and directions")
    can.add_argument("--confidence", type=float, default=0.95, help="confidence of the bound (default 0.95)")


def load_audit_module(name: str) -> ModuleType:
    """`audit.<name>` from the source checkout's audit/ folder, imported by path."""
    init = AUDIT_DIR / "__init__.py"
    if not init.is_file():
        raise ConfigError(f"the auditor's package is not at {AUDIT_DIR} (run from a source checkout)")
    pkg = sys.modules.get("audit")
    if pkg is None or Path(getattr(pkg, "__file__", "") or "").resolve() != init:
        spec = importlib.util.spec_from_file_location("audit", init, submodule_search_locations=[str(AUDIT_DIR)])
        pkg = importlib.util.module_from_spec(spec)
        sys.modules["audit"] = pkg
        spec.loader.exec_module(pkg)
    return importlib.import_module(f"audit.{name}")


def run(args: argparse.Namespace) -> int:
    if args.command == "report":
        from secure_fedrl.report import write_report

        out = write_report(args.run_dir, args.out, fmt=args.format, public_key=args.public_key,
                           key_dir=args.key_dir, canary=args.canary)
        print(f"report written to {out}")
        return 0
    if args.audit_command == "verify":
        return int(load_audit_module("verify_ledger").main(list(args.verifier_args)) or 0)
    if args.audit_command == "canary":
        return int(load_audit_module("canary").run_cli(args) or 0)
    raise AssertionError(f"unhandled audit command {args.audit_command}")
