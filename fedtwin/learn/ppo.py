"""PPO (Schulman et al. 2017) for K twins at once, computed as CleanRL's ppo.py computes it.

One update, per twin, from one rollout:
1. the critic's values of the rollout, then GAE advantages and returns;
2. `epochs` passes over the rollout, shuffled and cut into `minibatches`;
3. per minibatch, one step on the clipped surrogate loss + the clipped value loss - the entropy
   bonus (+ the FedProx term), the gradient norm clipped per twin.
With local DP (`dp`), step 2-3 are DP-SGD steps on Poisson minibatches instead (`dp_sgd.py`).
Every random draw of twin k (the shuffles, the Poisson samples) comes from twin k's generator.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np
import torch

from fedtwin.config import TrainConfig
from fedtwin.learn.batched import (
    Optimizer,
    Params,
    StackedPolicy,
    normalize,
    optimizer_step,
    proximal_term,
    take,
)
from fedtwin.learn.dp_sgd import LocalDP, masked_mean, poisson_minibatch, private_step
from fedtwin.learn.rollout import Rollout, gae, log_prob_entropy
from fedtwin.policy.layout import LOG_STD

Stats = dict[str, list[torch.Tensor]]
"""CleanRL's tags (`losses/policy_loss`, ...) -> one [K] tensor per optimizer step."""


# -------------------------------------------------------------------------------- the loss
class PPOTerms(NamedTuple):
    """Per-sample PPO quantities, any leading shape."""

    pg: torch.Tensor
    """Clipped surrogate loss."""
    v: torch.Tensor
    """Clipped squared value error (the value loss is half of it)."""
    entropy: torch.Tensor
    logratio: torch.Tensor
    ratio: torch.Tensor


def ppo_terms(
    logits: torch.Tensor,
    value: torch.Tensor,
    actions: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    returns: torch.Tensor,
    old_values: torch.Tensor,
    clip_coef: float,
    log_std: torch.Tensor | None = None,
) -> PPOTerms:
    """CleanRL's PPO loss terms per sample, shared by the batched and the per-sample (DP) update;
    `logits` are a gaussian's means when `log_std` is given (ppo_continuous_action)."""
    newlogprob, entropy = log_prob_entropy(logits, actions, log_std)
    logratio = newlogprob - old_logprobs
    ratio = logratio.exp()
    # Policy loss
    pg_loss1 = -advantages * ratio
    pg_loss2 = -advantages * torch.clamp(ratio, 1 - clip_coef, 1 + clip_coef)
    # Value loss (clipped, as CleanRL's default)
    v_clipped = old_values + torch.clamp(value - old_values, -clip_coef, clip_coef)
    v = torch.max((value - returns) ** 2, (v_clipped - returns) ** 2)
    return PPOTerms(torch.max(pg_loss1, pg_loss2), v, entropy, logratio, ratio)


# ------------------------------------------------------------------- values of the rollout
def rollout_values(net: StackedPolicy, params: Params, ro: Rollout) -> tuple[torch.Tensor, torch.Tensor]:
    """V(obs) and V(next_obs), [K, T*E] each, from one pass over T+1 steps instead of two over T.

    next_obs[t] is obs[t+1] except where an episode ended at t. After a termination GAE multiplies
    the next value by 0, so only time-limit truncations (a few per rollout) need V(final obs), which
    is computed for those rows alone.
    """
    t, k, e = ro.rewards.shape
    both = net.value(params, ro.flat(torch.cat([ro.obs, ro.next_obs[-1:]]))).view(k, t + 1, e)
    values, next_values = both[:, :-1].reshape(k, t * e), both[:, 1:].reshape(k, t * e).clone()
    truncated = ro.flat(ro.dones - ro.terminated) > 0  # [K, T*E]
    if bool(truncated.any()):
        counts = truncated.sum(dim=1)
        first = torch.argsort((~truncated).to(torch.int8), dim=1, stable=True)[:, : int(counts.max())]
        final_values = net.value(params, take(ro.flat(ro.next_obs), first))  # [K, R]; R = most per twin
        padding = torch.arange(first.shape[1], device=first.device) >= counts.unsqueeze(1)
        next_values.scatter_(1, first, torch.where(padding, next_values.gather(1, first), final_values))
    return values, next_values


