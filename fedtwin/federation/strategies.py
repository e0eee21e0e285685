"""Aggregation strategies over flat parameter vectors stacked as a matrix.

The maths are plain functions on `(K, P)` matrices (one row per twin, no per-layer Python loops),
as in Flower's `strategy/aggregate.py` but guarded. Strategy classes stay thin: they hold
hyperparameters, call the pure functions, and return an explicit server state (NumPy arrays) that
the aggregation step persists in the store after every round, so a resumed run continues exactly.

| name        | next global model                                              | server state |
|-------------|----------------------------------------------------------------|--------------|
| fedavg      | sample-weighted mean of the updates (McMahan et al. 2017)      | -            |
| fedprox     | as fedavg; the proximal term mu is in local training           | -            |
| fedavgm     | global + lr * momentum buffer of pseudo-gradients (Hsu 2019)   | momentum     |
| fedadam     | global + lr * m / (sqrt(v) + tau) (Reddi et al. 2021)          | m, v         |
| fedyogi     | as fedadam with Yogi's sign-controlled v update                | m, v         |
| median      | coordinate-wise median (Yin et al. 2018)                       | -            |
| trimmed_mean| coordinate-wise mean after cutting beta*K from each end        | -            |
| krum        | the update closest to its n-f-2 nearest (Blanchard 2017)       | -            |
| multikrum   | weighted mean of the m best Krum scores                        | -            |

The pseudo-gradient of the server optimizers is `delta = fedavg(updates) - global` (a step in the
direction of the twins' models, Reddi et al.'s sign convention). Robust strategies ignore sample
weights, except multi-Krum, which averages the selected updates like FedAvg.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Literal

import numpy as np

from fedtwin.core.errors import ConfigError, FedtwinError

ServerState = dict[str, np.ndarray]


class AggregationError(FedtwinError):
    """The inputs to an aggregation cannot produce a model (no updates, zero weight, bad shapes)."""


# ------------------------------------------------------------------------------- pure functions
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


def momentum_step(
    global_params: np.ndarray, average: np.ndarray, buffer: np.ndarray, lr: float, momentum: float
) -> tuple[np.ndarray, np.ndarray]:
    """FedAvgM: `buf = momentum * buf + (average - global)`; `global + lr * buf`. Returns (params, buf)."""
    delta = average.astype(np.float64) - global_params.astype(np.float64)
    buffer = momentum * buffer + delta
    return (global_params + lr * buffer).astype(np.float32), buffer


def adaptive_step(
    global_params: np.ndarray,
    average: np.ndarray,
    m: np.ndarray,
    v: np.ndarray,
    *,
    lr: float,
    beta1: float,
    beta2: float,
    tau: float,
    rule: Literal["adam", "yogi"],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One FedAdam/FedYogi server step (Reddi et al. 2021, Algorithm 2, no bias correction).

    delta = average - global; m = b1*m + (1-b1)*delta;
    adam: v = b2*v + (1-b2)*delta^2;  yogi: v = v - (1-b2)*delta^2*sign(v - delta^2);
    global + lr * m / (sqrt(v) + tau). Returns (params, m, v).
    """
    delta = average.astype(np.float64) - global_params.astype(np.float64)
    sq = delta * delta
    m = beta1 * m + (1.0 - beta1) * delta
    adam_v = beta2 * v + (1.0 - beta2) * sq
    yogi_v = v - (1.0 - beta2) * sq * np.sign(v - sq)  # additive: v moves towards delta^2 more slowly
    v = adam_v if rule == "adam" else yogi_v
    return (global_params + lr * m / (np.sqrt(v) + tau)).astype(np.float32), m, v


def coordinate_median(updates: np.ndarray) -> np.ndarray:
    """Median of each coordinate over the updates (mean of the middle two for even K)."""
    check_inputs(updates, np.ones(updates.shape[0]))
    return np.median(updates.astype(np.float64), axis=0).astype(np.float32)


def trimmed_mean(updates: np.ndarray, beta: float) -> np.ndarray:
    """Per coordinate: drop the floor(beta*K) smallest and largest values, average the rest."""
    check_inputs(updates, np.ones(updates.shape[0]))
    k = updates.shape[0]
    cut = int(np.floor(beta * k))
    if not 0 <= beta < 0.5 or k - 2 * cut < 1:
        raise AggregationError(f"trimmed mean with beta={beta} leaves no update of {k}")
    kept = np.sort(updates.astype(np.float64), axis=0)[cut : k - cut]
    return kept.mean(axis=0).astype(np.float32)


