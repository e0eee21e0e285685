"""Differential privacy: local DP-SGD per twin (Opacus' mechanism and accountants), central DP-FedAvg.

Local DP (`privacy.mode: local`)
--------------------------------
Each twin's policy-gradient update (PPO or REINFORCE) is DP-SGD exactly as Opacus' `DPOptimizer`
(what `PrivacyEngine.make_private` installs) does it: per-sample gradients, each clipped to
`max_grad_norm` C (factor `min(1, C/(||g||+1e-6))` over all parameters), summed, plus
`N(0, (noise_multiplier * C)^2)` per coordinate, divided by the expected batch size. The trainer
is functional and batched over twins, so it computes per-sample gradients with `torch.func` (`vmap` of
`grad` over samples inside the twin `vmap`, what Opacus' "functorch" grad-sample mode does) and
calls `clip_and_sum` and `noise_and_scale` below; a test shows they give the same gradient as
Opacus' `GradSampleModule` + `DPOptimizer`. Minibatches are Poisson samples (each transition kept
with probability `sample_rate`, Opacus' `DPDataLoader`), the assumption of the accountant: PPO
`1/minibatches` per step, `epochs*minibatches` steps per rollout; REINFORCE the whole rollout (rate
1) in one step. Noise comes from the twin's own generator, so the pool and fleet engines give the
same update.

What one sample is. A sample is one *transition*: the tuple (observation, action, behaviour
log-probability, advantage, return, old value) the loss sees. Consequences:
- The guarantee is per transition: the released model hardly changes when one such tuple is added
  or removed. It says nothing useful about an episode (hundreds of transitions) or about the device
  as a whole (its physics shape every transition): by group privacy a group of k transitions only
  gets about k*epsilon. Advantages, returns and the advantage normalization are computed over the
  rollout before DP-SGD sees the tuples (with DP on, advantages are normalized over the whole
  rollout, not per minibatch, so that one step's per-sample gradients do not depend on each other),
  so one raw reward also moves the advantages of the earlier steps of its episode.
- A per-episode guarantee needs one gradient per episode (the sum of its transitions' gradients)
  clipped as one sample and episodes Poisson-sampled; a per-device guarantee needs the whole
  twin's update clipped as one sample, i.e. user-level DP across twins: `mode: central`.
- The accountant composes every optimizer step of the twin over the whole run as if every
  transition could be sampled in each of them. A transition only exists in its own rollout's
  steps, so for one transition this over-counts; the reported epsilon is an upper bound.
- Only the weights are covered. The record's metrics (episodic returns, losses) come from the raw
  experience and are left out in local mode unless `privacy.release_metrics` is set.

Training for DP. The noise a step needs grows with the square root of the number of steps, the
signal with the batch: use few, big, full-batch steps (`train.minibatches: 1`, `epochs: 1`, many
envs per twin), a small network and a small `train.vf_coef` (else the critic's gradient fills most of
each transition's clip bound). benchmarks/privacy.py measures such configs (held-out return per
epsilon); the product's default training config is tuned for speed without DP, not for DP.

Accounting: one Opacus accountant (`rdp` or `prv`) per twin, stepped once per optimizer step with
(noise_multiplier, sample_rate). Its `state_dict()` is stored as JSON in the twin's update record
(`extra.privacy.accountant`) and restored with `load_state_dict` from the twin's latest record in the
next round (a new process or pod), so epsilon accumulates over the whole run. With only a
`target_epsilon`, the noise multiplier is Opacus' `get_noise_multiplier` over the planned steps of
all rounds (`make_private_with_epsilon` semantics), so the planned run ends at or below the target.
Before training, a twin computes the epsilon it would reach after the round; above the target it
does not train and writes a record with `extra.skipped` instead of weights; the aggregator lists it
under `skipped` and ends the run when fewer twins than the quorum can afford another round.

Central DP (`privacy.mode: central`)
------------------------------------
DP-FedAvg (McMahan et al. 2018): the aggregator clips each twin's delta (update - global) to
`clip_norm`, sums, divides by the fixed number of invited twins N (the fleet) and adds
`N(0, (noise_multiplier * clip_norm / N)^2)` per coordinate. One twin changes the sum by at most
clip_norm whatever it did, so this is a per-twin (device-level) guarantee for the sequence of global
models, against anyone who sees only global models; the aggregator and the store (which hold the
clear updates) are trusted. A server accountant (sample rate 1: every twin is invited every round)
is stepped once per round; its state is stored in the round summary and restored next round.

Noise seeds. The run seed is stored with the run, so noise derived only from it could be
regenerated and subtracted by anyone who can read the store. Noise seeds therefore mix in the
secret `FEDTWIN_DP_NOISE_KEY` (set it from a Secret for reproducible DP runs); without it every
noise generator is seeded from the OS's entropy (secure, not reproducible). torch's generator is not
a CSPRNG and floating-point attacks on Gaussian sampling are not addressed (Opacus' `secure_mode`).
"""

