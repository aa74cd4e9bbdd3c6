"""The site's side of SecAgg/SecAgg+ as a pure state machine: one method per phase, message in,
message out. No sockets, threads, clocks or files; randomness comes from the injected `randbytes`.

A site raises ProtocolError (and must then abandon the round) when the server misbehaves in a way
that could leak its input: an inconsistent survivor set, too few live peers, a request to reveal
both secrets of one peer. Individual bad entries inside a bundle (a forged advert, a tampered
ciphertext) are dropped, recorded in `rejected`, and the site carries on without that peer.
"""

from __future__ import annotations

import os
import struct

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from secure_fedrl.errors import BelowThresholdError, ProtocolError, UpdateRejected

from . import messages as M
from . import primitives as P
from . import protocol as R
from . import shamir
from .graph import effective_degree
from .primitives import RandBytes

_PT_BYTES = 8 + 2 * shamir.SHARE_BYTES


class RevealGuard:
    """Remembers which secret of each peer this site revealed; refuses to reveal the other one.

    Revealing the b-share of a peer lets the server remove its self-mask, the s-share its pairwise
    masks: holding both for one peer (from t sites) would expose that peer's input in the clear.
    """

    def __init__(self) -> None:
        self.revealed: dict[int, int] = {}

    def reveal(self, peer: int, kind: int) -> None:
        prev = self.revealed.get(peer)
        if prev is not None and prev != kind:
            raise ProtocolError(f"refusing to reveal both the b-share and the s-share of site {peer}")
        self.revealed[peer] = kind


class RoundHistory:
    """The config digests D this site has advertised keys under; it never takes part twice under one D.

    Signatures bind D, not one execution of the round: a server that runs the same RoundConfig
    twice could certify one survivor set with the first execution's consistency signatures and
    another with the second's, so an honest site would in effect confirm two views (SPEC section 8,
    step (i); found by review, `tests/secagg/test_secagg_replay.py`). Keeping one history per
    site across rounds restores "one view per honest site per D". A deployment must persist
    `state_dict()` durably before the advert leaves the site (the guard is pure: no I/O here).
    """

    def __init__(self, digests: "list[str] | tuple[str, ...]" = ()) -> None:
        self._seen: set[bytes] = {bytes.fromhex(d) for d in digests}

    def claim(self, digest: bytes) -> None:
        if digest in self._seen:
            raise ProtocolError("this site already took part in a round with this configuration digest "
                                "(a repeated round is refused: its signatures could certify two views)")
        self._seen.add(bytes(digest))

    def __contains__(self, digest: bytes) -> bool:
        return bytes(digest) in self._seen

    def state_dict(self) -> list[str]:
        return sorted(d.hex() for d in self._seen)


