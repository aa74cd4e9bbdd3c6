"""secure-fedrl: federated reinforcement learning with secure aggregation and differential privacy."""

__version__ = "0.1.0"