from __future__ import annotations

import os
import secrets
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from fedtwin.core.seeding import derive_seed
from fedtwin.errors import ConfigError, FedtwinError, IntegrityError
from fedtwin.federation.updates import SKIPPED, UpdateRecord

if TYPE_CHECKING:
    from opacus.accountants import IAccountant

    from fedtwin.config import Config
    from fedtwin.federation.updates import Rejection
    from fedtwin.store import ArtifactStore, RunLayout

NOISE_KEY_ENV = "FEDTWIN_DP_NOISE_KEY"
SKIPPED_BUDGET = "privacy budget"
"""`extra.skipped` of a twin that did not train because the round would exceed its budget."""


class PrivacyError(FedtwinError):
    """Privacy accounting cannot go on safely (e.g. a twin's accountant state is unreadable)."""


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


# ------------------------------------------------------------------------------- accountants
@contextmanager
def _quiet() -> Iterator[None]:
    """Opacus' analysis warns about alpha ranges and divides by zero at sample rate 1; not ours."""
    with warnings.catch_warnings(), np.errstate(divide="ignore", invalid="ignore"):
        warnings.simplefilter("ignore")
        yield


def new_accountant(kind: str) -> IAccountant:
    try:
        from opacus.accountants import create_accountant
    except ImportError as exc:  # pragma: no cover - the [privacy] extra is part of [dev]
        raise ConfigError("privacy needs Opacus; install it with `pip install 'fedtwin[privacy]'`") from exc
    return create_accountant(mechanism=kind)


def accountant_state(accountant: IAccountant) -> dict[str, Any]:
    """Opacus' `state_dict()` as JSON: mechanism and history of (noise_multiplier, sample_rate, steps)."""
    state = accountant.state_dict()
    return {"mechanism": state["mechanism"],
            "history": [[float(s), float(q), int(n)] for s, q, n in state["history"]]}


def load_accountant(state: Mapping[str, Any], kind: str) -> IAccountant:
    """An accountant of `kind` restored with Opacus' `load_state_dict` from `accountant_state` JSON."""
    accountant = new_accountant(kind)
    try:
        history = [(float(s), float(q), int(n)) for s, q, n in state["history"]]
        accountant.load_state_dict({"mechanism": state["mechanism"], "history": history})
    except (KeyError, TypeError, ValueError) as exc:
        raise PrivacyError(f"cannot restore the {kind} accountant from {dict(state)!r}: {exc}") from exc
    return accountant


def epsilon(accountant: IAccountant, delta: float) -> float:
    """Epsilon spent so far at `delta` (0 before the first step); cached per history (PRV is slow)."""
    history = tuple(tuple(h) for h in accountant.history)
    return _epsilon_of(accountant.mechanism(), history, delta) if history else 0.0


@lru_cache(maxsize=1024)
def _epsilon_of(kind: str, history: tuple[tuple[float, float, int], ...], delta: float) -> float:
    accountant = new_accountant(kind)
    accountant.history = list(history)
    with _quiet():
        return float(accountant.get_epsilon(delta=delta))


def epsilon_after(accountant: IAccountant, noise_multiplier: float, sample_rate: float, steps: int,
                  delta: float) -> float:
    """Epsilon the accountant would report after `steps` more steps (the accountant is not changed)."""
    trial = new_accountant(accountant.mechanism())
    trial.history = list(accountant.history)
    for _ in range(steps):
        trial.step(noise_multiplier=noise_multiplier, sample_rate=sample_rate)
    return epsilon(trial, delta)


