"""Aggregators with privacy: central Gaussian DP, and secure aggregation with or without DDG noise.

Each aggregator also tells the privacy plan what a round costs (`mechanism`), both before the
round (worst case, for the budget check) and after it (with the survivors actually counted).
"""

from __future__ import annotations

import hashlib
import logging
import math
from typing import Any, Sequence

import numpy as np

from secure_fedrl.config import Config
from secure_fedrl.errors import BelowThresholdError, ConfigError, PrivacyError, ProtocolError, UpdateRejected
from secure_fedrl.fl.compression import shared_mask_indices
from secure_fedrl.privacy.accountants import RDP_ORDERS, GaussianStep, Mechanism, RDPCurveStep
from secure_fedrl.privacy.budget import RoundCost
from secure_fedrl.runtime.aggregation import Aggregator, RoundAggregate, SiteUpload, simulated_dropouts
from secure_fedrl.secagg import PHASES, run_round
from secure_fedrl.secagg.graph import (holders_per_site, min_honest_inputs, secagg_plus_parameters,
                                      secure_threshold)

log = logging.getLogger(__name__)

#: L2 bound of the fixed-point encoding when no privacy clip sets one. Updates are clipped to it,
#: so it sits far above the norms local RL updates have, while leaving ~1e-6 resolution at n=8.
DEFAULT_SECAGG_CLIP = 100.0
#: Below this many sites the complete graph (classic SecAgg) is cheap; above, SecAgg+ with k, t from
#: graph.secagg_plus_parameters (Bell et al. 2020 at exact tails).
COMPLETE_GRAPH_UP_TO = 16
#: Dropout fraction the automatic SecAgg+ degree is sized for when the simulated rate is lower.
AUTO_GRAPH_DROPOUT = 0.05


class CentralDPAggregator(Aggregator):
    """DP-FedAvg with central noise (McMahan et al. 2018): the server is trusted with the sum.

    Every round releases a noised sum, even of nobody: Poisson-subsampling accounting assumes an
    output every round, and "no release" would itself tell whether anyone took part.

    With `privacy.adaptive_clipping`, C tracks a quantile of the update norms (Andrew et al.
    2021); the noised clipped-count costs privacy too, which the split of the noise multiplier
    into z_Delta (update) and sigma_b (count) pays for, so the accountant still sees z.
    """

    def __init__(self, config: Config, *, dim: int, privacy: Any) -> None:
        self.config = config
        self.dim = dim
        self.privacy = privacy
        self.expected_sites = max(1.0, privacy.sample_rate * config.num_sites)
        self.clipper = None

    def bind_sigma(self, sigma: float) -> None:
        p = self.config.privacy
        if p.adaptive_clipping:
            from secure_fedrl.privacy.adaptive_clipping import AdaptiveClippingConfig, QuantileClipper

            self.clipper = QuantileClipper(
                AdaptiveClippingConfig(initial_clip=p.clip, target_quantile=p.target_quantile,
                                       learning_rate=p.clip_learning_rate,
                                       count_noise_std=p.clipped_count_stddev or None),
                noise_multiplier=sigma, expected_clients=self.expected_sites)

    def round_cost(self, sampled: int, *, sigma: float | None = None) -> RoundCost:
        """Central noise: nothing against the server (it sees every update); against release-only
        observers the Poisson-subsampled Gaussian (the sample is secret)."""
        z = self.privacy.sigma if sigma is None else sigma
        return RoundCost(server=None, release=GaussianStep(z, self.privacy.sample_rate), noise_shares=0,
                         params={}, sigma_effective=z)

    def mechanism(self, *, sampled: int, survivors: int | None = None, sigma: float | None = None) -> Mechanism:
        """The round's cost against release-only observers (what a membership canary measures)."""
        return self.round_cost(sampled, sigma=sigma).release

    def aggregate(self, round_id, uploads, *, rng, noise_rng, planned, round_seed=0):
        from secure_fedrl.privacy.central import add_central_noise, clip_and_sum

        clip = self.clipper.clip if self.clipper else self.config.privacy.clip
        z_update = self.clipper.update_noise_multiplier if self.clipper else self.privacy.sigma
        cost = self.round_cost(planned)
        info = {"mechanism_step": cost.release, "cost": cost, "sites_planned": planned,
                "sigma_effective": self.privacy.sigma, "clip": clip,
                "participants": sorted(u.site for u in uploads)}
        total = clip_and_sum([u.vector for u in uploads], clip_norm=clip)[0] if uploads else np.zeros(self.dim)
        noisy_sum = add_central_noise(total, clip_norm=clip, noise_multiplier=z_update, rng=noise_rng)
        if self.clipper:
            self.clipper.update([float(np.linalg.norm(u.vector)) for u in uploads], rng=noise_rng)
        # Fixed denominator (expected participants), so one site's presence moves the mean by <= C/qN.
        mean = (noisy_sum / self.expected_sites).astype(np.float32)
        nbytes = float(np.mean([u.nbytes for u in uploads])) if uploads else 0.0
        return RoundAggregate(mean, [u.site for u in uploads], [], nbytes, privacy=info)

    def state_dict(self) -> dict[str, Any]:
        return {"clipper": self.clipper.state_dict()} if self.clipper else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.clipper and "clipper" in state:
            self.clipper.load_state_dict(state["clipper"])


