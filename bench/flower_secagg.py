#!/usr/bin/env python3
"""Flower's real SecAgg+ (``flwr``), driven in-process on given integer vectors, timed per round.

Issue 3 compares our SecAgg+ with Flower's on the same vectors. Flower lives in its own venv
(``bench/.venv-flower``) so that its pins cannot break the project's, hence two ways in:

* inside the Flower venv: ``run_flower_round(vectors, threshold=..., neighbors=...)``, or the CLI
  ``bench/.venv-flower/bin/python bench/flower_secagg.py --n 50 --d 100000 --k 7 --t 4 --seed 0``
  which prints one JSON line;
* from the project venv: ``time_flower_subprocess(n, d, k, t, complete, seed)`` runs that CLI and
  returns its JSON as a dict, so ``bench/secagg.py`` can time both sides in one run.

What is Flower's and what is ours: Flower's ``SecAggPlusWorkflow`` (server) and ``secaggplus_mod``
(client) do all the protocol work: key generation and agreement, Shamir sharing, share
encryption, masking, unmasking, quantisation. Ours is only the loop that carries their messages:
``_LoopbackGrid`` calls each node's ``ClientApp`` synchronously, round-trips every message through
Flower's own protobuf serde (the wire format; two objects may never be shared between server and
client, which Flower's code relies on), turns a client exception into an error reply as Flower's
simulation engine does, and for a dropped site simply returns no reply (what Flower's grid returns
once the workflow's ``timeout`` expires, without waiting for it).

Making Flower carry our integers exactly: Flower takes floats, clips them to [-c, c], scales by
``quantization_range / (2c)``, rounds stochastically to int32 and multiplies by a weight. With
``B = min(31, bits - 1)`` value bits, ``clipping_range = 0.5``, ``quantization_range = 2**B``,
``max_weight = 2**B`` and ``num_examples = 1`` (so the weight factor is 1 and Flower's scale is
``2**-B``), a site that sends the float ``x - 2**(B-1)`` is quantised by Flower to exactly ``x``
(every step is exact in float64 and the stochastic rounding never moves an integer). The server
returns the float mean ``(S - m * 2**(B-1)) / m`` of the ``m`` accepted sites, where ``S`` is its
unmasked sum mod ``2**bits``; we invert that (exact after rounding, |error| < 2**-20) and check
it against the plain sum. The one limit: a value must be < ``2**B`` (Flower casts quantised
values to int32 and needs ``quantization_range < modulus_range``), so full 32-bit values cannot
go through Flower; the shared vector recipe (``make_vectors``) therefore draws 31-bit values,
which are valid uint32 inputs mod 2**32 for our implementation too.

Graph mapping: Flower's ``num_shares`` counts the site itself (a ring of ``num_shares`` sites
centred on it), so ``neighbors=k`` runs Flower with ``num_shares = k`` (k - 1 peers; Flower needs
it odd), and ``neighbors=None`` (complete graph) with ``num_shares = n``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
FLOWER_PYTHON = REPO_ROOT / "bench" / ".venv-flower" / "bin" / "python"

try:  # the project's hierarchy; importable in the Flower venv too via the repo root
    if str(REPO_ROOT) not in sys.path:
        sys.path.append(str(REPO_ROOT))
    from secure_fedrl.errors import ConfigError, ProtocolError
except ImportError:  # pragma: no cover - the package grew a dependency the Flower venv lacks

    class ConfigError(ValueError):  # type: ignore[no-redef]
        """Fallback for secure_fedrl.errors.ConfigError."""

    class ProtocolError(RuntimeError):  # type: ignore[no-redef]
        """Fallback for secure_fedrl.errors.ProtocolError."""


class FlowerRoundFailed(ProtocolError):
    """Flower's SecAgg+ round ended without releasing a sum (its workflow halted or raised)."""


