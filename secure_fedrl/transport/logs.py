"""Structured JSON log lines for the services (server and sites): one event per line.

`log_event("cert_refused", peer=..., reason=...)` logs through `logging` with the event and its
fields attached to the record (`record.event`, `record.fields`), so tests and handlers can read
them; `JsonFormatter` renders a record as one JSON object per line for operators' log shippers.
"""

from __future__ import annotations

import json
import logging
import sys
import time

LOGGER = logging.getLogger("secure_fedrl.transport")
_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def log_event(event: str, *, level: str = "warning", logger: logging.Logger = LOGGER, **fields) -> None:
    """Refusals are warnings by default: each one is something an operator may need to see."""
    text = " ".join(f"{k}={v}" for k, v in fields.items())  # the plain-text rendering (JSON: JsonFormatter)
    logger.log(_LEVELS[level], "%s %s", event, text, extra={"event": event, "fields": fields})


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": getattr(record, "event", record.getMessage()),
        }
        for k, v in getattr(record, "fields", {}).items():
            out[k] = v if isinstance(v, (str, int, float, bool, type(None))) else str(v)
        if record.exc_info:
            out["error"] = self.formatException(record.exc_info).splitlines()[-1]
        return json.dumps(out, sort_keys=False)


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time (a CLI called in-process keeps working
    after its caller swaps stderr back)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self):  # noqa: D102
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def configure_json_logging(level: int = logging.INFO) -> None:
    """Route every `secure_fedrl` logger to stderr as JSON lines (services call this at start)."""
    handler = _StderrHandler()
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger("secure_fedrl")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