class SecureAggregator(Aggregator):
    """SecAgg / SecAgg+ between the sites; with client-level DP, DDG noise shares inside the sum.

    Two thresholds. The protocol threshold t (Shamir, per neighbourhood under SecAgg+, never
    below the strict majority SPEC.md section 8 needs) is what the cryptography enforces: no sum
    of fewer than t sites' inputs can be unmasked, even by a malicious server. The release
    threshold (`secure_aggregation.threshold` of the sampled sites, at least t) is the honest
    server's policy on top. Distributed noise is sized so that t survivors alone reach sigma.
    """

    def __init__(self, config: Config, *, dim: int, privacy: Any) -> None:
        self.config = config
        self.sa = config.secure_aggregation
        self.dim = dim
        self.privacy = privacy
        self.ddg = privacy.unit == "client"
        self.num_sites = config.num_sites
        if self.ddg:
            if config.privacy.accountant != "rdp":
                raise ConfigError("privacy.accountant: distributed DP (ddg) is accounted in RDP only "
                                  "(PRV supports subsampled continuous Gaussians only); set accountant = 'rdp'")
            self.expected_sites = max(1, round(privacy.sample_rate * self.num_sites))
            # One fixed mechanism for the whole run (public, data-independent): shares sized for
            # m honest shares of a round planned at the expected sample, the ring for up to
            # `max_round_sites`. A round with more sampled sites is cut down (secretly) to that; one
            # with too few to guarantee m honest shares does not run. So every round costs the same.
            q = privacy.sample_rate
            self.plan_sites = max(2, round(q * self.num_sites))
            spread = math.ceil(q * self.num_sites + 4.0 * math.sqrt(q * self.num_sites * (1.0 - q)))
            self.max_round_sites = min(self.num_sites, max(self.plan_sites, spread))
        self.clip = self.sa.clip or (config.privacy.clip if privacy.unit == "client" else DEFAULT_SECAGG_CLIP)
        # A shared random mask keeps the same coordinates at every site: only those are masked and sent.
        self.mask_ratio = config.compression.ratio if config.compression.method == "shared_mask" else None
        self.masked_dim = dim if self.mask_ratio is None else len(shared_mask_indices(dim, self.mask_ratio, 0))
        if not self.ddg:
            self._scale(self.num_sites)  # fail now, not after a round of training, if bits cannot hold the sum

    # -- protocol parameters ------------------------------------------------------------------------
    def degree(self, n: int) -> int | None:
        k = self.sa.neighbors
        if k == -1 or (k == 0 and n <= COMPLETE_GRAPH_UP_TO):
            return None
        if k == 0:  # Bell et al.'s bounds at exact tails (SPEC.md section 2, table)
            k = secagg_plus_parameters(n, max_colluding=min(self.sa.max_colluding_sites, n - 1),
                                       dropout=max(self.sa.dropout_rate, AUTO_GRAPH_DROPOUT))[0]
            if k is None:
                return None
        return min(k, n - 1)

    def protocol_threshold(self, n: int) -> int:
        """Shamir threshold: of all n sites (complete graph) or of each neighbourhood (SecAgg+)."""
        k = self.degree(n)
        holders = holders_per_site(n, k)
        t = self.sa.threshold
        value = int(t) if t >= 1 else math.ceil(t * holders)
        return min(max(value, secure_threshold(holders, max_colluding=self.sa.max_colluding_sites), 2), holders)

    def release_threshold(self, n: int) -> int:
        """Fewest survivors of `n` sampled sites whose sum the server releases."""
        t = self.sa.threshold
        value = int(t) if t >= 1 else math.ceil(t * n)
        return min(max(value, self.protocol_threshold(n)), n)

    def noise_shares(self, n: int | None = None) -> int:
        """m: the fewest HONEST inputs (hence noise shares) in any sum a malicious server, colluding
        with `max_colluding_sites` sites and controlling delivery, can unmask (SPEC 8), for the
        planned round size; `ddg_threshold` keeps every round that runs at >= m."""
        n = self.plan_sites if n is None else n
        m = min_honest_inputs(self.protocol_threshold(max(n, 2)), max_colluding=self.sa.max_colluding_sites)
        if m < 1:
            raise ConfigError(f"secure_aggregation.max_colluding_sites: {self.sa.max_colluding_sites} colluders "
                              f"leave no honest input guaranteed in a sum of {n} sampled sites")
        return m

    def ddg_threshold(self, n: int) -> int:
        """Shamir threshold of a DDG round of n sites: at least m + max_colluding, so that any
        unmaskable sum still holds m honest inputs (min_honest_inputs(t) = t - c >= m)."""
        return max(self.protocol_threshold(n), self.noise_shares() + self.sa.max_colluding_sites)

    def ddg_params(self, sampled: int | None = None, sigma: float | None = None):
        """Noise shares sized so that the m guaranteed honest shares alone reach sigma.

        The server knows the colluders' shares and can unmask a sum holding only m honest
        inputs, so m shares must carry the noise; more honest shares only add noise. The same
        parameters for every round (`sampled` is ignored): the cost never depends on who was drawn.
        """
        from secure_fedrl.privacy.ddg import ddg_parameters

        return ddg_parameters(clip_norm=self.config.privacy.clip, dim=self.masked_dim,
                              expected_sites=self.noise_shares(), bits=self.sa.bits,
                              noise_multiplier=self.privacy.sigma if sigma is None else sigma,
                              max_sites=self.max_round_sites)

    # -- privacy cost --------------------------------------------------------------------------------
    def round_cost(self, sampled: int | None = None, *, sigma: float | None = None) -> RoundCost:
        """DDG's cost of a round, charged with the m guaranteed honest shares whatever the
        survivors (docs/privacy-model.md): per participating site against the server (no sampling
        discount), and the Bernoulli-mixture bound against release-only observers. The same for
        every round (`sampled` is ignored)."""
        from secure_fedrl.privacy.ddg import ddg_round_privacy, recorded_params

        params = self.ddg_params(None, sigma)
        m = self.noise_shares()
        priv = ddg_round_privacy(params, num_survivors=m)
        orders = np.asarray(RDP_ORDERS)
        return RoundCost(server=RDPCurveStep(tuple(priv.rdp(orders))),
                         release=RDPCurveStep(tuple(priv.release_rdp(orders, self.privacy.sample_rate))),
                         noise_shares=m, params=recorded_params(params),
                         sigma_effective=priv.effective_noise_multiplier)

    def mechanism(self, *, sampled: int, survivors: int | None = None, sigma: float | None = None) -> Mechanism:
        """The round's cost against release-only observers (what a membership canary measures)."""
        return self.round_cost(sampled, sigma=sigma).release

    # -- the round -----------------------------------------------------------------------------------
    def aggregate(self, round_id: int, uploads: Sequence[SiteUpload], *, rng: np.random.Generator,
                  noise_rng: np.random.Generator, planned: int, round_seed: int = 0) -> RoundAggregate:
        """`rng` drives the simulation (dropouts); `noise_rng` the sites' rounding and noise."""
        info: dict[str, Any] = {"sites_planned": planned, "participants": []}
        if self.ddg:  # m honest shares: what every round is charged, released or not
            info["cost"] = self.round_cost(planned)
            info["mechanism_step"] = info["cost"].release
            info["sigma_effective"] = info["cost"].sigma_effective
        aborted = RoundAggregate(None, [], [u.site for u in uploads], 0.0, privacy=info)
        if len(uploads) < 2:
            log.warning("round %d: %d site(s) left, secure aggregation needs 2: nothing released",
                        round_id, len(uploads))
            return aborted
        n_planned = max(planned, 2)
        if self.ddg:
            need = self.ddg_threshold(n_planned)
            if need > holders_per_site(n_planned, self.degree(n_planned)) or len(uploads) < need:
                log.warning("round %d: %d site(s) cannot guarantee %d honest noise shares (threshold %d): "
                            "nothing leaves the sites, nothing released", round_id, len(uploads),
                            self.noise_shares(), need)
                return aborted
        from secure_fedrl.privacy.ddg import round_rotation_seed

        rotation_seed = round_rotation_seed(round_id, round_seed)
        kept = None if self.mask_ratio is None else shared_mask_indices(self.dim, self.mask_ratio, round_seed)
        vectors = {u.site: u.vector if kept is None else u.vector[kept] for u in uploads}
        encoded = {}
        if self.ddg:
            from secure_fedrl.privacy.ddg import (DDGEncoder, attestation_for, sign_attestation, verify_attestation,
                                                  verify_signed_attestation)

            params = self.ddg_params(n_planned)
            expected = attestation_for(params, rotation_seed=rotation_seed)
            for site, vec in vectors.items():
                encoder = DDGEncoder(params, rotation_seed=rotation_seed)  # at the site
                key = self._attestation_key(site)  # in-process stand-in for the site's identity key
                signed = sign_attestation(encoder.attestation(), round_id=round_id, key=key)  # the wire field
                try:
                    verify_signed_attestation(encoder.attestation(), signed, round_id=round_id,
                                              public_key=key.public_key())
                    verify_attestation(encoder.attestation(), expected)
                except PrivacyError as exc:
                    log.warning("round %d: site %s refused: %s", round_id, site, exc)
                    continue
                encoded[site] = encoder.encode(vec, rng=noise_rng)
            info["participants"] = sorted(encoded)  # their masked inputs leave them: charged from here
        else:
            from secure_fedrl.secagg.encoding import encode

            scale = self._scale(n_planned)
            for site, vec in vectors.items():
                encoded[site] = encode(vec, clip=self.clip, scale=scale, bits=self.sa.bits, rng=noise_rng,
                                       num_sites=n_planned)

        drop_sites = simulated_dropouts(sorted(encoded), self.sa.dropout_rate, rng)
        dropouts = {s: PHASES[int(rng.integers(len(PHASES)))] for s in sorted(drop_sites)}
        protocol_t = self.ddg_threshold(n_planned) if self.ddg else self.protocol_threshold(n_planned)
        release = max(self.release_threshold(n_planned), protocol_t)
        try:
            if len(encoded) < release:
                raise BelowThresholdError(f"{len(encoded)} of {planned} sites left, fewer than the release "
                                          f"threshold {release}")
            graph_seed = hashlib.sha256(b"secure-fedrl/graph" + round_seed.to_bytes(8, "big")).digest()
            result = run_round(encoded, threshold=protocol_t, neighbors=self.degree(n_planned),
                               bits=self.sa.bits, dropouts=dropouts, round_id=round_id, graph_seed=graph_seed)
            survivors = len(result.accepted_sites)
            info["survivors"] = survivors
            if survivors < release:
                raise BelowThresholdError(f"{survivors} of {planned} sites survived, fewer than the release "
                                          f"threshold {release}")
            included = sorted(result.accepted_sites)
            if self.ddg:
                from secure_fedrl.privacy.ddg import decode_sum

                total = decode_sum(result.sum, num_survivors=survivors, params=params, rotation_seed=rotation_seed)
                mean = total / self.expected_sites
            else:
                from secure_fedrl.secagg.encoding import decode_sum as decode_plain

                total = decode_plain(result.sum, scale=self._scale(n_planned), bits=self.sa.bits,
                                     num_sites=survivors, clip=self.clip)
                mean = total / survivors
        except (BelowThresholdError, ProtocolError, UpdateRejected) as exc:
            log.warning("round %d aborted, nothing released: %s", round_id, exc)
            return aborted
        if kept is not None:
            full = np.zeros(self.dim, dtype=np.float64)
            full[kept] = mean
            mean = full
        dropped = sorted(set(vectors) - set(included))
        bytes_per_site = float(np.mean(list(result.bytes_per_site.values()))) if result.bytes_per_site else 0.0
        return RoundAggregate(np.asarray(mean, dtype=np.float32), included, dropped, bytes_per_site, privacy=info)

    def _attestation_key(self, site: str):
        """Per-site Ed25519 key that signs the DP attestation (SPEC 7.1) in-process."""
        keys = self.__dict__.setdefault("_att_keys", {})
        if site not in keys:
            from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

            keys[site] = Ed25519PrivateKey.generate()
        return keys[site]

    def _scale(self, num_sites: int) -> float:
        """Finest fixed-point scale at which `num_sites` clipped encodings cannot wrap the ring."""
        limit = 2 ** (self.sa.bits - 1) / num_sites - 2
        if limit < 1:
            raise ConfigError(f"secure_aggregation.bits: {self.sa.bits} bits cannot hold the sum of {num_sites} sites")
        return float(np.floor(limit) / self.clip)
