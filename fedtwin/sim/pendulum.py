"""Pendulum twins: gymnasium's Pendulum-v1 swing-up with per-twin physics and a real device's flaws.

With default physics (no damping, noise or delay) every float equals `gymnasium.make("Pendulum-v1")`
seeded alike: the same expressions in the same order, the same float32 arithmetic on the torque
(gymnasium multiplies a float32 action by Python floats, which NumPy keeps in float32), and scalar
`**2` reproduced by `square_like_scalar`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from gymnasium import spaces
from gymnasium.envs.classic_control import utils as cc_utils

from fedtwin.sim.kind_env import ParamArrays
from fedtwin.sim.kinds import Float64Array, Param, action_delay_param
from fedtwin.sim.scalar_math import square_like_scalar

MAX_SPEED = 8
MAX_COMMAND = 2.0
"""The action is a torque command in [-2, 2] N·m (gymnasium's range); a twin's motor delivers
`command * max_torque / 2`, so every twin shares the policy's action space."""
DEFAULT_X, DEFAULT_Y = np.pi, 1.0


class PendulumKind:
    """
    ## Description

    A rod on a pivot, swung up by a torque (gymnasium's Pendulum-v1): `theta'' = 3 g / (2 l) sin(theta)
    + 3 / (m l²) (torque - b theta')`, integrated with gymnasium's semi-implicit Euler step `dt`;
    `theta'` is clipped to ±8 rad/s.

    ## Action Space

    `Box(-2, 2, (1,), float32)`: the torque command; the twin applies `command * max_torque / 2`,
    times `1 + actuator_noise * N(0, 1)`.

    ## Observation Space

    | Num | Observation       | Min  | Max |
    |-----|-------------------|------|-----|
    | 0   | x = cos(theta)    | -1.0 | 1.0 |
    | 1   | y = sin(theta)    | -1.0 | 1.0 |
    | 2   | Angular Velocity  | -8.0 | 8.0 |

    A twin with `sensor_noise` reads `theta + s N(0, 1)` and `theta' + s N(0, 1)` (clipped to the
    sensor's ±8 rad/s); the state stays exact.

    ## Rewards

    `-(theta² + 0.1 theta'² + 0.001 command²)`, theta normalized to [-pi, pi] (gymnasium's).

    ## Starting State, Episode End

    theta uniform in [-pi, pi], theta' in [-1, 1] (`options={"x_init", "y_init"}` as gymnasium);
    truncation after 200 steps, no termination.
    """

    name = "pendulum"
    solved_return = -200.0
    """Held-out mean return at which a Pendulum-v1 policy is commonly called solved (gymnasium sets none)."""
    params: tuple[Param, ...] = (
        Param("mass", 1.0, low=0.0, low_open=True, vary="scale", doc="rod mass m, kg"),
        Param("length", 1.0, low=0.0, low_open=True, vary="scale", doc="rod length l, m"),
        Param("gravity", 10.0, low=0.0, low_open=True, vary="scale", doc="g, m/s² (gymnasium's default)"),
        Param(
            "max_torque", 2.0, low=0.0, low_open=True, vary="scale", doc="motor torque at full command, N·m"
        ),
        Param("dt", 0.05, low=0.0, high=1.0, low_open=True, doc="seconds per step"),
        Param("damping", 0.0, low=0.0, vary="hard", hard_max=0.05, doc="viscous pivot friction b, N·m·s"),
        Param("sensor_noise", 0.0, low=0.0, vary="hard", hard_max=0.02, doc="std of angle/velocity readings"),
        Param("actuator_noise", 0.0, low=0.0, vary="hard", hard_max=0.1, doc="relative std of the torque"),
        action_delay_param("steps between choosing a command and the motor applying it"),
    )
    observation_space = spaces.Box(
        low=-np.array([1.0, 1.0, MAX_SPEED], dtype=np.float32),
        high=np.array([1.0, 1.0, MAX_SPEED], dtype=np.float32),
        dtype=np.float32,
    )
    action_space = spaces.Box(low=-MAX_COMMAND, high=MAX_COMMAND, shape=(1,), dtype=np.float32)
    max_episode_steps = 200
    state_dim = 2
    noise_slots = 3  # angle reading, velocity reading, torque
    noise_params = ("sensor_noise", "actuator_noise")
    noise_dist = "normal"

    def derive(self, v: dict[str, float]) -> dict[str, float]:
        """Gymnasium's constants, in Python floats as it computes them."""
        g, m, length = v["gravity"], v["mass"], v["length"]
        return {
            "gravity_term": 3 * g / (2 * length),
            "torque_term": 3.0 / (m * length**2),
            "damping_term": 3.0 * v["damping"] / (m * length**2),
            "torque_gain": v["max_torque"] / MAX_COMMAND,
        }

    def reset(
        self,
        p: ParamArrays,
        rngs: Sequence[np.random.Generator],
        options: dict[str, Any] | None,
        noise: Float64Array | None,
    ) -> tuple[Float64Array, np.ndarray]:
        if options is None:
            high = np.array([DEFAULT_X, DEFAULT_Y])
        else:
            x = cc_utils.verify_number_and_cast(options.get("x_init", DEFAULT_X))
            y = cc_utils.verify_number_and_cast(options.get("y_init", DEFAULT_Y))
            high = np.array([x, y])
        low = -high
        state = np.empty((2, len(rngs)))
        for j, rng in enumerate(rngs):
            state[:, j] = rng.uniform(low=low, high=high)
        return state, self._observe(state[0], state[1], p, noise)

    def _observe(
        self, th: Float64Array, thdot: Float64Array, p: ParamArrays, z: Float64Array | None
    ) -> np.ndarray:
        if z is not None and p.active("sensor_noise"):
            th = th + p.sensor_noise * z[0]
            thdot = np.clip(thdot + p.sensor_noise * z[1], -MAX_SPEED, MAX_SPEED)
        obs = np.empty((th.size, 3), dtype=np.float32)
        obs[:, 0] = np.cos(th)
        obs[:, 1] = np.sin(th)
        obs[:, 2] = thdot
        return obs

    def step(
        self, state: Float64Array, actions: np.ndarray, p: ParamArrays, noise: Float64Array | None
    ) -> tuple[Float64Array, np.ndarray, Float64Array, np.ndarray]:
        th, thdot = state
        u = np.clip(actions[:, 0], -MAX_COMMAND, MAX_COMMAND)  # stays float32 for a float32 action
        costs = (
            square_like_scalar(((th + np.pi) % (2 * np.pi)) - np.pi)
            + 0.1 * square_like_scalar(thdot)
            + 0.001 * square_like_scalar(u)
        )
        torque = u
        if np.any(p.torque_gain != 1.0):
            torque = torque * p.torque_gain.astype(u.dtype)
        if noise is not None and p.active("actuator_noise"):
            torque = torque * (1.0 + p.actuator_noise * noise[2]).astype(u.dtype)
        # gymnasium: 3.0 / (m * l**2) * u, a Python float times a float32: float32 arithmetic
        acc = p.gravity_term * np.sin(th) + p.torque_term.astype(u.dtype) * torque
        if p.active("damping"):
            acc = acc - p.damping_term * thdot
        newthdot = np.clip(thdot + acc * p.dt, -MAX_SPEED, MAX_SPEED)
        newth = th + newthdot * p.dt
        obs = self._observe(newth, newthdot, p, noise)
        return np.stack([newth, newthdot]), obs, -costs, np.zeros(th.size, dtype=np.bool_)