def check_threshold_policy(config: R.RoundConfig, max_colluding: int, *, min_honest: int = 1) -> None:
    """Refuse a round whose threshold is below what the site's own policy needs.

    The server announces t and the degree; the SPEC section 8 bound (every unmaskable sum holds
    t - c honest inputs) needs 2t > h + c for the holder-set size h, so a site checks that against
    ITS configured c. That alone is not enough: a server may announce a tiny degree with
    t = c + 1 (2t > h + c holds, yet t - c = 1), so the site also requires t - c >= its own
    `min_honest` (the number of honest inputs, and noise shares, its deployment plans for).
    """
    for name, value, low in (("max_colluding", max_colluding, 0), ("min_honest", min_honest, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    h = effective_degree(len(config.site_ids), config.degree) + 1
    if 2 * config.threshold <= h + max_colluding:
        raise ProtocolError(f"round {config.round_id}: threshold {config.threshold} is too low for holder sets of "
                            f"{h} with up to {max_colluding} colluding sites (needs 2t > {h + max_colluding})")
    if config.threshold - max_colluding < min_honest:
        raise ProtocolError(f"round {config.round_id}: threshold {config.threshold} guarantees only "
                            f"{config.threshold - max_colluding} honest inputs per unmaskable sum with up to "
                            f"{max_colluding} colluding sites; this site requires {min_honest} (threshold too low)")


class SecAggClient:
    """Site u of one round. Call the phase methods in order; each returns the message to upload.

    `history` (one per site, kept across rounds) makes the site refuse a repeated configuration;
    `max_colluding` / `min_honest_inputs` make it refuse a threshold (or degree) too low for its
    own policy (`check_threshold_policy`). They default to off for conformance vectors and unit
    tests; the site runtime passes them from its own config (runtime/round.py, transport/rounds.py).

    `dp_attestation` (64 bytes, or empty without distributed DP) is the site's signature over
    its DDG attestation (SPEC.md section 7.1); it travels in the MaskedInput, inside the
    attestation core, and the server refuses a MaskedInput whose field does not verify.
    """

    def __init__(
        self,
        *,
        config: R.RoundConfig,
        site_id: int,
        identity_key: Ed25519PrivateKey,
        vector: np.ndarray,
        randbytes: RandBytes = os.urandom,
        history: RoundHistory | None = None,
        max_colluding: int | None = None,
        min_honest_inputs: int | None = None,
        dp_attestation: bytes = b"",
    ) -> None:
        if max_colluding is not None or min_honest_inputs is not None:
            check_threshold_policy(config, max_colluding or 0, min_honest=min_honest_inputs or 1)
        if site_id not in config.identity:
            raise ProtocolError(f"site {site_id} is not part of round {config.round_id}")
        if P.ed25519_public_bytes(identity_key) != config.identity_keys[config.site_ids.index(site_id)]:
            raise ProtocolError(f"site {site_id}: identity key does not match the enrolled public key")
        vec = np.asarray(vector)
        if vec.dtype != np.uint32 or vec.shape != (config.dim,):
            raise UpdateRejected(f"site {site_id}: input must be a uint32 vector of length {config.dim}")
        if config.bits < 32 and vec.size and int(vec.max()) >> config.bits:
            raise UpdateRejected(f"site {site_id}: input values must be reduced mod 2^{config.bits}")
        if len(dp_attestation) not in M.DP_ATTESTATION_LENGTHS:
            raise ProtocolError(f"site {site_id}: DP attestation must be 0 or {P.SIG_BYTES} bytes, "
                                f"got {len(dp_attestation)}")
        self._dp = bytes(dp_attestation)
        self.cfg = config
        self.id = site_id
        self._sk = identity_key
        self._x = vec
        self._rand = randbytes
        self._history = history
        self.phase = "advertise_keys"
        self.rejected: list[ProtocolError] = []
        self.guard = RevealGuard()
        self._peer_keys: dict[int, tuple[bytes, bytes]] = {}
        self._shares: dict[int, tuple[bytes, bytes]] = {}
        self._enc_shared: dict[int, bytes] = {}
        self._mask_shared: dict[int, bytes] = {}
        self._confirm: dict[int, bytes] = {}
        self._pairs: tuple[int, ...] = ()
        self._view: tuple[tuple[int, bytes], ...] = ()  # SecAgg+: (v, N_v) the graph seed hashes
        self._view_commits: dict[int, bytes] = {}  # dict(self._view)

    # -------------------------------------------------------------- helpers
    def _expect(self, phase: str, msg, cls) -> R.RoundConfig:
        """Check type, phase, digest and receiver; returns the configuration the message is for:
        the round's, or for the KeysBundle the one its reveals seed (SecAgg+, digest D')."""
        if not isinstance(msg, cls):
            raise ProtocolError(f"site {self.id}: expected {cls.NAME}, got {type(msg).__name__}")
        if self.phase != phase:
            raise ProtocolError(f"site {self.id}: {cls.NAME} received in phase {self.phase!r}")
        cfg = self._seeded(msg) if cls is M.KeysBundle else self.cfg
        if msg.config_digest != cfg.digest:
            raise ProtocolError(f"site {self.id}: {cls.NAME} is for another round or configuration")
        if msg.receiver != self.id:
            raise ProtocolError(f"site {self.id}: {cls.NAME} addressed to site {msg.receiver}")
        return cfg

    def _reject(self, err: ProtocolError) -> None:
        self.rejected.append(err)

    # -------------------------------------------------------------- phase 0
    def advertise_keys(self) -> M.AdvertiseKeys:
        if self.phase != "advertise_keys":
            raise ProtocolError(f"site {self.id}: keys already advertised")
        if self._history is not None:
            self._history.claim(self.cfg.digest)
        self._c_sk, c_pk = P.x25519_keypair(self._rand)
        self._s_sk, s_pk = P.x25519_keypair(self._rand)
        self._c_key, self._s_key = P.x25519_key(self._c_sk), P.x25519_key(self._s_sk)
        self._nonce = self._rand(M.NONCE_BYTES)
        commit = R.graph_commitment(self.cfg, self.id, self._nonce)
        self._advert = M.AdvertiseKeys(self.cfg.digest, self.id, c_pk, s_pk, graph_commit=commit).signed(self._sk)
        self.phase = self.cfg.phases[1]
        return self._advert

    # -------------------------------------------------------------- phase 0b (SecAgg+ only)
    def graph_reveal(self, view: M.GraphView) -> M.GraphReveal:
        """Reveal r_u once the view (the commitments the graph seed will hash) is fixed: the
        server and any colluder committed before seeing r_u, so the seed is uniform to this site
        (SPEC.md section 2). One view per round: a second one is refused by the phase check."""
        self._expect("graph_reveal", view, M.GraphView)
        commits = dict(view.commits)
        if commits.get(self.id) != self._advert.graph_commit:
            raise ProtocolError(f"site {self.id}: own graph commitment missing from the view or altered")
        if not commits.keys() <= self.cfg.identity.keys():
            raise ProtocolError(f"site {self.id}: the view names a site outside the round")
        if len(commits) < self.cfg.threshold:
            raise BelowThresholdError(
                f"site {self.id}: view of {len(commits)} sites, threshold is {self.cfg.threshold}"
            )
        self._view = view.commits
        self._view_commits = commits  # the dict of self._view, read again by share_keys (n entries)
        self.phase = "share_keys"
        # the signed H_V makes a split view provable from two sites' reveals (SPEC.md section 8)
        return M.GraphReveal(self.cfg.digest, self.id, self._nonce,
                             view_hash=R.view_hash(self.cfg, view.commits)).signed(self._sk)

    # -------------------------------------------------------------- phase 1
    def _seeded(self, bundle: M.KeysBundle) -> R.RoundConfig:
        """The configuration the KeysBundle must be for: under SecAgg+ the one seeded by this
        site's view and the bundle's reveals (digest D', SPEC.md section 2)."""
        if self.cfg.complete:
            if bundle.reveals:
                raise ProtocolError(f"site {self.id}: graph reveals in a complete-graph round")
            return self.cfg
        # both lists are strictly increasing (decoder): equal length + a reveal per view entry = same sites
        if len(bundle.reveals) != len(self._view):
            raise ProtocolError(f"site {self.id}: the reveals in the KeysBundle do not cover exactly its view")
        try:
            return self.cfg.seeded(self._view, tuple(bundle.reveals))
        except ProtocolError as err:
            raise ProtocolError(f"site {self.id}: {err}") from None

    def share_keys(self, bundle: M.KeysBundle) -> M.ShareKeys:
        base = self.cfg
        self.cfg = self._expect("share_keys", bundle, M.KeysBundle)  # every later digest and key: D'
        view = self._view_commits
        holders = self.cfg.holders(self.id)
        keys: dict[int, tuple[bytes, bytes]] = {}
        own_seen = False
        for wire in bundle.adverts:
            try:
                adv = M.AdvertiseKeys.decode(wire)
                if adv.config_digest != base.digest:
                    raise ProtocolError(f"AdvertiseKeys from site {adv.sender} is for another round")
                if adv.sender not in holders:
                    raise ProtocolError(f"AdvertiseKeys from site {adv.sender}, not a neighbour of {self.id}")
                if adv.sender in keys:
                    raise ProtocolError(f"duplicate AdvertiseKeys for site {adv.sender}")
                if not base.complete and view.get(adv.sender) != adv.graph_commit:
                    raise ProtocolError(f"AdvertiseKeys from site {adv.sender}: graph commitment not the one in the view")
                if adv.sender != self.id:
                    adv.verify(base.identity[adv.sender])
            except ProtocolError as err:
                self._reject(err)
                continue
            if adv.sender == self.id:  # our own: byte comparison instead of a signature check
                if wire != self._advert.encode():
                    raise ProtocolError(f"site {self.id}: server altered this site's own advertised keys")
                own_seen = True
            keys[adv.sender] = (adv.c_pk, adv.s_pk)
        if not own_seen:
            raise ProtocolError(f"site {self.id}: own advertised keys missing from the bundle")
        pks = [k for pair in keys.values() for k in pair]
        if len(set(pks)) != len(pks):
            raise ProtocolError(f"site {self.id}: two advertised public keys are equal (replayed keys)")
        # Both agreements now: a low-order key (all-zero secret) drops that peer before any share
        # is sent, instead of aborting the round later (SPEC.md section 4, phase 1).
        for v in sorted(keys):
            if v == self.id:
                continue
            try:
                enc = P.x25519(self._c_key, keys[v][0])
                mask = P.x25519(self._s_key, keys[v][1])
            except ProtocolError as err:
                self._reject(ProtocolError(f"site {self.id}: advertised keys of site {v}: {err}"))
                del keys[v]
                continue
            self._enc_shared[v], self._mask_shared[v] = enc, mask
        if len(keys) < self.cfg.threshold:
            raise BelowThresholdError(
                f"site {self.id}: {len(keys)} live neighbours incl. itself, threshold is {self.cfg.threshold}"
            )
        self._peer_keys = keys
        self._b = self._rand(32)
        xs = sorted(keys)
        t = self.cfg.threshold
        b_sh = shamir.split(self._b, threshold=t, xs=xs, randbytes=self._rand)
        s_sh = shamir.split(self._s_sk, threshold=t, xs=xs, randbytes=self._rand)
        cts = []
        for v in xs:
            bs, ss = shamir.share_to_bytes(b_sh[v]), shamir.share_to_bytes(s_sh[v])
            if v == self.id:
                self._shares[v] = (bs, ss)
                continue
            key = R.enc_key(self.cfg, self._enc_shared[v], self.id, v)
            pt = R.share_plaintext(self.id, v, bs, ss)
            cts.append((v, P.aead_encrypt(key, R.enc_nonce(self.id, v), pt, R.enc_ad(self.cfg, self.id, v))))
        self._sent_to = {v for v, _ in cts}
        commit = R.b_commitment(self.cfg, self.id, self._b)
        self.phase = "masked_input"
        return M.ShareKeys(self.cfg.digest, self.id, commit, tuple(cts)).signed(self._sk)

    def _confirm_key(self, v: int) -> bytes:
        key = self._confirm.get(v)
        if key is None:
            key = self._confirm[v] = R.confirm_key(self.cfg, self._enc_shared[v], self.id, v)
        return key

    # -------------------------------------------------------------- phase 2
    def masked_input(self, bundle: M.CiphertextBundle) -> M.MaskedInput:
        """Pair (mask) only with the peers whose share ciphertext decrypts under this site's D':
        an honest peer encrypts under its own D', which hashes its view, so a peer shown another
        view is never paired with (SPEC.md section 8, graph seed (2)), whatever the server sends."""
        self._expect("masked_input", bundle, M.CiphertextBundle)
        seen: set[int] = set()
        shares: dict[int, tuple[bytes, bytes]] = {}  # kept only once the site goes on (threshold)
        for v, ct in bundle.ciphertexts:
            if v not in self._sent_to or v in seen:
                self._reject(ProtocolError(f"site {self.id}: unexpected or duplicate ciphertext from site {v}"))
                continue
            seen.add(v)
            try:
                key = R.enc_key(self.cfg, self._enc_shared[v], v, self.id)
                pt = P.aead_decrypt(key, R.enc_nonce(v, self.id), ct, R.enc_ad(self.cfg, v, self.id))
                if len(pt) != _PT_BYTES or struct.unpack(">II", pt[:8]) != (v, self.id):
                    raise ProtocolError(f"share plaintext from site {v} has the wrong header or length")
                shamir.share_from_bytes(pt[8:74]), shamir.share_from_bytes(pt[74:])
            except ProtocolError as err:
                self._reject(ProtocolError(f"site {self.id}: ciphertext from site {v}, not paired with: {err}"))
                continue
            shares[v] = (pt[8:74], pt[74:])
        if len(shares) + 1 < self.cfg.threshold:
            raise BelowThresholdError(
                f"site {self.id}: {len(shares) + 1} sites shared keys with it, threshold is {self.cfg.threshold}"
            )
        self._shares.update(shares)
        self._pairs = paired = tuple(sorted(shares))
        seeds = {v: R.mask_seed(self.cfg, self._mask_shared[v], self.id, v) for v in paired}
        y = P.MaskAccumulator(self.cfg.dim).combine(
            self._x, plus=[self._b] + [seeds[v] for v in paired if v > self.id],
            minus=[seeds[v] for v in paired if v < self.id], out=np.empty(self.cfg.dim, dtype=np.uint32))
        P.reduce_bits(y, self.cfg.bits)
        core_hash = P.sha256(M.attestation_core(self.cfg.digest, self.id, paired, self._dp))
        tags = tuple(R.confirm_tag_of_hash(self._confirm_key(v), core_hash, v) for v in paired)
        self.phase = "consistency_check"
        return M.MaskedInput(self.cfg.digest, self.id, paired, tags, y, dp_attestation=self._dp).signed(self._sk)

    # -------------------------------------------------------------- phase 3
    def consistency_check(self, req: M.ConsistencyRequest) -> M.ConsistencySig:
        self._expect("consistency_check", req, M.ConsistencyRequest)
        survivors = tuple(req.survivors)
        alive = set(survivors)
        if self.id not in alive:
            raise ProtocolError(f"site {self.id}: survivor set omits this site")
        if not alive <= self.cfg.identity.keys():
            raise ProtocolError(f"site {self.id}: survivor set names unknown sites")
        if len(survivors) < self.cfg.threshold:
            raise BelowThresholdError(f"site {self.id}: {len(survivors)} survivors, threshold is {self.cfg.threshold}")
        self._survivors = survivors
        core_hash = P.sha256(M.consistency_core(self.cfg.digest, self.id, survivors))  # one core, k tags
        tags = tuple((v, R.confirm_tag_of_hash(self._confirm_key(v), core_hash, v))
                     for v in sorted(self._enc_shared) if v in alive)
        self.phase = "unmasking"
        self._consistency = M.ConsistencySig(self.cfg.digest, self.id, survivors, tags).signed(self._sk)
        return self._consistency

    # -------------------------------------------------------------- phase 4
    def unmask(self, req: M.UnmaskRequest) -> M.UnmaskResponse:
        """Reveal one share per peer, only under the rules of SPEC.md section 4, phase 4:

        (a) every peer whose share it reveals is *certified*: t of that peer's own holders
            confirmed this same U3 (so no other survivor set can be certified for it, section 8);
        (b) each peer u in U3 whose b-share it reveals attested M(u) (HMAC for this site, which
            must be in M(u)) with |M(u) ∩ U3| >= t-1, of which t-1 are certified: a server that
            withheld u's pairings, or announced u's peers as dropped, gets nothing.
        Anything missing or inconsistent aborts before a single share is revealed.
        """
        self._expect("unmasking", req, M.UnmaskRequest)
        if tuple(req.survivors) != self._survivors:
            raise ProtocolError(f"site {self.id}: consistency check failed: survivor set changed after signing")
        cfg, t = self.cfg, self.cfg.threshold
        alive = set(self._survivors)
        holders = cfg.holders(self.id)
        tags = dict(req.tags)
        sigs = dict(req.signatures)
        for signer in (*tags, *sigs):
            if signer not in alive or signer == self.id or (signer in tags and signer not in holders):
                raise ProtocolError(f"site {self.id}: consistency check failed: bad signer {signer}")
        valid: dict[int, bool] = {self.id: True}
        u3_ids = M.encode_ids(self._survivors)  # every signer's core ends with ids(U3): encoded once

        def confirmed(s: int) -> bool:  # did s confirm our U3? (abort if the evidence is forged)
            ok = valid.get(s)
            if ok is not None:
                return ok
            if s in tags and s in self._enc_shared:
                core = M.consistency_core_ids(cfg.digest, s, u3_ids)
                ok = P.tags_equal(tags[s], R.confirm_tag(self._confirm_key(s), core, self.id))
            elif s in sigs:  # what ConsistencySig(D, s, U3, (), sig).verify checks: sig over H(core)
                try:
                    P.verify(cfg.identity[s], sigs[s], P.sha256(M.consistency_core_ids(cfg.digest, s, u3_ids)))
                    ok = True
                except ProtocolError:
                    ok = False
            else:
                valid[s] = False
                return False
            if not ok:
                raise ProtocolError(
                    f"site {self.id}: consistency check failed: site {s} signed a different survivor set"
                )
            valid[s] = True
            return True

        evidence = set(tags) | set(sigs) | {self.id}
        certified: dict[int, bool] = {}

        def certify(x: int) -> bool:  # t holders of x confirmed our U3?
            ok = certified.get(x)
            if ok is not None:
                return ok
            group = evidence if cfg.complete else evidence.intersection(cfg.holders(x))
            # cheapest first: the confirmations already checked (no side effect, so just counted),
            # then the unchecked ones by (no tag, id), until t
            count = sum(valid[s] for s in group if s in valid)
            if count < t:
                for s in sorted((s for s in group if s not in valid), key=lambda s: (s not in tags, s)):
                    if count >= t:
                        break
                    count += confirmed(s)
            certified[x] = ok = count >= t
            if cfg.complete:  # one holder set for everyone: certified once, certified for all
                certified.update(dict.fromkeys(cfg.site_ids, ok))
            return ok

        attested = {u: (paired, tag) for u, paired, tag in req.attestations}
        dp_fields = dict(req.dp_attestations)  # part of each attestation core (empty without DDG)
        for u in attested:
            if u not in alive or u == self.id or u not in self._pairs:
                raise ProtocolError(f"site {self.id}: pairing attestation of site {u}, which did not pair with it")
        out = []
        for peer in sorted(self._shares):
            kind = M.KIND_B if peer in alive else M.KIND_S
            if not certify(peer):
                raise BelowThresholdError(
                    f"site {self.id}: fewer than {t} holders of site {peer} confirmed the survivor set"
                )
            if kind == M.KIND_B:
                if peer == self.id:
                    paired = self._pairs
                else:
                    if peer not in attested:
                        raise ProtocolError(f"site {self.id}: no pairing attestation of site {peer}")
                    paired, tag = attested[peer]
                    core = M.attestation_core(cfg.digest, peer, paired, dp_fields.get(peer, b""))
                    if self.id not in paired or not P.tags_equal(
                        tag, R.confirm_tag(self._confirm_key(peer), core, self.id)
                    ):
                        raise ProtocolError(f"site {self.id}: pairing attestation of site {peer} is not authentic")
                survivors = [v for v in paired if v in alive]
                if len(survivors) + 1 < t:
                    raise ProtocolError(
                        f"site {self.id}: site {peer} paired with {len(survivors)} survivors, fewer than "
                        f"threshold - 1 = {t - 1}: refusing to reveal its self-mask (pair withholding?)"
                    )
                # t-1 of them must be certified (their masking keys then cannot be revealed under
                # any other view); try the ones our own neighbours' tags can certify first
                safe = 0
                for v in sorted(survivors, key=lambda v: (v not in holders, v)):
                    if safe >= t - 1:
                        break
                    safe += certify(v)
                if safe < t - 1:
                    raise BelowThresholdError(
                        f"site {self.id}: only {safe} paired survivors of site {peer} are confirmed by {t} of "
                        f"their holders, threshold - 1 is {t - 1}"
                    )
            out.append((peer, kind))
        revealed = []
        for peer, kind in out:
            self.guard.reveal(peer, kind)
            revealed.append((peer, kind, self._shares[peer][kind]))
        self.phase = "done"
        return M.UnmaskResponse(self.cfg.digest, self.id, tuple(revealed)).signed(self._sk)
