"""Aggregation strategies over flat parameter vectors stacked as a matrix.

The maths are plain functions (`fedavg`, ...) on `(K, P)` matrices, one BLAS call per round, as in
Flower's `strategy/aggregate.py` but guarded; strategy classes stay thin: they hold hyperparameters
and an explicit server state that the aggregation step persists in the store between rounds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from fedtwin.errors import ConfigError, FedtwinError

ServerState = dict[str, np.ndarray]


class AggregationError(FedtwinError):
    """The inputs to an aggregation cannot produce a model (no updates, zero weight, bad shapes)."""


def check_inputs(updates: np.ndarray, weights: np.ndarray) -> None:
    """Refuse what Flower divides by silently: empty input, non-positive or non-finite weights."""
    if updates.ndim != 2 or updates.shape[0] == 0:
        raise AggregationError(f"expected a non-empty (K, P) update matrix, got shape {updates.shape}")
    if weights.shape != (updates.shape[0],):
        raise AggregationError(f"{updates.shape[0]} updates but {weights.shape} weights")
    if not np.all(np.isfinite(weights)) or np.any(weights <= 0):
        raise AggregationError("update weights must be finite and > 0")


def fedavg(updates: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Weighted mean of the rows of `updates` (McMahan et al. 2017): one matrix-vector product."""
    weights = np.asarray(weights, dtype=np.float64)
    check_inputs(updates, weights)
    return ((weights / weights.sum()) @ updates.astype(np.float64)).astype(np.float32)


@dataclass
class Strategy:
    """Base: FedAvg. Subclasses override `aggregate` and may keep server state between rounds."""

    name: ClassVar[str] = "fedavg"
    params: dict[str, Any] = field(default_factory=dict)

    def aggregate(
        self, global_params: np.ndarray, updates: np.ndarray, weights: np.ndarray, state: ServerState
    ) -> tuple[np.ndarray, ServerState]:
        """Return the next global model and the server state to persist for the next round."""
        return fedavg(updates, weights), state


STRATEGIES: dict[str, type[Strategy]] = {"fedavg": Strategy}


def make_strategy(name: str, params: dict[str, Any] | None = None) -> Strategy:
    try:
        cls = STRATEGIES[name]
    except KeyError:
        raise ConfigError(
            f"unknown strategy {name!r}; choose one of: {', '.join(sorted(STRATEGIES))}"
        ) from None
    return cls(params=dict(params or {}))
