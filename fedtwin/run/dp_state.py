"""Local DP's state across rounds, read from the store: each twin's accountant, budget stops, skips.

A twin's accountant state rides in its update record (`extra.privacy.accountant`); entering a
round, it is restored from the twin's latest record (a new process or pod), so epsilon accumulates
over the whole run. A twin whose budget this round would exceed writes a skip record instead of
training, and the aggregator ends the run when fewer twins than the quorum can afford another
round. The arithmetic is `fedtwin.learn.accounting`'s; this module only reads and writes records.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from fedtwin.core.errors import IntegrityError
from fedtwin.federation.updates import SKIPPED, UpdateRecord
from fedtwin.learn.accounting import (
    SKIPPED_BUDGET,
    Plan,
    PrivacyError,
    accountant_state,
    advanced,
    epsilon,
    load_accountant,
    make_plan,
    new_accountant,
    noise_seed,
    noise_seed_kind,
)

if TYPE_CHECKING:
    import torch
    from opacus.accountants import IAccountant

    from fedtwin.config import Config
    from fedtwin.federation.updates import Rejection
    from fedtwin.learn.dp_sgd import LocalDP
    from fedtwin.store import ArtifactStore, RunLayout


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
    accountants: dict[str, IAccountant]
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

    def mechanism(self, seeds: Sequence[int], device: torch.device | str) -> LocalDP:
        """The trainer's view: the noise, and one generator per twin (seeded from its train seed).
        Imported here: an aggregator (and any step with privacy off) needs no torch from this module."""
        from fedtwin.learn.dp_sgd import LocalDP, noise_generator

        return LocalDP(self.plan.noise_multiplier, self.plan.clip, self.plan.sample_rate,
                       [noise_generator(noise_seed("local", seed), device) for seed in seeds])

    def spend(self, twin_id: str, steps: int) -> None:
        """Charge the twin's accountant for the DP-SGD steps its training took."""
        self.accountants[twin_id] = advanced(self.accountants[twin_id], self.plan.noise_multiplier,
                                             self.plan.sample_rate, steps)

    def epsilon(self, twin_id: str) -> float:
        return epsilon(self.accountants[twin_id], self.plan.delta)

    def extra(self, twin_id: str, steps: int) -> dict[str, Any]:
        """`extra.privacy` of the twin's record: what a reader needs to check the number, and the state."""
        return {"privacy": {**self.plan.to_json(), "steps": steps, "noise_seed": noise_seed_kind(),
                            "accountant": accountant_state(self.accountants[twin_id])}}

    def skip_record(self, twin_id: str, round_index: int, base_sha256: str, engine: Literal["pool", "fleet"]
                    ) -> UpdateRecord:
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
