"""fedtwin: federated reinforcement learning for fleets of digital twins."""

__version__ = "0.1.0"
