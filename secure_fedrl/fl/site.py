"""A site's per-round state change, in two steps: propose after local training, commit on accept.

What a site changes at the end of a round — its SCAFFOLD control variate c_i and its
error-feedback residual — must follow what the server actually aggregated. The server's c moves
by (1/N)·Σ Δc_i over the sites in the aggregate, so a site that kept c_i⁺ although its upload was
dropped (secure-aggregation dropout) or rejected would leave c ≠ mean(c_i) for the rest of the
run; a site that dropped its residual although nothing was delivered would lose that mass.

So local training ends with a `PendingCommit` (the proposals, nothing changed yet); the upload
goes out; once the server reports which sites its aggregate includes, `commit_accepted` commits
exactly those and discards the rest, whose state stays as it was before the round.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from secure_fedrl.errors import ProtocolError
from secure_fedrl.fl.compression import CompressionProposal, Compressor
from secure_fedrl.fl.strategies import ControlProposal, ScaffoldClient

__all__ = ["PendingCommit", "commit_accepted"]


@dataclass
class PendingCommit:
    """One site's proposals of one round; `commit()` applies them, at most once."""

    compressor: Compressor
    compression: CompressionProposal
    scaffold: ScaffoldClient | None = None
    control: ControlProposal | None = None
    done: bool = False

    def __post_init__(self) -> None:
        if (self.scaffold is None) != (self.control is None):
            raise ProtocolError("a control-variate proposal needs its ScaffoldClient, and vice versa")

    def commit(self) -> None:
        """Keep the new residual and control variate (the server accepted the upload)."""
        if self.done:
            raise ProtocolError("this round's proposals were already committed")
        self.compressor.commit(self.compression)
        if self.scaffold is not None and self.control is not None:
            self.scaffold.commit(self.control)
        self.done = True


def commit_accepted(pending: Mapping[str, PendingCommit], included: Iterable[str]) -> list[str]:
    """Commit the sites the aggregate includes; return the others (sorted), which keep their state.

    An included site that has no pending proposal is a ProtocolError: the server claims an upload
    this round never produced.
    """
    accepted = set(included)
    unknown = sorted(accepted - set(pending))
    if unknown:
        raise ProtocolError(f"aggregate includes site(s) {', '.join(unknown)} that made no upload this round")
    for site in sorted(accepted):
        pending[site].commit()
    return sorted(set(pending) - accepted)
