"""Privacy accounting: Opacus' accountants, the run's DP plan, and the seeds of the DP noise.

Pure functions of the config and of accountant state: one accountant (`rdp` or `prv`) per twin
in local mode, one for the server in central mode, each stepped once per DP step with
(noise_multiplier, sample_rate). Its `state_dict()` travels as JSON (`accountant_state`) and is
restored with `load_accountant`; reading it from the store is the orchestration's job
(`fedtwin/run/dp_state.py`). What the numbers mean and what they do not cover: docs/privacy.md.
"""

from __future__ import annotations

import os
import secrets
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import numpy as np

from fedtwin.core.errors import ConfigError, FedtwinError
from fedtwin.core.seeding import derive_seed

if TYPE_CHECKING:
    from opacus.accountants import IAccountant

    from fedtwin.config import Config

NOISE_KEY_ENV = "FEDTWIN_DP_NOISE_KEY"
SKIPPED_BUDGET = "privacy budget"
"""`extra.skipped` of a twin that did not train because the round would exceed its budget."""


class PrivacyError(FedtwinError):
    """Privacy accounting cannot go on safely (e.g. a twin's accountant state is unreadable)."""


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


def advanced(accountant: IAccountant, noise_multiplier: float, sample_rate: float, steps: int) -> IAccountant:
    """A new accountant: `accountant` charged for `steps` more steps (`accountant` is not changed)."""
    after = new_accountant(accountant.mechanism())
    after.history = list(accountant.history)
    for _ in range(steps):
        after.step(noise_multiplier=noise_multiplier, sample_rate=sample_rate)
    return after


def epsilon_after(accountant: IAccountant, noise_multiplier: float, sample_rate: float, steps: int,
                  delta: float) -> float:
    """Epsilon the accountant would report after `steps` more steps (the accountant is not changed)."""
    return epsilon(advanced(accountant, noise_multiplier, sample_rate, steps), delta)


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


def check_run(config: Config) -> None:
    """The check that needs Opacus, run by `init` before anything is written or trained: the first
    round's epsilon within the budget (the fleet-size checks are config.validate_for_fleet)."""
    plan = make_plan(config)
    if plan is None:
        return
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
