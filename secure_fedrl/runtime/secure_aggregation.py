"""Aggregators with privacy: central Gaussian DP, and secure aggregation with or without DDG noise.

Each aggregator also tells the privacy plan what a round costs (`mechanism`), both before the
round (worst case, for the budget check) and after it (with the survivors actually counted).
"""

from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from secure_fedrl.config import Config, corrupt_sites
from secure_fedrl.errors import BelowThresholdError, ConfigError, PrivacyError, ProtocolError, UpdateRejected
from secure_fedrl.fl.compression import shared_mask_indices
from secure_fedrl.privacy.accountants import RDP_ORDERS, GaussianStep, Mechanism, RDPCurveStep
from secure_fedrl.privacy.budget import RoundCost
from secure_fedrl.runtime.aggregation import Aggregator, RoundAggregate, SiteUpload, simulated_dropouts
from secure_fedrl.secagg import run_round
from secure_fedrl.secagg.graph import (colluders_per_holder_set, holders_per_site, min_honest_inputs,
                                      secagg_plus_parameters, secure_threshold)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SecAggPlan:
    """One secure-aggregation round's public parameters (`SecureAggregator.plan`)."""

    round_id: int
    planned: int
    round_seed: int
    threshold: int  # Shamir threshold t the protocol enforces
    release: int  # fewest survivors whose sum the server releases
    degree: int | None  # None: complete graph; k: SecAgg+