STAGES = ("setup", "share_keys", "collect_masked_vectors", "unmask")
"""Flower's SecAgg+ stages in order; a dropped site sends no reply from its stage on."""

DEFAULT_DROP_STAGE = "collect_masked_vectors"
"""Issue 3's known weakness: a site that drops before sending its masked input."""


def value_bits(bits: int = 32) -> int:
    """Bits a value may have to pass through Flower's int32 quantiser exactly (see module doc)."""
    return min(31, bits - 1)


def make_vectors(n: int, d: int, seed: int, *, bits: int = 32) -> np.ndarray:
    """The shared input recipe: ``(n, d)`` uint32 drawn from ``default_rng(seed)``.

    Both sides of the comparison call exactly this, i.e.
    ``np.random.default_rng(seed).integers(0, 2**B, size=(n, d), dtype=np.uint64)``
    ``.astype(np.uint32)``
    with ``B = value_bits(bits)`` (31 for bits = 32): the largest values Flower can carry exactly.
    """
    high = 2 ** value_bits(bits)
    return (
        np.random.default_rng(seed)
        .integers(0, high, size=(n, d), dtype=np.uint64)
        .astype(np.uint32)
    )


def pick_dropouts(n: int, frac: float, seed: int) -> frozenset[int]:
    """Which site indices drop for ``--dropout-frac``: ``round(frac*n)`` drawn from ``seed + 1``."""
    if not 0.0 <= frac < 1.0:
        raise ConfigError(f"dropout fraction must be in [0, 1), got {frac}")
    count = round(frac * n)
    rng = np.random.default_rng(seed + 1)
    return frozenset(int(i) for i in rng.choice(n, size=count, replace=False))


@lru_cache(maxsize=1)
def flower_available() -> bool:
    """True when Flower can be driven: importable here, or through the Flower venv's python."""
    import importlib.util

    if importlib.util.find_spec("flwr") is not None:
        return True
    if not FLOWER_PYTHON.exists():
        return False
    probe = subprocess.run(
        [str(FLOWER_PYTHON), "-c", "import flwr.server.workflow, flwr.client.mod"],
        capture_output=True,
        check=False,
        timeout=120,
    )
    return probe.returncode == 0


@dataclass(frozen=True)
class FlowerRoundResult:
    """One Flower SecAgg+ round: what it released and what it cost."""

    total: np.ndarray
    """Unmasked sum mod 2**bits (uint32) of the sites whose masked input Flower accepted."""
    seconds: float
    """Wall time of the whole round: the four stages, every client and server step, the wire."""
    cpu_seconds: float
    """CPU time of this process over the round (all threads): robust to a busy shared machine."""
    transport_seconds: float
    """Part of ``seconds`` spent in protobuf serialisation (our stand-in for the network)."""
    num_shares: int
    """Flower's ``num_shares`` (ring size including the site itself)."""
    accepted: int
    """Sites whose masked input entered the sum."""


def run_flower_round(
    vectors: Sequence[np.ndarray],
    *,
    threshold: int,
    neighbors: int | None,
    dropouts: Collection[int] = frozenset(),
    bits: int = 32,
) -> tuple[np.ndarray, float]:
    """Drive Flower's real SecAgg+ (server workflow + client mod) in-process on these uint32
    vectors; return (the unmasked sum mod 2^bits as uint32, wall seconds of the whole round).

    ``dropouts`` are site indices that go silent before sending their masked input. Raises
    ``FlowerRoundFailed`` when Flower releases no sum, ``ConfigError`` for inputs Flower cannot
    carry exactly (see the module docstring).
    """
    result = run_flower_round_detailed(
        vectors, threshold=threshold, neighbors=neighbors, dropouts=dropouts, bits=bits
    )
    return result.total, result.seconds


