"""The in-memory transport's `Hub` as a Ray actor, and the two ends that reach it.

`HubService` (the actor's body) holds a `transport.base.Hub`; the driver's `ServerRuntime`
talks to it through `HubProxy` (the server-facing methods `run_server_round` calls on a hub) and
each site through `HubSite` (a `SiteTransport`). The hub applies its usual checks; its errors
cross the actor boundary as plain data and are re-raised as the same `TransportError` class and
status. Masked uploads move to the driver in small batches, each dropped from the hub once
taken (`Hub.collect`). This module imports no torch: the hub actor stays a small process.
"""

from __future__ import annotations

import time
from typing import Any

from secure_fedrl.errors import ProtocolError
from secure_fedrl.transport.base import Dropped, Hub, TransportError

#: Masked uploads moved from the hub actor to the driver per call (the driver folds each into
#: the running sum and drops it).
COLLECT_BATCH = 8


_SITE_METHODS = frozenset({"join", "heartbeat", "await_round", "upload", "download", "leave", "witness"})
_SERVER_METHODS = frozenset({"open_round", "deliver", "abort_round", "finish", "take_witnesses",
                             "site_credentials", "live_sites", "wait_for_sites"})


def _call_hub(hub: Hub, method: str, args: tuple, kwargs: dict | None = None) -> tuple:
    """Run a hub method; errors travel as plain data (status and message), not as pickled
    exceptions, so the caller re-raises exactly the transport's error class and status."""
    try:
        return ("ok", getattr(hub, method)(*args, **(kwargs or {})))
    except Dropped as exc:
        return ("dropped", exc.status, str(exc))
    except TransportError as exc:
        return ("transport", exc.status, str(exc))
    except ProtocolError as exc:
        return ("protocol", "", str(exc))
    except KeyError as exc:
        return ("key", "", str(exc))


def _config_fields(config: Any) -> tuple:
    """A RoundConfig as its constructor arguments (it caches parsed Ed25519 keys, which do not pickle)."""
    return (config.round_id, config.site_ids, config.identity_keys, config.threshold, config.dim, config.bits,
            config.degree, config.graph_seed)


def _config_from_fields(fields: tuple) -> Any:
    from secure_fedrl.secagg.protocol import RoundConfig

    return RoundConfig(*fields)


def register_serializers() -> None:
    """Ray serialization of the protocol's RoundConfig (in every process that sends one)."""
    import ray

    from secure_fedrl.secagg.protocol import RoundConfig

    ray.util.register_serializer(RoundConfig, serializer=_config_fields, deserializer=_config_from_fields)


def _unwrap(out: tuple):
    kind = out[0]
    if kind == "ok":
        return out[1]
    if kind == "dropped":
        raise Dropped(out[2], out[1])
    if kind == "transport":
        raise TransportError(out[1], out[2])
    if kind == "key":
        raise KeyError(out[2])
    raise ProtocolError(out[2])


class HubService:
    """The body of the hub actor: a `Hub`, reachable from the driver and from every site host."""

    def __init__(self, federation: str, max_sites: int) -> None:
        register_serializers()
        # In-process sites never go silent (a stopping site leaves): liveness does not expire.
        self.hub = Hub(federation=federation, max_sites=max_sites, liveness_s=float("inf"))

    def ready(self) -> bool:
        return True

    def site_call(self, method: str, args: tuple, kwargs: dict | None = None) -> tuple:
        if method not in _SITE_METHODS:
            return ("protocol", "", f"hub: no site method {method!r}")
        return _call_hub(self.hub, method, args, kwargs)

    def server_call(self, method: str, args: tuple, kwargs: dict | None = None) -> tuple:
        if method not in _SERVER_METHODS:
            return ("protocol", "", f"hub: no server method {method!r}")
        return _call_hub(self.hub, method, args, kwargs)

    def collect_batch(self, round_id: int, phase: str, expected: list[str], timeout: float,
                      max_items: int) -> tuple:
        """Up to `max_items` uploads of `phase` as `Hub.collect` yields them (each dropped from
        the hub once taken); `done` once the phase closed (every expected site or the deadline).
        The deadline is sent as seconds left: the driver's clock is not this process's."""
        try:
            items = []
            for item in self.hub.collect(round_id, phase, set(expected), self.hub.clock() + max(timeout, 0.0)):
                items.append(item)
                if len(items) >= max_items:
                    return ("ok", (items, False))
            return ("ok", (items, True))
        except ProtocolError as exc:
            return ("protocol", "", str(exc))

    def withdraw(self, round_id: int, names: list[str]) -> None:
        """Sites whose host process died leave the round (`Hub.leave`, on their behalf: the
        hub knows their sessions), so the server does not wait out the phase deadline."""
        for name in names:
            site = self.hub._sites.get(name)
            if site is None:
                continue
            try:
                self.hub.leave(name, site.session, round_id)
            except TransportError:
                pass  # not in that round, or the round is gone

    def held_uploads(self) -> int:
        """Site uploads the hub holds now, not yet collected by the server (every round it keeps)."""
        with self.hub._cv:
            return sum(len(box) for r in self.hub._rounds.values() for box in r.uploads.values())

    def rss(self) -> int:
        return _rss()