@lru_cache(maxsize=64)
def noise_for_budget(target_epsilon: float, delta: float, sample_rate: float, steps: int, kind: str) -> float:
    """Opacus' `get_noise_multiplier`: the smallest sigma (to 0.01 in epsilon) that spends at most
    `target_epsilon` in `steps` steps; ConfigError when no sigma can."""
    from opacus.accountants.analysis import rdp as rdp_analysis
    from opacus.accountants.rdp import RDPAccountant
    from opacus.accountants.utils import get_noise_multiplier

    if kind == "rdp":  # no noise gets below the RDP conversion's floor; fail now, not after a long search
        orders = RDPAccountant.DEFAULT_ALPHAS
        with _quiet():
            floor, _ = rdp_analysis.get_privacy_spent(orders=orders, rdp=np.zeros(len(orders)), delta=delta)
        if target_epsilon <= floor:
            raise ConfigError(
                f"privacy.target_epsilon {target_epsilon:g} is below {float(floor):.3g}, the smallest "
                f"epsilon the rdp accountant can certify at delta {delta:g}; raise target_epsilon or delta"
            )
    try:
        with _quiet():
            return float(get_noise_multiplier(target_epsilon=target_epsilon, target_delta=delta,
                                              sample_rate=sample_rate, steps=steps, accountant=kind))
    except ValueError as exc:
        raise ConfigError(
            f"privacy.target_epsilon {target_epsilon:g} cannot be met in {steps} steps at sample rate "
            f"{sample_rate:g} and delta {delta:g} ({exc}); raise target_epsilon or plan fewer steps"
        ) from exc


# ----------------------------------------------------------------------------------- planning
@dataclass(frozen=True)
class Plan:
    """The numbers one DP mode runs with, derived from the config in one place."""

    mode: str
    noise_multiplier: float
    sample_rate: float
    steps_per_round: int
    """Accountant steps per round: optimizer steps of a twin (local) or 1 (central)."""
    rounds: int
    delta: float
    target_epsilon: float | None
    accountant: str
    clip: float
    """max_grad_norm (local, per transition) or clip_norm (central, per twin)."""

    @property
    def planned_steps(self) -> int:
        return self.rounds * self.steps_per_round

    def epsilon_after_round(self, accountant: IAccountant) -> float:
        return epsilon_after(accountant, self.noise_multiplier, self.sample_rate, self.steps_per_round,
                             self.delta)

    def to_json(self) -> dict[str, Any]:
        return {"mode": self.mode, "noise_multiplier": self.noise_multiplier, "sample_rate": self.sample_rate,
                "steps_per_round": self.steps_per_round, "delta": self.delta,
                "target_epsilon": self.target_epsilon, "accountant": self.accountant, "clip": self.clip}


def local_steps(config: Config) -> tuple[float, int]:
    """(sample_rate, optimizer steps per round) of one twin's local DP-SGD."""
    t = config.train
    if t.algo == "ppo":
        return 1.0 / t.minibatches, t.updates * t.epochs * t.minibatches
    return 1.0, t.updates


def make_plan(config: Config) -> Plan | None:
    """The run's privacy plan (None when privacy is off); the noise is calibrated here when not given."""
    p = config.privacy
    if p.mode == "off":
        return None
    if p.mode == "local":
        sample_rate, steps, clip = *local_steps(config), p.max_grad_norm
    else:
        sample_rate, steps, clip = 1.0, 1, float(p.clip_norm or 0.0)
    rounds = config.federation.rounds
    if p.noise_multiplier is not None:
        sigma = float(p.noise_multiplier)
    else:
        assert p.target_epsilon is not None  # the config validator requires one of the two
        sigma = noise_for_budget(float(p.target_epsilon), p.delta, sample_rate, rounds * steps, p.accountant)
    return Plan(p.mode, sigma, sample_rate, steps, rounds, p.delta, p.target_epsilon, p.accountant, clip)


def check_run(config: Config, fleet_size: int) -> None:
    """Checks that need the fleet or Opacus, run by `init` before anything is written or trained."""
    plan = make_plan(config)
    if plan is None:
        return
    if plan.mode == "central" and plan.delta >= 1.0 / fleet_size:
        raise ConfigError(
            f"invalid config: privacy.delta ({plan.delta:g}) must be below 1/fleet size = 1/{fleet_size} "
            f"({1.0 / fleet_size:.3g}) in central mode (one unit = one twin); lower delta"
        )
    if plan.target_epsilon is not None:
        first = plan.epsilon_after_round(new_accountant(plan.accountant))
        if first > plan.target_epsilon:
            raise ConfigError(
                f"invalid config: privacy.noise_multiplier {plan.noise_multiplier:g} spends epsilon "
                f"{first:.3g} in the first round, above privacy.target_epsilon {plan.target_epsilon:g}; "
                "raise noise_multiplier or target_epsilon, or leave noise_multiplier unset to calibrate it"
            )