def run_flower_round_detailed(
    vectors: Sequence[np.ndarray],
    *,
    threshold: int,
    neighbors: int | None,
    dropouts: Collection[int] = frozenset(),
    bits: int = 32,
    drop_stage: str = DEFAULT_DROP_STAGE,
    wire: bool = True,
) -> FlowerRoundResult:
    """``run_flower_round`` with the cost breakdown, the stage at which ``dropouts`` go silent
    (one of ``STAGES``), and ``wire=False`` to pass messages by deep copy instead of protobuf."""
    n, d, num_shares, high = _validate(vectors, threshold, neighbors, dropouts, bits, drop_stage)
    b = value_bits(bits)
    half = float(2 ** (b - 1))
    # Floats Flower quantises back to exactly the input (module docstring); outside the timer,
    # as a real site would hand its update over already made.
    payloads = [np.asarray(v, dtype=np.float64) - half for v in vectors]
    node_ids = [1000 + i for i in range(n)]
    drop_at = {node_ids[i]: STAGES.index(drop_stage) for i in dropouts}
    flower_cfg = {
        "num_shares": num_shares,
        "reconstruction_threshold": threshold,
        "max_weight": float(high),
        "clipping_range": 0.5,
        "quantization_range": high,
        "modulus_range": 2**bits,
    }
    with _flower_logs() as log_records:
        run = _FlowerRun(node_ids, payloads, drop_at=drop_at, wire=wire)
        start, cpu_start = time.perf_counter(), time.process_time()
        captured = run.execute(flower_cfg)
        seconds = time.perf_counter() - start
        cpu_seconds = time.process_time() - cpu_start
    if captured is None:
        reasons = [r for r in log_records if r] + run.grid.client_errors
        distinct = list(dict.fromkeys(reasons))
        why = "; ".join(distinct[:3]) or "no reason logged"
        if len(distinct) > 3:
            why += f" (+{len(distinct) - 3} more)"
        raise FlowerRoundFailed(f"Flower's SecAgg+ round released no sum: {why}")
    mean, accepted = captured
    modulus = 2**bits
    # Invert Flower's dequantisation: mean = (S - m * 2**(B-1)) / m, S the sum mod 2**bits.
    unmasked = np.rint(mean * accepted + accepted * half)
    total = (unmasked.astype(np.int64) % modulus).astype(np.uint32)
    if total.shape != (d,):
        raise FlowerRoundFailed(f"Flower returned shape {total.shape}, expected ({d},)")
    return FlowerRoundResult(
        total=total,
        seconds=seconds,
        cpu_seconds=cpu_seconds,
        transport_seconds=run.grid.transport_seconds,
        num_shares=num_shares,
        accepted=accepted,
    )


