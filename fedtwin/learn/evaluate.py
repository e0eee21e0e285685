"""Greedy evaluation of a model on any twin set, all episodes batched in one vector env."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedtwin.core.errors import ConfigError
from fedtwin.core.seeding import derive_seed
from fedtwin.policy.layout import LayoutError, PolicySpec, greedy_actions, params_from_bytes
from fedtwin.sim.kind_env import make_vector_env
from fedtwin.sim.kind_registry import get_kind, kind_of
from fedtwin.sim.kinds import AnyKind, KindTwin, policy_sizes
from fedtwin.sim.twins import TwinSpec


def load_model(data: bytes, source: str, kind: AnyKind | None = None) -> tuple[np.ndarray, PolicySpec]:
    """A model file a user hands in, checked before anything is built from it: a safetensors file,
    its tensors exactly the layout it declares (bounded, see `fedtwin.core.limits`), sized for the twin
    kind's spaces (cart-pole by default), and finite. Anything else is bad input (ConfigError, exit 2),
    one line naming the file."""
    kind = kind or get_kind("cartpole")
    try:
        params, spec = params_from_bytes(data, None)
    except LayoutError as exc:
        raise ConfigError(f"model {source}: {exc}; pass a model fedtwin wrote (e.g. a run's "
                          "report/final.safetensors)") from exc
    obs_dim, action, act_dim = policy_sizes(kind)
    twins = "cart-pole" if kind.name == "cartpole" else kind.name
    fix = f"pass a model trained on {twins} twins"
    if spec.obs_dim != obs_dim:
        raise ConfigError(f"model {source} takes {spec.obs_dim} observations, but {twins} twins give "
                          f"{obs_dim}; {fix}")
    if spec.action != action:
        raise ConfigError(f"model {source} has {spec.action} actions, but {twins} twins take "
                          f"{action} ones; {fix}")
    if spec.act_dim != act_dim:
        what = ("chooses among {} actions" if spec.action == "categorical" else "gives {} action values"
                ).format(spec.act_dim)
        raise ConfigError(f"model {source} {what}, but {twins} twins take {act_dim}; {fix}")
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
    twins: Sequence[TwinSpec | KindTwin],
    episodes: int,
    seed: int,
    max_episode_steps: int | None = None,
) -> EvalResult:
    """Run `episodes` greedy episodes per twin at once; each sub-env counts only its first episode.

    Greedy is the argmax action, or a gaussian policy's mean clipped to the action space; episodes
    last at most the kind's limit (or `max_episode_steps`)."""
    env: Any = make_vector_env(kind_of(twins), twins, envs_per_twin=episodes,  # reset: a seed per twin
                               max_episode_steps=max_episode_steps)
    obs, _ = env.reset(seed=[derive_seed(seed, twin.id) for twin in twins])
    returns = np.zeros(env.num_envs)
    finished = np.zeros(env.num_envs, dtype=bool)
    space = env.single_action_space
    while not finished.all():
        actions = greedy_actions(spec, params, obs)
        if spec.action == "gaussian":
            actions = np.clip(actions, space.low, space.high).astype(np.float32)
        obs, rewards, terminated, truncated, _ = env.step(actions)
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
