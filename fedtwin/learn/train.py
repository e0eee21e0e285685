"""Local trainers: PPO (default) and REINFORCE, for K twins at once as one batched computation.

Each twin gets its own copy of the global parameters, stacked along a leading twin axis, and the
policy module's layers run as batched matrix products over that axis (`torch.baddbmm`: what
`vmap(functional_call(module))` computes, without its per-call overhead). A twin's loss
depends only on its own slice, so the gradient of the summed loss is each twin's own gradient;
Adam is elementwise and gradient clipping is done per twin, so twin k trains exactly as it would
alone (K=1 is the pool engine's single-twin step, K>1 the fleet engine).
Each twin draws every random number from its own generator seeded from `seeds[k]`.

With local differential privacy (`dp`), each optimizer step is DP-SGD instead: per-sample gradients
(`vmap` of `grad` over a Poisson-sampled minibatch, inside the twin `vmap`), clipped, summed and
noised by `fedtwin.learn.privacy` exactly as Opacus' DPOptimizer does, each twin with its own noise generator.
"""

from __future__ import annotations

import ctypes
import functools
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import torch
from torch.func import functional_call

from fedtwin.config import TrainConfig
from fedtwin.errors import ConfigError
from fedtwin.learn.privacy import LocalDP, clip_and_sum, noise_and_scale
from fedtwin.learn.rollout import ActorFn, Rollout, collect_rollout, gae
from fedtwin.policy.layout import PolicyNet, layout_for, policy_spec
from fedtwin.sim.envs import TwinCartPoleVectorEnv
from fedtwin.sim.twins import TwinSpec

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


class _MallInfo2(ctypes.Structure):
    """glibc's `struct mallinfo2` (glibc >= 2.33): the heap's sizes in bytes."""

    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
        "keepcost")]


TRIM_SLACK = 1 << 28
"""Free heap bytes (256 MiB) tolerated before `trim_heap` hands them back to the kernel."""


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    """glibc's allocator, its thresholds set for big tensors once per process; None elsewhere."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt(-3, 1 << 28)  # M_MMAP_THRESHOLD: tensors up to 256 MiB come from the heap
        libc.mallopt(-1, 1 << 28)  # M_TRIM_THRESHOLD: keep up to 256 MiB of freed heap between ops
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
    except (OSError, AttributeError):  # not glibc (no mallopt/malloc_trim symbol)
        return None
    return libc


def _free_heap_bytes(libc: ctypes.CDLL) -> int | None:
    """Bytes free inside the heap (None before glibc 2.33, which lacks mallinfo2)."""
    try:
        mallinfo2 = libc.mallinfo2
    except AttributeError:
        return None
    mallinfo2.restype = _MallInfo2
    return int(mallinfo2().fordblks)


def trim_heap() -> None:
    """Allocator policy for large fleets (Linux/glibc); called before each local update.

    glibc maps every allocation above its mmap threshold (at most 32 MiB: one [1024, 128, 64]
    activation) fresh from the kernel and unmaps it when freed, so each op of a large fleet paid
    page faults: at K=1024 the kernel took 38% of the CPU time (16.1 s sys vs 26.1 s user for 3 PPO
    updates). With a 256 MiB threshold it takes 5%. Freed memory inside the heap still grows update
    after update (fragmentation: 104, 155, 231 MiB free after 1 to 3 updates at K=128), so once more
    than `TRIM_SLACK` is free, `malloc_trim` returns it (at K=512: 1.3 GiB peak RSS instead of 3.3
    GiB). Not on every call: each trim's pages are faulted back in by the next update (5% of a
    K=128 update). Elsewhere a no-op.
    """
    libc = _glibc()
    if libc is None:
        return
    free = _free_heap_bytes(libc)
    if free is None or free > TRIM_SLACK:
        libc.malloc_trim(0)


# ---------------------------------------------------------------------------- batched network
class StackedPolicy:
    """The policy module evaluated with K parameter sets at once.

    Each `Linear` of the module is one batched matrix product over the twin axis and each `Tanh` a
    `tanh`, the same arithmetic as `vmap(functional_call(module))` but half the time of a K=1 step
    (profiled: vmap's per-call overhead dominated the pool engine and its unfused bias add cost 11%
    at K=256).
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
            elif isinstance(module, torch.nn.Tanh) and plan:
                plan.append(None)
            else:
                raise TypeError(f"StackedPolicy cannot batch {type(module).__name__} at {head}.{i}")
        return plan

    def _forward(self, head: str, params: Params, obs: torch.Tensor) -> torch.Tensor:
        """Feature-major inside, h^T = W x^T + b per layer, so that every weight's gradient comes out
        in the weight's own layout (no transposing copies in the backward pass)."""
        h = obs
        for prefix in self._layers[head]:
            if prefix is None:  # in place on the product it follows (a matrix product's backward needs
                h = h.tanh_()  # only its inputs): no fresh activation buffer, ~13% of a K=128 PPO update
                continue
            weight, bias = params[prefix + "weight"], params[prefix + "bias"]
            if h is obs:  # [W b] [x 1]^T: the bias folded into the product, since baddbmm's broadcast
                # copy of the bias costs as much as a product with 4 inputs
                with_ones = torch.cat([obs, obs.new_ones(*obs.shape[:-1], 1)], -1)
                h = torch.bmm(torch.cat([weight, bias.unsqueeze(-1)], -1), with_ones.transpose(-1, -2))
            else:
                h = torch.baddbmm(bias.unsqueeze(-1), weight, h)
        return h.transpose(-1, -2)

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

    def single(self, head: str) -> Callable[[Params, torch.Tensor], torch.Tensor]:
        """One twin's `actor` or `critic` as a function of (its parameters, obs): for per-sample grads."""
        return self._call(head)


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
    per_tensor = torch.stack([torch.linalg.vector_norm(g.flatten(1), dim=1) for g in grads])  # [tensors, K]
    norm = torch.linalg.vector_norm(per_tensor, dim=0)
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
    """Per-twin minibatch: x [K, B, ...], idx [K, M] -> [K, M, ...] (a gather: 1.6x to 4x faster than
    advanced indexing with a row index)."""
    index = idx.view(*idx.shape, *([1] * (x.dim() - 2))).expand(*idx.shape, *x.shape[2:])
    return torch.gather(x, 1, index)


