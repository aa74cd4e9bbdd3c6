"""Secure aggregation (SecAgg / SecAgg+): the server learns only the sum of the sites' vectors.

Pure library: primitives over `cryptography`, Shamir sharing, neighbour graphs, site and server
state machines, an in-memory driver, fixed-point encoding and conformance vectors. See
protocols/SPEC.md for the protocol as implemented.

    simulate_round(inputs, threshold=..., neighbors=None, dropouts=None, bits=32, seed=None)
    run_round({site: vector}, threshold=..., ...) -> RoundResult (sum + accepted sites + costs)
    prg(seed, length, bits=32)
    encode(x, clip=..., scale=..., bits=..., rng=...) / decode_sum(u, scale=..., num_sites=..., clip=...)
"""

from .driver import RoundResult, run_round, simulate_round
from .encoding import decode_sum, encode, ring_capacity_check
from .graph import default_degree, min_honest_inputs, secagg_plus_parameters, secure_threshold
from .primitives import prg
from .protocol import PHASES, RoundConfig

__all__ = [
    "PHASES", "RoundConfig", "RoundResult", "decode_sum", "default_degree", "encode", "min_honest_inputs", "prg",
    "ring_capacity_check", "run_round", "secagg_plus_parameters", "secure_threshold", "simulate_round",
]