def _validate(
    vectors: Sequence[np.ndarray],
    threshold: int,
    neighbors: int | None,
    dropouts: Collection[int],
    bits: int,
    drop_stage: str,
) -> tuple[int, int, int, int]:
    """Reject what Flower cannot run or cannot carry exactly, each with one clear line."""
    if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 32:
        raise ConfigError(f"bits must be an int in [2, 32], got {bits!r}")
    n = len(vectors)
    if n < 3:
        raise ConfigError(f"Flower's SecAgg+ needs at least 3 sites, got {n}")
    if n >= 2**bits:
        # Flower sums the sites' weights (1 each here) in the same modulus and divides by it.
        raise ConfigError(f"Flower's weight total wraps: need n < 2**bits, got n={n}, bits={bits}")
    first = np.asarray(vectors[0])
    if first.ndim != 1 or first.size == 0:
        raise ConfigError(f"vectors must be non-empty 1-D arrays, got shape {first.shape}")
    d = first.shape[0]
    high = 2 ** value_bits(bits)
    for i, v in enumerate(vectors):
        arr = np.asarray(v)
        if arr.dtype != np.uint32:
            raise ConfigError(f"vector {i} has dtype {arr.dtype}, expected uint32")
        if arr.shape != (d,):
            raise ConfigError(f"vector {i} has shape {arr.shape}, expected ({d},)")
        if int(arr.max()) >= high:
            raise ConfigError(
                f"vector {i} has a value >= 2**{value_bits(bits)}: Flower cannot carry it exactly"
            )
    if neighbors is None:
        num_shares = n
    else:
        if isinstance(neighbors, bool) or not isinstance(neighbors, int):
            raise ConfigError(f"neighbors must be an int or None, got {neighbors!r}")
        if not 3 <= neighbors <= n:
            raise ConfigError(f"neighbors must be in [3, n={n}], got {neighbors}")
        if neighbors < n and neighbors % 2 == 0:
            # Flower bumps an even num_shares by one only after sending it to the clients,
            # which then make one share too few and fail: only odd values work.
            raise ConfigError(
                f"Flower's SecAgg+ needs an odd num_shares, got neighbors={neighbors}"
            )
        num_shares = neighbors
    if isinstance(threshold, bool) or not isinstance(threshold, int):
        raise ConfigError(f"threshold must be an int, got {threshold!r}")
    if not 2 <= threshold < num_shares:
        raise ConfigError(f"threshold must be in [2, num_shares={num_shares}), got {threshold}")
    bad = [i for i in dropouts if not (isinstance(i, (int, np.integer)) and 0 <= i < n)]
    if bad:
        raise ConfigError(f"dropouts must be site indices in [0, {n}), got {sorted(bad)}")
    if drop_stage not in STAGES:
        raise ConfigError(f"drop_stage must be one of {STAGES}, got {drop_stage!r}")
    return n, d, num_shares, high