# --------------------------------------------------------------------- DP-SGD step (local DP)
SampleLoss = Callable[[Params, dict[str, torch.Tensor]], tuple[torch.Tensor, dict[str, torch.Tensor]]]
"""One twin's loss on one sample: (its params, the sample's tensors) -> (scalar loss, aux terms)."""
GRAD_ELEMENTS = 1 << 24
"""Per-sample gradient floats held at once (64 MiB): samples are processed in chunks of this size."""


def poisson_minibatch(rngs: Sequence[np.random.Generator], batch: int, rate: float, device: torch.device
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Opacus' Poisson sampling, per twin from its own generator: each of the `batch` samples is in
    with probability `rate`. Returns indices [K, M] and a mask [K, M] (0 pads twins with fewer)."""
    if rate >= 1.0:
        idx = torch.arange(batch, device=device).expand(len(rngs), batch)
        return idx, torch.ones(len(rngs), batch, device=device)
    picks = [np.flatnonzero(rng.random(batch) < rate) for rng in rngs]
    m = max(1, *(len(p) for p in picks))
    idx, mask = np.zeros((len(rngs), m), dtype=np.int64), np.zeros((len(rngs), m), dtype=np.float32)
    for k, p in enumerate(picks):
        idx[k, : len(p)], mask[k, : len(p)] = p, 1.0
    return torch.as_tensor(idx, device=device), torch.as_tensor(mask, device=device)


def private_step(
    optimizer: torch.optim.Optimizer,
    params: Params,
    anchor: Params,
    sample_loss: SampleLoss,
    batch: dict[str, torch.Tensor],
    mask: torch.Tensor,
    expected_batch_size: float,
    dp: LocalDP,
    proximal_mu: float,
) -> dict[str, torch.Tensor]:
    """One DP-SGD step of K twins on `batch` ([K, M, ...] tensors; `mask` [K, M] marks real samples).

    Per-sample gradients are `vmap(grad)` over samples inside the twin vmap (Opacus' functorch
    mode), clipped, summed and noised by `fedtwin.learn.privacy` like Opacus' DPOptimizer; the FedProx
    gradient, which does not depend on data, is added after the noise. Steps each twin's accountant.
    Returns the aux terms per sample, [K, M].
    """
    frozen = {n: p.detach() for n, p in params.items()}
    per_sample = torch.vmap(torch.vmap(torch.func.grad(sample_loss, has_aux=True), in_dims=(None, 0)))
    k, m = mask.shape
    chunk = max(1, min(m, GRAD_ELEMENTS // (k * sum(p[0].numel() for p in frozen.values()))))
    summed: dict[str, torch.Tensor] = {}
    aux_parts: list[dict[str, torch.Tensor]] = []
    for start in range(0, m, chunk):
        part = {key: x[:, start : start + chunk] for key, x in batch.items()}
        grads, aux = per_sample(frozen, part)
        clipped = clip_and_sum(grads, dp.max_grad_norm, mask[:, start : start + chunk])
        summed = {n: summed[n] + g for n, g in clipped.items()} if summed else clipped
        aux_parts.append(aux)
    grads = noise_and_scale(summed, dp.noise_multiplier, dp.max_grad_norm, expected_batch_size, dp.generators)
    if proximal_mu > 0:  # d/dw (mu/2)||w - w_global||^2
        grads = {n: g + proximal_mu * (frozen[n] - anchor[n]) for n, g in grads.items()}
    optimizer.zero_grad(set_to_none=True)
    for name, p in params.items():
        p.grad = grads[name]
    optimizer.step()
    dp.step_accountants()
    return {key: torch.cat([a[key] for a in aux_parts], dim=1) for key in aux_parts[0]}


def _masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over each twin's real samples: [K, M] -> [K]."""
    return (x * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)


# ------------------------------------------------------------------------------------- PPO
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
) -> PPOTerms:
    """CleanRL's PPO loss terms per sample, shared by the batched and the per-sample (DP) update."""
    logp_all = torch.log_softmax(logits, dim=-1)
    newlogprob = logp_all.gather(-1, actions.unsqueeze(-1)).squeeze(-1)
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    logratio = newlogprob - old_logprobs
    ratio = logratio.exp()
    # Policy loss
    pg_loss1 = -advantages * ratio
    pg_loss2 = -advantages * torch.clamp(ratio, 1 - clip_coef, 1 + clip_coef)
    # Value loss (clipped, as cleanrl's default)
    v_clipped = old_values + torch.clamp(value - old_values, -clip_coef, clip_coef)
    v = torch.max((value - returns) ** 2, (v_clipped - returns) ** 2)
    return PPOTerms(torch.max(pg_loss1, pg_loss2), v, entropy, logratio, ratio)


