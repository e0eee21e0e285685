"""A kind from a plain gymnasium env: a class or factory that takes the twin's parameters as keywords.

The easy way in for an existing simulator: `GymnasiumKind("motor", MotorEnv, params=(...))`, or just
`module:MotorEnv` (parameters read from the keyword defaults of its signature, episode limit from
gymnasium's registry). Each sub-env is its own Python env, stepped one after another by gymnasium's
`SyncVectorEnv` (SAME_STEP autoreset), so it is slower than a vectorized `TwinKind` by roughly the
number of sub-envs; the episode info keys are those of `KindVectorEnv`, so trainers see no difference.
Seeds: sub-env i gets `seed + i` (gymnasium's rule; with one env per twin, twin k gets `seed + k`).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from typing import Any

import gymnasium
import numpy as np
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, SyncVectorEnv, VectorEnv, VectorWrapper
from gymnasium.wrappers import TimeLimit

from fedtwin.core.errors import ConfigError
from fedtwin.sim.kinds import KindTwin, Param

Factory = Callable[..., gymnasium.Env]


class GymnasiumKind:
    """A twin kind whose twins are gymnasium envs made by `factory(**twin_parameters)`."""

    def __init__(
        self, name: str, factory: Factory, params: Sequence[Param], max_episode_steps: int, source: str = ""
    ) -> None:
        self.name, self.factory = name, factory
        self.params: tuple[Param, ...] = tuple(params)
        self.max_episode_steps = max_episode_steps
        where = source or name
        if (
            isinstance(max_episode_steps, bool)
            or not isinstance(max_episode_steps, int)
            or max_episode_steps < 1
        ):
            raise ConfigError(
                f"twin kind {where}: max_episode_steps must be an integer >= 1, "
                f"got {max_episode_steps!r}; pass it to GymnasiumKind(...)"
            )
        try:
            probe = factory(**{p.name: p.default for p in self.params})
        except Exception as exc:
            raise ConfigError(
                f"twin kind {where}: {getattr(factory, '__name__', factory)}(**defaults) failed "
                f"({type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0]}); "
                "it must build an env from keyword parameters"
            ) from None
        if not isinstance(probe, gymnasium.Env):
            raise ConfigError(
                f"twin kind {where}: the factory returned {type(probe).__name__}, "
                "not a gymnasium.Env; return an env"
            )
        obs_space, action_space = probe.observation_space, probe.action_space
        probe.close()
        if not isinstance(obs_space, spaces.Box) or not isinstance(
            action_space, spaces.Box | spaces.Discrete
        ):
            raise ConfigError(
                f"twin kind {where}: spaces must be a Box observation and a Box or Discrete "
                f"action, got {obs_space} and {action_space}"
            )
        self.observation_space: spaces.Box = obs_space
        self.action_space: spaces.Space[Any] = action_space

    @classmethod
    def from_factory(cls, factory: Factory, name: str, source: str) -> GymnasiumKind:
        """Parameters from the factory's numeric keyword defaults, the limit from gymnasium's registry."""
        params = []
        for parameter in inspect.signature(factory).parameters.values():
            default = parameter.default
            if (
                isinstance(default, bool)
                or not isinstance(default, int | float)
                or not math.isfinite(default)
            ):
                continue
            params.append(Param(parameter.name, float(default), integer=isinstance(default, int)))
        steps = _registered_limit(factory)
        if steps is None:
            raise ConfigError(
                f"twin kind {source}: no episode limit known for {factory.__name__}; wrap it as "
                "GymnasiumKind(name, factory, params, max_episode_steps=...) and name that object"
            )
        return cls(name, factory, params, steps, source)

    def vector_env(
        self, twins: Sequence[KindTwin], envs_per_twin: int = 1, max_episode_steps: int | None = None
    ) -> VectorEnv:
        """gymnasium's SyncVectorEnv over one env per sub-env, with KindVectorEnv's episode info."""
        steps = max_episode_steps or self.max_episode_steps
        for t in twins:
            if not isinstance(t, KindTwin) or t.kind != self.name:
                raise ConfigError(
                    f"twin {getattr(t, 'id', t)!r} is not a {self.name} twin; "
                    "a run has one kind, so list only twins of that kind in its fleet"
                )
        fns = [_maker(self.factory, t.as_dict(), steps) for t in twins for _ in range(envs_per_twin)]
        return EpisodeInfo(SyncVectorEnv(fns, autoreset_mode=AutoresetMode.SAME_STEP))


def _maker(factory: Factory, values: dict[str, float], steps: int) -> Callable[[], gymnasium.Env]:
    return lambda: TimeLimit(factory(**values), max_episode_steps=steps)


def _registered_limit(factory: Factory) -> int | None:
    target = f"{factory.__module__}:{factory.__qualname__}"
    for spec in gymnasium.registry.values():
        if spec.entry_point == target and spec.max_episode_steps:
            return int(spec.max_episode_steps)
    return None


class EpisodeInfo(VectorWrapper):
    """KindVectorEnv's episode info on a SAME_STEP vector env: `final_obs` as one array (rows of running
    sub-envs hold their observation), `episode_return`, `episode_length` and the mask `_episode`."""

    def __init__(self, env: VectorEnv) -> None:
        super().__init__(env)
        self._returns = np.zeros(self.num_envs)
        self._lengths = np.zeros(self.num_envs, dtype=np.int64)

    def reset(self, *, seed: Any = None, options: dict[str, Any] | None = None) -> tuple[Any, dict]:
        self._returns[:] = 0.0
        self._lengths[:] = 0
        return self.env.reset(seed=seed, options=options)

    def step(self, actions: Any) -> tuple[Any, Any, Any, Any, dict]:
        obs, reward, terminated, truncated, info = self.env.step(actions)
        reward = np.asarray(reward, dtype=np.float64)
        self._returns += reward
        self._lengths += 1
        done = np.logical_or(terminated, truncated)
        if done.any():
            info = dict(info)
            final = np.array(obs, copy=True)  # gymnasium's is an object array; ours is the obs array
            for i in np.flatnonzero(done):
                final[i] = info["final_obs"][i]
            info["final_obs"], info["_final_obs"] = final, done
            info["episode_return"] = np.where(done, self._returns, 0.0)
            info["episode_length"] = np.where(done, self._lengths, 0)
            info["_episode"] = done.copy()
            self._returns[done] = 0.0
            self._lengths[done] = 0
        return obs, reward, terminated, truncated, info
