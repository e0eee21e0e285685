"""Any twin kind as a gymnasium vector env: per-twin parameters as arrays, per-twin random streams.

`KindVectorEnv` runs `len(twins) * envs_per_twin` sub-envs of one kind (sub-env i simulates twin
i // envs_per_twin) and does everything that is not the kind's physics, as the CartPole env does:

- seeds: `reset(seed=s)` seeds twin k with `s + k` (one default twin seeded with `s` resets like the
  gymnasium env seeded with `s`), `reset(seed=[...])` one seed per twin;
- random streams: a twin's start states come from its own generator, its noise from two generators
  derived from the same seed (steps, resets), so a twin's trajectory depends on its seed and actions
  only, never on which other twins share the env (the fleet engine equals the pool engine);
- `SAME_STEP` autoreset with `info["final_obs"]`, `info["episode_return"]`, `info["episode_length"]`
  and their masks, the time limit (truncation), and the action delay line.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import numpy as np
import numpy.typing as npt
from gymnasium import spaces
from gymnasium.utils import seeding
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from fedtwin.core.errors import ConfigError
from fedtwin.sim.delay_line import DelayLine
from fedtwin.sim.kinds import AnyKind, KindTwin, TwinKind, VectorKind

Float64Array = npt.NDArray[np.float64]
IndexArray = npt.NDArray[np.intp]
SeedArg = int | Sequence[int] | None

_NOISE_KEY = 0x6E6F697365  # "noise": the same separation of a twin's noise from its resets as CartPole's
_NOISE_BLOCK_VALUES = 1 << 20  # pre-drawn noise per block, all noisy twins together (8 MiB)


class ParamArrays:
    """Per-sub-env parameter (and derived constant) arrays: `p.mass`, `p["mass"]`.

    A value every sub-env shares is a 0-d array (the same IEEE operations as a Python float, used
    against (n,) state arrays), otherwise a (n,) array; `active(name)` says whether any sub-env has a
    non-zero value, so a kind can skip an imperfection no twin has (skipping `- 0 * x` changes no float).
    """

    def __init__(self, arrays: dict[str, np.ndarray], n: int) -> None:
        self._arrays = arrays
        self.n = n

    @classmethod
    def build(cls, kind: TwinKind, twins: Sequence[KindTwin], envs_per_twin: int) -> ParamArrays:
        rows = [t.as_dict() for t in twins]
        derive = getattr(kind, "derive", None)
        if derive is not None:
            rows = [{**row, **derive(dict(row))} for row in rows]
        arrays: dict[str, np.ndarray] = {}
        for name in rows[0]:
            values = [row[name] for row in rows]
            dtype = np.int64 if name == "action_delay" else np.float64
            if all(v == values[0] for v in values):
                arrays[name] = np.array(values[0], dtype=dtype)
            else:
                arrays[name] = np.repeat(np.asarray(values, dtype=dtype), envs_per_twin)
        return cls(arrays, len(twins) * envs_per_twin)

    def __getattr__(self, name: str) -> np.ndarray:
        try:
            return self.__dict__["_arrays"][name]
        except KeyError:
            raise AttributeError(f"no parameter {name!r}") from None

    def __getitem__(self, name: str) -> np.ndarray:
        return self._arrays[name]

    def __contains__(self, name: str) -> bool:
        return name in self._arrays

    def active(self, name: str) -> bool:
        return bool(np.any(self._arrays[name]))

    def take(self, idx: IndexArray) -> ParamArrays:
        """The parameters of sub-envs `idx` (for resetting them)."""
        return ParamArrays({k: v if v.ndim == 0 else v[idx] for k, v in self._arrays.items()}, idx.size)


class _NoiseSource:
    """Each noisy twin's per-step values, pre-drawn in blocks of steps from its own generator.

    NumPy's Generator gives the same values however draws are chunked, so the block size (which
    depends on the env's size) never changes a twin's noise.
    """

    def __init__(self, noisy: list[int], num_twins: int, envs_per_twin: int, slots: int, dist: str) -> None:
        self.noisy, self.slots, self.dist = np.asarray(noisy, dtype=np.intp), slots, dist
        self.num_twins, self.envs_per_twin = num_twins, envs_per_twin
        self.block_steps = max(1, min(256, _NOISE_BLOCK_VALUES // max(1, len(noisy) * slots * envs_per_twin)))
        self.block = np.zeros((len(noisy), self.block_steps, slots, envs_per_twin))
        self.pos = self.block_steps
        self.step_gens: list[np.random.Generator] = []
        self.reset_gens: dict[int, np.random.Generator] = {}

    def seed(self, entropies: Sequence[int | None]) -> None:
        self.step_gens, self.reset_gens = [], {}
        for k in self.noisy.tolist():
            step_seq, reset_seq = np.random.SeedSequence(entropies[k], spawn_key=(_NOISE_KEY,)).spawn(2)
            self.step_gens.append(np.random.default_rng(step_seq))
            self.reset_gens[k] = np.random.default_rng(reset_seq)
        self.pos = self.block_steps

    def _draw(self, gen: np.random.Generator, out: np.ndarray) -> None:
        if self.dist == "normal":
            gen.standard_normal(out=out)
        else:
            gen.random(out=out)

    def next_step(self) -> Float64Array:
        """(slots, n) values for this step: zeros for twins without noise."""
        if self.pos == self.block_steps:
            for j, gen in enumerate(self.step_gens):
                self._draw(gen, self.block[j])
            self.pos = 0
        z = np.zeros((self.slots, self.num_twins, self.envs_per_twin))
        z[:, self.noisy] = self.block[:, self.pos].transpose(1, 0, 2)
        self.pos += 1
        return z.reshape(self.slots, -1)

    def for_reset(self, idx: IndexArray) -> Float64Array:
        """(slots, m) values for the sub-envs `idx` starting over, from their twins' reset streams."""
        z = np.zeros((idx.size, self.slots))
        for j, i in enumerate(idx.tolist()):
            gen = self.reset_gens.get(i // self.envs_per_twin)
            if gen is not None:
                self._draw(gen, z[j])
        return z.T


def _twin_seeds(seed: SeedArg, num_twins: int) -> list[int | None]:
    """CartPole's rule: twin k gets seed + k, or the k-th of one seed per twin, or fresh entropy."""
    if seed is None or (isinstance(seed, int | np.integer) and not isinstance(seed, bool)):
        return [None if seed is None else int(seed) + k for k in range(num_twins)]
    if isinstance(seed, bool) or len(seed) != num_twins:
        raise ValueError(f"reset(seed=...) takes an int or one seed per twin ({num_twins}), got {seed!r}")
    return [int(s) for s in seed]


class KindVectorEnv(VectorEnv[np.ndarray, np.ndarray, np.ndarray]):
    """A fleet of twins of one kind as a gymnasium vector env (`SAME_STEP` autoreset, float64 rewards).

    Spaces are the kind's, batched over `num_envs`. `step()` returns the reset observation of a
    finished sub-env and the observation it ended in as `info["final_obs"]` (mask `info["_final_obs"]`);
    `info["episode_return"]` (float64), `info["episode_length"]` and `info["_episode"]` report finished
    episodes. These keys are present only when some sub-env finished. Truncation after
    `max_episode_steps` (the kind's by default). `reset(options=...)` passes the options to the
    kind for that reset only; autoresets use the kind's defaults, as gymnasium's SyncVectorEnv does.
    """

    def __init__(
        self,
        kind: TwinKind,
        twins: Sequence[KindTwin],
        envs_per_twin: int = 1,
        max_episode_steps: int | None = None,
    ) -> None:
        twins = tuple(twins)
        if not twins:
            raise ValueError("twins must be a non-empty sequence of KindTwin")
        for t in twins:
            if not isinstance(t, KindTwin) or t.kind != kind.name:
                raise ConfigError(
                    f"twin {getattr(t, 'id', t)!r} is not a {kind.name} twin; a run has one kind, "
                    "so list only twins of that kind in its fleet"
                )
        if isinstance(envs_per_twin, bool) or not isinstance(envs_per_twin, int) or envs_per_twin < 1:
            raise ValueError(f"envs_per_twin must be an integer >= 1, got {envs_per_twin!r}")
        steps = kind.max_episode_steps if max_episode_steps is None else max_episode_steps
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"max_episode_steps must be an integer >= 1, got {steps!r}")
        self.metadata = {"render_modes": [], "autoreset_mode": AutoresetMode.SAME_STEP}
        self.kind, self.twins, self.envs_per_twin = kind, twins, envs_per_twin
        self.num_envs = len(twins) * envs_per_twin
        self.max_episode_steps = steps
        self.render_mode = None
        self.params = ParamArrays.build(kind, twins, envs_per_twin)
        self.single_observation_space = kind.observation_space
        self.single_action_space = kind.action_space
        self.observation_space = batch_space(kind.observation_space, self.num_envs)
        self.action_space = batch_space(kind.action_space, self.num_envs)
        delays = (
            np.broadcast_to(self.params["action_delay"], (self.num_envs,))
            if ("action_delay" in self.params and self.params.active("action_delay"))
            else None
        )
        shape = kind.action_space.shape or ()
        self._delay = (
            DelayLine(np.array(delays), shape, kind.action_space.dtype, follow_dtype=True)
            if delays is not None else None
        )
        noisy = [k for k, t in enumerate(twins) if any(t[name] for name in kind.noise_params)]
        self._noise = (
            _NoiseSource(noisy, len(twins), envs_per_twin, kind.noise_slots, kind.noise_dist)
            if noisy and kind.noise_slots
            else None
        )
        self._gens: list[np.random.Generator] = []
        self._state: Float64Array | None = None
        self._returns = np.zeros(self.num_envs)
        self._lengths = np.zeros(self.num_envs, dtype=np.int64)
        self._env_twin = np.repeat(np.arange(len(twins)), envs_per_twin)

    @property
    def state(self) -> Float64Array:
        """The true (state_dim, num_envs) float64 state."""
        if self._state is None:
            raise RuntimeError("call reset() before reading the state")
        return self._state

    def reset(
        self, *, seed: SeedArg = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict]:
        """Reset every sub-env; `seed` is an int (twin k gets seed + k), one int per twin, or None."""
        if seed is not None or not self._gens:
            entropies: list[int | None] = []
            self._gens = []
            for s in _twin_seeds(seed, len(self.twins)):
                gen, entropy = seeding.np_random(s)
                self._gens.append(gen)
                entropies.append(entropy)
            if self._noise is not None:
                self._noise.seed(entropies)
            self._np_random, self._np_random_seed = self._gens[0], entropies[0]
        idx = np.arange(self.num_envs)
        state, obs = self._start(idx, self.params, options)
        self._state = np.array(state, dtype=np.float64)
        self._returns = np.zeros(self.num_envs)
        self._lengths = np.zeros(self.num_envs, dtype=np.int64)
        if self._delay is not None:
            self._delay.restart()
        return obs, {}

    def _start(
        self, idx: IndexArray, p: Any, options: dict[str, Any] | None
    ) -> tuple[Float64Array, np.ndarray]:
        rngs = [self._gens[k] for k in self._env_twin[idx].tolist()]
        z = self._noise.for_reset(idx) if self._noise is not None else None
        state, obs = self.kind.reset(p, rngs, options, z)
        self._check("reset", idx.size, state=state, obs=obs)
        return state, obs

    def _check(self, method: str, m: int, **out: np.ndarray) -> None:
        """One line naming the kind, the method and the bad output (a broken user kind fails here)."""
        expected = {
            "state": ((self.kind.state_dim, m), "float64"),
            "obs": ((m, *tuple(self.kind.observation_space.shape)), "float32"),
            "reward": ((m,), "float64"),
            "terminated": ((m,), "bool"),
        }
        for key, value in out.items():
            shape, dtype = expected[key]
            if not isinstance(value, np.ndarray) or value.shape != shape or value.dtype != np.dtype(dtype):
                got = (
                    f"{value.dtype} {value.shape}" if isinstance(value, np.ndarray) else type(value).__name__
                )
                raise ConfigError(
                    f"twin kind {self.kind.name}: {method}() returned {key} as {got}, expected "
                    f"{dtype} {shape}; fix the kind's {method}() (see fedtwin.sim.kinds.TwinKind)"
                )

    def _check_actions(self, actions: Any) -> np.ndarray:
        act = np.asarray(actions)
        space = self.single_action_space
        if isinstance(space, spaces.Discrete):
            if act.shape != (self.num_envs,) or act.dtype.kind not in "iu":
                raise ValueError(
                    f"actions must be an integer array of shape ({self.num_envs},), "
                    f"got {act.dtype} {act.shape}"
                )
            if act.size and (act.min() < space.start or act.max() >= space.start + space.n):
                raise ValueError(
                    f"actions must be in [{space.start}, {space.start + space.n - 1}], "
                    f"got values {np.unique(act)}"
                )
            return act
        shape = (self.num_envs, *tuple(space.shape or ()))
        if act.shape != shape or act.dtype not in (np.float32, np.float64):
            raise ValueError(
                f"actions must be a float32 or float64 array of shape {shape}, got {act.dtype} {act.shape}"
            )
        return act

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, Float64Array, np.ndarray, np.ndarray, dict]:
        if self._state is None:
            raise RuntimeError("call reset() before step()")
        act = self._check_actions(actions)
        if self._delay is not None:
            act = self._delay.push(act)
        z = self._noise.next_step() if self._noise is not None else None
        state, obs, reward, terminated = self.kind.step(self._state, act, self.params, z)
        if self._lengths.sum() == 0:  # the first step after a reset: check the kind's outputs once
            self._check("step", self.num_envs, state=state, obs=obs, reward=reward, terminated=terminated)
        self._state = state
        self._returns += reward
        self._lengths += 1
        truncated = self._lengths >= self.max_episode_steps
        done = terminated | truncated
        if not done.any():
            return obs, reward, terminated, truncated, {}
        idx = np.flatnonzero(done)
        info = {
            "final_obs": obs,
            "_final_obs": done,
            "episode_return": np.where(done, self._returns, 0.0),
            "episode_length": np.where(done, self._lengths, 0),
            "_episode": done.copy(),
        }
        new_state, new_obs = self._start(idx, self.params.take(idx), None)
        state[:, idx] = new_state
        obs = obs.copy()
        obs[idx] = new_obs
        self._returns[idx] = 0.0
        self._lengths[idx] = 0
        if self._delay is not None:
            self._delay.restart(idx)
        return obs, reward, terminated, truncated, info

    def __repr__(self) -> str:
        return (
            f"KindVectorEnv(kind={self.kind.name}, twins={len(self.twins)}, "
            f"envs_per_twin={self.envs_per_twin}, num_envs={self.num_envs})"
        )


def make_vector_env(
    kind: AnyKind, twins: Sequence[Any], envs_per_twin: int = 1, max_episode_steps: int | None = None
) -> VectorEnv:
    """The trainers' one entry point for any kind: `KindVectorEnv`, or the env a `VectorKind` brings
    (CartPole's takes its `TwinSpec`s as well as `KindTwin`s)."""
    if isinstance(kind, VectorKind):
        return cast(
            VectorEnv,
            kind.vector_env(twins, envs_per_twin=envs_per_twin, max_episode_steps=max_episode_steps),
        )
    return KindVectorEnv(kind, twins, envs_per_twin=envs_per_twin, max_episode_steps=max_episode_steps)