def rollout_values(net: StackedPolicy, params: Params, ro: Rollout) -> tuple[torch.Tensor, torch.Tensor]:
    """V(obs) and V(next_obs), [K, T*E] each, from one pass over T+1 steps instead of two over T.

    next_obs[t] is obs[t+1] except where an episode ended at t. After a termination GAE multiplies
    the next value by 0, so only time-limit truncations (a few per rollout) need V(final obs), which
    is computed for those rows alone. The critic's passes were 5% of a 128-twin round.
    """
    t, k, e = ro.rewards.shape
    both = net.value(params, ro.flat(torch.cat([ro.obs, ro.next_obs[-1:]]))).view(k, t + 1, e)
    values, next_values = both[:, :-1].reshape(k, t * e), both[:, 1:].reshape(k, t * e).clone()
    truncated = ro.flat(ro.dones - ro.terminated) > 0  # [K, T*E]
    if bool(truncated.any()):
        counts = truncated.sum(dim=1)
        first = torch.argsort((~truncated).to(torch.int8), dim=1, stable=True)[:, : int(counts.max())]
        final_values = net.value(params, _take(ro.flat(ro.next_obs), first))  # [K, R]; R = most per twin
        padding = torch.arange(first.shape[1], device=first.device) >= counts.unsqueeze(1)
        next_values.scatter_(1, first, torch.where(padding, next_values.gather(1, first), final_values))
    return values, next_values