def pairwise_sq_distances(updates: np.ndarray) -> np.ndarray:
    """(K, K) squared Euclidean distances from one Gram matrix (rows centred first for accuracy)."""
    x = updates.astype(np.float64)
    x = x - x.mean(axis=0)
    sq = np.einsum("ij,ij->i", x, x)
    dist = sq[:, None] + sq[None, :] - 2.0 * (x @ x.T)
    np.fill_diagonal(dist, 0.0)
    return np.maximum(dist, 0.0)


def krum_scores(updates: np.ndarray, f: int) -> np.ndarray:
    """Score of each update: sum of squared distances to its n-f-2 nearest other updates."""
    n = updates.shape[0]
    if n < 2 * f + 3:
        raise AggregationError(f"Krum with f={f} needs at least 2f+3 = {2 * f + 3} updates, got {n}")
    dist = pairwise_sq_distances(updates)
    nearest = np.sort(dist, axis=1)[:, 1 : n - f - 1]  # column 0 is the distance to itself
    return nearest.sum(axis=1)


def krum(updates: np.ndarray, weights: np.ndarray, f: int, m: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Multi-Krum: the weighted mean of the `m` updates with the lowest scores (m=1: Krum).

    Returns (params, indices of the selected rows, best first); ties keep the lower index.
    """
    weights = np.asarray(weights, dtype=np.float64)
    check_inputs(updates, weights)
    n = updates.shape[0]
    if not 1 <= m <= n - f:
        raise AggregationError(f"multi-Krum selects m={m} of {n} updates with f={f}; need 1 <= m <= n-f")
    selected = np.argsort(krum_scores(updates, f), kind="stable")[:m]
    return fedavg(updates[selected], weights[selected]), selected


# ---------------------------------------------------------------------------------- strategies
@dataclass
class Strategy:
    """Base: FedAvg. Subclasses override `combine` (robust rules) or `aggregate` (server optimizers)."""

    name: ClassVar[str] = "fedavg"
    state_keys: ClassVar[tuple[str, ...]] = ()
    """Server-state arrays this strategy carries from round to round (empty: stateless)."""
    info: dict[str, Any] = field(default_factory=dict, init=False, repr=False)
    """Diagnostics of the last `aggregate` call for the round summary (e.g. Krum's `selected`: row
    indices, i.e. positions in the summary's `participants`)."""

    def combine(self, updates: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """The round's joint model from the twins' models."""
        return fedavg(updates, weights)

    def aggregate(
        self, global_params: np.ndarray, updates: np.ndarray, weights: np.ndarray, state: ServerState
    ) -> tuple[np.ndarray, ServerState]:
        """Return the next global model and the server state to persist for the next round."""
        self.info = {}
        if updates.ndim != 2 or updates.shape[1:] != global_params.shape:
            raise AggregationError(
                f"updates of shape {updates.shape} do not match the global model {global_params.shape}"
            )
        return self.combine(updates, weights), state

    def initial_state(self, size: int) -> ServerState:
        return {}

    def load_state(self, state: ServerState, size: int) -> ServerState:
        """The given state, or the initial one when empty; refuses arrays of another shape."""
        if not self.state_keys:
            return {}
        if not state:
            return self.initial_state(size)
        missing = [k for k in self.state_keys if k not in state]
        wrong = [k for k in self.state_keys if k in state and state[k].shape != (size,)]
        if missing or wrong:
            raise AggregationError(
                f"{self.name} server state lacks {missing} or has wrongly shaped {wrong} (expected ({size},))"
            )
        return {k: np.asarray(state[k], dtype=np.float64) for k in self.state_keys}


@dataclass
class FedProx(Strategy):
    """FedProx (Li et al. 2020): server side is FedAvg; `train.proximal_mu` > 0 does the rest."""

    name: ClassVar[str] = "fedprox"


@dataclass
class FedAvgM(Strategy):
    """FedAvg with server momentum (Hsu et al. 2019); lr=1, momentum=0 is FedAvg."""

    name: ClassVar[str] = "fedavgm"
    state_keys: ClassVar[tuple[str, ...]] = ("momentum",)
    server_lr: float = 1.0
    momentum: float = 0.9

    def initial_state(self, size: int) -> ServerState:
        return {"momentum": np.zeros(size)}

    def aggregate(
        self, global_params: np.ndarray, updates: np.ndarray, weights: np.ndarray, state: ServerState
    ) -> tuple[np.ndarray, ServerState]:
        average, _ = super().aggregate(global_params, updates, weights, state)
        buf = self.load_state(state, global_params.size)["momentum"]
        params, buf = momentum_step(global_params, average, buf, self.server_lr, self.momentum)
        return params, {"momentum": buf}


@dataclass
class FedAdam(Strategy):
    """Adaptive server optimizer (Reddi et al. 2021); v starts at tau^2 as in the paper."""

    name: ClassVar[str] = "fedadam"
    state_keys: ClassVar[tuple[str, ...]] = ("m", "v")
    rule: ClassVar[Literal["adam", "yogi"]] = "adam"
    server_lr: float = 0.01
    beta1: float = 0.9
    beta2: float = 0.99
    tau: float = 1e-3

    def initial_state(self, size: int) -> ServerState:
        return {"m": np.zeros(size), "v": np.full(size, self.tau**2)}

    def aggregate(
        self, global_params: np.ndarray, updates: np.ndarray, weights: np.ndarray, state: ServerState
    ) -> tuple[np.ndarray, ServerState]:
        average, _ = super().aggregate(global_params, updates, weights, state)
        current = self.load_state(state, global_params.size)
        params, m, v = adaptive_step(
            global_params, average, current["m"], current["v"], lr=self.server_lr, beta1=self.beta1,
            beta2=self.beta2, tau=self.tau, rule=self.rule,
        )
        return params, {"m": m, "v": v}


@dataclass
class FedYogi(FedAdam):
    """FedAdam with Yogi's additive, sign-controlled second moment (Reddi et al. 2021)."""

    name: ClassVar[str] = "fedyogi"
    rule: ClassVar[Literal["adam", "yogi"]] = "yogi"


@dataclass
class Median(Strategy):
    """Coordinate-wise median (Yin et al. 2018): tolerates fewer than half bad updates per coordinate."""

    name: ClassVar[str] = "median"

    def combine(self, updates: np.ndarray, weights: np.ndarray) -> np.ndarray:
        return coordinate_median(updates)


@dataclass
class TrimmedMean(Strategy):
    """Coordinate-wise trimmed mean (Yin et al. 2018): cut floor(beta*K) values from each end."""

    name: ClassVar[str] = "trimmed_mean"
    trim_beta: float = 0.2

    def combine(self, updates: np.ndarray, weights: np.ndarray) -> np.ndarray:
        return trimmed_mean(updates, self.trim_beta)


@dataclass
class Krum(Strategy):
    """Krum (Blanchard et al. 2017): the single update with the lowest score, for `krum_f` bad twins."""

    name: ClassVar[str] = "krum"
    krum_f: int = 1

    def selection(self, n: int) -> int:
        return 1

    def combine(self, updates: np.ndarray, weights: np.ndarray) -> np.ndarray:
        params, selected = krum(updates, weights, self.krum_f, self.selection(updates.shape[0]))
        self.info = {"selected": selected.tolist()}
        return params


@dataclass
class MultiKrum(Krum):
    """Multi-Krum: the sample-weighted mean of the `multi_krum_m` best-scored updates (default n-f)."""

    name: ClassVar[str] = "multikrum"
    multi_krum_m: int | None = None

    def selection(self, n: int) -> int:
        return self.multi_krum_m if self.multi_krum_m is not None else n - self.krum_f


STRATEGIES: dict[str, type[Strategy]] = {
    cls.name: cls
    for cls in (Strategy, FedProx, FedAvgM, FedAdam, FedYogi, Median, TrimmedMean, Krum, MultiKrum)
}


def make_strategy(name: str, params: Mapping[str, Any] | None = None) -> Strategy:
    """The strategy `name` with the hyperparameters from `params` that it uses (others are ignored)."""
    try:
        cls = STRATEGIES[name]
    except KeyError:
        raise ConfigError(
            f"unknown strategy {name!r}; choose one of: {', '.join(STRATEGIES)}"
        ) from None
    accepted = {f.name for f in fields(cls) if f.init}
    return cls(**{k: v for k, v in (params or {}).items() if k in accepted and v is not None})
