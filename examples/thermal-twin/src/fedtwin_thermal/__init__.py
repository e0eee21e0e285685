"""A thermal zone heated by an electric heater: a fedtwin twin kind written outside fedtwin.

One zone is a first-order RC model: the air and furniture store heat (`capacity` C, J/K), the walls
leak it to the outside (`resistance` R, K/W) and the heater adds up to `heater_power` P watts:

    C dT/dt = (T_out - T) / R + P u,   u in [0, 1] the heater's duty cycle (the action).

Each step integrates it exactly over `dt` seconds (the heater holds u): T relaxes towards its
equilibrium T_out + P R u with the zone's time constant R C, so any dt is stable. The reward is
minus the distance to the setpoint, in kelvin, minus the energy spent (0.5 per full-power step).

Everything is vectorized over twins: each parameter arrives as an array with one value per
sub-env (or a 0-d array when all twins share it), as `fedtwin.sim.kinds.TwinKind` describes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from gymnasium import spaces

from fedtwin.sim.kinds import Param

ENERGY_WEIGHT = 0.5


class ThermalKind:
    """Heat a zone to its setpoint with as little energy as possible (96 steps of 15 minutes: a day)."""

    name = "thermal"
    params = (
        Param("capacity", 2.0e6, low=0.0, low_open=True, vary="scale", doc="heat capacity C, J/K"),
        Param(
            "resistance",
            5.0e-3,
            low=0.0,
            low_open=True,
            vary="scale",
            doc="thermal resistance of the envelope R, K/W (insulation)",
        ),
        Param("outside_temp", 5.0, low=-50.0, high=50.0, vary="scale", doc="outside temperature, °C"),
        Param("heater_power", 6000.0, low=0.0, low_open=True, vary="scale", doc="heater power P, W"),
        Param("setpoint", 21.0, low=5.0, high=35.0, doc="target temperature, °C"),
        Param("dt", 900.0, low=0.0, high=3600.0, low_open=True, doc="seconds per step"),
        Param("sensor_noise", 0.0, low=0.0, vary="hard", hard_max=0.3, doc="std of the thermometer, K"),
    )
    # Observation: (T - setpoint) / 10 and (T_out - setpoint) / 10, as read by the zone's thermometers.
    observation_space = spaces.Box(-np.inf, np.inf, shape=(2,), dtype=np.float32)
    action_space = spaces.Box(0.0, 1.0, shape=(1,), dtype=np.float32)
    max_episode_steps = 96
    state_dim = 1
    noise_slots = 1
    noise_params = ("sensor_noise",)
    noise_dist = "normal"

    def derive(self, v: dict[str, float]) -> dict[str, float]:
        """Per-zone constants of the exact step: decay over dt and the heater's equilibrium rise."""
        return {
            "decay": float(np.exp(-v["dt"] / (v["resistance"] * v["capacity"]))),
            "rise": v["heater_power"] * v["resistance"],
        }

    def reset(
        self, p: Any, rngs: Sequence[np.random.Generator], options: dict[str, Any] | None, noise: Any
    ) -> tuple[np.ndarray, np.ndarray]:
        """A morning: the zone starts between 6 K below and 1 K above its setpoint."""
        offset = np.array([rng.uniform(-6.0, 1.0) for rng in rngs])
        temp = np.broadcast_to(p.setpoint, offset.shape) + offset
        return temp[None, :].astype(np.float64), self._observe(temp, p, noise)

    def _observe(self, temp: np.ndarray, p: Any, noise: Any) -> np.ndarray:
        reading = temp if noise is None else temp + p.sensor_noise * noise[0]
        obs = np.empty((temp.size, 2), dtype=np.float32)
        obs[:, 0] = (reading - p.setpoint) / 10.0
        obs[:, 1] = np.broadcast_to((p.outside_temp - p.setpoint) / 10.0, temp.shape)
        return obs

    def step(
        self, state: np.ndarray, actions: np.ndarray, p: Any, noise: Any
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        u = np.clip(actions[:, 0], 0.0, 1.0).astype(np.float64)
        equilibrium = p.outside_temp + p.rise * u
        temp = equilibrium + (state[0] - equilibrium) * p.decay
        reward = -(np.abs(temp - p.setpoint) + ENERGY_WEIGHT * u)
        terminated = np.zeros(temp.size, dtype=np.bool_)
        return temp[None, :], self._observe(temp, p, noise), reward, terminated