class _flower_logs:
    """Collect Flower's ERROR log lines (why a round halted) and keep its INFO chatter quiet."""

    def __enter__(self) -> list[str]:
        from flwr.supercore.logger import FLOWER_LOGGER  # importing it resets its level: first

        self.records: list[str] = []
        self.logger = FLOWER_LOGGER
        self.level = self.logger.level
        records = self.records

        class _Collect(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                records.append(record.getMessage())

        self.handler = _Collect(level=logging.ERROR)
        self.logger.addHandler(self.handler)
        if os.environ.get("FLOWER_BENCH_VERBOSE") != "1":
            self.logger.setLevel(logging.ERROR)  # its ERROR lines still reach stderr
        return self.records

    def __exit__(self, *exc: object) -> None:
        self.logger.removeHandler(self.handler)
        self.logger.setLevel(self.level)


class _FlowerRun:
    """One ServerApp-side context, one ClientApp per node, and the loopback grid between them."""

    def __init__(
        self,
        node_ids: list[int],
        payloads: list[np.ndarray],
        *,
        drop_at: dict[int, int],
        wire: bool,
    ) -> None:
        from flwr.app import Context, RecordDict
        from flwr.client import ClientApp, NumPyClient
        from flwr.client.mod import secaggplus_mod

        by_node = dict(zip(node_ids, payloads, strict=True))

        class _Site(NumPyClient):  # type: ignore[misc]
            """Returns its fixed vector as the "trained" update, weight 1 (module docstring)."""

            def __init__(self, payload: np.ndarray) -> None:
                self.payload = payload

            def fit(self, parameters: Any, config: Any) -> tuple[list[np.ndarray], int, dict]:
                return [self.payload], 1, {}

        def client_fn(context: Context) -> Any:
            return _Site(by_node[context.node_id]).to_client()

        app = ClientApp(client_fn=client_fn, mods=[secaggplus_mod])
        nodes = {
            nid: (app, Context(1, nid, node_config={}, state=RecordDict(), run_config={}))
            for nid in node_ids
        }
        self.node_ids = node_ids
        self.grid = _loopback_grid(nodes, drop_at=drop_at, wire=wire)

    def execute(self, flower_cfg: dict[str, Any]) -> tuple[np.ndarray, int] | None:
        """Run Flower's SecAgg+ fit workflow once; (float mean, accepted sites) or None."""
        from flwr.app import ArrayRecord, ConfigRecord, Context, RecordDict
        from flwr.common import ndarrays_to_parameters, parameters_to_ndarrays
        from flwr.common.constant import SUPERLINK_NODE_ID
        from flwr.compat.common import recorddict_compat as compat
        from flwr.server import LegacyContext, ServerConfig, SimpleClientManager
        from flwr.server.compat.grid_client_proxy import GridClientProxy
        from flwr.server.strategy import FedAvg
        from flwr.server.workflow import SecAggPlusWorkflow
        from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD
        from flwr.server.workflow.constant import Key as WorkflowKey
        from flwr.supercore.task_identity import TaskIdentity

        n = len(self.node_ids)
        captured: list[tuple[np.ndarray, int]] = []

        class _Capture(FedAvg):  # type: ignore[misc]
            """FedAvg that samples every site and hands back Flower's unmasked aggregate as is.

            Flower writes the same aggregate into every FitRes; averaging them again (FedAvg's
            job) would only add float rounding, so we take it unchanged.
            """

            def aggregate_fit(self, server_round: int, results: Any, failures: Any) -> Any:
                params = results[0][1].parameters
                captured.append((parameters_to_ndarrays(params)[0], len(results)))
                return params, {}

        strategy = _Capture(
            fraction_fit=1.0, min_fit_clients=n, min_available_clients=n, fraction_evaluate=0.0
        )
        manager = SimpleClientManager()
        for nid in self.node_ids:
            manager.register(GridClientProxy(nid, self.grid, run_id=1))
        base = Context(1, SUPERLINK_NODE_ID, node_config={}, state=RecordDict(), run_config={})
        context = LegacyContext(
            base, config=ServerConfig(num_rounds=1), strategy=strategy, client_manager=manager
        )
        round_cfg = ConfigRecord({WorkflowKey.CURRENT_ROUND: 1})
        context.state.config_records[MAIN_CONFIGS_RECORD] = round_cfg
        global_params = ndarrays_to_parameters([np.zeros(1, dtype=np.float64)])
        arrays: ArrayRecord = compat.parameters_to_arrayrecord(global_params, True)
        context.state.array_records[MAIN_PARAMS_RECORD] = arrays
        # What Flower's ServerApp runtime sets before it runs a workflow (server/compat/app.py).
        TaskIdentity.task_id = 1
        TaskIdentity.run_id = 1
        TaskIdentity.node_id = SUPERLINK_NODE_ID

        workflow = SecAggPlusWorkflow(**flower_cfg)
        try:
            workflow(self.grid, context)
        except Exception as exc:  # Flower's server code raised: the round is lost, say why
            self.grid.client_errors.append(f"server workflow raised {type(exc).__name__}: {exc}")
            return None
        return captured[0] if captured else None


def _loopback_grid(
    nodes: dict[int, tuple[Any, Any]], *, drop_at: dict[int, int], wire: bool
) -> Any:
    """A Flower ``Grid`` that delivers each message to its node's ClientApp synchronously.

    The class is made here, not at import, so that this file imports without Flower.
    """
    from flwr.serverapp import Grid

    grid_cls = type("LoopbackGrid", (_LoopbackGridMixin, Grid), {})
    return grid_cls(nodes=nodes, drop_at=drop_at, wire=wire)


@dataclass
class _LoopbackGridMixin:
    """The Grid methods; see ``_loopback_grid``."""

    nodes: dict[int, tuple[Any, Any]]
    drop_at: dict[int, int]
    wire: bool
    client_errors: list[str] = field(default_factory=list)
    transport_seconds: float = 0.0
    _replies: dict[str, Any] = field(default_factory=dict)
    _run: Any = None

    def set_run(self, run: Any) -> None:
        self._run = run

    @property
    def run(self) -> Any:
        if self._run is None:
            from flwr.supercore.run import Run

            self._run = Run.create_empty(run_id=1)
        return self._run

    def create_message(
        self,
        content: Any,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Any:
        from flwr.app import Message

        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.nodes)

    def _carry(self, message: Any) -> Any:
        """Send a message over the "wire": Flower's protobuf serde, so nothing is shared."""
        import copy

        from flwr.common.serde import message_from_proto, message_to_proto
        from flwr.proto.message_pb2 import Message as ProtoMessage

        start = time.perf_counter()
        if self.wire:
            raw = message_to_proto(message).SerializeToString()
            out = message_from_proto(ProtoMessage.FromString(raw))
        else:
            out = copy.deepcopy(message)
        self.transport_seconds += time.perf_counter() - start
        return out

    def push_messages(self, messages: Iterable[Any]) -> Iterable[str]:
        from flwr.app import Error, Message
        from flwr.common.constant import ErrorCode
        from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key

        ids: list[str] = []
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = str(uuid.uuid4())
            ids.append(msg.metadata.message_id)
            nid = msg.metadata.dst_node_id
            stage = msg.content.config_records[RECORD_KEY_CONFIGS][Key.STAGE]
            if nid in self.drop_at and STAGES.index(str(stage)) >= self.drop_at[nid]:
                continue  # the site is gone: no reply, as after the workflow's timeout
            app, context = self.nodes[nid]
            delivered = self._carry(msg)
            try:
                reply = app(delivered, context)
            except Exception as exc:  # what Flower's simulation engine does (vce_api.py)
                reason = f"{type(exc).__name__}: {exc}"
                self.client_errors.append(f"node {nid} at {stage}: {reason}")
                error = Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=reason)
                reply = Message(error, reply_to=delivered)
            reply.metadata.__dict__["_message_id"] = str(uuid.uuid4())
            self._replies[msg.metadata.message_id] = self._carry(reply)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Any]:
        return [self._replies.pop(i) for i in message_ids if i in self._replies]

    def send_and_receive(
        self, messages: Iterable[Any], *, timeout: float | None = None
    ) -> Iterable[Any]:
        return self.pull_messages(self.push_messages(messages))


