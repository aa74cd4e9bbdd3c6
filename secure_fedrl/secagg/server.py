"""The server's side of SecAgg/SecAgg+ as a pure state machine.

`receive(wire)` validates one uploaded message and raises ProtocolError if it is rejected (the
round continues without that site); `finish_phase()` closes the current phase, raises
BelowThresholdError when too few sites are left, and returns the messages to send, by receiver.
The server keeps only a running sum of masked inputs (O(dim) memory) and never an individual
input in the clear.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from secure_fedrl.errors import BelowThresholdError, ProtocolError, SecureFedRLError

from . import messages as M
from . import primitives as P
from . import protocol as R
from . import shamir

_CT_BYTES = 8 + 2 * shamir.SHARE_BYTES + 16
_EXPECTED = {
    "advertise_keys": M.AdvertiseKeys,
    "graph_reveal": M.GraphReveal,
    "share_keys": M.ShareKeys,
    "masked_input": M.MaskedInput,
    "consistency_check": M.ConsistencySig,
    "unmasking": M.UnmaskResponse,
}


@dataclass(frozen=True)
class ServerOutcome:
    """The unmasked sum and who is in it (U3), plus who dropped at which phase."""

    sum: np.ndarray
    accepted: tuple[int, ...]
    dropped: dict[int, str]


#: `verify_dp(site_id, dp_attestation)`: returns if the 64-byte field is that site's valid
#: signature over the federation's DP attestation for the round (SPEC.md section 7.1), raises
#: (any SecureFedRLError, e.g. PrivacyError) otherwise.
DPVerifier = Callable[[int, bytes], None]


class SecAggServer:
    """`verify_dp` makes the server refuse a MaskedInput whose DP attestation field is missing or
    does not verify; without it (no distributed DP) a MaskedInput must carry no field (SPEC 5:
    F_u is empty outside DDG), so nothing unattested is forwarded as if attested. Either way the
    site is dropped like any other invalid MaskedInput, before its vector touches the sum."""

    def __init__(self, *, config: R.RoundConfig, verify_dp: DPVerifier | None = None) -> None:
        self.cfg = config
        self._verify_dp = verify_dp
        self.phase = "advertise_keys"
        self._got: dict[int, object] = {}
        self._adverts: dict[int, M.AdvertiseKeys] = {}
        self._share_keys: dict[int, M.ShareKeys] = {}
        self._sum = np.zeros(config.dim, dtype=np.uint32)
        self.u1: tuple[int, ...] = ()
        self.u2: tuple[int, ...] = ()
        self.u3: tuple[int, ...] = ()
        self.u4: tuple[int, ...] = ()
        self.outcome: ServerOutcome | None = None
        self._eligible: set[int] = set(config.site_ids)
        self._dropped: dict[int, str] = {}
        self._used_keys: set[bytes] = set()
        self._pairs: dict[int, frozenset[int]] = {}
        self._refused_by: dict[int, int] = {}  # v -> a site that did not pair with v (phase 2)

    # ------------------------------------------------------------------ receive
    def receive(self, wire: bytes) -> int:
        """Validate and store one uploaded message; returns its sender. Raises ProtocolError."""
        cls = _EXPECTED.get(self.phase)
        if cls is None:
            raise ProtocolError("round is over: no more messages accepted")
        if M.message_type(wire) != cls.TYPE:
            raise ProtocolError(f"unexpected message type 0x{wire[5]:02x} in phase {self.phase!r}")
        msg = cls.decode(wire)
        if msg.config_digest != self.cfg.digest:
            raise ProtocolError(f"{cls.NAME} from site {msg.sender}: wrong round or configuration (replay?)")
        if msg.sender not in self._eligible:
            raise ProtocolError(f"{cls.NAME} from site {msg.sender}, which is not live in phase {self.phase!r}")
        if msg.sender in self._got:
            raise ProtocolError(f"duplicate {cls.NAME} from site {msg.sender}")
        msg.verify(self.cfg.identity[msg.sender])
        stored = getattr(self, "_check_" + self.phase)(msg)
        self._got[msg.sender] = msg if stored is None else stored
        return msg.sender

    def _check_advertise_keys(self, msg: M.AdvertiseKeys) -> None:
        P.check_x25519_public(msg.c_pk, what=f"AdvertiseKeys from site {msg.sender}: encryption key")
        P.check_x25519_public(msg.s_pk, what=f"AdvertiseKeys from site {msg.sender}: masking key")
        if msg.c_pk == msg.s_pk:
            raise ProtocolError(f"AdvertiseKeys from site {msg.sender}: encryption and masking keys are equal")
        if msg.c_pk in self._used_keys or msg.s_pk in self._used_keys:
            raise ProtocolError(f"AdvertiseKeys from site {msg.sender}: public key already used by another site")
        self._used_keys.update((msg.c_pk, msg.s_pk))

    def _check_graph_reveal(self, msg: M.GraphReveal) -> bytes:
        if R.graph_commitment(self.cfg, msg.sender, msg.nonce) != self._adverts[msg.sender].graph_commit:
            raise ProtocolError(f"GraphReveal from site {msg.sender}: nonce does not match its commitment")
        if msg.view_hash != R.view_hash(self.cfg, self._view):
            raise ProtocolError(f"GraphReveal from site {msg.sender}: signed for another view")
        return msg.nonce

    def _check_share_keys(self, msg: M.ShareKeys) -> None:
        allowed = (self.cfg.holders(msg.sender) & self._u1set) - {msg.sender}
        receivers = [r for r, _ in msg.ciphertexts]
        if not set(receivers) <= allowed:
            raise ProtocolError(f"ShareKeys from site {msg.sender}: ciphertext for a site that is not a live neighbour")
        if len(receivers) + 1 < self.cfg.threshold:
            raise ProtocolError(f"ShareKeys from site {msg.sender}: fewer than threshold share holders")
        if any(len(ct) != _CT_BYTES for _, ct in msg.ciphertexts):
            raise ProtocolError(f"ShareKeys from site {msg.sender}: ciphertext of wrong length")

    def _check_masked_input(self, msg: M.MaskedInput) -> tuple:
        u, paired, delivered = msg.sender, frozenset(msg.paired), self._pairs[msg.sender]
        if u in self._refused_by:
            raise ProtocolError(f"MaskedInput from site {u}: site {self._refused_by[u]} did not pair with it "
                                f"(its share ciphertext did not decrypt there)")
        if not paired <= delivered:
            raise ProtocolError(f"MaskedInput from site {u}: attested pairing names a site whose ciphertext "
                                f"was not delivered to it")
        # u left out a delivered peer v whose ciphertext did not decrypt (SPEC section 4, phase 2):
        # v's input cannot count then (v masked with u, u not with v), unless it already does
        unpaired = delivered - paired
        counted = sorted(v for v in unpaired if v in self._got)
        if counted:
            raise ProtocolError(f"MaskedInput from site {u}: did not pair with site {counted[0]}, whose masked "
                                f"input already counts")
        if msg.vector.shape != (self.cfg.dim,):
            raise ProtocolError(
                f"MaskedInput from site {msg.sender}: length {msg.vector.size}, expected {self.cfg.dim}"
            )
        if self.cfg.bits < 32 and int(msg.vector.max()) >> self.cfg.bits:
            raise ProtocolError(f"MaskedInput from site {msg.sender}: values not reduced mod 2^{self.cfg.bits}")
        if self._verify_dp is not None:
            if not msg.dp_attestation:
                raise ProtocolError(f"MaskedInput from site {msg.sender}: no DP attestation (distributed DP round)")
            try:
                self._verify_dp(msg.sender, msg.dp_attestation)
            except SecureFedRLError as err:
                raise ProtocolError(f"MaskedInput from site {msg.sender}: DP attestation refused: {err}") from None
        elif msg.dp_attestation:
            raise ProtocolError(f"MaskedInput from site {msg.sender}: DP attestation field in a round without distributed DP")
        for v in unpaired:  # v is dropped from here on; only the pairs both sides masked with remain
            self._refused_by.setdefault(v, u)
            self._pairs[v] = self._pairs[v] - {u}
        self._pairs[u] = paired
        np.add(self._sum, msg.vector, out=self._sum)
        # keep only the attestation (forwarded in phase 4): the running sum is all the server needs
        return msg.paired, dict(zip(msg.paired, msg.tags)), msg.dp_attestation

    def _check_consistency_check(self, msg: M.ConsistencySig) -> tuple:
        if tuple(msg.survivors) != self.u3:
            raise ProtocolError(f"ConsistencySig from site {msg.sender}: signed a different survivor set")
        if not {r for r, _ in msg.tags} <= (self.cfg.holders(msg.sender) & self._u3set) - {msg.sender}:
            raise ProtocolError(f"ConsistencySig from site {msg.sender}: confirmation for a site that is not a live neighbour")
        return msg.signature, dict(msg.tags)  # U3 is known: keep the signature and tags only

    def _check_unmasking(self, msg: M.UnmaskResponse) -> None:
        alive, shared = self._u3set, self._u2set
        for peer, kind, share in msg.shares:
            if peer != msg.sender and msg.sender not in self._pairs.get(peer, ()):
                raise ProtocolError(f"UnmaskResponse from site {msg.sender}: it holds no share of site {peer}")
            if peer not in shared:
                raise ProtocolError(f"UnmaskResponse from site {msg.sender}: share of site {peer}, which never shared")
            expected = M.KIND_B if peer in alive else M.KIND_S
            if kind != expected:
                raise ProtocolError(f"UnmaskResponse from site {msg.sender}: wrong share kind for site {peer}")
            shamir.share_from_bytes(share)

    # ------------------------------------------------------------------ phase transitions
    def _close(self, next_phase: str) -> tuple[int, ...]:
        live = tuple(sorted(self._got))
        for u in self._eligible - set(live):
            self._dropped[u] = self.phase
        if len(live) < self.cfg.threshold:
            phase, self.phase = self.phase, "aborted"
            raise BelowThresholdError(
                f"phase {phase}: {len(live)} live sites, threshold is {self.cfg.threshold}; round aborted"
            )
        self._eligible = set(live)
        self.phase = next_phase
        return live

    def finish_phase(self) -> dict[int, object]:
        """Close the current phase; returns {receiver: server message} (empty after unmasking)."""
        got = self._got
        if self.phase == "advertise_keys":
            self.u1 = self._close(self.cfg.phases[1])
            self._u1set = frozenset(self.u1)
            self._adverts = dict(got)
            self._got = {}
            if self.cfg.complete:
                return self._keys_bundles(())
            self._view = tuple((u, self._adverts[u].graph_commit) for u in self.u1)  # every site gets U1's
            return {u: M.GraphView(self.cfg.digest, u, self._view) for u in self.u1}
        if self.phase == "graph_reveal":
            missing = sorted(self._u1set - set(got))
            if missing:  # a reveal left out after seeing the others' would re-draw the graph
                self.phase = "aborted"
                raise BelowThresholdError(
                    f"phase graph_reveal: site(s) {missing} did not reveal their graph nonce; round aborted"
                )
            reveals = tuple(sorted(got.items()))
            self.cfg = self.cfg.seeded(self._view, reveals)  # D' from here on (SPEC section 2)
            self.phase = "share_keys"
            self._got = {}
            return self._keys_bundles(reveals)
        if self.phase == "share_keys":
            self.u2 = self._close("masked_input")
            self._u2set = frozenset(self.u2)
            self._share_keys = dict(got)
            self._got = {}
            listed = {u: {r for r, _ in m.ciphertexts} for u, m in self._share_keys.items()}
            # pair(u, v): both shared with each other; exactly the pairs each site masks with.
            self._pairs = {
                u: frozenset(v for v in listed[u] if v in listed and u in listed[v]) for u in self.u2
            }
            inbox: dict[int, list[tuple[int, bytes]]] = {u: [] for u in self.u2}
            for v in self.u2:
                for r, ct in self._share_keys[v].ciphertexts:
                    if r in inbox:
                        inbox[r].append((v, ct))
            return {u: M.CiphertextBundle(self.cfg.digest, u, tuple(sorted(inbox[u]))) for u in self.u2}
        if self.phase == "masked_input":
            self.u3 = self._close("consistency_check")
            self._u3set = frozenset(self.u3)
            self._attest = dict(got)
            self._got = {}
            t = self.cfg.threshold
            for u in self.u3:  # its holders would refuse to reveal b_u (SPEC section 4, phase 4)
                alive = len(self._u3set.intersection(self._attest[u][0]))
                if alive + 1 < t:
                    self.phase = "aborted"
                    raise BelowThresholdError(
                        f"phase masked_input: site {u} paired with {alive} survivors, threshold - 1 is {t - 1}; "
                        "round aborted"
                    )
            return {u: M.ConsistencyRequest(self.cfg.digest, u, self.u3) for u in self.u3}
        if self.phase == "consistency_check":
            self.u4 = self._close("unmasking")
            u4set = frozenset(self.u4)
            conf = got
            self._got = {}
            out = {}
            for r in self.u4:
                near = self.cfg.holders(r)
                tags = tuple((v, conf[v][1][r]) for v in sorted(near & u4set) if r in conf[v][1])
                far = sorted(self._far_signers(r, near, u4set))
                atts = tuple((u, self._attest[u][0], self._attest[u][1][r])
                             for u in sorted(self._pairs[r] & self._u3set) if r in self._attest[u][1])
                dps = tuple((u, self._attest[u][2]) for u, _, _ in atts if self._attest[u][2])
                out[r] = M.UnmaskRequest(self.cfg.digest, r, self.u3, tags,
                                         tuple((w, conf[w][0]) for w in far), atts, dps)
            return out
        if self.phase == "unmasking":
            self._close("unmasking")  # threshold check on responders
            self.outcome = self._unmask(got)
            self.phase = "done"
            return {}
        raise ProtocolError(f"no phase to finish (state {self.phase!r})")

    def _keys_bundles(self, reveals: tuple[tuple[int, bytes], ...]) -> dict[int, M.KeysBundle]:
        wires = {u: a.encode() for u, a in self._adverts.items()}
        return {u: M.KeysBundle(self.cfg.digest, u, tuple(wires[v] for v in sorted(self.cfg.holders(u) & self._u1set)),
                                reveals)
                for u in self.u1}

    def _far_signers(self, r: int, near: frozenset[int], u4set: frozenset[int]) -> set[int]:
        """Signers beyond r's holders whose signatures r may need to certify a site within two
        hops (SPEC section 4, phase 4 (3)): only for sites its neighbours' tags cannot certify."""
        if self.cfg.complete:
            return set()
        far: set[int] = set()
        t = self.cfg.threshold
        for v in self.cfg.within(r, 2):
            hv = self.cfg.holders(v) & u4set
            if len(hv & near) < t:
                far |= hv - near
        return far

    def _recover(self, shares: dict[int, int], what: str, valid) -> bytes:
        """Reconstruct from the t smallest holder ids; if the result fails its check (commitment
        or public key), retry leaving out each of those t shares in turn, so one site revealing a
        bad share cannot abort the round when a spare share exists."""
        t = self.cfg.threshold
        if len(shares) < t:
            raise BelowThresholdError(f"{what}: {len(shares)} shares, threshold is {t}")
        xs = sorted(shares)
        candidates = [xs[:t]] + [[x for x in xs if x != bad][:t] for bad in xs[:t]] if len(xs) > t else [xs[:t]]
        for subset in candidates:
            try:
                secret = shamir.reconstruct({x: shares[x] for x in subset}, threshold=t, what=what)
            except ProtocolError:
                continue
            if valid(secret):
                return secret
        raise ProtocolError(f"{what}: no {t} of the {len(xs)} revealed shares reconstruct a value matching "
                            f"its commitment (bad shares)")

    def _unmask(self, responses: dict[int, M.UnmaskResponse]) -> ServerOutcome:
        cfg = self.cfg
        shares: dict[tuple[int, int], dict[int, int]] = {}
        for sender, msg in responses.items():
            for peer, kind, share in msg.shares:
                shares.setdefault((peer, kind), {})[sender] = shamir.share_from_bytes(share)
        plus: list[bytes] = []
        minus: list[bytes] = []
        alive = set(self.u3)
        try:
            for u in self.u3:
                commit = self._share_keys[u].b_commitment
                minus.append(self._recover(shares.get((u, M.KIND_B), {}), f"self-mask seed of site {u}",
                                           lambda b, u=u, c=commit: R.b_commitment(cfg, u, b) == c))
            for v in self.u2:
                if v in alive or not self._pairs[v] & alive:
                    continue  # a survivor, or no survivor masked with it: nothing to remove
                pk = self._adverts[v].s_pk
                s_sk = self._recover(shares.get((v, M.KIND_S), {}), f"masking key of dropped site {v}",
                                     lambda s, pk=pk: P.x25519_public(s) == pk)
                s_key = P.x25519_key(s_sk)
                for u in sorted(self._pairs[v] & alive):
                    seed = R.mask_seed(cfg, P.x25519(s_key, self._adverts[u].s_pk), u, v)
                    # u added +PRG(s_uv) if v > u and -PRG(s_uv) if v < u: undo it.
                    (minus if v > u else plus).append(seed)
        except (BelowThresholdError, ProtocolError):
            self.phase = "aborted"
            self._sum[:] = 0
            raise
        total = P.MaskAccumulator(cfg.dim).combine(self._sum, plus=plus, minus=minus,
                                                   out=np.empty(cfg.dim, dtype=np.uint32))
        self._sum[:] = 0
        return ServerOutcome(P.reduce_bits(total, cfg.bits), self.u3, dict(self._dropped))
