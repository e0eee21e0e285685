"""The policy network run for K twins at once, and the per-twin pieces every update shares.

Each twin gets its own copy of the global parameters, stacked along a leading twin axis ([K, ...]
per tensor). A twin's loss depends only on its own slice, so the gradient of the summed loss is
each twin's own gradient; Adam is elementwise and gradient clipping is done per twin, so twin k
trains exactly as it would alone (K=1 is the pool engine, K>1 the fleet engine).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
from torch.func import functional_call

from fedtwin.learn.rollout import ActorFn
from fedtwin.policy.network import PolicyNet

Params = dict[str, torch.Tensor]
"""Named parameters stacked over twins: each tensor is [K, *shape]."""


class StackedPolicy:
    """The policy module evaluated with K parameter sets at once.

    Each `Linear` of the module is one batched matrix product over the twin axis and each `Tanh` a
    `tanh`: the arithmetic of `vmap(functional_call(module))` without vmap's per-call overhead and
    its unfused bias add (measured in benchmarks/README.md).
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
                h = h.tanh_()  # only its inputs): no fresh activation buffer
                continue
            weight, bias = params[prefix + "weight"], params[prefix + "bias"]
            if h is obs:  # [W b] [x 1]^T: the bias folded into the product, since baddbmm's broadcast
                # copy of the bias costs as much as a product with 4 inputs
                with_ones = torch.cat([obs, obs.new_ones(*obs.shape[:-1], 1)], -1)
                h = torch.bmm(torch.cat([weight, bias.unsqueeze(-1)], -1), with_ones.transpose(-1, -2))
            else:
                h = torch.baddbmm(bias.unsqueeze(-1), weight, h)
        return h.transpose(-1, -2)

    def logits(self, params: Params, obs: torch.Tensor) -> torch.Tensor:
        """[K, N, D] -> [K, N, A]."""
        return self._forward("actor", params, obs)

    def value(self, params: Params, obs: torch.Tensor) -> torch.Tensor:
        """[K, N, D] -> [K, N]."""
        return self._forward("critic", params, obs).squeeze(-1)

    def actor_fn(self, params: Params) -> ActorFn:
        return lambda obs: self.logits(params, obs)

    def single(self, head: str) -> Callable[[Params, torch.Tensor], torch.Tensor]:
        """One twin's `actor` or `critic` as a function of (its parameters, obs): what DP-SGD's
        per-sample gradients (`vmap` of `grad`) differentiate."""
        module = getattr(self.model, head)
        prefix = head + "."

        def apply(params: Params, obs: torch.Tensor) -> torch.Tensor:
            sub = {k.removeprefix(prefix): v for k, v in params.items() if k.startswith(prefix)}
            return functional_call(module, sub, (obs,))

        return apply


class FusedAdam:
    """`torch.optim.Adam(params, lr, eps=eps, fused=True)`, step for step: the same state (zero moments,
    a float32 step counter on the parameter's device) and the same `torch._fused_adam_` kernel, so the
    numbers are bit for bit those of torch's class. torch's constructor imports `torch._dynamo` (and
    sympy, triton) into every training process, which costs more than a small shard's training."""

    def __init__(self, params: Iterable[torch.Tensor], lr: float, eps: float = 1e-8,
                 betas: tuple[float, float] = (0.9, 0.999)) -> None:
        self.params = list(params)
        self.lr, self.eps, self.betas = lr, eps, betas
        self.state: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}  # by position

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        live = [i for i, p in enumerate(self.params) if p.grad is not None]
        if not live:
            return
        for i in live:
            if i not in self.state:
                p = self.params[i]
                self.state[i] = (torch.zeros_like(p, memory_format=torch.preserve_format),
                                 torch.zeros_like(p, memory_format=torch.preserve_format),
                                 torch.zeros((), dtype=torch.float32, device=p.device))
        exp_avgs = [self.state[i][0] for i in live]
        exp_avg_sqs = [self.state[i][1] for i in live]
        steps = [self.state[i][2] for i in live]
        params = [self.params[i] for i in live]
        grads: list[torch.Tensor] = [p.grad for p in params if p.grad is not None]
        torch._foreach_add_(steps, 1)
        torch._fused_adam_(params, grads, exp_avgs, exp_avg_sqs, [], steps, amsgrad=False,
                           lr=self.lr, beta1=self.betas[0], beta2=self.betas[1], weight_decay=0.0,
                           eps=self.eps, maximize=False, grad_scale=None, found_inf=None)


Optimizer = FusedAdam
"""What the update functions step (`zero_grad`, `step`)."""


def per_twin_sum(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """Sum over all elements of each twin's slice: [K, ...] tensors -> [K]."""
    return torch.stack([t.reshape(t.shape[0], -1).sum(dim=1) for t in tensors]).sum(dim=0)


def optimizer_step(
    optimizer: Optimizer, params: Params, loss: torch.Tensor, max_grad_norm: float
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


def normalize(x: torch.Tensor) -> torch.Tensor:
    """Per twin (dim 1), like CleanRL's advantage normalization."""
    return (x - x.mean(dim=1, keepdim=True)) / (x.std(dim=1, keepdim=True) + 1e-8)


def take(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Per-twin minibatch: x [K, B, ...], idx [K, M] -> [K, M, ...], as a gather (faster than advanced
    indexing with a row index)."""
    index = idx.view(*idx.shape, *([1] * (x.dim() - 2))).expand(*idx.shape, *x.shape[2:])
    return torch.gather(x, 1, index)