# ---------------------------------------------------------------------------------------------
# CLI (inside the Flower venv) and the subprocess helper (from the project venv)


def measure(
    *, n: int, d: int, k: int, t: int, complete: bool, seed: int, dropout_frac: float = 0.0,
    repeats: int = 1, drop_stage: str = DEFAULT_DROP_STAGE, wire: bool = True,
) -> dict[str, Any]:
    """Time ``repeats`` Flower rounds on ``make_vectors(n, d, seed)``; the CLI's JSON as a dict."""
    import flwr

    if n < 3 or d < 1 or repeats < 1:
        raise ConfigError(f"need n >= 3, d >= 1, repeats >= 1; got n={n}, d={d}, repeats={repeats}")
    vectors = make_vectors(n, d, seed)
    dropped = pick_dropouts(n, dropout_frac, seed)
    # A site that drops only in the unmask stage has already sent its masked input: it counts.
    sends_input = STAGES.index(drop_stage) > STAGES.index("collect_masked_vectors")
    kept = [i for i in range(n) if i not in dropped or sends_input]
    expected = vectors[kept].sum(axis=0, dtype=np.uint64).astype(np.uint32)  # wraps mod 2**32
    out: dict[str, Any] = {
        "n": n, "d": d, "k": n - 1 if complete else k, "t": t, "complete": complete,
        "seed": seed, "dropped": len(dropped), "drop_stage": drop_stage if dropped else None,
        "flwr": flwr.__version__, "wire": "protobuf" if wire else "deepcopy",
    }
    times: list[float] = []
    transport: list[float] = []
    cpu: list[float] = []
    sums_ok: list[bool] = []
    for _ in range(repeats):
        try:
            res = run_flower_round_detailed(
                list(vectors), threshold=t, neighbors=None if complete else k,
                dropouts=dropped, drop_stage=drop_stage, wire=wire,
            )
        except FlowerRoundFailed as exc:
            out.update(seconds=None, sum_ok=False, error=str(exc))
            return out
        times.append(res.seconds)
        transport.append(res.transport_seconds)
        cpu.append(res.cpu_seconds)
        sums_ok.append(bool(np.array_equal(res.total, expected)) and res.accepted == len(kept))
        out["num_shares"] = res.num_shares
    out.update(
        seconds=round(statistics.median(times), 4),
        all_seconds=[round(s, 4) for s in times],
        cpu_seconds=round(statistics.median(cpu), 4),
        transport_seconds=round(statistics.median(transport), 4),
        sum_ok=all(sums_ok),
    )
    return out