def ppo_update(
    net: StackedPolicy,
    params: Params,
    anchor: Params,
    optimizer: torch.optim.Optimizer,
    ro: Rollout,
    rngs: Sequence[np.random.Generator],
    cfg: TrainConfig,
    dp: LocalDP | None = None,
) -> dict[str, list[torch.Tensor]]:
    """CleanRL ppo.py's update (GAE, clipped surrogate and value loss, entropy), per twin."""
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
    b_obs, b_actions, b_logprobs = ro.flat(ro.obs), ro.flat(ro.actions), ro.flat(ro.logprobs)
    b_advantages, b_returns, b_values = ro.flat(advantages), ro.flat(returns), values
    if dp is not None:
        b = {"obs": b_obs, "actions": b_actions, "logprobs": b_logprobs, "values": b_values,
             "advantages": _normalize(b_advantages) if cfg.norm_adv else b_advantages, "returns": b_returns}
        return ppo_epochs_private(net, params, anchor, optimizer, b, rngs, cfg, dp)
    batch = b_obs.shape[1]
    mb_size = batch // cfg.minibatches
    stats: dict[str, list[torch.Tensor]] = {}
    for _epoch in range(cfg.epochs):
        perm = torch.as_tensor(np.stack([rng.permutation(batch) for rng in rngs]), device=b_obs.device)
        # Shuffle each tensor once per epoch; a minibatch is then a slice (a view), not a gather.
        obs, actions, logprobs, adv, returns, old_values = (
            _take(x, perm) for x in (b_obs, b_actions, b_logprobs, b_advantages, b_returns, b_values))
        for start in range(0, batch, mb_size):
            mb = slice(start, start + mb_size)
            mb_obs, mb_adv = obs[:, mb], adv[:, mb]
            if cfg.norm_adv:
                mb_adv = _normalize(mb_adv)
            terms = ppo_terms(net.logits(params, mb_obs), net.value(params, mb_obs), actions[:, mb],
                              logprobs[:, mb], mb_adv, returns[:, mb], old_values[:, mb], cfg.clip_coef)
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


