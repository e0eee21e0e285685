"""REINFORCE (Williams 1992) for K twins at once: the reference systems' trainer, one step per rollout.

The loss is -log pi(a|s) * G over the rollout, with G the discounted reward-to-go normalized per
twin; episodes still running at the end of the rollout are cut there (their tail reward counts 0).
With local DP (`dp`), the step is DP-SGD over the rollout (sample rate 1: every transition is in).
"""

from __future__ import annotations

from collections.abc import Sequence

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


def reinforce_update(
    net: StackedPolicy,
    params: Params,
    anchor: Params,
    optimizer: Optimizer,
    ro: Rollout,
    cfg: TrainConfig,
    rngs: Sequence[np.random.Generator] = (),
    dp: LocalDP | None = None,
) -> Stats:
    """One policy-gradient step on normalized discounted reward-to-go."""
    zeros = torch.zeros_like(ro.rewards)
    returns, _ = gae(ro.rewards, zeros, zeros, ro.terminated, ro.dones, cfg.gamma, 1.0)
    b_returns = normalize(ro.flat(returns))
    if dp is not None:
        return reinforce_step_private(net, params, anchor, optimizer, ro, b_returns, rngs, cfg, dp)
    log_std = params[LOG_STD].unsqueeze(1) if LOG_STD in params else None  # [K, 1, A]
    logprob, entropies = log_prob_entropy(net.logits(params, ro.flat(ro.obs)), ro.flat(ro.actions), log_std)
    pg_loss = -(logprob * b_returns).mean(dim=1)
    loss = pg_loss
    if cfg.proximal_mu > 0:
        loss = loss + proximal_term(params, anchor, cfg.proximal_mu)
    optimizer_step(optimizer, params, loss, cfg.max_grad_norm)
    entropy = entropies.mean(dim=1)
    return {"losses/policy_loss": [pg_loss.detach()], "losses/entropy": [entropy.detach()]}


def reinforce_step_private(
    net: StackedPolicy,
    params: Params,
    anchor: Params,
    optimizer: Optimizer,
    ro: Rollout,
    b_returns: torch.Tensor,
    rngs: Sequence[np.random.Generator],
    cfg: TrainConfig,
    dp: LocalDP,
) -> Stats:
    """REINFORCE's step as DP-SGD: per-transition gradients of -log pi(a|s) * G, clipped and noised."""
    actor = net.single("actor")

    def sample_loss(p: Params, s: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logprob, entropy = log_prob_entropy(actor(p, s["obs"]), s["actions"], p.get(LOG_STD))
        loss = -(logprob * s["returns"])
        return loss, {"pg": loss, "entropy": entropy}

    b = {"obs": ro.flat(ro.obs), "actions": ro.flat(ro.actions), "returns": b_returns}
    batch = b_returns.shape[1]
    mb_inds, mask = poisson_minibatch(rngs, batch, dp.sample_rate, b_returns.device)
    aux = private_step(optimizer, params, anchor, sample_loss, {k: take(v, mb_inds) for k, v in b.items()},
                       mask, dp.sample_rate * batch, dp, cfg.proximal_mu)
    return {"losses/policy_loss": [masked_mean(aux["pg"], mask)],
            "losses/entropy": [masked_mean(aux["entropy"], mask)]}
