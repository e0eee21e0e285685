"""Local training of K twins at once: rollouts and PPO or REINFORCE updates, from the global model.

A pure function of its arguments: global weights, twins, one seed per twin, the training config
and, for local DP, the noise mechanism. It returns each twin's new weights, env-step count and
metrics; it reads and writes no store and no accountant (the caller charges `dp_steps`).
Each twin draws every random number from its own generator seeded from `seeds[k]`, and trains
exactly as it would alone (`batched.py`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from fedtwin.config import TrainConfig
from fedtwin.learn.batched import FusedAdam, Params, StackedPolicy
from fedtwin.learn.device_rollout import DeviceCollector
from fedtwin.learn.dp_sgd import LocalDP
from fedtwin.learn.ppo import ppo_update
from fedtwin.learn.reinforce import reinforce_update
from fedtwin.learn.rollout import collect_rollout
from fedtwin.learn.runtime import resolve_device, trim_heap
from fedtwin.policy.layout import LOG_STD, PolicyKind, PolicySpec, layout_for
from fedtwin.policy.network import PolicyNet
from fedtwin.sim.cartpole_torch import TorchTwinCartPole
from fedtwin.sim.kind_env import make_vector_env
from fedtwin.sim.kind_registry import kind_of
from fedtwin.sim.kinds import AnyKind, KindTwin, policy_sizes
from fedtwin.sim.twins import TwinSpec

Twin = TwinSpec | KindTwin
ENV_BACKENDS = ("numpy", "torch")


@dataclass
class LocalResult:
    """One twin's local update: new parameters, how many env steps produced them, and metrics."""

    params: np.ndarray
    """float32 (P,) parameters after local training."""
    num_samples: int
    """Environment steps this twin took (the FedAvg weight)."""
    metrics: dict[str, float] = field(default_factory=dict)
    """cleanrl-style tags: `charts/episodic_return`, `losses/policy_loss`, ..."""
    dp_steps: int = 0
    """DP-SGD steps taken (local DP), each to be charged to the twin's privacy accountant."""


def policy_spec(train_cfg: TrainConfig, twin_kind: AnyKind | None = None) -> PolicySpec:
    """PPO trains an actor-critic; REINFORCE the reference systems' actor-only net (4-32-16-2).

    The sizes come from the twin kind's spaces (CartPole's 4 observations and 2 actions without one):
    a Discrete action space gives a categorical policy, a Box a gaussian one.
    """
    kind: PolicyKind = "actor_critic" if train_cfg.algo == "ppo" else "reinforce"
    if twin_kind is None:
        return PolicySpec(kind, train_cfg.hidden_sizes)
    obs_dim, action, act_dim = policy_sizes(twin_kind)
    return PolicySpec(kind, train_cfg.hidden_sizes, obs_dim, act_dim, action)