def ppo_epochs_private(
    net: StackedPolicy,
    params: Params,
    anchor: Params,
    optimizer: torch.optim.Optimizer,
    b: dict[str, torch.Tensor],
    rngs: Sequence[np.random.Generator],
    cfg: TrainConfig,
    dp: LocalDP,
) -> dict[str, list[torch.Tensor]]:
    """PPO's epochs as DP-SGD: `minibatches` Poisson minibatches (rate 1/minibatches) per epoch.

    Advantages arrive normalized over the whole rollout: per-minibatch normalization would make one
    sample's gradient depend on the others in its batch, which per-sample clipping cannot bound.
    """
    actor, critic = net.single("actor"), net.single("critic")

    def sample_loss(p: Params, s: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        t = ppo_terms(actor(p, s["obs"]), critic(p, s["obs"]).squeeze(-1), s["actions"], s["logprobs"],
                      s["advantages"], s["returns"], s["values"], cfg.clip_coef)
        loss = t.pg - cfg.ent_coef * t.entropy + cfg.vf_coef * 0.5 * t.v
        return loss, {"pg": t.pg, "v": 0.5 * t.v, "entropy": t.entropy, "logratio": t.logratio,
                      "ratio": t.ratio}

    batch = b["obs"].shape[1]
    stats: dict[str, list[torch.Tensor]] = {}
    for _epoch in range(cfg.epochs):
        for _step in range(cfg.minibatches):
            idx, mask = poisson_minibatch(rngs, batch, dp.sample_rate, b["obs"].device)
            mb = {k: _take(v, idx) for k, v in b.items()}
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
                stats.setdefault(tag, []).append(_masked_mean(value.detach(), mask))
    return stats


# ------------------------------------------------------------------------------- REINFORCE
def reinforce_update(
    net: StackedPolicy,
    params: Params,
    anchor: Params,
    optimizer: torch.optim.Optimizer,
    ro: Rollout,
    cfg: TrainConfig,
    rngs: Sequence[np.random.Generator] = (),
    dp: LocalDP | None = None,
) -> dict[str, list[torch.Tensor]]:
    """One policy-gradient step on normalized discounted reward-to-go (the reference systems' trainer).

    Episodes still running at the end of the rollout are cut there (their tail reward counts as 0).
    With `dp`, the step is DP-SGD over the rollout (sample rate 1: every transition is in the batch).
    """
    zeros = torch.zeros_like(ro.rewards)
    returns, _ = gae(ro.rewards, zeros, zeros, ro.terminated, ro.dones, cfg.gamma, 1.0)
    b_returns = _normalize(ro.flat(returns))
    if dp is not None:
        return reinforce_step_private(net, params, anchor, optimizer, ro, b_returns, rngs, cfg, dp)
    logp_all = torch.log_softmax(net.logits(params, ro.flat(ro.obs)), dim=-1)
    logprob = logp_all.gather(-1, ro.flat(ro.actions).unsqueeze(-1)).squeeze(-1)
    pg_loss = -(logprob * b_returns).mean(dim=1)
    loss = pg_loss
    if cfg.proximal_mu > 0:
        loss = loss + proximal_term(params, anchor, cfg.proximal_mu)
    optimizer_step(optimizer, params, loss, cfg.max_grad_norm)
    entropy = -(logp_all.exp() * logp_all).sum(-1).mean(dim=1)
    return {"losses/policy_loss": [pg_loss.detach()], "losses/entropy": [entropy.detach()]}


def reinforce_step_private(
    net: StackedPolicy,
    params: Params,
    anchor: Params,
    optimizer: torch.optim.Optimizer,
    ro: Rollout,
    b_returns: torch.Tensor,
    rngs: Sequence[np.random.Generator],
    cfg: TrainConfig,
    dp: LocalDP,
) -> dict[str, list[torch.Tensor]]:
    """REINFORCE's step as DP-SGD: per-transition gradients of -log pi(a|s) * G, clipped and noised."""
    actor = net.single("actor")

    def sample_loss(p: Params, s: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logp_all = torch.log_softmax(actor(p, s["obs"]), dim=-1)
        loss = -(logp_all.gather(-1, s["actions"].unsqueeze(-1)).squeeze(-1) * s["returns"])
        return loss, {"pg": loss, "entropy": -(logp_all.exp() * logp_all).sum(-1)}

    b = {"obs": ro.flat(ro.obs), "actions": ro.flat(ro.actions), "returns": b_returns}
    batch = b_returns.shape[1]
    idx, mask = poisson_minibatch(rngs, batch, dp.sample_rate, b_returns.device)
    aux = private_step(optimizer, params, anchor, sample_loss, {k: _take(v, idx) for k, v in b.items()},
                       mask, dp.sample_rate * batch, dp, cfg.proximal_mu)
    return {"losses/policy_loss": [_masked_mean(aux["pg"], mask)],
            "losses/entropy": [_masked_mean(aux["entropy"], mask)]}


# --------------------------------------------------------------------------------- the round
def train_twins(
    global_params: np.ndarray,
    twins: Sequence[TwinSpec],
    seeds: Sequence[int],
    cfg: TrainConfig,
    device: str = "cpu",
    dp: LocalDP | None = None,
) -> list[LocalResult]:
    """Train every twin from `global_params` for `cfg.updates` rollout+update iterations, batched.

    `dp` (local differential privacy) makes every optimizer step DP-SGD; its entry k is twin k's.
    """
    if len(twins) != len(seeds) or not twins:
        raise ValueError(
            f"need one seed per twin and at least one twin (twins={len(twins)}, seeds={len(seeds)})"
        )
    dev = resolve_device(device)
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
            trim_heap()
            ro, obs = collect_rollout(env, obs, net.actor_fn(params), rngs, cfg.num_steps, dev)
            if cfg.algo == "ppo":
                new = ppo_update(net, params, anchor, optimizer, ro, rngs, cfg, dp)
            else:
                new = reinforce_update(net, params, anchor, optimizer, ro, cfg, rngs, dp)
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
    global_params: np.ndarray, twin: TwinSpec, seed: int, cfg: TrainConfig, device: str = "cpu",
    dp: LocalDP | None = None,
) -> LocalResult:
    """The pool engine's unit: one twin, exactly `train_twins` with K=1."""
    return train_twins(global_params, [twin], [seed], cfg, device, dp)[0]
