"""Central DP (DP-FedAvg, McMahan et al. 2018) at the aggregator: clip each twin's delta, sum, noise.

One twin changes the sum by at most `clip_norm`, so the guarantee is per twin (device level) for
the sequence of global models; a server accountant is stepped once per round, its state carried
in the round summary. See docs/privacy.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from fedtwin.learn import accounting

if TYPE_CHECKING:
    from fedtwin.config import Config


def dp_fedavg(global_params: np.ndarray, updates: np.ndarray, clip_norm: float, noise_multiplier: float,
              denominator: int, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, Any]]:
    """Clip each row's delta to `clip_norm`, sum, divide by the fixed `denominator`, add Gaussian noise
    of std `noise_multiplier * clip_norm / denominator`; returns the noised average model and facts."""
    base = global_params.astype(np.float64)
    deltas = updates.astype(np.float64) - base
    norms = np.linalg.norm(deltas, axis=1)
    factors = np.minimum(1.0, clip_norm / np.maximum(norms, 1e-12))
    std = noise_multiplier * clip_norm / denominator
    average = (factors @ deltas) / denominator + rng.normal(0.0, std, size=base.shape)
    info = {"noise_std": std, "denominator": denominator, "clipped": int(np.sum(norms > clip_norm)),
            "median_delta_norm": float(np.median(norms))}
    return (base + average).astype(np.float32), info


def central_round(config: Config, previous_summary: Mapping[str, Any] | None, round_index: int,
                  global_params: np.ndarray, updates: np.ndarray, fleet_size: int
                  ) -> tuple[np.ndarray, dict[str, Any], str | None]:
    """One DP-FedAvg round: (noised average model, summary["privacy"], stop reason or None)."""
    plan = accounting.make_plan(config)
    assert plan is not None and plan.mode == "central"
    if round_index == 0:
        accountant = accounting.new_accountant(plan.accountant)
    else:
        state = (previous_summary or {}).get("privacy", {}).get("accountant")
        if not isinstance(state, dict):
            raise accounting.PrivacyError(
                f"central DP needs the server accountant from round {round_index - 1}'s summary, which "
                "lacks it; refusing to aggregate (epsilon would restart from zero)"
            )
        accountant = accounting.load_accountant(state, plan.accountant)
    rng = np.random.default_rng(accounting.noise_seed("central", config.seed, round_index))
    average, info = dp_fedavg(global_params, updates, plan.clip, plan.noise_multiplier, fleet_size, rng)
    accountant.step(noise_multiplier=plan.noise_multiplier, sample_rate=plan.sample_rate)
    eps = accounting.epsilon(accountant, plan.delta)
    stop = None
    if plan.target_epsilon is not None and plan.epsilon_after_round(accountant) > plan.target_epsilon:
        stop = (f"{accounting.SKIPPED_BUDGET}: another central-DP round would bring the server epsilon above "
                f"{plan.target_epsilon:g} (delta {plan.delta:g})")
    summary = {**plan.to_json(), **info, "epsilon": eps, "noise_seed": accounting.noise_seed_kind(),
               "accountant": accounting.accountant_state(accountant)}
    return average, summary, stop