# ------------------------------------------------------------------------------- noise seeds
def noise_seed(*parts: object) -> int:
    """Seed of a DP noise generator: keyed by the secret `FEDTWIN_DP_NOISE_KEY`, else fresh entropy."""
    key = os.environ.get(NOISE_KEY_ENV)
    if not key:
        return secrets.randbits(63)
    return derive_seed(key, "dp-noise", *parts)


def noise_seed_kind() -> str:
    return "keyed" if os.environ.get(NOISE_KEY_ENV) else "random"


def noise_generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


# ----------------------------------------------------------------------------------- local DP
@dataclass
class LocalDP:
    """What the trainer needs to privatize each optimizer step of K twins (entry k = twin k)."""

    noise_multiplier: float
    max_grad_norm: float
    sample_rate: float
    accountants: list[Any]
    generators: list[torch.Generator]

    def step_accountants(self) -> None:
        """Once per optimizer step, like Opacus' optimizer hook."""
        for accountant in self.accountants:
            accountant.step(noise_multiplier=self.noise_multiplier, sample_rate=self.sample_rate)


def latest_record(store: ArtifactStore, layout: RunLayout, twin_id: str, before_round: int
                  ) -> UpdateRecord | None:
    """The twin's newest update record (trained or skipped) from a round before `before_round`."""
    for round_index in range(before_round - 1, -1, -1):
        key = layout.update_meta(round_index, twin_id)
        if store.exists(key):
            try:
                return UpdateRecord.from_json(store.get_json(key))
            except IntegrityError as exc:  # not the store's generic advice: deleting it undercounts epsilon
                raise PrivacyError(
                    f"twin {twin_id!r}: its round {round_index} record {store.describe(key)} is corrupt; "
                    "restore it from a backup: it holds the twin's privacy accountant, and without it the "
                    "twin's epsilon would be undercounted"
                ) from exc
            except (ValueError, TypeError) as exc:
                raise PrivacyError(
                    f"twin {twin_id!r}: its round {round_index} record is unreadable ({exc}); refusing to "
                    "train, its privacy accountant would restart from zero"
                ) from exc
    return None


def restore_accountant(store: ArtifactStore, layout: RunLayout, twin_id: str, round_index: int,
                       kind: str) -> IAccountant:
    """The twin's accountant entering `round_index`, from its latest record (fresh before any)."""
    record = latest_record(store, layout, twin_id, round_index)
    if record is None:
        return new_accountant(kind)
    state = record.extra.get("privacy", {}).get("accountant") if isinstance(record.extra, dict) else None
    if not isinstance(state, dict):
        raise PrivacyError(
            f"twin {twin_id!r}: its round {record.round} record has no privacy accountant state; refusing "
            "to train, its epsilon would restart from zero"
        )
    return load_accountant(state, kind)


@dataclass
class LocalRound:
    """One train step's local DP: the plan, each twin's restored accountant, who may still train."""

    plan: Plan
    accountants: dict[str, Any]
    blocked: dict[str, float] = field(default_factory=dict)
    """Twin id -> the epsilon this round would have brought it to (above the target)."""

    @classmethod
    def restore(cls, config: Config, store: ArtifactStore, layout: RunLayout, round_index: int,
                twin_ids: Sequence[str]) -> LocalRound | None:
        plan = make_plan(config)
        if plan is None or plan.mode != "local":
            return None
        accountants = {t: restore_accountant(store, layout, t, round_index, plan.accountant)
                       for t in twin_ids}
        blocked = {}
        if plan.target_epsilon is not None:
            for twin_id, accountant in accountants.items():
                after = plan.epsilon_after_round(accountant)
                if after > plan.target_epsilon:
                    blocked[twin_id] = after
        return cls(plan, accountants, blocked)

    def mechanism(self, twin_ids: Sequence[str], seeds: Sequence[int], device: torch.device | str) -> LocalDP:
        """The trainer's view; stepping its accountants updates this round's."""
        return LocalDP(self.plan.noise_multiplier, self.plan.clip, self.plan.sample_rate,
                       [self.accountants[t] for t in twin_ids],
                       [noise_generator(noise_seed("local", seed), device) for seed in seeds])

    def epsilon(self, twin_id: str) -> float:
        return epsilon(self.accountants[twin_id], self.plan.delta)

    def extra(self, twin_id: str, steps: int) -> dict[str, Any]:
        """`extra.privacy` of the twin's record: what a reader needs to check the number, and the state."""
        return {"privacy": {**self.plan.to_json(), "steps": steps, "noise_seed": noise_seed_kind(),
                            "accountant": accountant_state(self.accountants[twin_id])}}

    def skip_record(self, twin_id: str, round_index: int, base_sha256: str, engine: str) -> UpdateRecord:
        """The record a twin writes instead of training: no weights, the reason, its unchanged state."""
        target = self.plan.target_epsilon
        reason = (f"{SKIPPED_BUDGET}: this round would bring epsilon to {self.blocked[twin_id]:.4g} > "
                  f"target {target:g} (delta {self.plan.delta:g})")
        return UpdateRecord(twin_id=twin_id, round=round_index, num_samples=0, sha256="",
                            base_sha256=base_sha256, epsilon=self.epsilon(twin_id), engine=engine,
                            extra={"skipped": SKIPPED_BUDGET, "reason": reason, **self.extra(twin_id, 0)})

    def metrics(self, metrics: Mapping[str, float], release: bool) -> dict[str, float]:
        """Experience-derived metrics are outside the guarantee: released only on request."""
        return {k: float(v) for k, v in metrics.items()} if release else {}


