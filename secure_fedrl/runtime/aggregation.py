"""From the sites' uploads to the one mean update the strategy applies.

Four paths, picked from the config:

- plain: weighted mean of the updates in the clear (the non-private baseline);
- central DP (client level, no secure aggregation): sites clip, the server adds Gaussian noise to
  the sum (DP-FedAvg);
- secure aggregation: sites encode their update to integers mod 2^b and mask them; the SecAgg(+)
  driver recovers only the sum of the accepted sites;
- secure aggregation + distributed discrete Gaussian (client level): sites clip, rotate, round and
  add their share of discrete Gaussian noise before masking, so the server never holds even the
  noiseless sum.

The site-side steps (clip, encode, noise) run here because every site is in this process; in a
deployment they run at the site and only the masked vector crosses the wire.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from secure_fedrl.config import Config
from secure_fedrl.fl.updates import weighted_mean
from secure_fedrl.secagg.protocol import PHASES

log = logging.getLogger(__name__)


@dataclass
class SiteUpload:
    """What one site hands over after local training (float32 Δ, its weight, wire bytes)."""

    site: str
    vector: np.ndarray
    weight: float
    nbytes: int


@dataclass
class RoundAggregate:
    """The server's view of a round after aggregation."""

    mean_update: np.ndarray | None
    included: list[str]
    dropped: list[str]
    bytes_per_site: float
    privacy: dict[str, Any] = field(default_factory=dict)
    """Mechanism details the ledger records: noise multiplier used, survivors, clip, ..."""


class Aggregator:
    def aggregate(self, round_id: int, uploads: Sequence[SiteUpload], *, rng: np.random.Generator,
                  noise_rng: np.random.Generator, planned: int, round_seed: int = 0) -> RoundAggregate:
        """Combine the uploads of a round that sampled `planned` sites.

        `rng` drives simulation choices (dropouts), `noise_rng` privacy noise and rounding,
        `round_seed` is what the server broadcast with the round (shared compression masks).
        """
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class PlainAggregator(Aggregator):
    """Weighted mean in the clear: the non-private baseline."""

    def aggregate(self, round_id, uploads, *, rng, noise_rng, planned, round_seed=0):
        if not uploads:
            return RoundAggregate(None, [], [], 0.0)
        mean = weighted_mean([u.vector for u in uploads], [u.weight for u in uploads])
        return RoundAggregate(mean, [u.site for u in uploads], [], float(np.mean([u.nbytes for u in uploads])))


#: Phases a simulated dropout stops before, drawn uniformly: every phase but graph_reveal. A site lost
#: between its advert and its graph reveal aborts a SecAgg+ round (SPEC.md section 4, phase 0b;
#: tests/secagg/test_graph_seed.py); the simulation leaves that short window out.
SIMULATED_DROPOUT_PHASES = tuple(p for p in PHASES if p != "graph_reveal")


def simulated_dropouts(sites: Sequence[str], rate: float, rng: np.random.Generator) -> dict[str, str]:
    """{site: the phase it stops before} for each site that drops (probability `rate`)."""
    if rate <= 0:
        return {}
    drops = [s for s in sites if rng.random() < rate]
    return {s: SIMULATED_DROPOUT_PHASES[int(rng.integers(len(SIMULATED_DROPOUT_PHASES)))] for s in sorted(drops)}


def build_aggregator(config: Config, *, dim: int, privacy: Any) -> Aggregator:
    unit = config.privacy.unit
    if config.secure_aggregation.enabled:
        from secure_fedrl.runtime.secure_aggregation import SecureAggregator

        return SecureAggregator(config, dim=dim, privacy=privacy)
    if unit == "client":
        from secure_fedrl.runtime.secure_aggregation import CentralDPAggregator

        return CentralDPAggregator(config, dim=dim, privacy=privacy)
    return PlainAggregator()
