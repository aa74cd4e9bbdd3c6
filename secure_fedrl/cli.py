"""`secure-fedrl` command line: parse, load the config, call the runtime. Nothing else lives here.

Every user mistake surfaces as a `SecureFedRLError`; it is printed as one line and the process
exits with code 2. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Sequence

from secure_fedrl.errors import ConfigError, SecureFedRLError

EXIT_USER_ERROR = 2


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {value}")
    return value


def _positive_int(text: str) -> int:
    value = _non_negative_int(text)
    if value == 0:
        raise argparse.ArgumentTypeError("expected a positive integer, got 0")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="secure-fedrl",
        description="Federated reinforcement learning with secure aggregation and differential privacy.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sim = sub.add_parser("simulate", help="run a federation with every site in this process")
    sim.add_argument("config", type=Path, help="federation config (TOML)")
    sim.add_argument("--out", type=Path, required=True, help="run directory (metrics, checkpoints, ledger)")
    sim.add_argument("--rounds", type=_positive_int, help="number of rounds (overrides federation.rounds)")
    sim.add_argument("--seed", type=_non_negative_int, help="master seed (overrides federation.seed)")
    sim.add_argument("--device", help="torch device for local training, e.g. cpu or cuda")
    sim.add_argument("--resume", action="store_true", help="continue the run in --out exactly where it stopped")
    sim.add_argument("--no-progress", action="store_true", help="no progress bar")
    sim.add_argument("--ledger-key", type=Path, metavar="KEYDIR",
                     help="directory holding the privacy ledger's Ed25519 signing key (created there, "
                          "0600 in a 0700 directory, on first use); must be outside --out. Default: "
                          "$XDG_CONFIG_HOME/secure-fedrl/ledger-keys/<federation.name> "
                          "(~/.config without XDG_CONFIG_HOME)")
    sim.add_argument("--ledger-passphrase-file", type=Path, metavar="FILE",
                     help="encrypt/decrypt the ledger key with the passphrase on this file's first line "
                          "(mode 0600); default: $SECURE_FEDRL_LEDGER_PASSPHRASE if set, else no passphrase")
    sim.add_argument("--backend", choices=("local", "ray"), default="local",
                     help="local: every site in this process (default); ray: the sites as Ray actors, the "
                          "server in this process (pip install -e '.[ray]')")
    sim.add_argument("--ray-address", metavar="ADDR",
                     help="with --backend ray: the Ray cluster to use (default: start a local Ray)")
    sim.add_argument("--cpus-per-site", type=float, metavar="X",
                     help="with --backend ray: CPUs each site actor reserves; the sites are spread over "
                          "floor(cluster CPUs / X) actors, each training one site at a time (default 1)")

    srv = sub.add_parser("serve", help="run the federation's server (sites connect with `join`, gRPC + mutual TLS)")
    srv.add_argument("config", type=Path, help="federation config (TOML); the sites run the same file")
    srv.add_argument("--out", type=Path, required=True,
                     help="run directory; an existing one is resumed from its last complete round")
    srv.add_argument("--pki", type=Path, required=True, help="PKI directory with ca.crt, crl.pem and server/")
    srv.add_argument("--address", default="0.0.0.0:50051", metavar="HOST:PORT",
                     help="where to listen (default 0.0.0.0:50051; port 0 picks a free one)")
    srv.add_argument("--rounds", type=_positive_int, help="number of rounds (overrides federation.rounds)")
    srv.add_argument("--wait", type=float, default=300.0, metavar="SECONDS",
                     help="before the first round, wait this long for the sites to join (default 300)")
    srv.add_argument("--min-sites", type=_positive_int, metavar="N",
                     help="start once N sites have joined (default: every site of the config)")
    srv.add_argument("--liveness", type=float, default=15.0, metavar="SECONDS",
                     help="a site not heard from for this long (sites heartbeat every third of it) "
                          "is a dropout of the open phase (default 15)")
    srv.add_argument("--train-deadline", type=float, default=600.0, metavar="SECONDS",
                     help="how long the first phase of a round (local training, then key adverts) may take "
                          "before a silent site is a dropout (default 600)")
    srv.add_argument("--ready-file", type=Path, help=argparse.SUPPRESS)  # port + pid once listening (tests)
    for p in (srv,):
        p.add_argument("--ledger-key", type=Path, metavar="KEYDIR", help="as for simulate")
        p.add_argument("--ledger-passphrase-file", type=Path, metavar="FILE", help="as for simulate")

    jn = sub.add_parser("join", help="run one site (or several, for load tests) of a served federation")
    jn.add_argument("config", type=Path, help="the federation config the server runs")
    jn.add_argument("--site", action="append", required=True, metavar="NAME",
                    help="this site's name (its certificate in --pki); repeat to host several sites")
    jn.add_argument("--server", required=True, metavar="HOST:PORT", help="the server's address")
    jn.add_argument("--pki", type=Path, required=True, help="directory with ca.crt, crl.pem and sites/NAME/")
    jn.add_argument("--give-up-after", type=float, default=600.0, metavar="SECONDS",
                    help="stop (exit non-zero) when the server cannot be joined for this long, e.g. because "
                         "it has finished or is gone (default 600)")
    jn.add_argument("--state", type=Path, metavar="DIR",
                    help="the site's state directory, kept across restarts (default ./site-state/NAME; "
                         "with several --site, DIR/NAME each)")

    pers = sub.add_parser("personalise", help="fine-tune the federated policy at one site on its own env "
                                              "(nothing leaves the site; the result has no DP guarantee)")
    pers.add_argument("config", type=Path, help="the federation config (the site's env and local learner)")
    pers.add_argument("--site", required=True, metavar="NAME", help="the site to fine-tune at")
    pers.add_argument("--model", type=Path, required=True, metavar="PATH",
                      help="the federated policy: a run directory (its last checkpoint) or one checkpoint file")
    pers.add_argument("--rounds", type=_positive_int, required=True, help="local training rounds")
    pers.add_argument("--learning-rate", type=float, metavar="X", help="the local learner's learning rate "
                      "(default: the config's)")
    pers.add_argument("--eval-episodes", type=_positive_int, default=4, metavar="N",
                      help="episodes of the before/after evaluation (default 4)")
    pers.add_argument("--keep-best", metavar="[max:|min:]METRIC",
                      help="keep the best checkpoint (the federated start included) by METRIC on separate "
                           "validation episodes, e.g. time_in_range (default: keep the last)")
    pers.add_argument("--require", action="append", default=[], metavar="METRIC<=BOUND",
                      help="with --keep-best: only checkpoints meeting it (repeatable, in priority order); "
                           "<= or >=, BOUND a number or baseline[+-NUMBER], e.g. time_in_range>=baseline")
    pers.add_argument("--baseline", choices=("zero", "start"), default=None,
                      help="with --keep-best: what BOUNDs written baseline[+-NUMBER] are measured from, on the "
                           "same validation episodes: zero, the policy that always takes action 0 (the "
                           "healthcare pump's programmed therapy), or start, the federated policy")
    pers.add_argument("--check-every", type=_positive_int, metavar="K",
                      help="with --keep-best: validate every K rounds (default: a quarter of --rounds)")
    pers.add_argument("--validation-episodes", type=_positive_int, default=4, metavar="N",
                      help="with --keep-best: validation episodes per check (default 4)")
    pers.add_argument("--interpolate", metavar="W[,W...]",
                      help="with --keep-best: also validate the starts initial + W * (federated - initial), "
                           "between the federation's round-0 policy and the federated one, and fine-tune from "
                           "the best start, e.g. 0.25,0.5,0.75")
    pers.add_argument("--out", type=Path, required=True,
                      help="where policy.pt and personalise.json go (mode 0600: keep them at the site)")

    conf = sub.add_parser("conformance", help="check this implementation against protocol test vectors")
    conf.add_argument("--vectors", type=Path, default=None, help="directory of vector files (default: protocols/vectors)")

    from secure_fedrl.transport.pki_cli import add_pki_parser

    add_pki_parser(sub)

    from secure_fedrl.report.cli import add_parsers as add_report_parsers

    add_report_parsers(sub)  # report, audit verify, audit canary
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    root = logging.getLogger("secure_fedrl")  # serve/join switch it to JSON lines; every command starts plain
    root.handlers[:], root.propagate = [], True
    root.setLevel(logging.NOTSET)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "simulate":
            return _simulate(args)
        if args.command == "serve":
            return _serve(args)
        if args.command == "join":
            return _join(args)
        if args.command == "conformance":
            return _conformance(args)
        if args.command == "personalise":
            return _personalise(args)
        if args.command == "pki":
            from secure_fedrl.transport.pki_cli import run_pki

            return run_pki(args)
        if args.command in ("report", "audit"):
            from secure_fedrl.report.cli import run as run_report

            return run_report(args)
    except SecureFedRLError as exc:
        print(f"secure-fedrl: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("secure-fedrl: interrupted", file=sys.stderr)
        return 130
    raise AssertionError(f"unhandled command {args.command}")  # argparse guarantees a known command


def _simulate(args: argparse.Namespace) -> int:
    from secure_fedrl.config import load_config
    from secure_fedrl.runtime.simulate import run_simulation

    overrides = {}
    if args.rounds is not None:
        overrides["federation.rounds"] = args.rounds
    if args.seed is not None:
        overrides["federation.seed"] = args.seed
    if args.device is not None:
        overrides["federation.device"] = args.device
    config = load_config(args.config, overrides=overrides)
    from secure_fedrl.ledger import read_passphrase

    passphrase = read_passphrase(args.ledger_passphrase_file)
    if args.backend == "ray":
        from secure_fedrl.runtime.ray_backend import require_ray, run_ray_simulation

        require_ray()
        cpus = 1.0 if args.cpus_per_site is None else args.cpus_per_site
        if not cpus > 0:
            raise ConfigError(f"--cpus-per-site: must be > 0, got {args.cpus_per_site}")
        summary = run_ray_simulation(config, args.out, resume=args.resume, progress=not args.no_progress,
                                     ledger_key=args.ledger_key, ledger_passphrase=passphrase,
                                     address=args.ray_address, cpus_per_site=cpus)
        print(summary.describe())
        return 0
    if args.ray_address is not None or args.cpus_per_site is not None:
        raise ConfigError("--ray-address / --cpus-per-site: only with --backend ray")
    summary = run_simulation(config, args.out, resume=args.resume, progress=not args.no_progress,
                             ledger_key=args.ledger_key, ledger_passphrase=passphrase)
    print(summary.describe())
    return 0


def _host_port(flag: str, text: str) -> str:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{flag}: expected HOST:PORT (e.g. 127.0.0.1:50051), got {text!r}")
    return text


def _serve(args: argparse.Namespace) -> int:
    from secure_fedrl.config import load_config
    from secure_fedrl.ledger import read_passphrase
    import dataclasses

    from secure_fedrl.runtime.deploy import DEPLOY_DEADLINES, serve
    from secure_fedrl.transport.logs import configure_json_logging

    configure_json_logging(logging.DEBUG if args.verbose else logging.INFO)
    overrides = {} if args.rounds is None else {"federation.rounds": args.rounds}
    config = load_config(args.config, overrides=overrides)
    if args.wait < 0:
        raise ConfigError(f"--wait: must be >= 0 seconds, got {args.wait}")
    if not args.train_deadline > 0:
        raise ConfigError(f"--train-deadline: must be > 0 seconds, got {args.train_deadline}")
    if not args.liveness > 0:
        raise ConfigError(f"--liveness: must be > 0 seconds, got {args.liveness}")
    summary = serve(config, args.out, pki=args.pki, address=_host_port("--address", args.address), wait_s=args.wait,
                    min_sites=args.min_sites, ledger_key=args.ledger_key,
                    ledger_passphrase=read_passphrase(args.ledger_passphrase_file), ready_file=args.ready_file,
                    liveness_s=args.liveness,
                    deadlines=dataclasses.replace(DEPLOY_DEADLINES, advertise_keys=args.train_deadline))
    print(summary.describe())
    return 0


def _join(args: argparse.Namespace) -> int:
    from secure_fedrl.config import load_config
    from secure_fedrl.runtime.deploy import join
    from secure_fedrl.transport.logs import configure_json_logging

    configure_json_logging(logging.DEBUG if args.verbose else logging.INFO)
    if len(set(args.site)) != len(args.site):
        raise ConfigError("--site: a site name is given twice")
    config = load_config(args.config)
    if not args.give_up_after > 0:
        raise ConfigError(f"--give-up-after: must be > 0 seconds, got {args.give_up_after}")
    return join(config, args.site, server=_host_port("--server", args.server), pki=args.pki, state=args.state,
                give_up_after=args.give_up_after)


def _personalise(args: argparse.Namespace) -> int:
    from secure_fedrl.config import load_config
    from secure_fedrl.runtime.personalise import check_baseline, parse_selection, parse_weights, personalise_site

    if args.keep_best is None and (args.require or args.check_every is not None or args.baseline is not None
                                   or args.interpolate is not None):
        raise ConfigError("--require, --check-every, --baseline and --interpolate need --keep-best METRIC")
    selection = None if args.keep_best is None else parse_selection(args.keep_best, args.require)
    if selection is not None:
        check_baseline(selection, args.baseline)
    weights = () if args.interpolate is None else parse_weights(args.interpolate)
    config = load_config(args.config)
    report = personalise_site(config, args.site, args.model, args.out, rounds=args.rounds,
                              learning_rate=args.learning_rate, eval_episodes=args.eval_episodes,
                              selection=selection, check_every=args.check_every,
                              validation_episodes=args.validation_episodes, baseline=args.baseline,
                              weights=weights)
    before, after = report["before"], report["after"]
    shown = ", ".join(f"{k} {before[k]:.4g} -> {after[k]:.4g}" for k in before)
    scaled = f" of the start with {report['kept_weight']:g} of the federated policy" if report["kept_weight"] != 1.0 else ""
    kept = "" if selection is None else f", kept the round-{report['kept_round']} checkpoint{scaled} on validation"
    print(f"site {report['site']}: {report['rounds']} local rounds from round {report['from_round']} of the "
          f"federation ({report['env_steps']} env steps{kept}); {shown}; wrote {args.out / 'policy.pt'} "
          "(keep it at the site: no DP guarantee)")
    return 0


def _conformance(args: argparse.Namespace) -> int:
    from secure_fedrl.secagg.conformance import DEFAULT_DIR, check_vectors, format_table

    directory = args.vectors if args.vectors is not None else DEFAULT_DIR
    if not directory.is_dir():
        raise ConfigError(f"--vectors: {directory} is not a directory of conformance vectors")
    results = check_vectors(directory)
    print(format_table(results))
    return 0 if results and all(r.passed for r in results) else 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
