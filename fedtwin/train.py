"""Local trainers: PPO (default) and REINFORCE, for K twins at once as one batched computation.

Each twin gets its own copy of the global parameters, stacked along a leading twin axis, and the
policy module's layers run as batched matrix products over that axis (`torch.baddbmm`: what
`vmap(functional_call(module))` computes, without its per-call overhead). A twin's loss
depends only on its own slice, so the gradient of the summed loss is each twin's own gradient;
Adam is elementwise and gradient clipping is done per twin, so twin k trains exactly as it would
alone (K=1 is the pool engine's single-twin step, K>1 the fleet engine).
Each twin draws every random number from its own generator seeded from `seeds[k]`.
"""

from __future__ import annotations

import ctypes
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.func import functional_call

from fedtwin.config import TrainConfig
from fedtwin.envs import TwinCartPoleVectorEnv
from fedtwin.errors import ConfigError
from fedtwin.policy import PolicyNet, layout_for, policy_spec
from fedtwin.rollout import ActorFn, Rollout, collect_rollout, gae
from fedtwin.twins import TwinSpec

Params = dict[str, torch.Tensor]
"""Named parameters stacked over twins: each tensor is [K, *shape]."""


class DeviceError(ConfigError):
    """The requested torch device is not available on this machine."""


@dataclass
class LocalResult:
    """One twin's local update: new parameters, how many env steps produced them, and metrics."""

    params: np.ndarray
    """float32 (P,) parameters after local training."""
    num_samples: int
    """Environment steps this twin took (the FedAvg weight)."""
    metrics: dict[str, float] = field(default_factory=dict)
    """cleanrl-style tags: `charts/episodic_return`, `losses/policy_loss`, ..."""


def resolve_device(device: str) -> torch.device:
    """Fail with the fix instead of a deep torch error when CUDA is asked for but missing."""
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise DeviceError(f"device {device!r} is not supported; use 'cpu' or 'cuda'")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise DeviceError(
            f"device {device!r} requested but torch.cuda.is_available() is False "
            f"(torch {torch.__version__}); use device 'cpu' or install a CUDA build of torch on a GPU machine"
        )
    return torch.device(device)


_MALLOC_TUNED = False


def keep_freed_memory() -> None:
    """Once per process (Linux/glibc): serve big tensors from the heap and keep freed memory for reuse.

    glibc maps every allocation above its mmap threshold (at most 32 MiB: one [1024, 128, 64]
    activation) fresh from the kernel and unmaps it when freed, so each op of a large fleet paid page
    faults: at K=1024 the kernel took 28% of the CPU time (3.4 s sys vs 8.5 s user per PPO update);
    with a 256 MiB threshold 4%, for +0.3 GiB peak RSS. Elsewhere a no-op.
    """
    global _MALLOC_TUNED
    if _MALLOC_TUNED or not sys.platform.startswith("linux"):
        return
    _MALLOC_TUNED = True
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc (e.g. no mallopt symbol)
        return
    mallopt(-3, 1 << 28)  # M_MMAP_THRESHOLD: 256 MiB
    mallopt(-1, 1 << 28)  # M_TRIM_THRESHOLD: keep up to 256 MiB of freed heap


# ---------------------------------------------------------------------------- batched network
class StackedPolicy:
    """The policy module evaluated with K parameter sets at once.

    Each `Linear` of the module is one `baddbmm` over the twin axis and each `Tanh` a `tanh`, the
    same arithmetic as `vmap(functional_call(module))` but half the time of a K=1 step (profiled:
    vmap's per-call overhead dominated the pool engine and its unfused bias add cost 11% at K=256).
    """

    def __init__(self, model: PolicyNet) -> None:
        self.model = model
        self._layers = {head: self._plan(head) for head in ("actor", "critic")
                        if getattr(model, head) is not None}

    def _plan(self, head: str) -> list[str | None]:
        """Per module of the head's Sequential: its parameter prefix (a Linear) or None (a Tanh)."""
        plan: list[str | None] = []
        for i, module in enumerate(getattr(self.model, head)):
            if isinstance(module, torch.nn.Linear):
                plan.append(f"{head}.{i}.")
            elif isinstance(module, torch.nn.Tanh):
                plan.append(None)
            else:
                raise TypeError(f"StackedPolicy cannot batch {type(module).__name__} in {head}")
        return plan

    def _forward(self, head: str, params: Params, obs: torch.Tensor) -> torch.Tensor:
        h = obs
        for prefix in self._layers[head]:
            if prefix is None:
                h = torch.tanh(h)
            else:  # x W^T + b, per twin
                weight, bias = params[prefix + "weight"], params[prefix + "bias"]
                h = torch.baddbmm(bias.unsqueeze(-2), h, weight.transpose(-1, -2))
        return h

    def _call(self, head: str) -> Callable[[Params, torch.Tensor], torch.Tensor]:
        module = getattr(self.model, head)
        prefix = head + "."

        def apply(params: Params, obs: torch.Tensor) -> torch.Tensor:
            sub = {k.removeprefix(prefix): v for k, v in params.items() if k.startswith(prefix)}
            return functional_call(module, sub, (obs,))

        return apply

    def logits(self, params: Params, obs: torch.Tensor) -> torch.Tensor:
        """[K, N, D] -> [K, N, A]."""
        return self._forward("actor", params, obs)

    def value(self, params: Params, obs: torch.Tensor) -> torch.Tensor:
        """[K, N, D] -> [K, N]."""
        return self._forward("critic", params, obs).squeeze(-1)

    def actor_fn(self, params: Params) -> ActorFn:
        return lambda obs: self.logits(params, obs)


