"""Rollout buffer, per-twin sampling and returns shared by PPO and REINFORCE (one copy, no drift).

Arrays are laid out `[T, K, E, ...]`: rollout step, twin, sub-environment of that twin. Every
random draw of twin k comes from twin k's own generator, so a twin's rollout does not depend on
which other twins share the batch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from fedtwin.sim.envs import TwinCartPoleVectorEnv

ActorFn = Callable[[torch.Tensor], torch.Tensor]
"""Batched actor: observations [K, N, D] -> logits [K, N, A] (twin k uses its own parameters)."""


@dataclass
class Rollout:
    """One rollout of every twin's sub-environments (the shared buffer of both trainers)."""

    obs: torch.Tensor
    """[T, K, E, D] observation each action was taken from."""
    actions: torch.Tensor
    """[T, K, E] sampled actions (int64)."""
    logprobs: torch.Tensor
    """[T, K, E] log-probability of the sampled action under the behaviour policy."""
    rewards: torch.Tensor
    """[T, K, E] reward of the step."""
    next_obs: torch.Tensor
    """[T, K, E, D] state the step led to: the terminal obs when the episode ended, not the reset one."""
    terminated: torch.Tensor
    """[T, K, E] 1.0 where the episode reached a terminal state: its future value is 0."""
    dones: torch.Tensor
    """[T, K, E] 1.0 where the episode ended (terminated or truncated): returns do not flow back across it."""
    episode_returns: list[list[float]] = field(default_factory=list)
    """Per twin, returns of the episodes that finished during the rollout."""
    episode_lengths: list[list[int]] = field(default_factory=list)

    def flat(self, x: torch.Tensor) -> torch.Tensor:
        """[T, K, E, ...] -> [K, T*E, ...]: one batch per twin."""
        t, k, e = x.shape[:3]
        return x.transpose(0, 1).reshape(k, t * e, *x.shape[3:])


def sample_actions(logits: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """Categorical sampling by inverse CDF from given uniforms in [0, 1) (so the caller owns the RNG)."""
    cdf = torch.softmax(logits, dim=-1).cumsum(dim=-1)[..., :-1]
    return (cdf <= uniforms.unsqueeze(-1)).sum(dim=-1)


def collect_rollout(
    env: TwinCartPoleVectorEnv,
    obs: np.ndarray,
    actor: ActorFn,
    rngs: Sequence[np.random.Generator],
    num_steps: int,
    device: torch.device,
) -> tuple[Rollout, np.ndarray]:
    """Step all K twins' sub-envs `num_steps` times; returns the rollout and the obs to continue from."""
    k = len(rngs)
    n, d = obs.shape
    e = n // k
    # One draw per twin per rollout: the whole stream of twin k is fixed by its generator alone.
    uniforms = torch.as_tensor(np.stack([rng.random((num_steps, e)) for rng in rngs], axis=1), device=device)
    b_obs = np.zeros((num_steps, n, d), dtype=np.float32)
    b_next = np.zeros((num_steps, n, d), dtype=np.float32)
    b_rewards = np.zeros((num_steps, n), dtype=np.float32)
    b_term = np.zeros((num_steps, n), dtype=np.float32)
    b_done = np.zeros((num_steps, n), dtype=np.float32)
    actions = torch.zeros((num_steps, k, e), dtype=torch.int64, device=device)
    logprobs = torch.zeros((num_steps, k, e), dtype=torch.float32, device=device)
    ep_returns: list[list[float]] = [[] for _ in range(k)]
    ep_lengths: list[list[int]] = [[] for _ in range(k)]
    for t in range(num_steps):
        b_obs[t] = obs
        with torch.no_grad():
            logits = actor(torch.as_tensor(obs, device=device).view(k, e, d))
            action = sample_actions(logits, uniforms[t].to(logits.dtype))
            logprobs[t] = torch.log_softmax(logits, dim=-1).gather(-1, action.unsqueeze(-1)).squeeze(-1)
        actions[t] = action
        obs, reward, terminated, truncated, info = env.step(action.view(n).cpu().numpy())
        done = terminated | truncated
        b_rewards[t], b_term[t], b_done[t] = reward, terminated, done
        b_next[t] = obs
        if done.any():
            final = info["_final_obs"]
            b_next[t][final] = np.stack(info["final_obs"][final]).astype(np.float32)
            for i in np.flatnonzero(info["_episode"]):
                ep_returns[i // e].append(float(info["episode_return"][i]))
                ep_lengths[i // e].append(int(info["episode_length"][i]))

    def to_t(a: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(a, device=device).view(num_steps, k, e, *a.shape[2:])

    rollout = Rollout(
        obs=to_t(b_obs),
        actions=actions,
        logprobs=logprobs,
        rewards=to_t(b_rewards),
        next_obs=to_t(b_next),
        terminated=to_t(b_term),
        dones=to_t(b_done),
        episode_returns=ep_returns,
        episode_lengths=ep_lengths,
    )
    return rollout, obs


def gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    next_values: torch.Tensor,
    terminated: torch.Tensor,
    dones: torch.Tensor,
    gamma: float,
    lam: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalized advantage estimation over the leading time axis -> (advantages, returns).

    `next_values[t]` is the value of the state step t led to (the final obs when the episode
    ended), so a time-limit truncation bootstraps from it while a termination uses 0. With
    `lam=1` and zero values this is the discounted reward-to-go REINFORCE uses.
    """
    advantages = torch.zeros_like(rewards)
    last = torch.zeros_like(rewards[0])
    for t in reversed(range(rewards.shape[0])):
        delta = rewards[t] + gamma * next_values[t] * (1.0 - terminated[t]) - values[t]
        last = delta + gamma * lam * (1.0 - dones[t]) * last
        advantages[t] = last
    return advantages, advantages + values