# ------------------------------------------------------------------------------ the update
def ppo_update(
    net: StackedPolicy,
    params: Params,
    anchor: Params,
    optimizer: Optimizer,
    ro: Rollout,
    rngs: Sequence[np.random.Generator],
    cfg: TrainConfig,
    dp: LocalDP | None = None,
    permutations: Callable[[int], torch.Tensor] | None = None,
) -> Stats:
    """CleanRL ppo.py's update (GAE, clipped surrogate and value loss, entropy), per twin.

    Each epoch's minibatch order is a permutation per twin from its generator in `rngs`, or from
    `permutations(batch)` ([K, batch], e.g. drawn on the device by the torch env backend)."""
    # bootstrap value if not done: advantages and returns by GAE
    with torch.no_grad():
        values, next_values = rollout_values(net, params, ro)
        t, k, e = ro.rewards.shape
        advantages, returns = gae(
            ro.rewards,
            values.view(k, t, e).transpose(0, 1),
            next_values.view(k, t, e).transpose(0, 1),
            ro.terminated,
            ro.dones,
            cfg.gamma,
            cfg.gae_lambda,
        )

    # flatten the batch: [K, T*E, ...], one batch per twin
    b_obs, b_actions, b_logprobs = ro.flat(ro.obs), ro.flat(ro.actions), ro.flat(ro.logprobs)
    b_advantages, b_returns, b_values = ro.flat(advantages), ro.flat(returns), values
    if dp is not None:
        b = {"obs": b_obs, "actions": b_actions, "logprobs": b_logprobs, "values": b_values,
             "advantages": normalize(b_advantages) if cfg.norm_adv else b_advantages, "returns": b_returns}
        return ppo_epochs_private(net, params, anchor, optimizer, b, rngs, cfg, dp)

    # optimize the policy and value network
    log_std = params[LOG_STD].unsqueeze(1) if LOG_STD in params else None  # [K, 1, A]
    batch = b_obs.shape[1]
    minibatch_size = batch // cfg.minibatches
    stats: Stats = {}
    for _epoch in range(cfg.epochs):
        if permutations is not None:
            b_inds = permutations(batch)
        else:
            b_inds = torch.as_tensor(np.stack([rng.permutation(batch) for rng in rngs]), device=b_obs.device)
        # Shuffle each tensor once per epoch: a minibatch is then a slice (a view), not a gather.
        s_obs, s_actions, s_logprobs, s_advantages, s_returns, s_values = (
            take(x, b_inds) for x in (b_obs, b_actions, b_logprobs, b_advantages, b_returns, b_values))
        for start in range(0, batch, minibatch_size):
            mb = slice(start, start + minibatch_size)
            mb_obs, mb_advantages = s_obs[:, mb], s_advantages[:, mb]
            if cfg.norm_adv:
                mb_advantages = normalize(mb_advantages)
            terms = ppo_terms(net.logits(params, mb_obs), net.value(params, mb_obs), s_actions[:, mb],
                              s_logprobs[:, mb], mb_advantages, s_returns[:, mb], s_values[:, mb],
                              cfg.clip_coef, log_std)
            ratio, logratio = terms.ratio, terms.logratio
            with torch.no_grad():
                approx_kl = ((ratio - 1) - logratio).mean(dim=1)
                clipfrac = ((ratio - 1.0).abs() > cfg.clip_coef).float().mean(dim=1)
            pg_loss = terms.pg.mean(dim=1)
            v_loss = 0.5 * terms.v.mean(dim=1)
            entropy_loss = terms.entropy.mean(dim=1)
            loss = pg_loss - cfg.ent_coef * entropy_loss + cfg.vf_coef * v_loss
            if cfg.proximal_mu > 0:
                loss = loss + proximal_term(params, anchor, cfg.proximal_mu)
            optimizer_step(optimizer, params, loss, cfg.max_grad_norm)

            for tag, value in (
                ("losses/policy_loss", pg_loss),
                ("losses/value_loss", v_loss),
                ("losses/entropy", entropy_loss),
                ("losses/approx_kl", approx_kl),
                ("losses/clipfrac", clipfrac),
            ):
                stats.setdefault(tag, []).append(value.detach())
    return stats


# ------------------------------------------------------------------- the update as DP-SGD
def ppo_epochs_private(
    net: StackedPolicy,
    params: Params,
    anchor: Params,
    optimizer: Optimizer,
    b: dict[str, torch.Tensor],
    rngs: Sequence[np.random.Generator],
    cfg: TrainConfig,
    dp: LocalDP,
) -> Stats:
    """PPO's epochs as DP-SGD: `minibatches` Poisson minibatches (rate 1/minibatches) per epoch.

    Advantages arrive normalized over the whole rollout: per-minibatch normalization would make one
    sample's gradient depend on the others in its batch, which per-sample clipping cannot bound.
    """
    actor, critic = net.single("actor"), net.single("critic")

    def sample_loss(p: Params, s: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        t = ppo_terms(actor(p, s["obs"]), critic(p, s["obs"]).squeeze(-1), s["actions"], s["logprobs"],
                      s["advantages"], s["returns"], s["values"], cfg.clip_coef, p.get(LOG_STD))
        loss = t.pg - cfg.ent_coef * t.entropy + cfg.vf_coef * 0.5 * t.v
        return loss, {"pg": t.pg, "v": 0.5 * t.v, "entropy": t.entropy, "logratio": t.logratio,
                      "ratio": t.ratio}

    batch = b["obs"].shape[1]
    stats: Stats = {}
    for _epoch in range(cfg.epochs):
        for _step in range(cfg.minibatches):
            mb_inds, mask = poisson_minibatch(rngs, batch, dp.sample_rate, b["obs"].device)
            mb = {key: take(x, mb_inds) for key, x in b.items()}
            aux = private_step(optimizer, params, anchor, sample_loss, mb, mask, dp.sample_rate * batch, dp,
                               cfg.proximal_mu)
            ratio, logratio = aux["ratio"], aux["logratio"]
            for tag, value in (
                ("losses/policy_loss", aux["pg"]),
                ("losses/value_loss", aux["v"]),
                ("losses/entropy", aux["entropy"]),
                ("losses/approx_kl", (ratio - 1) - logratio),
                ("losses/clipfrac", ((ratio - 1.0).abs() > cfg.clip_coef).float()),
            ):
                stats.setdefault(tag, []).append(masked_mean(value.detach(), mask))
    return stats
