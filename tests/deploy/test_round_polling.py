"""A site waiting for a phase to close polls again when the server ends a long poll at its own cap."""

from __future__ import annotations

import pytest

from secure_fedrl.runtime.round import _Outbox
from secure_fedrl.transport.base import TransportError


class _Inner:
    name = "s-0"

    def __init__(self, fail: int, status: str = "DEADLINE_EXCEEDED") -> None:
        self.fail, self.status, self.calls = fail, status, []

    def download(self, round_id, phase, timeout):
        self.calls.append(timeout)
        if len(self.calls) <= self.fail:
            raise TransportError(self.status, "poll ended")
        return b"msg"


def test_a_long_poll_ended_by_the_server_is_polled_again():
    inner = _Inner(fail=2)
    assert _Outbox(inner, None).download(1, "share_keys", timeout=3600.0) == b"msg"
    assert len(inner.calls) == 3 and max(inner.calls) <= 120.0


def test_other_errors_and_the_sites_own_timeout_still_end_the_wait():
    with pytest.raises(TransportError):
        _Outbox(_Inner(fail=1, status="FAILED_PRECONDITION"), None).download(1, "share_keys", timeout=3600.0)
    with pytest.raises(TransportError):
        _Outbox(_Inner(fail=10**9), None).download(1, "share_keys", timeout=0.0)