#: L2 bound of the fixed-point encoding when no privacy clip sets one. Updates are clipped to it,
#: so it sits far above the norms local RL updates have, while leaving ~1e-6 resolution at n=8.
DEFAULT_SECAGG_CLIP = 100.0
#: Below this many sites the complete graph (classic SecAgg) is cheap; above, SecAgg+ with k, t from
#: graph.secagg_plus_parameters (Bell et al. 2020 at exact tails).
COMPLETE_GRAPH_UP_TO = 16
#: Dropout fraction the automatic SecAgg+ degree is sized for when the simulated rate is lower.
AUTO_GRAPH_DROPOUT = 0.05
#: gamma mode: every holder set holds <= c_max colluders except with probability <= 2^-GRAPH_SIGMA
#: per round attempt (hypergeometric tail, SPEC 2 and 8); that probability is added to delta.
GRAPH_SIGMA = 40.0


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
            if privacy.buffered:  # FedBuff: every round holds at most the buffer's K sites
                self.expected_sites = self.plan_sites = self.max_round_sites = privacy.planned_sites()
        else:  # the round size the config plans for: what a site expects its sums to hold (min_honest)
            s = config.sampling
            self.plan_sites = max(2, min(s.clients_per_round, self.num_sites) if s.clients_per_round
                                  else round(s.fraction * self.num_sites))
            if privacy.buffered:
                self.plan_sites = privacy.planned_sites()
        self.clip = self.sa.clip or (config.privacy.clip if privacy.unit == "client" else DEFAULT_SECAGG_CLIP)
        # A shared random mask keeps the same coordinates at every site: only those are masked and sent.
        self.mask_ratio = config.compression.ratio if config.compression.method == "shared_mask" else None
        self.masked_dim = dim if self.mask_ratio is None else len(shared_mask_indices(dim, self.mask_ratio, 0))
        if not self.ddg:
            self._scale(self.num_sites)  # fail now, not after a round of training, if bits cannot hold the sum

    # -- colluders -----------------------------------------------------------------------------------
    @property
    def gamma_mode(self) -> bool:
        """`colluding_fraction` > 0: at most floor(gamma N) of the N sites collude (SPEC 8)."""
        return self.sa.colluding_fraction > 0

    def colluders(self, n: int) -> int:
        """C: colluders a round of n sites may hold. c mode: `max_colluding_sites`. gamma mode:
        min(floor(gamma N), n), NOT floor(gamma n): the colluders are fixed before the round and
        known to the server, which (under the sampling it runs) can put all of them into a small
        round."""
        if not self.gamma_mode:
            return self.sa.max_colluding_sites
        return min(corrupt_sites(self.sa.colluding_fraction, self.num_sites), n)

    def max_colluding(self, n: int, degree: int | None | str = "plan") -> int:
        """c_max: colluders any honest site's holder set may hold in a round of n sites with graph
        `degree` (default: the degree this config picks for n). c mode: `max_colluding_sites`
        (a hard bound). gamma mode: exactly C on the complete graph; under SecAgg+ the
        hypergeometric bound at 2^-GRAPH_SIGMA, valid only because the graph seed is the
        commit-reveal seed, uniform whatever the server and the (statically chosen) colluders did
        (SPEC 2, 8): `graph_failure` is the probability it fails."""
        if not self.gamma_mode:
            return self.sa.max_colluding_sites
        n = max(n, 2)
        k = self.degree(n) if degree == "plan" else degree
        return colluders_per_holder_set(n, k, self.colluders(n), sigma=GRAPH_SIGMA)[0]

    def graph_failure(self) -> float:
        """Per round attempt, the probability that some holder set holds more than c_max
        colluders (then a sum may hold fewer than m honest noise shares): 0 in c mode; in gamma
        mode the bound 2^-GRAPH_SIGMA every c_max is chosen to meet, charged for every round,
        also on the complete graph (exactly 0 there: not credited, conservative)."""
        return 2.0 ** -GRAPH_SIGMA if self.gamma_mode else 0.0

    # -- protocol parameters ------------------------------------------------------------------------
    def degree(self, n: int) -> int | None:
        k = self.sa.neighbors
        if k == -1 or (k == 0 and n <= COMPLETE_GRAPH_UP_TO):
            return None
        if k == 0:  # Bell et al.'s bounds at exact tails (SPEC.md section 2, table)
            dropout = max(self.sa.dropout_rate, AUTO_GRAPH_DROPOUT)
            if self.gamma_mode:  # k from the hypergeometric bound with C colluders (not floor(gamma n))
                k = secagg_plus_parameters(n, colluders=self.colluders(n), dropout=dropout, sigma=GRAPH_SIGMA)[0]
            else:
                k = secagg_plus_parameters(n, max_colluding=min(self.sa.max_colluding_sites, n - 1),
                                           dropout=dropout)[0]
            if k is None:
                return None
        return min(k, n - 1)

    def protocol_threshold(self, n: int) -> int:
        """Shamir threshold: of all n sites (complete graph) or of each neighbourhood (SecAgg+)."""
        k = self.degree(n)
        holders = holders_per_site(n, k)
        t = self.sa.threshold
        value = int(t) if t >= 1 else math.ceil(t * holders)
        c_max = self.max_colluding(n, k)
        return min(max(value, secure_threshold(holders, max_colluding=c_max), 2), holders)

    def release_threshold(self, n: int) -> int:
        """Fewest survivors of `n` sampled sites whose sum the server releases."""
        t = self.sa.threshold
        value = int(t) if t >= 1 else math.ceil(t * n)
        return min(max(value, self.protocol_threshold(n)), n)

    def noise_shares(self, n: int | None = None) -> int:
        """m: the fewest HONEST inputs (hence noise shares) in any sum a malicious server, colluding
        with c_max sites per holder set (`max_colluding`: `max_colluding_sites`, or gamma mode's
        bound) and controlling delivery, can unmask (SPEC 8), for the planned round size: m = t -
        c_max; `ddg_threshold` keeps every round that runs at >= m."""
        n = max(self.plan_sites if n is None else n, 2)
        c_max = self.max_colluding(n)
        m = min_honest_inputs(self.protocol_threshold(n), max_colluding=c_max)
        if m < 1:
            key = "colluding_fraction" if self.gamma_mode else "max_colluding_sites"
            raise ConfigError(f"secure_aggregation.{key}: {c_max} colluders per holder set "
                              f"leave no honest input guaranteed in a sum of {n} sampled sites")
        return m

    def min_honest(self) -> int:
        """Honest inputs every sum a site joins must hold, from its own config (SPEC 8, t - c): the
        DDG noise shares, or without DDG what the planned round's threshold promises. A site
        refuses a round announced below it (`check_threshold_policy`), so a server cannot shrink a
        round to isolate one input next to its colluders' (attack review F2)."""
        return self.noise_shares()

    def ddg_threshold(self, n: int) -> int:
        """Shamir threshold of a round of n sites: at least m + c_max (of THIS round's n and degree),
        so that any unmaskable sum still holds m honest inputs (min_honest_inputs(t) = t - c >= m)."""
        return max(self.protocol_threshold(n), self.noise_shares() + self.max_colluding(n))

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

    # -- the round, split at the trust boundary ----------------------------------------------------
    def plan(self, round_id: int, *, planned: int, round_seed: int) -> SecAggPlan:
        """The round's public parameters, computed alike by the server and by every site from the
        config, the round number, the planned size and the broadcast round seed."""
        n = max(planned, 2)
        protocol_t = self.ddg_threshold(n)
        return SecAggPlan(round_id=round_id, planned=planned, round_seed=round_seed, threshold=protocol_t,
                          release=max(self.release_threshold(n), protocol_t), degree=self.degree(n))

    def round_info(self, plan: SecAggPlan) -> dict[str, Any]:
        """What the ledger records of a round whatever becomes of it."""
        info: dict[str, Any] = {"sites_planned": plan.planned, "participants": [],
                                "max_colluding": self.max_colluding(max(plan.planned, 2), plan.degree),
                                "graph_failure": self.graph_failure()}
        if self.ddg:  # m honest shares: what every round is charged, released or not
            info["cost"] = self.round_cost(plan.planned)
            info["mechanism_step"] = info["cost"].release
            info["sigma_effective"] = info["cost"].sigma_effective
        return info

    def cannot_run(self, plan: SecAggPlan, count: int) -> str | None:
        """Why a round of `count` sites must not start (nothing leaves the sites), or None."""
        if count < 2:
            return f"{count} site(s) left, secure aggregation needs 2"
        n = max(plan.planned, 2)
        if plan.threshold > holders_per_site(n, plan.degree) or count < plan.threshold:
            what = "noise shares" if self.ddg else "inputs"
            return (f"{count} site(s) cannot guarantee {self.noise_shares()} honest {what} "
                    f"(threshold {plan.threshold})")
        if count < plan.release:
            return f"{count} of {plan.planned} sites left, fewer than the release threshold {plan.release}"
        return None

    def wire_dim(self, plan: SecAggPlan) -> int:
        """Length of the ring vector a site masks (DDG pads to a power of two for the rotation)."""
        return self.ddg_params(plan.planned).padded_dim if self.ddg else self.masked_dim

    def kept_indices(self, plan: SecAggPlan) -> np.ndarray | None:
        """Coordinates a shared random mask keeps this round (the same at every site)."""
        return None if self.mask_ratio is None else shared_mask_indices(self.dim, self.mask_ratio, plan.round_seed)

    def site_encode(self, plan: SecAggPlan, vector: np.ndarray, *, rng: np.random.Generator,
                    signing_key: Any) -> np.ndarray:
        """`site_encode_attested` without the signature (what the site masks)."""
        return self.site_encode_attested(plan, vector, rng=rng, signing_key=signing_key)[0]

    def site_encode_attested(self, plan: SecAggPlan, vector: np.ndarray, *, rng: np.random.Generator,
                             signing_key: Any) -> tuple[np.ndarray, bytes]:
        """At the site: clip and encode to the ring; under DDG also rotate, round and add this
        site's noise share. The DDG parameters come from the site's own config, never from the
        server; the site signs the attestation of what it applied (SPEC 7.1) with its identity
        key and refuses (PrivacyError) parameters other than the ones the config fixes.

        Returns (ring vector, DP attestation field): the 64-byte signature the site's
        MaskedInput carries under DDG (`dp_verifier` checks it at the server), b"" without."""
        from secure_fedrl.privacy.ddg import round_rotation_seed

        kept = self.kept_indices(plan)
        vec = vector if kept is None else vector[kept]
        if not self.ddg:
            from secure_fedrl.secagg.encoding import encode

            n = max(plan.planned, 2)
            return encode(vec, clip=self.clip, scale=self._scale(n), bits=self.sa.bits, rng=rng, num_sites=n), b""
        from secure_fedrl.privacy.ddg import (DDGEncoder, attestation_for, sign_attestation, verify_attestation,
                                              verify_signed_attestation)

        rotation_seed = round_rotation_seed(plan.round_id, plan.round_seed)
        params = self.ddg_params(plan.planned)
        encoder = DDGEncoder(params, rotation_seed=rotation_seed)
        signed = sign_attestation(encoder.attestation(), round_id=plan.round_id, key=signing_key)
        verify_signed_attestation(encoder.attestation(), signed, round_id=plan.round_id,
                                  public_key=signing_key.public_key())
        verify_attestation(encoder.attestation(), attestation_for(params, rotation_seed=rotation_seed))
        return encoder.encode(vec, rng=rng), signed

    def dp_verifier(self, plan: SecAggPlan, config: Any):
        """At the server: `verify_dp(site_id, field)` for `SecAggServer`, or None without DDG.

        It recomputes the attestation A from the federation's own DDG parameters and the round's
        rotation seed (never from anything a site sent) and raises PrivacyError unless the field
        is the site's Ed25519 signature over SHA-256(A) under the identity key `config` (the
        RoundConfig) lists for it (SPEC 7.1): a site that attests a smaller sigma, a larger clip,
        another round or rotation, or signs with another key is not summed."""
        if not self.ddg:
            return None
        from secure_fedrl.privacy.ddg import attestation_for, round_rotation_seed, verify_signed_attestation

        if config.round_id != plan.round_id:
            raise ConfigError(f"dp_verifier: round config {config.round_id} is not the plan's round {plan.round_id}")
        expected = attestation_for(self.ddg_params(plan.planned),
                                   rotation_seed=round_rotation_seed(plan.round_id, plan.round_seed))
        keys = config.identity

        def verify_dp(site_id: int, field: bytes) -> None:
            if site_id not in keys:
                raise PrivacyError(f"DP attestation of site {site_id}, which is not in round {plan.round_id}")
            verify_signed_attestation(expected, field, round_id=plan.round_id, public_key=keys[site_id])
        return verify_dp

    def server_decode(self, plan: SecAggPlan, total: np.ndarray, *, survivors: int) -> np.ndarray:
        """At the server: the mean update (full length) from the unmasked sum of `survivors`."""
        if self.ddg:
            from secure_fedrl.privacy.ddg import decode_sum, round_rotation_seed

            mean = decode_sum(total, num_survivors=survivors, params=self.ddg_params(plan.planned),
                              rotation_seed=round_rotation_seed(plan.round_id, plan.round_seed)) / self.expected_sites
        else:
            from secure_fedrl.secagg.encoding import decode_sum as decode_plain

            mean = decode_plain(total, scale=self._scale(max(plan.planned, 2)), bits=self.sa.bits,
                                num_sites=survivors, clip=self.clip) / survivors
        kept = self.kept_indices(plan)
        if kept is not None:
            full = np.zeros(self.dim, dtype=np.float64)
            full[kept] = mean
            mean = full
        return np.asarray(mean, dtype=np.float32)

    @staticmethod
    def graph_seed(round_seed: int) -> bytes:
        """The base graph seed from the round seed; the sites mix their revealed nonces into it (SPEC 2)."""
        return hashlib.sha256(b"secure-fedrl/graph" + round_seed.to_bytes(8, "big")).digest()

    def aggregate(self, round_id: int, uploads: Sequence[SiteUpload], *, rng: np.random.Generator,
                  noise_rng: np.random.Generator, planned: int, round_seed: int = 0) -> RoundAggregate:
        """Both halves in one process over the pure in-memory driver (unit tests, canaries,
        benchmarks). The runtimes run the same halves across the transport (runtime/round.py).
        `rng` drives simulated dropouts; `noise_rng` the sites' rounding and noise."""
        plan = self.plan(round_id, planned=planned, round_seed=round_seed)
        info = self.round_info(plan)
        aborted = RoundAggregate(None, [], [u.site for u in uploads], 0.0, privacy=info)
        reason = self.cannot_run(plan, len(uploads))
        if reason:
            log.warning("round %d: %s: nothing leaves the sites, nothing released", round_id, reason)
            return aborted
        encoded, fields = {}, {}
        for u in uploads:
            try:
                encoded[u.site], fields[u.site] = self.site_encode_attested(
                    plan, u.vector, rng=noise_rng, signing_key=self._attestation_key(u.site))
            except PrivacyError as exc:
                log.warning("round %d: site %s refused: %s", round_id, u.site, exc)
        if self.ddg:
            info["participants"] = sorted(encoded)  # their masked inputs leave them: charged from here
        dropouts = simulated_dropouts(sorted(encoded), self.sa.dropout_rate, rng)
        try:
            if len(encoded) < plan.release:
                raise BelowThresholdError(f"{len(encoded)} of {planned} sites left, fewer than the release "
                                          f"threshold {plan.release}")
            result = run_round(encoded, threshold=plan.threshold, neighbors=plan.degree, bits=self.sa.bits,
                               dropouts=dropouts, round_id=round_id, graph_seed=self.graph_seed(round_seed),
                               identity_keys={s: self._attestation_key(s) for s in encoded},
                               dp_attestations=fields, dp_verifier=lambda cfg: self.dp_verifier(plan, cfg))
            survivors = len(result.accepted_sites)
            info["survivors"] = survivors
            if survivors < plan.release:
                raise BelowThresholdError(f"{survivors} of {planned} sites survived, fewer than the release "
                                          f"threshold {plan.release}")
            mean = self.server_decode(plan, result.sum, survivors=survivors)
        except (BelowThresholdError, ProtocolError, UpdateRejected) as exc:
            log.warning("round %d aborted, nothing released: %s", round_id, exc)
            return aborted
        included = sorted(result.accepted_sites)
        dropped = sorted(set(u.site for u in uploads) - set(included))
        bytes_per_site = float(np.mean(list(result.bytes_per_site.values()))) if result.bytes_per_site else 0.0
        return RoundAggregate(mean, included, dropped, bytes_per_site, privacy=info)

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