class HubProxy:
    """The driver's view of the hub actor: the server-facing methods `ServerRuntime` and
    `transport.rounds.run_server_round` call on a `Hub`."""

    def __init__(self, actor: Any) -> None:
        import ray

        self._ray = ray
        self.actor = actor
        self.clock = time.monotonic
        self._finished = False

    def _call(self, method: str, *args: Any, **kwargs: Any):
        return _unwrap(self._ray.get(self.actor.server_call.remote(method, args, kwargs)))

    def open_round(self, announcements, *, notice: bytes | None = None) -> None:
        self._call("open_round", announcements, notice=notice)

    def collect(self, round_id: int, phase: str, expected: set[str], deadline: float):
        while True:
            items, done = _unwrap(self._ray.get(self.actor.collect_batch.remote(
                round_id, phase, sorted(expected), deadline - self.clock(), COLLECT_BATCH)))
            while items:
                yield items.pop(0)  # the driver keeps none once the consumer folded it
            if done:
                return

    def deliver(self, round_id: int, phase: str, messages: dict[str, bytes]) -> None:
        self._call("deliver", round_id, phase, messages)

    def abort_round(self, round_id: int, reason: str) -> None:
        self._call("abort_round", round_id, reason)

    def finish(self, *, notice: bytes | None = None, final_model: Any = None) -> None:
        """`Hub.finish`; the final model stays at the driver: no in-process site fetches it (the run
        directory's last checkpoint is the final model in a simulation)."""
        self._call("finish", notice=notice)
        self._finished = True

    def take_witnesses(self) -> list:
        return self._call("take_witnesses")

    def site_credentials(self, name: str) -> tuple[int, bytes, bytes]:
        return self._call("site_credentials", name)

    def live_sites(self) -> dict[str, int]:
        return self._call("live_sites")

    def wait_for_sites(self, count: int, timeout: float) -> dict[str, int]:
        return self._call("wait_for_sites", count, timeout)

    @property
    def finished(self) -> bool:
        return self._finished


class HubSite:
    """A site's `SiteTransport` to the hub actor (runs inside a site host)."""

    def __init__(self, hub_actor: Any, name: str, number: int, *, protocol_key: bytes = b"") -> None:
        import ray

        self._ray = ray
        self.hub, self.name, self.number, self.protocol_key = hub_actor, name, number, protocol_key
        self._session = b""

    def _call(self, method: str, *args: Any):
        return _unwrap(self._ray.get(self.hub.site_call.remote(method, (self.name, *args))))

    def join(self):
        info = _unwrap(self._ray.get(self.hub.site_call.remote("join", (self.name, self.number),
                                                               {"protocol_key": self.protocol_key})))
        self._session = info.session
        return info

    def heartbeat(self):
        return self._call("heartbeat", self._session)

    def await_round(self, after_round: int, timeout: float):
        return self._call("await_round", self._session, after_round, timeout)

    def upload(self, round_id: int, phase: str, payload: bytes) -> None:
        self._call("upload", self._session, round_id, phase, payload)

    def download(self, round_id: int, phase: str, timeout: float) -> bytes:
        return self._call("download", self._session, round_id, phase, timeout)

    def leave(self, round_id: int) -> None:
        self._call("leave", self._session, round_id)

    def witness(self, seq: int, row_hash: str, signature: bytes) -> None:
        self._call("witness", self._session, seq, row_hash, signature)


def _rss() -> int:
    """Resident set size of this process, bytes (Linux /proc; psutil where that is missing)."""
    try:
        with open("/proc/self/statm") as fh:
            import os

            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:  # pragma: no cover - not Linux
        import psutil

        return psutil.Process().memory_info().rss