def per_twin_sum(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """Sum over all elements of each twin's slice: [K, ...] tensors -> [K]."""
    return torch.stack([t.reshape(t.shape[0], -1).sum(dim=1) for t in tensors]).sum(dim=0)


def optimizer_step(
    optimizer: torch.optim.Optimizer, params: Params, loss: torch.Tensor, max_grad_norm: float
) -> None:
    """Backward the summed per-twin losses [K], clip each twin's gradient norm separately, step."""
    optimizer.zero_grad(set_to_none=True)
    loss.sum().backward()
    grads = [p.grad for p in params.values() if p.grad is not None]
    norm = per_twin_sum([g * g for g in grads]).sqrt()
    coef = (max_grad_norm / (norm + 1e-6)).clamp(max=1.0)  # as torch.nn.utils.clip_grad_norm_
    for g in grads:
        g.mul_(coef.view(-1, *([1] * (g.dim() - 1))))
    optimizer.step()


def proximal_term(params: Params, anchor: Params, mu: float) -> torch.Tensor:
    """FedProx: (mu/2) * ||w_k - w_global||^2 per twin, keeps local models near the global one."""
    return 0.5 * mu * per_twin_sum([(params[n] - anchor[n]) ** 2 for n in params])


def _normalize(x: torch.Tensor) -> torch.Tensor:
    """Per twin (dim 1), like cleanrl's advantage normalization."""
    return (x - x.mean(dim=1, keepdim=True)) / (x.std(dim=1, keepdim=True) + 1e-8)


def _take(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Per-twin minibatch: x [K, B, ...], idx [K, M] -> [K, M, ...]."""
    rows = torch.arange(x.shape[0], device=x.device).unsqueeze(1)
    return x[rows, idx]


# ------------------------------------------------------------------------------------- PPO
def ppo_update(
    net: StackedPolicy,
    params: Params,
    anchor: Params,
    optimizer: torch.optim.Optimizer,
    ro: Rollout,
    rngs: Sequence[np.random.Generator],
    cfg: TrainConfig,
) -> dict[str, list[torch.Tensor]]:
    """CleanRL ppo.py's update (GAE, clipped surrogate and value loss, entropy), per twin."""
    with torch.no_grad():
        values = net.value(params, ro.flat(ro.obs))
        next_values = net.value(params, ro.flat(ro.next_obs))
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
    b_obs, b_actions, b_logprobs = ro.flat(ro.obs), ro.flat(ro.actions), ro.flat(ro.logprobs)
    b_advantages, b_returns, b_values = ro.flat(advantages), ro.flat(returns), values
    batch = b_obs.shape[1]
    mb_size = batch // cfg.minibatches
    stats: dict[str, list[torch.Tensor]] = {}
    for _epoch in range(cfg.epochs):
        perm = torch.as_tensor(np.stack([rng.permutation(batch) for rng in rngs]), device=b_obs.device)
        for start in range(0, batch, mb_size):
            mb = perm[:, start : start + mb_size]
            logp_all = torch.log_softmax(net.logits(params, _take(b_obs, mb)), dim=-1)
            newlogprob = logp_all.gather(-1, _take(b_actions, mb).unsqueeze(-1)).squeeze(-1)
            entropy = -(logp_all.exp() * logp_all).sum(-1)
            newvalue = net.value(params, _take(b_obs, mb))
            logratio = newlogprob - _take(b_logprobs, mb)
            ratio = logratio.exp()
            with torch.no_grad():
                approx_kl = ((ratio - 1) - logratio).mean(dim=1)
                clipfrac = ((ratio - 1.0).abs() > cfg.clip_coef).float().mean(dim=1)

            mb_adv = _take(b_advantages, mb)
            if cfg.norm_adv:
                mb_adv = _normalize(mb_adv)
            # Policy loss
            pg_loss1 = -mb_adv * ratio
            pg_loss2 = -mb_adv * torch.clamp(ratio, 1 - cfg.clip_coef, 1 + cfg.clip_coef)
            pg_loss = torch.max(pg_loss1, pg_loss2).mean(dim=1)
            # Value loss (clipped, as cleanrl's default)
            mb_ret, mb_val = _take(b_returns, mb), _take(b_values, mb)
            v_clipped = mb_val + torch.clamp(newvalue - mb_val, -cfg.clip_coef, cfg.clip_coef)
            v_loss = 0.5 * torch.max((newvalue - mb_ret) ** 2, (v_clipped - mb_ret) ** 2).mean(dim=1)
            entropy_loss = entropy.mean(dim=1)
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


# ------------------------------------------------------------------------------- REINFORCE
def reinforce_update(
    net: StackedPolicy,
    params: Params,
    anchor: Params,
    optimizer: torch.optim.Optimizer,
    ro: Rollout,
    cfg: TrainConfig,
) -> dict[str, list[torch.Tensor]]:
    """One policy-gradient step on normalized discounted reward-to-go (the reference systems' trainer).

    Episodes still running at the end of the rollout are cut there (their tail reward counts as 0).
    """
    zeros = torch.zeros_like(ro.rewards)
    returns, _ = gae(ro.rewards, zeros, zeros, ro.terminated, ro.dones, cfg.gamma, 1.0)
    b_returns = _normalize(ro.flat(returns))
    logp_all = torch.log_softmax(net.logits(params, ro.flat(ro.obs)), dim=-1)
    logprob = logp_all.gather(-1, ro.flat(ro.actions).unsqueeze(-1)).squeeze(-1)
    pg_loss = -(logprob * b_returns).mean(dim=1)
    loss = pg_loss
    if cfg.proximal_mu > 0:
        loss = loss + proximal_term(params, anchor, cfg.proximal_mu)
    optimizer_step(optimizer, params, loss, cfg.max_grad_norm)
    entropy = -(logp_all.exp() * logp_all).sum(-1).mean(dim=1)
    return {"losses/policy_loss": [pg_loss.detach()], "losses/entropy": [entropy.detach()]}


# --------------------------------------------------------------------------------- the round
def train_twins(
    global_params: np.ndarray,
    twins: Sequence[TwinSpec],
    seeds: Sequence[int],
    cfg: TrainConfig,
    device: str = "cpu",
) -> list[LocalResult]:
    """Train every twin from `global_params` for `cfg.updates` rollout+update iterations, batched."""
    if len(twins) != len(seeds) or not twins:
        raise ValueError(
            f"need one seed per twin and at least one twin (twins={len(twins)}, seeds={len(seeds)})"
        )
    dev = resolve_device(device)
    keep_freed_memory()
    spec = policy_spec(cfg)
    layout = layout_for(spec)
    k = len(twins)
    global_vec = torch.as_tensor(np.asarray(global_params, dtype=np.float32), device=dev)
    anchor: Params = layout.to_dict(global_vec)
    params: Params = {
        n: v.unsqueeze(0).repeat(k, *([1] * v.dim())).requires_grad_() for n, v in anchor.items()
    }
    net = StackedPolicy(PolicyNet(spec))  # uninitialized template: `params` supply the weights
    # fused: one kernel per tensor instead of ~10 elementwise passes (5x faster step at K=1024)
    optimizer = torch.optim.Adam(params.values(), lr=cfg.learning_rate, eps=1e-5, fused=True)

    rngs = [np.random.default_rng(seed) for seed in seeds]
    env = TwinCartPoleVectorEnv(twins, envs_per_twin=cfg.num_envs)
    obs, _ = env.reset(seed=[int(rng.integers(2**31 - 1)) for rng in rngs])
    stats: dict[str, list[torch.Tensor]] = {}
    episodes: list[list[float]] = [[] for _ in range(k)]
    lengths: list[list[int]] = [[] for _ in range(k)]
    try:
        for _update in range(cfg.updates):
            ro, obs = collect_rollout(env, obs, net.actor_fn(params), rngs, cfg.num_steps, dev)
            if cfg.algo == "ppo":
                new = ppo_update(net, params, anchor, optimizer, ro, rngs, cfg)
            else:
                new = reinforce_update(net, params, anchor, optimizer, ro, cfg)
            for tag, values in new.items():
                stats.setdefault(tag, []).extend(values)
            for i in range(k):
                episodes[i] += ro.episode_returns[i]
                lengths[i] += ro.episode_lengths[i]
    finally:
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
        results.append(LocalResult(flat[i].copy(), cfg.updates * cfg.num_steps * cfg.num_envs, metrics))
    return results


def train_twin(
    global_params: np.ndarray, twin: TwinSpec, seed: int, cfg: TrainConfig, device: str = "cpu"
) -> LocalResult:
    """The pool engine's unit: one twin, exactly `train_twins` with K=1."""
    return train_twins(global_params, [twin], [seed], cfg, device)[0]