def train_twins(
    global_params: np.ndarray,
    twins: Sequence[Twin],
    seeds: Sequence[int],
    cfg: TrainConfig,
    device: str = "cpu",
    dp: LocalDP | None = None,
    env_backend: str = "numpy",
) -> list[LocalResult]:
    """Train every twin from `global_params` for `cfg.updates` rollout+update iterations, batched.

    `dp` (local differential privacy) makes every optimizer step DP-SGD; its entry k is twin k's.
    Each result's `dp_steps` is what that twin's privacy accountant must be charged for.
    `env_backend="torch"` (CartPole twins) steps the twins with `TorchTwinCartPole` on `device` and
    collects each rollout there (`DeviceCollector`): on a GPU nothing goes back to the host per step.
    Its random streams are its own, so results differ from the default NumPy env's (the exact one)
    while a seed still reproduces them on a given device.
    """
    if len(twins) != len(seeds) or not twins:
        raise ValueError(
            f"need one seed per twin and at least one twin (twins={len(twins)}, seeds={len(seeds)})"
        )
    if env_backend not in ENV_BACKENDS:
        raise ValueError(f"env_backend must be one of {', '.join(ENV_BACKENDS)}, got {env_backend!r}")
    dev = resolve_device(device)
    twin_kind = kind_of(twins)
    spec = policy_spec(cfg, twin_kind)
    layout = layout_for(spec)
    k = len(twins)
    global_vec = torch.as_tensor(np.asarray(global_params, dtype=np.float32), device=dev)
    anchor: Params = layout.to_dict(global_vec)
    params: Params = {
        n: v.unsqueeze(0).repeat(k, *([1] * v.dim())).requires_grad_() for n, v in anchor.items()
    }
    net = StackedPolicy(PolicyNet(spec))  # uninitialized template: `params` supply the weights
    # fused: one kernel per tensor instead of ~10 elementwise passes
    optimizer = FusedAdam(params.values(), lr=cfg.learning_rate, eps=1e-5)

    dp_steps_before = dp.steps if dp is not None else 0
    rngs = [np.random.default_rng(seed) for seed in seeds]
    env_seeds = [int(rng.integers(2**31 - 1)) for rng in rngs]
    log_std = params.get(LOG_STD)  # gaussian policies: [K, A]
    reward_scale = cfg.reward_scale
    env: Any = None
    collector: DeviceCollector | None = None
    if env_backend == "torch":
        cartpoles = [t for t in twins if isinstance(t, TwinSpec)]
        if len(cartpoles) != k or dp is not None:
            raise ValueError("env_backend 'torch' trains CartPole twins without local DP only")
        collector = DeviceCollector(TorchTwinCartPole(cartpoles, envs_per_twin=cfg.num_envs, device=dev),
                                    net, cfg.num_steps)
        collector.reset(seed=env_seeds)
    else:
        env = make_vector_env(twin_kind, twins, envs_per_twin=cfg.num_envs)  # reset takes a seed per twin
        obs, _ = env.reset(seed=env_seeds)
    stats: dict[str, list[torch.Tensor]] = {}
    episodes: list[list[float]] = [[] for _ in range(k)]
    lengths: list[list[int]] = [[] for _ in range(k)]
    try:
        for _update in range(cfg.updates):
            trim_heap()
            if collector is not None:
                ro = collector.collect(params).to_rollout()
                if reward_scale != 1.0:
                    ro.rewards.mul_(reward_scale)  # the collector's buffer: rewritten by the next collect
            else:
                ro, obs = collect_rollout(env, obs, net.actor_fn(params), rngs, cfg.num_steps, dev, log_std,
                                          reward_scale)
            if cfg.algo == "ppo":
                new = ppo_update(net, params, anchor, optimizer, ro, rngs, cfg, dp,
                                 collector.permutations if collector is not None else None)
            else:
                new = reinforce_update(net, params, anchor, optimizer, ro, cfg, rngs, dp)
            for tag, values in new.items():
                stats.setdefault(tag, []).extend(values)
            for i in range(k):
                episodes[i] += ro.episode_returns[i]
                lengths[i] += ro.episode_lengths[i]
    finally:
        if env is not None:
            env.close()

    flat = torch.cat([p.detach().reshape(k, -1) for p in params.values()], dim=1).cpu().numpy()
    means = {tag: torch.stack(v).mean(dim=0).cpu().numpy() for tag, v in stats.items()}
    results = []
    for i in range(k):
        metrics = {tag: float(m[i]) for tag, m in means.items()}
        metrics["charts/episodes"] = float(len(episodes[i]))
        if episodes[i]:
            metrics["charts/episodic_return"] = float(np.mean(episodes[i]))
            metrics["charts/episodic_length"] = float(np.mean(lengths[i]))
        results.append(LocalResult(flat[i].copy(), cfg.updates * cfg.num_steps * cfg.num_envs, metrics,
                                   dp.steps - dp_steps_before if dp is not None else 0))
    return results


def train_twin(
    global_params: np.ndarray, twin: Twin, seed: int, cfg: TrainConfig, device: str = "cpu",
    dp: LocalDP | None = None,
) -> LocalResult:
    """The pool engine's unit: one twin, exactly `train_twins` with K=1."""
    return train_twins(global_params, [twin], [seed], cfg, device, dp)[0]