def time_flower_subprocess(
    n: int, d: int, k: int, t: int, complete: bool, seed: int, *,
    dropout_frac: float = 0.0, repeats: int = 1, wire: bool = True,
    python: str | os.PathLike[str] | None = None, timeout: float | None = 900.0,
) -> dict[str, Any]:
    """Run the CLI under the Flower venv's python and return its JSON line as a dict.

    A round that Flower aborts comes back as ``{"seconds": None, "sum_ok": False, "error": ...}``;
    parameters Flower cannot run raise ``ConfigError``; anything else that goes wrong (no venv,
    a crash) raises ``FlowerRoundFailed``.
    """
    exe = Path(python) if python is not None else FLOWER_PYTHON
    if not Path(exe).exists():
        raise FlowerRoundFailed(f"no Flower venv python at {exe}: see bench/README-flower.md")
    cmd = [
        str(exe), str(Path(__file__).resolve()), "--n", str(n), "--d", str(d), "--k", str(k),
        "--t", str(t), "--seed", str(seed), "--dropout-frac", str(dropout_frac),
        "--repeats", str(repeats),
    ]
    if complete:
        cmd.append("--complete")
    if not wire:
        cmd.append("--no-wire")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode not in (0, 2) or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        if proc.returncode == 2 and tail[0].startswith("error: "):
            raise ConfigError(tail[0].removeprefix("error: "))
        raise FlowerRoundFailed(f"Flower CLI exited {proc.returncode}: {tail[0]}")
    return json.loads(lines[-1])


def main(argv: list[str] | None = None) -> int:
    """CLI: one JSON line {"n","d","k","t","seconds","sum_ok",...}; exit 2 if Flower aborts."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, required=True, help="number of sites")
    p.add_argument("--d", type=int, required=True, help="vector length")
    p.add_argument("--k", type=int, default=7, help="SecAgg+ degree (Flower num_shares)")
    p.add_argument("--t", type=int, default=4, help="Shamir reconstruction threshold")
    p.add_argument("--complete", action="store_true", help="complete graph (num_shares = n)")
    p.add_argument("--dropout-frac", type=float, default=0.0, help="fraction of sites that drop")
    p.add_argument("--drop-stage", choices=STAGES, default=DEFAULT_DROP_STAGE,
                   help="stage from which dropped sites stop replying")
    p.add_argument("--seed", type=int, default=0, help="seed of make_vectors and pick_dropouts")
    p.add_argument("--repeats", type=int, default=1, help="rounds to time; seconds is the median")
    p.add_argument("--no-wire", action="store_true",
                   help="pass messages by deep copy instead of Flower's protobuf serde")
    args = p.parse_args(argv)
    try:
        out = measure(
            n=args.n, d=args.d, k=args.k, t=args.t, complete=args.complete, seed=args.seed,
            dropout_frac=args.dropout_frac, repeats=args.repeats, drop_stage=args.drop_stage,
            wire=not args.no_wire,
        )
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(out), flush=True)
    return 0 if out.get("error") is None else 2


if __name__ == "__main__":
    sys.exit(main())
