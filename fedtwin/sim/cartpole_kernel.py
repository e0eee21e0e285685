"""One compiled pass over all sub-envs for a CartPole step: the same floats as the NumPy path, faster.

`fedtwin.sim.cartpole.cartpole_step` spends ~20 NumPy calls per step, each a pass over memory; this kernel
(numba, optional: `pip install 'fedtwin[fast]'`) does the step, the termination test and the float32
observation in one loop. Every expression keeps the NumPy path's operands and order, `math.sin` /
`math.cos` are the same glibc calls NumPy makes for float64, and numba neither fuses multiply-adds
nor reorders without `fastmath`, so both paths give bit-identical trajectories (and, with default
physics, gymnasium's); `tests/test_envs.py` checks it. Without numba, or with
`FEDTWIN_ENV_KERNEL=numpy`, the env uses the NumPy path; by default only large envs use the kernel
(`kernel_for`).
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable
from typing import Any

import numpy as np

KERNEL_ENV = "FEDTWIN_ENV_KERNEL"
"""`numpy`: never the compiled step; `numba`: always (when numba is installed); unset: by env size."""
KERNEL_MIN_ENVS = 1024
"""From this many sub-envs in one env the compiled step is used by default (see `kernel_for`)."""


def _sign(value: float) -> float:
    """`np.sign` of a float64 as NumPy computes it (0.0 for -0.0, NaN for NaN); numba's gives -0.0."""
    if value > 0.0:
        return 1.0
    if value < 0.0:
        return -1.0
    return value if value != value else 0.0


def _step(state: np.ndarray, force: np.ndarray, gravity: np.ndarray, masspole: np.ndarray,
          total_mass: np.ndarray, pml: np.ndarray, length: np.ndarray, tau: np.ndarray,
          friction_cart: np.ndarray, friction_pole: np.ndarray, use_friction_cart: bool,
          use_friction_pole: bool, x_threshold: float, theta_threshold: float, four_thirds: float,
          observations: np.ndarray, write_observations: bool, terminated: np.ndarray) -> None:
    """Advance the (4, n) state in place; write termination flags and (optionally) float32 observations.

    Parameters are (n,) arrays (broadcast views where every sub-env shares a value). The comments
    name the NumPy path's calls each expression reproduces.
    """
    for i in range(state.shape[1]):
        x, x_dot, theta, theta_dot = state[0, i], state[1, i], state[2, i], state[3, i]
        cos = math.cos(theta)
        sin = math.sin(theta)
        temp = theta_dot * theta_dot * pml[i] * sin + force[i]  # square, mul pml, mul sin, add force
        if use_friction_cart:
            temp = temp - _sign(x_dot) * friction_cart[i]
        temp = temp / total_mass[i]
        den = (four_thirds - cos * cos * masspole[i] / total_mass[i]) * length[i]
        thetaacc = sin * gravity[i] - cos * temp
        if use_friction_pole:
            thetaacc = thetaacc - theta_dot * friction_pole[i] / pml[i]
        thetaacc = thetaacc / den
        xacc = temp - thetaacc * pml[i] * cos / total_mass[i]
        x = x + x_dot * tau[i]  # Euler: positions move with the old velocities
        theta = theta + theta_dot * tau[i]
        x_dot = x_dot + xacc * tau[i]
        theta_dot = theta_dot + thetaacc * tau[i]
        state[0, i], state[1, i], state[2, i], state[3, i] = x, x_dot, theta, theta_dot
        terminated[i] = abs(x) > x_threshold or abs(theta) > theta_threshold
        if write_observations:
            observations[0, i] = x
            observations[1, i] = x_dot
            observations[2, i] = theta
            observations[3, i] = theta_dot


@functools.cache
def compiled_step() -> Callable[..., None] | None:
    """The jitted `_step`, or None without numba. numba is imported on the first call only, and the
    machine code is loaded from numba's cache (or compiled) on the kernel's first call."""
    try:
        import numba
    except ImportError:
        return None
    options: dict[str, Any] = {"cache": True, "nogil": True, "error_model": "numpy"}
    global _sign  # `_step` calls `_sign` by its global name: numba must find the jitted one there
    _sign = numba.njit(inline="always", **options)(_sign)
    return numba.njit(**options)(_step)


def kernel_for(num_envs: int) -> Callable[..., None] | None:
    """The step an env of `num_envs` sub-envs runs: the compiled one, or None for the NumPy path.

    Both paths give the same floats, so this choice is about time only. Loading the kernel costs a
    process the numba import and a cache load, more than the kernel saves over the few thousand steps
    a small env takes, so by default only envs of `KERNEL_MIN_ENVS` sub-envs or more use it;
    FEDTWIN_ENV_KERNEL=numba uses it for every env, =numpy for none.
    """
    mode = os.environ.get(KERNEL_ENV, "").strip().lower()
    if mode == "numpy" or (mode != "numba" and num_envs < KERNEL_MIN_ENVS):
        return None
    return compiled_step()


def warm_up() -> bool:
    """Compile (or load from numba's cache) the kernel now; False without numba or with
    FEDTWIN_ENV_KERNEL=numpy.

    The arguments have the types the simulator passes (C-ordered float64 arrays, float32
    observations, Python bools and floats), so this is the machine code every env then runs.
    """
    step_kernel = kernel_for(KERNEL_MIN_ENVS)
    if step_kernel is None:
        return False
    n = 1
    physics = [np.ones(n) for _ in range(8)]  # gravity ... friction_pole
    step_kernel(np.zeros((4, n)), np.zeros(n), *physics, False, False, 2.4, 0.2, 4.0 / 3.0,
                np.empty((4, n), dtype=np.float32), True, np.empty(n, dtype=np.bool_))
    return True


if __name__ == "__main__":  # `python -m fedtwin.sim.cartpole_kernel`: the image build compiles it once
    print("cartpole kernel:", "compiled" if warm_up() else "not in use (NumPy path)")
