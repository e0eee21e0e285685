"""CartPole for fleets of digital twins, with the gymnasium API.

One `TwinCartPoleVectorEnv` steps the sub-environments of many twins at once, each twin with its
own physics (`cartpole`) and its own random streams (`streams`); `TwinCartPoleEnv` is the
single-env form (`gymnasium.make("fedtwin/TwinCartPole-v0")`) and runs the very same step code
(`simulator`) with one sub-environment. With default physics both give gymnasium's floats.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gymnasium
import numpy as np
import numpy.typing as npt
from gymnasium import spaces
from gymnasium.envs.classic_control import utils as cc_utils
from gymnasium.utils import seeding
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from fedtwin.sim.cartpole import (
    RESET_HIGH,
    RESET_LOW,
    THETA_THRESHOLD_RADIANS,
    X_THRESHOLD,
    BoolArray,
    Float32Array,
    Float64Array,
    TwinPhysics,
)
from fedtwin.sim.simulator import Simulator, check_actions
from fedtwin.sim.streams import ResetStream
from fedtwin.sim.twins import TwinSpec

ENV_ID = "fedtwin/TwinCartPole-v0"
MAX_EPISODE_STEPS = 500
_REBASE_STEPS = 1 << 30  # step count at which episode start steps shift back towards 0 (int32)

SeedArg = int | Sequence[int] | None
StepResult = tuple[Float32Array, Float32Array, BoolArray, BoolArray, dict[str, Any]]


def observation_space() -> spaces.Box:
    high = np.array([X_THRESHOLD * 2, np.inf, THETA_THRESHOLD_RADIANS * 2, np.inf], dtype=np.float32)
    return spaces.Box(-high, high, dtype=np.float32)


def _twin_seeds(seed: SeedArg, num_twins: int) -> list[int | None]:
    if seed is None:
        return [None] * num_twins
    if isinstance(seed, bool):
        raise TypeError(f"reset(seed=...) takes an int, one int per twin, or None; got {seed!r}")
    if isinstance(seed, int | np.integer):
        return [int(seed) + k for k in range(num_twins)]
    seeds = list(seed)
    if len(seeds) != num_twins:
        raise ValueError(f"reset(seed=[...]) needs one seed per twin ({num_twins}), got {len(seeds)}")
    return [int(s) for s in seeds]


class TwinCartPoleVectorEnv(VectorEnv[Float32Array, np.ndarray, np.ndarray]):
    """
    ## Description

    gymnasium's CartPole (Barto, Sutton & Anderson, 1983) for a fleet of digital twins: `num_envs =
    len(twins) * envs_per_twin` sub-environments, sub-env `i` simulating twin `i // envs_per_twin`,
    all stepped at once in NumPy arrays (no Python loop over sub-environments).

    ## Action Space

    `MultiDiscrete([2] * num_envs)`: per sub-env 0 pushes the cart left, 1 right, with the twin's `force_mag`.

    ## Observation Space

    `(num_envs, 4)` float32:

    | Num | Observation           | Min                 | Max               |
    |-----|-----------------------|---------------------|-------------------|
    | 0   | Cart Position         | -4.8                | 4.8               |
    | 1   | Cart Velocity         | -Inf                | Inf               |
    | 2   | Pole Angle            | ~ -0.418 rad (-24°) | ~ 0.418 rad (24°) |
    | 3   | Pole Angular Velocity | -Inf                | Inf               |

    A twin with `sensor_noise` sees `state + sensor_noise * N(0, 1)` per dimension; the state stays exact.
    Like gymnasium's, the array is the transpose of a C-ordered (4, num_envs) array.

    ## Rewards

    +1 for every step, including the terminating one.

    ## Starting State

    Each state variable uniform in `(-0.05, 0.05)` (`options={"low": .., "high": ..}` changes the bounds).

    ## Episode End

    1. Termination: pole angle beyond ±12° or cart position beyond ±2.4 (of the true state).
    2. Truncation: `max_episode_steps` (500) steps.

    Autoreset is `SAME_STEP`: `step()` returns the reset observation of a finished sub-env and puts
    the observation it ended in into `info["final_obs"]` (`(num_envs, 4)` float32; rows where
    `info["_final_obs"]` is False equal the returned observation). `info["episode_return"]`,
    `info["episode_length"]` and their mask `info["_episode"]` report finished episodes. These keys
    are present only when some sub-env finished.

    ## Per-twin physics

    Each `TwinSpec` field becomes a `(num_envs,)` array (or one scalar when all twins share it)
    used in gymnasium's expressions, in gymnasium's operation order, so default physics reproduce
    `CartPoleVectorEnv` float for float:

    - `gravity`, `masscart`, `masspole`, `length` (half pole), `force_mag`, `tau` (Euler step);
    - `friction_cart` / `friction_pole`: Barto et al.'s friction terms,
      `temp = (F + ml θ'² sinθ - μc sgn(x')) / M`,
      `θ'' = (g sinθ - cosθ temp - μp θ' / ml) / (l (4/3 - m cos²θ / M))`;
    - `actuator_noise`: force `F (1 + σ N(0, 1))`; `action_delay` `d`: the cart feels the action chosen
      `d` steps earlier (an episode starts with the line full of its first action).

    ## Seeding

    Every twin has its own generators: `reset(seed=s)` seeds twin `k` with `s + k` (twin 0 with `s`,
    so one default twin resets exactly like `CartPoleVectorEnv` seeded with `s`), `reset(seed=[...])`
    gives one seed per twin. Resets of finished sub-envs draw from their twin's generator, noise from
    the twin's noise generator (derived from the same seed), so a twin's trajectory is the same alone
    or among any other twins, given the same `envs_per_twin`, seed and actions. Reset values are
    drawn ahead in blocks, so `np_random` (twin 0's generator) runs ahead of what was consumed.
    """

    metadata: dict[str, Any] = {  # noqa: RUF012 (gymnasium's own attribute, not a ClassVar)
        "render_modes": [],
        "render_fps": 50,
        "autoreset_mode": AutoresetMode.SAME_STEP,
    }

    def __init__(
        self, twins: Sequence[TwinSpec], envs_per_twin: int = 1, max_episode_steps: int = MAX_EPISODE_STEPS
    ) -> None:
        if (
            isinstance(max_episode_steps, bool)
            or not isinstance(max_episode_steps, int)
            or max_episode_steps < 1
        ):
            raise ValueError(f"max_episode_steps must be an integer >= 1, got {max_episode_steps!r}")
        self.twins: tuple[TwinSpec, ...] = tuple(twins)
        self.physics = TwinPhysics.from_twins(self.twins, envs_per_twin)
        self.envs_per_twin = envs_per_twin
        self.num_envs = self.physics.n
        self.max_episode_steps = max_episode_steps
        self.render_mode = None

        self.single_action_space = spaces.Discrete(2)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self.single_observation_space = observation_space()
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)

        self._sim = Simulator(self.physics)
        self._resets = ResetStream(self.physics.num_twins, envs_per_twin)
        self._seeded = False
        # Episode lengths as (step count - start step): no per-env counter to bump every step. Every
        # step pays 1, so an episode's return is its length: no return accumulator either.
        self._t = 0
        self._start = np.zeros(self.num_envs, dtype=np.int32)
        self._ones = np.ones(self.num_envs, dtype=np.float32)  # copying it beats np.ones()

    @property
    def state(self) -> Float64Array:
        """The true (4, num_envs) float64 state, rows x, x_dot, theta, theta_dot."""
        return self._sim.state

    def reset(
        self, *, seed: SeedArg = None, options: dict[str, Any] | None = None
    ) -> tuple[Float32Array, dict]:
        """Reset every sub-env; `seed` is an int (twin k gets seed + k), one int per twin, or None."""
        sim = self._sim
        low, high = cc_utils.maybe_parse_reset_bounds(options, RESET_LOW, RESET_HIGH)
        if seed is not None or not self._seeded:
            generators: dict[int, np.random.Generator] = {}
            entropies: list[int | None] = []
            for k, s in enumerate(_twin_seeds(seed, self.physics.num_twins)):
                generators[k], entropy = seeding.np_random(s)
                entropies.append(entropy)
            self._resets.low, self._resets.high = low, high
            self._resets.seed(generators)
            sim.seed_noise(entropies)
            # The base class's np_random is twin 0's generator, as in a one-twin gymnasium env.
            self._np_random, self._np_random_seed = generators[0], entropies[0]
            self._seeded = True
        else:
            self._resets.set_bounds(low, high)
        # New arrays, not zeroed ones: the old ones may be held by an earlier step's info.
        self._t = 0
        self._start = np.zeros(self.num_envs, dtype=np.int32)
        return sim.start_all(self._resets.take_all()), {}

    def step(self, actions: np.ndarray) -> StepResult:
        if not self._seeded:
            raise RuntimeError("call reset() before step()")
        obs, terminated = self._sim.step(check_actions(actions, self.num_envs))
        reward = self._ones.copy()
        if self._t == _REBASE_STEPS:  # keep the int32 step counts far from overflow
            self._start -= self._t
            self._t = 0
        self._t += 1
        # length = t - start >= max_episode_steps, i.e. start <= t - max_episode_steps
        truncated = np.less_equal(self._start, self._t - self.max_episode_steps)
        done = np.logical_or(terminated, truncated)
        idx = done.nonzero()[0]
        if not idx.size:
            return obs, reward, terminated, truncated, {}
        # SAME_STEP autoreset: finished sub-envs start over now, drawing only from their twins' streams.
        length = np.subtract(self._t, self._start)
        info = {
            "final_obs": obs,
            "_final_obs": done,
            "episode_return": length.astype(np.float32),
            "episode_length": length,
            "_episode": done.copy(),
        }
        self._start[idx] = self._t
        obs = self._sim.restart(idx, self._resets.take(idx), obs)
        return obs, reward, terminated, truncated, info

    def __repr__(self) -> str:
        return (
            f"TwinCartPoleVectorEnv(twins={self.physics.num_twins}, envs_per_twin={self.envs_per_twin}, "
            f"num_envs={self.num_envs})"
        )


class TwinCartPoleEnv(gymnasium.Env[np.ndarray, np.int64]):
    """
    ## Description

    One twin's CartPole as a plain `gymnasium.Env`, registered as `fedtwin/TwinCartPole-v0` (with a
    500-step `TimeLimit`). It runs `TwinCartPoleVectorEnv`'s step code with one sub-environment, and
    resets from `self.np_random` like gymnasium's `CartPoleEnv`, so with default physics
    `gymnasium.make("fedtwin/TwinCartPole-v0")` and `gymnasium.make("CartPole-v1")` give identical
    observations, rewards, terminations and truncations for the same seed and actions.

    Action space, observation space, rewards and episode end are those of `TwinCartPoleVectorEnv`.
    Noise and resets use the vector env's per-twin streams, so a twin here and the same twin alone
    in `TwinCartPoleVectorEnv` (one sub-env, same seed) agree step for step, noise included, when
    episodes are restarted with `reset()` as they end.
    """

    metadata: dict[str, Any] = {"render_modes": [], "render_fps": 50}  # noqa: RUF012 (as gymnasium)

    def __init__(self, twin: TwinSpec | None = None, render_mode: str | None = None) -> None:
        if render_mode is not None:
            raise ValueError(f"TwinCartPoleEnv does not render (render_mode={render_mode!r})")
        self.twin = twin if twin is not None else TwinSpec(id="default")
        self.physics = TwinPhysics.from_twins([self.twin], 1)
        self.action_space = spaces.Discrete(2)
        self.observation_space = observation_space()
        self.render_mode = None
        self._sim = Simulator(self.physics)
        self._has_state = False
        self.steps_beyond_terminated: int | None = None

    @property
    def state(self) -> Float64Array:
        """The true state (x, x_dot, theta, theta_dot) as float64."""
        return self._sim.state[:, 0]

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[npt.NDArray[np.float32], dict[str, Any]]:
        super().reset(seed=seed)
        low, high = cc_utils.maybe_parse_reset_bounds(options, RESET_LOW, RESET_HIGH)
        values = self.np_random.uniform(low=low, high=high, size=(4,))[:, None]
        if seed is not None or not self._has_state:
            seed_value = self.np_random_seed  # -1 when np_random was set directly
            self._sim.seed_noise([seed_value if seed_value >= 0 else None])
        self._has_state = True
        self.steps_beyond_terminated = None
        return self._sim.start_all(values)[0], {}

    def step(
        self, action: int | np.integer | np.ndarray
    ) -> tuple[npt.NDArray[np.float32], float, bool, bool, dict]:
        if not self.action_space.contains(action):
            raise ValueError(f"action must be 0 (push left) or 1 (push right), got {action!r}")
        if not self._has_state:
            raise RuntimeError("call reset() before step()")
        obs, terminated_array = self._sim.step(np.array([int(action)]))
        terminated = bool(terminated_array[0])
        reward = 1.0
        if terminated:
            if self.steps_beyond_terminated is None:
                self.steps_beyond_terminated = 0
            else:
                if self.steps_beyond_terminated == 0:
                    gymnasium.logger.warn(
                        "You are calling 'step()' even though this environment has already returned "
                        "terminated = True. You should always call 'reset()' once you receive "
                        "'terminated = True'"
                    )
                self.steps_beyond_terminated += 1
                reward = 0.0
        return obs[0], reward, terminated, False, {}


def register_envs() -> None:
    """Register `fedtwin/TwinCartPole-v0`; importing fedtwin.sim.envs twice must not warn or fail."""
    if ENV_ID not in gymnasium.registry:
        gymnasium.register(
            id=ENV_ID, entry_point=f"{__name__}:TwinCartPoleEnv", max_episode_steps=MAX_EPISODE_STEPS
        )


register_envs()