def split_skipped(store: ArtifactStore, layout: RunLayout, round_index: int, rejected: list[Rejection]
                  ) -> tuple[list[Rejection], list[dict[str, Any]]]:
    """Move twins that skipped the round on purpose (privacy budget) out of the rejected list.

    Only records that passed every check before the skip marker (a valid record of this twin, round
    and base model: `updates.SKIPPED`) count; anything else stays rejected and adds nothing.
    """
    still, skipped = [], []
    for rejection in rejected:
        if rejection.kind != SKIPPED:
            still.append(rejection)
            continue
        record = UpdateRecord.from_json(store.get_json(layout.update_meta(round_index, rejection.twin_id)))
        skipped.append({"twin_id": rejection.twin_id, "kind": str(record.skipped),
                        "reason": str(record.extra.get("reason", record.skipped)),
                        "epsilon": record.epsilon})
    return still, skipped


def local_budget_stop(config: Config, store: ArtifactStore, layout: RunLayout, twin_ids: Sequence[str],
                      next_round: int, quorum: int) -> str | None:
    """Why the run should stop before `next_round` (too few twins can afford it), else None."""
    plan = make_plan(config)
    if plan is None or plan.mode != "local" or plan.target_epsilon is None:
        return None
    able = 0
    for twin_id in twin_ids:
        try:
            accountant = restore_accountant(store, layout, twin_id, next_round, plan.accountant)
        except PrivacyError:
            able += 1  # the twin itself will refuse; it is not counted out here
            continue
        able += plan.epsilon_after_round(accountant) <= plan.target_epsilon
    if able >= quorum:
        return None
    return (f"{SKIPPED_BUDGET}: only {able} twin(s) can train round {next_round} within epsilon "
            f"{plan.target_epsilon:g} (delta {plan.delta:g}), below the quorum of {quorum}")


# --------------------------------------------------------------------------------- central DP
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
    plan = make_plan(config)
    assert plan is not None and plan.mode == "central"
    if round_index == 0:
        accountant = new_accountant(plan.accountant)
    else:
        state = (previous_summary or {}).get("privacy", {}).get("accountant")
        if not isinstance(state, dict):
            raise PrivacyError(
                f"central DP needs the server accountant from round {round_index - 1}'s summary, which "
                "lacks it; refusing to aggregate (epsilon would restart from zero)"
            )
        accountant = load_accountant(state, plan.accountant)
    rng = np.random.default_rng(noise_seed("central", config.seed, round_index))
    average, info = dp_fedavg(global_params, updates, plan.clip, plan.noise_multiplier, fleet_size, rng)
    accountant.step(noise_multiplier=plan.noise_multiplier, sample_rate=plan.sample_rate)
    eps = epsilon(accountant, plan.delta)
    stop = None
    if plan.target_epsilon is not None and plan.epsilon_after_round(accountant) > plan.target_epsilon:
        stop = (f"{SKIPPED_BUDGET}: another central-DP round would bring the server epsilon above "
                f"{plan.target_epsilon:g} (delta {plan.delta:g})")
    summary = {**plan.to_json(), **info, "epsilon": eps, "noise_seed": noise_seed_kind(),
               "accountant": accountant_state(accountant)}
    return average, summary, stop


