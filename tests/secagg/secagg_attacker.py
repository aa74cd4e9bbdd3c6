"""A malicious server for tests: it controls every delivery (withholds, reorders, sends different
honestly signed views to different sites) and colludes with some sites (it knows their secrets
and can make them confirm any survivor set). `attack()` runs one round against honest
SecAggClient objects and reports which honest inputs it could compute in the clear."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from secure_fedrl.errors import SecureFedRLError
from secure_fedrl.secagg import messages as M
from secure_fedrl.secagg import primitives as P
from secure_fedrl.secagg import protocol as R
from secure_fedrl.secagg import shamir
from secure_fedrl.secagg.client import SecAggClient


@dataclass
class Outcome:
    recovered: dict = field(default_factory=dict)   # site -> its input, computed by the attacker
    errors: dict = field(default_factory=dict)      # site -> why it refused / aborted
    revealed: dict = field(default_factory=dict)    # site -> UnmaskResponse it sent
    masked: dict = field(default_factory=dict)      # site -> its masked input y_u
    self_masks: dict = field(default_factory=dict)  # site -> b_u, where the attacker reconstructed it
    config: object = None                           # the round's configuration once seeded (SecAgg+)


def advertised_round(n, *, threshold, degree, seed=0):
    """make_round, then every site's advert and the view an honest server would send (SecAgg+)."""
    cfg, clients, inputs, keys = make_round(n, threshold=threshold, degree=degree, seed=seed)
    adverts = {i: clients[i].advertise_keys() for i in cfg.site_ids}
    view = tuple((v, adverts[v].graph_commit) for v in cfg.site_ids)
    return cfg, clients, inputs, keys, adverts, view


def keys_bundles(cfg, clients, adverts):
    """Phase 0b as an honest server runs it (SecAgg+): every site gets the same view, reveals, and
    the KeysBundle of its holders' adverts under the seeded digest D'. Returns (seeded config, bundles); on the complete graph (config, bundles) without
    a reveal."""
    ids = sorted(adverts)
    got = {}
    if not cfg.complete:
        view = tuple((v, adverts[v].graph_commit) for v in ids)
        got = {u: clients[u].graph_reveal(M.GraphView(cfg.digest, u, view)) for u in ids}
        cfg = cfg.seeded(view, {u: g.nonce for u, g in got.items()})
    return cfg, {u: bundle(cfg, u, adverts, got) for u in ids}


def bundle(cfg, u, adverts, reveals):
    """u's KeysBundle under cfg (seeded): its holders' adverts and, given {v: GraphReveal}, the
    reveals of all of them (holders outside them left out)."""
    live = [v for v in sorted(cfg.holders(u)) if v in adverts and (not reveals or v in reveals)]
    return M.KeysBundle(cfg.digest, u, tuple(adverts[v].encode() for v in live),
                        tuple((v, g.nonce) for v, g in sorted(reveals.items())))


def make_round(n, *, threshold, degree=None, dim=4, seed=0):
    rng = np.random.default_rng(seed)
    keys = {i: P.ed25519_keypair(P.SeededRandom(b"attack-id-%d" % i))[0] for i in range(1, n + 1)}
    cfg = R.RoundConfig(round_id=5, site_ids=tuple(keys), threshold=threshold, dim=dim, degree=degree,
                        identity_keys=tuple(P.ed25519_public_bytes(keys[i]) for i in keys),
                        graph_seed=bytes(32))
    inputs = {i: rng.integers(0, 2**32, dim, dtype=np.uint64).astype(np.uint32) for i in keys}
    clients = {i: SecAggClient(config=cfg, site_id=i, identity_key=keys[i], vector=inputs[i],
                               randbytes=P.SeededRandom(b"attack-site-%d-%d" % (seed, i))) for i in keys}
    return cfg, clients, inputs, keys


