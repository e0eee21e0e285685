"""Rollout buffer, per-twin sampling and returns shared by PPO and REINFORCE (one copy, no drift).

Arrays are laid out `[T, K, E, ...]`: rollout step, twin, sub-environment of that twin. Every
random draw of twin k comes from twin k's own generator, so a twin's rollout does not depend on
which other twins share the batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import cast

import numpy as np
import torch
from gymnasium import spaces
from gymnasium.vector import VectorEnv

ActorFn = Callable[[torch.Tensor], torch.Tensor]
"""Batched actor: observations [K, N, D] -> logits (gaussian: means) [K, N, A] (twin k uses its own
parameters)."""
_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


@dataclass
class Rollout:
    """One rollout of every twin's sub-environments (the shared buffer of both trainers)."""

    obs: torch.Tensor
    """[T, K, E, D] observation each action was taken from."""
    actions: torch.Tensor
    """[T, K, E] sampled actions (int64), or [T, K, E, A] (float32, gaussian; before clipping to the
    action space, so that their log-probabilities are the policy's)."""
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


def log_prob_entropy(
    out: torch.Tensor, actions: torch.Tensor, log_std: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probability of `actions` and the entropy, per sample, for both action kinds (PPO, REINFORCE
    and the rollout share it): categorical from logits `out` [..., A] and int64 actions [...], or a
    diagonal gaussian (`log_std` broadcastable to the means `out` [..., A], actions [..., A]), summed
    over the action's dimensions like `torch.distributions.Normal(...).log_prob(a).sum(-1)`."""
    if log_std is None:
        logp_all = torch.log_softmax(out, dim=-1)
        logprob = logp_all.gather(-1, actions.unsqueeze(-1)).squeeze(-1)
        return logprob, -(logp_all.exp() * logp_all).sum(-1)
    log_std = log_std.expand_as(out)
    z = (actions - out) * torch.exp(-log_std)
    logprob = (-0.5 * z * z - log_std - _HALF_LOG_2PI).sum(-1)
    return logprob, (0.5 + _HALF_LOG_2PI + log_std).sum(-1)


def collect_rollout(
    env: VectorEnv,
    obs: np.ndarray,
    actor: ActorFn,
    rngs: Sequence[np.random.Generator],
    num_steps: int,
    device: torch.device,
    log_std: torch.Tensor | None = None,
    reward_scale: float = 1.0,
) -> tuple[Rollout, np.ndarray]:
    """Step all K twins' sub-envs `num_steps` times; returns the rollout and the obs to continue from.

    `log_std` ([K, A]) makes the policy a gaussian: action = mean + exp(log_std) * z with z ~ N(0, 1)
    from the twin's generator, sent to the env clipped to its action space. Rewards are stored times
    `reward_scale` (episode returns are the env's own).
    """
    k = len(rngs)
    n, d = obs.shape
    e = n // k
    if log_std is None:
        # One draw per twin per rollout: the whole stream of twin k is fixed by its generator alone.
        uniforms = torch.as_tensor(np.stack([rng.random((num_steps, e)) for rng in rngs], axis=1),
                                   device=device)
        actions = torch.zeros((num_steps, k, e), dtype=torch.int64, device=device)

        def act(t: int, obs_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
            logits = actor(obs_t)
            action = sample_actions(logits, uniforms[t].to(logits.dtype))
            return action, log_prob_entropy(logits, action)[0], action.view(n).cpu().numpy()
    else:
        a = log_std.shape[-1]
        space = cast(spaces.Box, env.single_action_space)
        low, high = np.asarray(space.low, dtype=np.float32), np.asarray(space.high, dtype=np.float32)
        normals = torch.as_tensor(
            np.stack([rng.standard_normal((num_steps, e, a), dtype=np.float32) for rng in rngs], axis=1),
            device=device,
        )
        actions = torch.zeros((num_steps, k, e, a), dtype=torch.float32, device=device)
        std_log = log_std.detach().unsqueeze(1)

        def act(t: int, obs_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
            mean = actor(obs_t)
            action = mean + torch.exp(std_log) * normals[t]
            sent = np.clip(action.view(n, a).cpu().numpy(), low, high)  # the twin gets a command in range
            return action, log_prob_entropy(mean, action, std_log)[0], sent

    b = _buffers(num_steps, n, d)
    logprobs = torch.zeros((num_steps, k, e), dtype=torch.float32, device=device)
    ep_returns: list[list[float]] = [[] for _ in range(k)]
    ep_lengths: list[list[int]] = [[] for _ in range(k)]
    for t in range(num_steps):
        b["obs"][t] = obs
        with torch.no_grad():
            action, logprobs[t], sent = act(t, torch.as_tensor(obs, device=device).view(k, e, d))
        actions[t] = action
        obs, reward, terminated, truncated, info = env.step(sent)
        _record(t, obs, reward, terminated, truncated, info, b, ep_returns, ep_lengths, e, reward_scale)
    return _rollout(b, actions, logprobs, ep_returns, ep_lengths, num_steps, k, e, device), obs


def _buffers(num_steps: int, n: int, d: int) -> dict[str, np.ndarray]:
    return {"obs": np.zeros((num_steps, n, d), dtype=np.float32),
            "next": np.zeros((num_steps, n, d), dtype=np.float32),
            "rewards": np.zeros((num_steps, n), dtype=np.float32),
            "term": np.zeros((num_steps, n), dtype=np.float32),
            "done": np.zeros((num_steps, n), dtype=np.float32)}


def _record(t: int, obs: np.ndarray, reward: np.ndarray, terminated: np.ndarray, truncated: np.ndarray,
            info: dict, b: dict[str, np.ndarray], ep_returns: list[list[float]], ep_lengths: list[list[int]],
            e: int, reward_scale: float) -> None:
    """Store one env step's results at row t (the final obs of finished episodes as next obs)."""
    done = terminated | truncated
    b["rewards"][t] = reward if reward_scale == 1.0 else reward * reward_scale
    b["term"][t], b["done"][t] = terminated, done
    b["next"][t] = obs
    if done.any():
        final = info["_final_obs"]
        b["next"][t][final] = np.stack(info["final_obs"][final]).astype(np.float32)
        for i in np.flatnonzero(info["_episode"]):
            ep_returns[i // e].append(float(info["episode_return"][i]))
            ep_lengths[i // e].append(int(info["episode_length"][i]))


def _rollout(b: dict[str, np.ndarray], actions: torch.Tensor, logprobs: torch.Tensor,
             ep_returns: list[list[float]], ep_lengths: list[list[int]], num_steps: int, k: int, e: int,
             device: torch.device) -> Rollout:
    def to_t(a: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(a, device=device).view(num_steps, k, e, *a.shape[2:])

    return Rollout(
        obs=to_t(b["obs"]),
        actions=actions,
        logprobs=logprobs,
        rewards=to_t(b["rewards"]),
        next_obs=to_t(b["next"]),
        terminated=to_t(b["term"]),
        dones=to_t(b["done"]),
        episode_returns=ep_returns,
        episode_lengths=ep_lengths,
    )


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
