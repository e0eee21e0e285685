"""DP-SGD for K twins at once: Opacus' DPOptimizer mechanism on per-sample gradients from torch.func.

Each optimizer step: per-sample gradients (`vmap` of `grad` over samples inside the twin `vmap`,
Opacus' "functorch" grad-sample mode), each clipped to `max_grad_norm` C over all parameters,
summed, plus N(0, (noise_multiplier * C)^2) per coordinate, divided by the expected batch size; a
test shows the result equals Opacus' `GradSampleModule` + `DPOptimizer`. Minibatches are Poisson
samples (Opacus' `DPDataLoader`). Twin k's noise comes from its own generator, so the pool and
fleet engines give the same update. What the guarantee covers: docs/privacy.md.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from fedtwin.learn.batched import Optimizer, Params


# ------------------------------------------------------------------------------ the mechanism
def clip_and_sum(
    per_sample: Mapping[str, torch.Tensor], max_grad_norm: float, mask: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Opacus `DPOptimizer.clip_and_accumulate` for K twins at once.

    `per_sample` holds gradients [K, M, *shape]; `mask` [K, M] is 1 for the samples in the batch
    and 0 for padding. Each sample's gradient over all parameters is scaled to norm <= C, then the
    batch is summed: [K, *shape].
    """
    norms = torch.stack(
        [g.reshape(*g.shape[:2], -1).norm(2, dim=-1) for g in per_sample.values()], dim=-1
    ).norm(2, dim=-1)
    factor = (max_grad_norm / (norms + 1e-6)).clamp(max=1.0) * mask.to(norms.dtype)
    return {name: torch.einsum("km,km...->k...", factor, g) for name, g in per_sample.items()}


def noise_and_scale(
    summed: Mapping[str, torch.Tensor],
    noise_multiplier: float,
    max_grad_norm: float,
    expected_batch_size: float,
    generators: Sequence[torch.Generator],
) -> dict[str, torch.Tensor]:
    """Opacus `DPOptimizer.add_noise` + `scale_grad` for K twins: `(sum + N(0, (sigma*C)^2)) / E[B]`.

    Twin k's noise comes from `generators[k]`, drawn parameter by parameter in `summed`'s order (the
    module's parameter order, like Opacus), so it does not depend on which twins share the batch.
    """
    std = noise_multiplier * max_grad_norm
    if std == 0:
        return {name: total / expected_batch_size for name, total in summed.items()}
    per_twin = [
        [torch.normal(0.0, std, size=total.shape[1:], generator=gen, device=total.device, dtype=total.dtype)
         for total in summed.values()]
        for gen in generators
    ]
    return {
        name: (total + torch.stack([noise[i] for noise in per_twin])) / expected_batch_size
        for i, (name, total) in enumerate(summed.items())
    }


def noise_generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


@dataclass
class LocalDP:
    """What the trainer needs to privatize each optimizer step of K twins (entry k = twin k)."""

    noise_multiplier: float
    max_grad_norm: float
    sample_rate: float
    generators: list[torch.Generator]
    steps: int = 0
    """DP-SGD steps taken so far: what each twin's accountant is charged for (by the caller)."""


# ---------------------------------------------------------------------------------- one step
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
    rows = np.zeros((len(rngs), m), dtype=np.int64)
    real = np.zeros((len(rngs), m), dtype=np.float32)
    for k, p in enumerate(picks):
        rows[k, : len(p)], real[k, : len(p)] = p, 1.0
    return torch.as_tensor(rows, device=device), torch.as_tensor(real, device=device)


def private_step(
    optimizer: Optimizer,
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
    mode), clipped and summed by `clip_and_sum`, noised by `noise_and_scale`; the FedProx gradient,
    which does not depend on data, is added after the noise. Counts the step in `dp.steps`.
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
    dp.steps += 1
    return {key: torch.cat([a[key] for a in aux_parts], dim=1) for key in aux_parts[0]}


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over each twin's real samples: [K, M] -> [K]."""
    return (x * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
