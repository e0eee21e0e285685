"""Orchestration: the step functions, one round's training, the local runner, the multi-cluster protocol."""
