"""CartPole physics for n sub-environments at once: each twin's parameters as (n,) arrays.

Every expression is gymnasium's CartPole expression in gymnasium's order, so with default physics
the floats are exactly gymnasium's; friction follows Barto, Sutton & Anderson (1983). This is the
NumPy path; `cartpole_kernel` is the same step compiled into one loop, with the same floats.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from fedtwin.sim.twins import TwinSpec

THETA_THRESHOLD_RADIANS = 12 * 2 * math.pi / 360
X_THRESHOLD = 2.4
RESET_LOW, RESET_HIGH = -0.05, 0.05

# 0-d arrays, not Python floats: NumPy converts a Python scalar on every ufunc call.
_X_THRESHOLD = np.array(X_THRESHOLD)
_THETA_THRESHOLD = np.array(THETA_THRESHOLD_RADIANS)
_FOUR_THIRDS = np.array(4.0 / 3.0)

Float32Array = npt.NDArray[np.float32]
Float64Array = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]
IndexArray = npt.NDArray[np.intp]


@dataclass(frozen=True, eq=False)
class TwinPhysics:
    """Physics of n sub-envs; sub-env i belongs to twin i // envs_per_twin.

    A parameter every sub-env shares is a 0-d array (the same IEEE operation as gymnasium's
    float, one memory stream less), otherwise a (n,) float64 array. Imperfections no twin has
    are None and skipped: subtracting a zero friction term is exact, so skipping changes no float.
    """

    twins: tuple[TwinSpec, ...]
    envs_per_twin: int
    gravity: Float64Array
    masspole: Float64Array
    total_mass: Float64Array
    polemass_length: Float64Array
    length: Float64Array
    force_mag: Float64Array
    tau: Float64Array
    friction_cart: Float64Array | None
    friction_pole: Float64Array | None
    sensor_noise: Float64Array | None
    actuator_noise: Float64Array | None
    action_delay: npt.NDArray[np.int64] | None
    noisy_twins: tuple[int, ...]
    """Twins with sensor or actuator noise: the only ones whose noise generator draws."""
    pml_and_masspole: Float64Array
    """(2, 1) or (2, n): polemass_length over masspole, to scale theta_dot**2 and cos**2 in one call."""

    @property
    def num_twins(self) -> int:
        return len(self.twins)

    @property
    def n(self) -> int:
        return self.num_twins * self.envs_per_twin

    def twin_slice(self, k: int) -> slice:
        return slice(k * self.envs_per_twin, (k + 1) * self.envs_per_twin)

    @classmethod
    def from_twins(cls, twins: Sequence[TwinSpec], envs_per_twin: int = 1) -> TwinPhysics:
        if not twins or not all(isinstance(t, TwinSpec) for t in twins):
            raise ValueError(f"twins must be a non-empty sequence of TwinSpec, got {twins!r}")
        if isinstance(envs_per_twin, bool) or not isinstance(envs_per_twin, int) or envs_per_twin < 1:
            raise ValueError(f"envs_per_twin must be an integer >= 1, got {envs_per_twin!r}")

        def per_env(values: list[float]) -> Float64Array:
            if all(v == values[0] for v in values):
                return np.array(values[0], dtype=np.float64)
            return np.repeat(np.asarray(values, dtype=np.float64), envs_per_twin)

        def optional(name: str) -> Float64Array | None:
            values = [getattr(t, name) for t in twins]
            return per_env(values) if any(values) else None

        delays = [t.action_delay for t in twins]
        pml, masspole = per_env([t.polemass_length for t in twins]), per_env([t.masspole for t in twins])
        return cls(
            twins=tuple(twins),
            envs_per_twin=envs_per_twin,
            gravity=per_env([t.gravity for t in twins]),
            masspole=masspole,
            # TwinSpec's properties are gymnasium's expressions (masspole + masscart, masspole * length).
            total_mass=per_env([t.total_mass for t in twins]),
            polemass_length=pml,
            length=per_env([t.length for t in twins]),
            force_mag=per_env([t.force_mag for t in twins]),
            tau=per_env([t.tau for t in twins]),
            friction_cart=optional("friction_cart"),
            friction_pole=optional("friction_pole"),
            sensor_noise=optional("sensor_noise"),
            actuator_noise=optional("actuator_noise"),
            action_delay=np.repeat(np.asarray(delays, dtype=np.int64), envs_per_twin)
            if any(delays)
            else None,
            noisy_twins=tuple(k for k, t in enumerate(twins) if t.sensor_noise > 0 or t.actuator_noise > 0),
            pml_and_masspole=np.stack(np.broadcast_arrays(pml, masspole)).reshape(2, -1),
        )


class Scratch:
    """Few, reused temporaries: a step allocates only what it returns, and at N = 16384 a small
    working set is what keeps its ~30 passes over memory in cache."""

    def __init__(self, n: int) -> None:
        self.state: Float64Array | None = None
        self._views: tuple[Float64Array, ...] = ()
        self.trig = np.empty((2, n))  # cos, sin; once dead, the velocity increments and |x|, |theta|
        self.pair = np.empty((2, n))  # temp and the denominator of thetaacc
        self.tmp = np.empty(n)
        self.acc = np.empty((2, n))  # xacc, thetaacc: they update state rows 1 and 3
        self.flag = np.empty(n, dtype=np.bool_)
        self.noisy = np.empty((4, n))

    def views(self, state: Float64Array) -> tuple[Float64Array, ...]:
        """x_dot, theta, theta_dot, positions (rows 0, 2), velocities (rows 1, 3) of `state`, made once."""
        if state is not self.state:
            self.state = state
            self._views = (state[1], state[2], state[3], state[0::2], state[1::2])
        return self._views


def cartpole_step(state: Float64Array, force: Float64Array, p: TwinPhysics, s: Scratch) -> None:
    """Advance the (4, n) state in place by one Euler step: gymnasium's expressions, per-env parameters.

    Friction follows Barto, Sutton & Anderson (1983). Every product and quotient is gymnasium's
    (in-place forms only swap commutative operands), so with zero friction every float equals
    `CartPoleEnv`/`CartPoleVectorEnv`. Ufuncs are called positionally into preallocated buffers.
    """
    mul, div, add, sub = np.multiply, np.divide, np.add, np.subtract
    x_dot, theta, theta_dot, positions, velocities = s.views(state)
    cos, sin = s.trig
    pair, tmp = s.pair, s.tmp
    temp, den = pair  # computed side by side: one multiply and one divide serve both
    np.cos(theta, cos)
    np.sin(theta, sin)
    # temp = (force + polemass_length * theta_dot**2 * sin - mu_c * sign(x_dot)) / total_mass
    # den  = length * (4/3 - masspole * cos**2 / total_mass)
    np.square(theta_dot, temp)
    np.square(cos, den)
    mul(pair, p.pml_and_masspole, pair)
    mul(temp, sin, temp)
    add(temp, force, temp)
    if p.friction_cart is not None:
        np.sign(x_dot, tmp)
        mul(tmp, p.friction_cart, tmp)
        sub(temp, tmp, temp)
    div(pair, p.total_mass, pair)
    sub(_FOUR_THIRDS, den, den)
    mul(den, p.length, den)
    # thetaacc = (g * sin - cos * temp - mu_p * theta_dot / polemass_length) / den
    xacc, thetaacc = s.acc
    mul(sin, p.gravity, thetaacc)
    mul(cos, temp, tmp)
    sub(thetaacc, tmp, thetaacc)
    if p.friction_pole is not None:
        mul(theta_dot, p.friction_pole, tmp)
        div(tmp, p.polemass_length, tmp)
        sub(thetaacc, tmp, thetaacc)
    div(thetaacc, den, thetaacc)
    # xacc = temp - polemass_length * thetaacc * cos / total_mass
    mul(thetaacc, p.polemass_length, tmp)
    mul(tmp, cos, tmp)
    div(tmp, p.total_mass, tmp)
    sub(temp, tmp, xacc)
    # Euler (gymnasium's default integrator): positions move with the old velocities.
    increments = s.trig  # cos and sin are dead now
    mul(velocities, p.tau, increments)
    add(positions, increments, positions)
    mul(s.acc, p.tau, s.acc)
    add(velocities, s.acc, velocities)


def kernel_args(p: TwinPhysics) -> tuple[Any, ...]:
    """The compiled step's physics arguments: every parameter as an (n,) C-contiguous array.

    Always the same array type, shared value or not: numba compiles one machine-code version per
    combination of argument types, and each compilation takes a while.
    """

    def per_env(values: Float64Array | None) -> Float64Array:
        return np.array(np.broadcast_to(np.zeros(()) if values is None else values, (p.n,)), order="C")

    return (per_env(p.gravity), per_env(p.masspole), per_env(p.total_mass), per_env(p.polemass_length),
            per_env(p.length), per_env(p.tau), per_env(p.friction_cart), per_env(p.friction_pole),
            p.friction_cart is not None, p.friction_pole is not None, X_THRESHOLD, THETA_THRESHOLD_RADIANS,
            float(_FOUR_THIRDS))


def is_terminated(state: Float64Array, s: Scratch) -> BoolArray:
    """|x| > 2.4 or |theta| > 12°: the truth value of gymnasium's four comparisons, in fewer passes."""
    abs_x, abs_theta = np.abs(s.views(state)[3], s.trig)
    out = np.greater(abs_x, _X_THRESHOLD)
    np.greater(abs_theta, _THETA_THRESHOLD, s.flag)
    return np.logical_or(out, s.flag, out)
