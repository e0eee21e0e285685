"""Acrobot twins: gymnasium's Acrobot-v1 with per-twin links (masses, lengths, centres of mass, inertia).

With default physics every float equals `gymnasium.make("Acrobot-v1")` seeded alike: the same RK4
step over the same `_dsdt` expressions (their parameter-only parts computed once per twin in Python
floats, as gymnasium computes them), the same wrap/bound, float32 start states, and scalar `**2`
reproduced by `square_like_scalar` (Acrobot is chaotic: one ulp would grow into another trajectory).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from gymnasium import spaces
from gymnasium.envs.classic_control import utils as cc_utils

from fedtwin.sim.kind_env import ParamArrays
from fedtwin.sim.kinds import Float64Array, Param, action_delay_param
from fedtwin.sim.scalar_math import square_like_scalar as sq

pi = np.pi
MAX_VEL_1 = 4 * pi
MAX_VEL_2 = 9 * pi
TORQUES = np.array([-1.0, 0.0, 1.0])
BookOrNips = str


def _positive(name: str, default: float, doc: str) -> Param:
    return Param(name, default, low=0.0, low_open=True, vary="scale", doc=doc)


class AcrobotKind:
    """
    ## Description

    Two links hanging from a pivot, torque on the joint between them (Sutton & Barto; gymnasium's
    Acrobot-v1, "book" dynamics): swing the tip above the height `link_length_1` over the pivot.

    ## Action Space

    `Discrete(3)`: torque -1, 0, +1 N·m on the joint, plus `U(-torque_noise, torque_noise)`.

    ## Observation Space

    `cos(theta1), sin(theta1), cos(theta2), sin(theta2), theta1', theta2'` (float32), the velocities
    bounded to ±4pi and ±9pi.

    ## Rewards, Episode End

    -1 per step, 0 on the step that reaches the goal (termination); truncation after 500 steps.
    `-l1 cos(theta1) - l2 cos(theta1 + theta2) > l1` is the goal (gymnasium's with l1 = l2 = 1).

    ## Starting State

    Each state variable uniform in [-0.1, 0.1] (`options={"low", "high"}`), rounded to float32.
    """

    name = "acrobot"
    solved_return = -100.0
    """gymnasium's reward_threshold (a held-out mean return at or above it: solved)."""
    params: tuple[Param, ...] = (
        _positive("link_mass_1", 1.0, "mass of link 1, kg"),
        _positive("link_mass_2", 1.0, "mass of link 2, kg"),
        _positive("link_length_1", 1.0, "length of link 1, m"),
        _positive("link_length_2", 1.0, "length of link 2, m (only the goal height depends on it)"),
        _positive("link_com_1", 0.5, "pivot to link 1's centre of mass, m"),
        _positive("link_com_2", 0.5, "joint to link 2's centre of mass, m"),
        _positive("link_moi_1", 1.0, "moment of inertia of link 1, kg·m²"),
        _positive("link_moi_2", 1.0, "moment of inertia of link 2, kg·m²"),
        Param("gravity", 9.8, low=0.0, low_open=True, doc="g, m/s²"),
        Param("dt", 0.2, low=0.0, high=1.0, low_open=True, doc="seconds per step (one RK4 step)"),
        Param(
            "torque_noise",
            0.0,
            low=0.0,
            vary="hard",
            hard_max=0.2,
            doc="half-width of the uniform noise added to the torque, N·m",
        ),
        action_delay_param("steps between choosing a torque and the joint feeling it"),
    )
    observation_space = spaces.Box(
        low=-np.array([1.0, 1.0, 1.0, 1.0, MAX_VEL_1, MAX_VEL_2], dtype=np.float32),
        high=np.array([1.0, 1.0, 1.0, 1.0, MAX_VEL_1, MAX_VEL_2], dtype=np.float32),
        dtype=np.float32,
    )
    action_space = spaces.Discrete(3)
    max_episode_steps = 500
    state_dim = 4
    noise_slots = 1
    noise_params = ("torque_noise",)
    noise_dist = "uniform"
    book_or_nips: BookOrNips = "book"

    def derive(self, v: dict[str, float]) -> dict[str, float]:
        """The parameter-only parts of gymnasium's `_dsdt`, grouped as Python evaluates them."""
        m1, m2, l1 = v["link_mass_1"], v["link_mass_2"], v["link_length_1"]
        lc1, lc2, i2, g, dt = v["link_com_1"], v["link_com_2"], v["link_moi_2"], v["gravity"], v["dt"]
        return {
            "a1": m1 * lc1**2,
            "b1": l1**2 + lc2**2,
            "c1": 2 * l1 * lc2,
            "b2": lc2**2,
            "c2": l1 * lc2,
            "p2": m2 * lc2 * g,
            "q1": -m2 * l1 * lc2,
            "q2": 2 * m2 * l1 * lc2,
            "q3": (m1 * lc1 + m2 * l1) * g,
            "q4": m2 * l1 * lc2,
            "den": m2 * lc2**2 + i2,
            "half_dt": dt / 2.0,
            "sixth_dt": dt / 6.0,
            "noise_low": -v["torque_noise"],
            "noise_span": v["torque_noise"] - (-v["torque_noise"]),
        }

    def reset(
        self,
        p: ParamArrays,
        rngs: Sequence[np.random.Generator],
        options: dict[str, Any] | None,
        noise: Float64Array | None,
    ) -> tuple[Float64Array, np.ndarray]:
        low, high = cc_utils.maybe_parse_reset_bounds(options, -0.1, 0.1)
        s = np.empty((4, len(rngs)), dtype=np.float32)
        for j, rng in enumerate(rngs):
            s[:, j] = rng.uniform(low=low, high=high, size=(4,)).astype(np.float32)
        # gymnasium observes the float32 start state: float32 cos and sin
        return s.astype(np.float64), self._observe(s)

    @staticmethod
    def _observe(s: np.ndarray) -> np.ndarray:
        obs = np.empty((s.shape[1], 6), dtype=np.float32)
        obs[:, 0], obs[:, 1] = np.cos(s[0]), np.sin(s[0])
        obs[:, 2], obs[:, 3] = np.cos(s[1]), np.sin(s[1])
        obs[:, 4], obs[:, 5] = s[2], s[3]
        return obs

    def _dsdt(self, y: list[Float64Array], a: Float64Array, p: ParamArrays) -> list[Float64Array]:
        theta1, theta2, dtheta1, dtheta2 = y
        cos2, sin2 = np.cos(theta2), np.sin(theta2)
        d1 = p.a1 + p.link_mass_2 * (p.b1 + p.c1 * cos2) + p.link_moi_1 + p.link_moi_2
        d2 = p.link_mass_2 * (p.b2 + p.c2 * cos2) + p.link_moi_2
        phi2 = p.p2 * np.cos(theta1 + theta2 - pi / 2.0)
        phi1 = (
            p.q1 * sq(dtheta2) * sin2
            - p.q2 * dtheta2 * dtheta1 * sin2
            + p.q3 * np.cos(theta1 - pi / 2)
            + phi2
        )
        if self.book_or_nips == "nips":
            ddtheta2 = (a + d2 / d1 * phi1 - phi2) / (p.den - sq(d2) / d1)
        else:
            ddtheta2 = (a + d2 / d1 * phi1 - p.q4 * sq(dtheta1) * sin2 - phi2) / (p.den - sq(d2) / d1)
        ddtheta1 = -(d2 * ddtheta2 + phi1) / d1
        return [dtheta1, dtheta2, ddtheta1, ddtheta2]

    def step(
        self, state: Float64Array, actions: np.ndarray, p: ParamArrays, noise: Float64Array | None
    ) -> tuple[Float64Array, np.ndarray, Float64Array, np.ndarray]:
        torque = TORQUES[actions]
        if noise is not None and p.active("torque_noise"):
            torque = torque + (p.noise_low + p.noise_span * noise[0])
        # gymnasium's rk4 over [0, dt]: one step, the torque held constant
        y0 = list(state)
        k1 = self._dsdt(y0, torque, p)
        k2 = self._dsdt([y + p.half_dt * k for y, k in zip(y0, k1, strict=True)], torque, p)
        k3 = self._dsdt([y + p.half_dt * k for y, k in zip(y0, k2, strict=True)], torque, p)
        k4 = self._dsdt([y + p.dt * k for y, k in zip(y0, k3, strict=True)], torque, p)
        ns = [
            y + p.sixth_dt * (a + 2 * b + 2 * c + d) for y, a, b, c, d in zip(y0, k1, k2, k3, k4, strict=True)
        ]
        new = np.stack(
            [
                _wrap(ns[0], -pi, pi),
                _wrap(ns[1], -pi, pi),
                np.clip(ns[2], -MAX_VEL_1, MAX_VEL_1),
                np.clip(ns[3], -MAX_VEL_2, MAX_VEL_2),
            ]
        )
        terminated = (
            -p.link_length_1 * np.cos(new[0]) - p.link_length_2 * np.cos(new[1] + new[0]) > p.link_length_1
        )
        reward = np.where(terminated, 0.0, -1.0)
        return new, self._observe(new), reward, terminated


def _wrap(x: Float64Array, m: float, big_m: float) -> Float64Array:
    """gymnasium's `wrap`: subtract, then add, the period until x is in [m, M]."""
    diff = big_m - m
    while (above := x > big_m).any():
        x = np.where(above, x - diff, x)
    while (below := x < m).any():
        x = np.where(below, x + diff, x)
    return x