def attack(cfg, clients, inputs, keys, *, colluders=(), withhold=None, views=None, reorder=False) -> Outcome:
    """withhold: {victim: set of senders whose ciphertexts it gets}, or a function of the seeded
    config returning it; views: site -> the survivor set the server announces to it (default:
    every site that sent a masked input), or (seeded config, site) -> that set."""
    out = Outcome()
    colluders = set(colluders)
    ids = list(cfg.site_ids)
    adverts = {i: clients[i].advertise_keys() for i in ids}
    cfg, bundles = keys_bundles(cfg, clients, adverts)
    out.config = cfg
    if callable(withhold):  # chosen once the graph is known (the server learns it at the reveal)
        withhold = withhold(cfg)
    if views is not None and views.__code__.co_argcount == 2:
        views = (lambda f: lambda u: f(cfg, u))(views)
    share = {u: clients[u].share_keys(bundles[u]) for u in ids}
    masked = {}
    for u in ids:
        cts = [(v, ct) for v in ids for r, ct in share[v].ciphertexts if r == u]
        if withhold and u in withhold:
            cts = [(v, ct) for v, ct in cts if v in withhold[u]]
        if reorder:
            cts = cts[::-1]
        try:
            masked[u] = clients[u].masked_input(M.CiphertextBundle(cfg.digest, u, tuple(cts)))
        except SecureFedRLError as err:
            out.errors[u] = str(err)
    everyone = tuple(sorted(masked))
    view = {u: tuple(views(u)) if views else everyone for u in ids}
    conf = {}
    for u in masked:
        try:
            conf[u] = clients[u].consistency_check(M.ConsistencyRequest(cfg.digest, u, view[u]))
        except SecureFedRLError as err:
            out.errors[u] = str(err)

    def tag_for(x, r, survivors):  # x's confirmation of `survivors` for r, if the attacker has one
        if x in colluders and r in clients[x]._enc_shared:
            core = M.consistency_core(cfg.digest, x, survivors)
            return R.confirm_tag(clients[x]._confirm_key(r), core, r)
        if x in conf and conf[x].survivors == survivors:
            return dict(conf[x].tags).get(r)
        return None

    def sig_for(x, survivors):
        if x in colluders:
            return M.ConsistencySig(cfg.digest, x, survivors).signed(keys[x]).signature
        if x in conf and conf[x].survivors == survivors:
            return conf[x].signature
        return None

    for r in conf:
        if r in colluders:
            continue
        U = view[r]
        near = cfg.holders(r)
        tags = tuple((x, g) for x in sorted(near - {r}) if x in U and (g := tag_for(x, r, U)) is not None)
        far = tuple((x, g) for x in sorted(set(U) - near) if (g := sig_for(x, U)) is not None)
        atts = tuple((u, masked[u].paired, dict(zip(masked[u].paired, masked[u].tags))[r])
                     for u in sorted(masked) if u in U and r in masked[u].paired and u != r
                     and (r not in masked or u in masked[r].paired))  # a careful attacker: symmetric only
        try:
            out.revealed[r] = clients[r].unmask(M.UnmaskRequest(cfg.digest, r, U, tags, far, atts))
        except SecureFedRLError as err:
            out.errors[r] = str(err)
    # everything the attacker holds: revealed shares, and all the colluders' secrets and shares
    shares: dict = {}
    for r, resp in out.revealed.items():
        for peer, kind, sh in resp.shares:
            shares.setdefault((peer, kind), {})[r] = shamir.share_from_bytes(sh)
    known_b, known_s = {}, {}
    for c in colluders:
        known_b[c], known_s[c] = clients[c]._b, clients[c]._s_sk
        for peer, (bs, ss) in clients[c]._shares.items():
            shares.setdefault((peer, M.KIND_B), {})[c] = shamir.share_from_bytes(bs)
            shares.setdefault((peer, M.KIND_S), {})[c] = shamir.share_from_bytes(ss)

    def secret(peer, kind):
        known = (known_b if kind == M.KIND_B else known_s).get(peer)
        if known is not None:
            return known
        got = shares.get((peer, kind), {})
        if len(got) < cfg.threshold:
            return None
        return shamir.reconstruct(got, threshold=cfg.threshold)

    for u in masked:
        out.masked[u] = masked[u].vector
        b = secret(u, M.KIND_B)
        if b is not None:
            out.self_masks[u] = b
        if u in colluders or b is None:
            continue
        y = masked[u].vector.copy()
        acc = P.MaskAccumulator(cfg.dim)
        acc.sub(y, b)
        ok = True
        for v in masked[u].paired:
            s_v, s_u = secret(v, M.KIND_S), secret(u, M.KIND_S)
            if s_v is not None:
                shared = P.x25519(s_v, adverts[u].s_pk)
            elif s_u is not None:
                shared = P.x25519(s_u, adverts[v].s_pk)
            else:
                ok = False
                break
            seed = R.mask_seed(cfg, shared, u, v)
            (acc.sub if v > u else acc.add)(y, seed)
        if ok:
            out.recovered[u] = P.reduce_bits(y, cfg.bits)
    return out


_RESPONSES = {M.GraphView: SecAggClient.graph_reveal, M.KeysBundle: SecAggClient.share_keys,
              M.CiphertextBundle: SecAggClient.masked_input, M.ConsistencyRequest: SecAggClient.consistency_check,
              M.UnmaskRequest: SecAggClient.unmask}


def respond(client, msg):
    """What an honest site uploads next: its advert for None, else its answer to the server's message."""
    return client.advertise_keys() if msg is None else _RESPONSES[type(msg)](client, msg)


def honest_phases(server, clients, last, out=None, silent=()):
    """Run honest phases, from the server's open phase through `last` (a phase name); returns the
    server's messages after `last`, by receiver. Sites in `silent` send nothing in these phases."""
    out = {i: None for i in clients} if out is None else out
    while True:
        phase = server.phase
        for i, c in clients.items():
            if i in out and i not in silent:
                server.receive(respond(c, out[i]).encode())
        out = server.finish_phase()
        if phase == last:
            return out
