"""The policy network in torch: a tanh MLP actor and, for PPO, a separate critic (CleanRL's layout).

Its `named_parameters()` are exactly `layout.layout_for(spec)`: a flat vector from a model file
fills it, and its parameters flatten back into one.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import torch
from torch import nn

from fedtwin.policy.layout import LayoutError, PolicySpec, layout_for


class _Linear(nn.Linear):
    """`nn.Linear` without its default init: `_linear` initializes it (or a model file fills it), so no
    global RNG is read. Unlike `nn.utils.skip_init`, it needs no meta device, whose first use imports
    torch.fx's symbolic shapes (and sympy) into every training process."""

    def reset_parameters(self) -> None:
        pass


def _linear(n_in: int, n_out: int, std: float, generator: torch.Generator | None) -> nn.Linear:
    """CleanRL's `layer_init` (orthogonal weights, zero bias); `generator=None` leaves it uninitialized."""
    layer = _Linear(n_in, n_out)
    if generator is not None:
        nn.init.orthogonal_(layer.weight, std, generator=generator)
        nn.init.zeros_(layer.bias)
    return layer


def _mlp(sizes: tuple[int, ...], out_std: float, generator: torch.Generator | None) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(itertools.pairwise(sizes)):
        last = i == len(sizes) - 2
        layers.append(_linear(n_in, n_out, out_std if last else math.sqrt(2), generator))
        if not last:
            layers.append(nn.Tanh())
    return nn.Sequential(*layers)


class PolicyNet(nn.Module):
    """Tanh MLP actor (logits, or a gaussian's means plus a state-independent `actor.log_std`, zero
    at start as in CleanRL's ppo_continuous_action) and, for actor-critic, a separate critic MLP."""

    def __init__(self, spec: PolicySpec, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.spec = spec
        self.actor = _mlp((spec.obs_dim, *spec.hidden, spec.act_dim), 0.01, generator)
        if spec.action == "gaussian":  # on the actor, so the layout names it actor.log_std
            self.actor.register_parameter("log_std", nn.Parameter(torch.zeros(spec.act_dim)))
        self.critic = (
            _mlp((spec.obs_dim, *spec.hidden, 1), 1.0, generator) if spec.kind == "actor_critic" else None
        )

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.actor(obs)

    def value(self, obs: torch.Tensor) -> torch.Tensor:
        if self.critic is None:
            raise LayoutError("a REINFORCE policy has no value head")
        return self.critic(obs).squeeze(-1)


def build_policy(spec: PolicySpec, seed: int = 0) -> PolicyNet:
    """A network initialized from its own generator: no global RNG is read or advanced."""
    return PolicyNet(spec, torch.Generator().manual_seed(seed))


def init_params(spec: PolicySpec, seed: int) -> np.ndarray:
    """Initial global parameters, a pure function of (spec, seed), computed on one thread: the
    orthogonal init's QR rounds differently on more threads, and an init pod, a laptop and a test
    process with any number of cores must all start from the same model."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        named = {n: p.detach().numpy() for n, p in build_policy(spec, seed).named_parameters()}
    finally:
        torch.set_num_threads(threads)
    return layout_for(spec).from_dict(named)
