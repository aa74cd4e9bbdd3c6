"""Reconnect with exponential backoff and full jitter (a site riding out server restarts)."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Callable, TypeVar

from .base import TransportError
from .logs import log_event

T = TypeVar("T")
#: Statuses after which trying again can help (the server is down, restarting or busy).
RETRYABLE = frozenset({"UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED"})


@dataclass
class Backoff:
    """Delay before attempt k (0-based): uniform in [0, min(cap, base * factor^k)] (full jitter).

    Full jitter (not a fixed doubling) keeps a fleet of sites that lost the server at the same
    moment from reconnecting in lockstep; `rng` is not a crypto source and need not be.
    """

    base: float = 0.5
    factor: float = 2.0
    cap: float = 30.0
    rng: random.Random | None = None

    def delay(self, attempt: int) -> float:
        bound = min(self.cap, self.base * self.factor ** min(attempt, 64))
        return (self.rng or random).uniform(0.0, bound)


def retry(call: Callable[[], T], *, backoff: Backoff | None = None, give_up_after: float = 300.0,
          retry_on: frozenset[str] = RETRYABLE, sleep: Callable[[float], None] = time.sleep,
          clock: Callable[[], float] = time.monotonic, what: str = "call") -> T:
    """Call until it succeeds, a non-retryable TransportError is raised, or time runs out."""
    backoff = backoff or Backoff()
    start = clock()
    attempt = 0
    while True:
        try:
            return call()
        except TransportError as err:
            if err.status not in retry_on:
                raise
            wait = backoff.delay(attempt)
            if clock() + wait - start > give_up_after:
                raise
            log_event("retrying", what=what, attempt=attempt + 1, status=err.status, wait_s=round(wait, 3),
                      level="info")
            sleep(wait)
            attempt += 1


class Heartbeater:
    """Keeps a site's session live while it trains: heartbeat() every `interval` seconds.

    A missed beat is logged and retried at the next tick (the server counts a site live while it
    was heard from within its liveness window); `finished` turns true when the server says so.
    """

    def __init__(self, transport, interval: float) -> None:
        import threading

        self.transport, self.interval = transport, interval
        self.finished = False
        self.current_round = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{transport.name}", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.current_round, self.finished = self.transport.heartbeat()
            except TransportError as err:
                log_event("heartbeat_failed", site=self.transport.name, status=err.status, reason=str(err))

    def __enter__(self) -> "Heartbeater":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
