"""Federated learning math on flat float32 vectors: update checks, server strategies, client
sampling and update compression. Pure: no I/O, no torch."""

from secure_fedrl.fl.compression import (
    CompressionProposal,
    Compressed,
    Compressor,
    NoCompression,
    SharedRandomMask,
    StochasticQuantizer,
    TopK,
    make_compressor,
    shared_mask_indices,
)
from secure_fedrl.fl.sampling import sample_clients
from secure_fedrl.fl.site import PendingCommit, commit_accepted
from secure_fedrl.fl.strategies import (
    ControlProposal,
    FedAdagrad,
    FedAdam,
    FedAsync,
    FedBuff,
    FedAvg,
    FedProx,
    FedYogi,
    Scaffold,
    ScaffoldClient,
    Strategy,
    make_strategy,
    scaffold_client_control,
    scaffold_corrected_gradient,
)
from secure_fedrl.fl.updates import VectorError, WeightedSum, check_update, weighted_mean

__all__ = [
    "CompressionProposal",
    "Compressed",
    "Compressor",
    "NoCompression",
    "SharedRandomMask",
    "StochasticQuantizer",
    "TopK",
    "make_compressor",
    "shared_mask_indices",
    "sample_clients",
    "PendingCommit",
    "commit_accepted",
    "ControlProposal",
    "ScaffoldClient",
    "FedAdagrad",
    "FedAdam",
    "FedAsync",
    "FedBuff",
    "FedAvg",
    "FedProx",
    "FedYogi",
    "Scaffold",
    "Strategy",
    "make_strategy",
    "scaffold_client_control",
    "scaffold_corrected_gradient",
    "VectorError",
    "WeightedSum",
    "check_update",
    "weighted_mean",
]
