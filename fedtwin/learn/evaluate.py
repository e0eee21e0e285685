"""Greedy evaluation of a model on any twin set, all episodes batched in one vector env."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedtwin.core.errors import ConfigError
from fedtwin.core.seeding import derive_seed
from fedtwin.policy.layout import LayoutError, PolicySpec, greedy_actions, params_from_bytes
from fedtwin.sim.envs import TwinCartPoleVectorEnv
from fedtwin.sim.twins import TwinSpec

CARTPOLE = PolicySpec("reinforce", (1,))
"""The observation and action sizes of every twin (4 numbers in, push left or right out)."""


def load_model(data: bytes, source: str) -> tuple[np.ndarray, PolicySpec]:
    """A model file a user hands in, checked before anything is built from it: a safetensors file,
    its tensors exactly the layout it declares (bounded, see `fedtwin.core.limits`), sized for cart-pole
    twins, and finite. Anything else is bad input (ConfigError, exit 2), one line naming the file."""
    try:
        params, spec = params_from_bytes(data, None)
    except LayoutError as exc:
        raise ConfigError(f"model {source}: {exc}; pass a model fedtwin wrote (e.g. a run's "
                          "report/final.safetensors)") from exc
    if spec.obs_dim != CARTPOLE.obs_dim:
        raise ConfigError(f"model {source} takes {spec.obs_dim} observations, but cart-pole twins give "
                          f"{CARTPOLE.obs_dim}; pass a model trained on cart-pole twins")
    if spec.act_dim != CARTPOLE.act_dim:
        raise ConfigError(f"model {source} chooses among {spec.act_dim} actions, but cart-pole twins take "
                          f"{CARTPOLE.act_dim}; pass a model trained on cart-pole twins")
    if not np.all(np.isfinite(params)):
        raise ConfigError(f"model {source} holds non-finite weights (NaN or Inf); its training diverged, "
                          "pass another model")
    return params, spec


@dataclass
class EvalResult:
    per_twin_mean: dict[str, float]
    per_twin_std: dict[str, float]
    mean_return: float
    episodes: int

    def to_json(self) -> dict[str, Any]:
        return {
            "mean_return": self.mean_return,
            "episodes": self.episodes,
            "per_twin": self.per_twin_mean,
            "per_twin_std": self.per_twin_std,
        }


def evaluate_policy(
    params: np.ndarray,
    spec: PolicySpec,
    twins: Sequence[TwinSpec],
    episodes: int,
    seed: int,
    max_episode_steps: int = 500,
) -> EvalResult:
    """Run `episodes` greedy episodes per twin at once; each sub-env counts only its first episode."""
    env = TwinCartPoleVectorEnv(twins, envs_per_twin=episodes, max_episode_steps=max_episode_steps)
    obs, _ = env.reset(seed=[derive_seed(seed, twin.id) for twin in twins])
    returns = np.zeros(env.num_envs)
    finished = np.zeros(env.num_envs, dtype=bool)
    while not finished.all():
        obs, rewards, terminated, truncated, _ = env.step(greedy_actions(spec, params, obs))
        returns += np.where(finished, 0.0, rewards)
        finished |= terminated | truncated
    env.close()
    by_twin = returns.reshape(len(twins), episodes)
    means = by_twin.mean(axis=1)
    return EvalResult(
        per_twin_mean={t.id: float(m) for t, m in zip(twins, means, strict=True)},
        per_twin_std={t.id: float(s) for t, s in zip(twins, by_twin.std(axis=1), strict=True)},
        mean_return=float(means.mean()),
        episodes=episodes,
    )
