"""The one step path of both env classes: state, action delay line, noise and resets of n sub-envs.

The physics step runs as one compiled loop (`cartpole_kernel`: numba, for large envs) or as
NumPy ufuncs (`cartpole.cartpole_step`); both give the same floats, so results never depend on it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from fedtwin.sim.cartpole import (
    BoolArray,
    Float32Array,
    Float64Array,
    IndexArray,
    Scratch,
    TwinPhysics,
    cartpole_step,
    is_terminated,
    kernel_args,
)
from fedtwin.sim.cartpole_kernel import kernel_for
from fedtwin.sim.delay_line import DelayLine
from fedtwin.sim.streams import NoiseSource, TwinStream, noise_generators


def check_actions(actions: Any, n: int) -> np.ndarray:
    """0/1 actions as an integer array usable as take() indices; anything else is a ValueError."""
    act = np.asarray(actions)
    if act.shape != (n,) or act.dtype.kind not in "biu":
        raise ValueError(f"actions must be an integer array of shape ({n},), got {act.dtype} {act.shape}")
    if act.dtype.kind == "b":
        return act.view(np.uint8)
    bits = np.bitwise_or.reduce(act)
    if not 0 <= bits <= 1:  # a negative value makes the OR negative, a value >= 2 makes it >= 2
        raise ValueError(f"actions must be 0 (push left) or 1 (push right), got values {np.unique(act)}")
    return act


def _rows(param: Float64Array, idx: IndexArray) -> Float64Array:
    return param if param.ndim == 0 else param[idx]


class Simulator:
    """State and imperfections of n sub-envs: the one step path of both env classes."""

    def __init__(self, physics: TwinPhysics) -> None:
        self.p = physics
        self.s = Scratch(physics.n)
        self.state = np.zeros((4, physics.n))
        self.delay = DelayLine(physics.action_delay) if physics.action_delay is not None else None
        self.noise = NoiseSource(physics) if physics.noisy_twins else None
        self.reset_noise = (
            TwinStream(physics.num_twins, physics.envs_per_twin)
            if physics.sensor_noise is not None
            else None
        )
        fm = physics.force_mag
        # force = ±force_mag is exactly gymnasium's np.sign(action - 0.5) * force_mag: one take() per step.
        self.force_table = np.array([-fm, fm] if fm.ndim == 0 else [-1.0, 1.0])
        self.kernel = kernel_for(physics.n)  # the compiled step (fedtwin.sim.cartpole_kernel), or None: NumPy
        self.kernel_args = kernel_args(physics) if self.kernel is not None else None

    def seed_noise(self, entropies: Sequence[int | None]) -> None:
        """Noise generators of the noisy twins, from their seeds' entropy (None: fresh entropy)."""
        if self.noise is None:
            return
        step_gens, reset_gens = {}, {}
        for k in self.p.noisy_twins:
            step_gens[k], reset_gens[k] = noise_generators(entropies[k])
        self.noise.seed(step_gens)
        if self.reset_noise is not None:
            sensing = [k for k, t in enumerate(self.p.twins) if t.sensor_noise > 0]
            self.reset_noise.seed({k: reset_gens[k] for k in sensing})

    def observe(
        self, state: Float64Array, sensor_z: np.ndarray | None = None, sensor_std: Float64Array | None = None
    ) -> Float32Array:
        """(m, 4) float32 observations of (4, m) states; sensor noise never enters the state.

        Like gymnasium's `state.T.astype(np.float32)` the result is the transpose of a C-ordered
        (4, m) array: a C-ordered (m, 4) copy would cost more than all the rest of the observation.
        """
        if sensor_z is None or sensor_std is None:
            return state.astype(np.float32).T
        noisy = self.s.noisy if state.shape == self.s.noisy.shape else np.empty(state.shape)
        np.multiply(sensor_z, sensor_std, noisy)
        np.add(noisy, state, noisy)
        return noisy.astype(np.float32).T

    def start_all(self, values: Float64Array) -> Float32Array:
        """Every sub-env starts over from `values` (4, n): an explicit reset."""
        self.state[:] = values
        if self.delay is not None:
            self.delay.restart()
        if self.reset_noise is None:
            return self.observe(self.state)
        return self.observe(self.state, self.reset_noise.take_all(), self.p.sensor_noise)

    def step(self, actions: np.ndarray) -> tuple[Float32Array, BoolArray]:
        """Apply checked 0/1 actions: (observations before any reset, terminated)."""
        p, s = self.p, self.s
        if self.delay is not None:
            actions = self.delay.push(actions)
        z = self.noise.next_step() if self.noise is not None else None
        force = self.force_table.take(actions, mode="clip")
        if p.force_mag.ndim:
            np.multiply(force, p.force_mag, force)
        if z is not None and p.actuator_noise is not None:
            np.multiply(z[4], p.actuator_noise, s.tmp)
            np.add(s.tmp, 1.0, s.tmp)
            np.multiply(force, s.tmp, force)
        if self.kernel is not None and self.kernel_args is not None:
            terminated = np.empty(p.n, dtype=np.bool_)
            obs = np.empty((4, p.n), dtype=np.float32)  # (4, n) C-ordered, like NumPy's observations
            self.kernel(self.state, force, *self.kernel_args, obs, z is None, terminated)
            if z is None:
                return obs.T, terminated
        else:
            cartpole_step(self.state, force, p, s)
            terminated = is_terminated(self.state, s)
            if z is None:
                return self.observe(self.state), terminated
        return self.observe(self.state, z[0:4], p.sensor_noise), terminated

    def restart(self, idx: IndexArray, values: Float64Array, obs: Float32Array) -> Float32Array:
        """Sub-envs `idx` start over from `values` (4, m); returns `obs` with their reset observations."""
        self.state[:, idx] = values
        if self.delay is not None:
            self.delay.restart(idx)
        std = self.p.sensor_noise
        out = obs.T.copy()  # (4, n), C-ordered like every observation; cheaper than a second cast
        if self.reset_noise is None or std is None:
            out[:, idx] = values
        else:
            out[:, idx] = values + self.reset_noise.take(idx) * _rows(std, idx)
        return out.T
