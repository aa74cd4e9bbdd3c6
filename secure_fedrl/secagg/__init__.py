"""Secure aggregation (SecAgg / SecAgg+): the server learns only the sum of the sites' vectors.

Pure library: primitives over `cryptography`, Shamir sharing, neighbour graphs, site and server
state machines, an in-memory driver, fixed-point encoding and conformance vectors. See
protocols/SPEC.md for the protocol as implemented.
"""

from .driver import RoundResult, run_round, simulate_round
from .primitives import prg
from .protocol import PHASES, RoundConfig

__all__ = ["PHASES", "RoundConfig", "RoundResult", "prg", "run_round", "simulate_round"]
