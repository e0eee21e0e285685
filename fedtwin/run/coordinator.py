"""The multi-cluster coordinator: aggregates each round as its members' updates arrive, records late
updates, evaluates (see fedtwin.run.multicluster)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from fedtwin.config import MulticlusterConfig
from fedtwin.core.errors import FedtwinError, QuorumError
from fedtwin.federation.updates import update_twin_ids
from fedtwin.run import steps
from fedtwin.run.polling import (
    Poller,
    RunFailedError,
    counted_twins,
    late_key,
    resolve_settings,
)
from fedtwin.run.runstate import reopen
from fedtwin.store import ArtifactStore, RunLayout
from fedtwin.store.state import now_iso

log = logging.getLogger("fedtwin.run.multicluster")


@dataclass
class RoundDecision:
    """Why the coordinator aggregated a round when it did."""

    round: int
    trigger: str
    """`complete` (every expected update arrived) or `deadline` (the round deadline passed)."""
    waited_seconds: float
    present: list[str]
    missing: list[str]
    summary: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        s = self.summary
        return {"round": self.round, "trigger": self.trigger, "waited_seconds": round(self.waited_seconds, 3),
                "participants": s.get("participants", []), "missing": self.missing,
                "rejected": [r["twin_id"] for r in s.get("rejected", [])],
                "num_samples": s.get("num_samples"), "validation_return": s.get("validation_return"),
                "continue": s.get("continue")}


@dataclass
class CoordinatorResult:
    run_id: str
    rounds: list[RoundDecision]
    late: dict[int, list[str]]
    evaluation: dict[str, Any]
    state: dict[str, Any]


def record_late(store: ArtifactStore, layout: RunLayout, round_index: int) -> list[str]:
    """Record updates stored after the round was aggregated in `late.json`; return every late twin.

    The summary is write-once and names the twins it aggregated, rejected or skipped; an update
    record of any other twin in the round's `updates/` arrived too late to count (its member trained past
    the deadline). Idempotent: each twin is recorded once, with the time it was first seen.
    """
    if round_index < 0 or not store.exists(layout.summary(round_index)):
        return []
    counted = counted_twins(store.get_json(layout.summary(round_index)))
    late = [t for t in update_twin_ids(store, layout, round_index) if t not in counted]
    if not late:
        return []
    key = late_key(layout, round_index)
    existing = store.get_json(key)["late"] if store.exists(key) else []
    known = {entry["twin_id"] for entry in existing}
    new = [t for t in late if t not in known]
    if new:
        for twin_id in new:
            entry: dict[str, Any] = {
                "twin_id": twin_id,
                "detected_at": now_iso(),
                "reason": f"update arrived after round {round_index} was aggregated; not part of its model",
            }
            # An unreadable record is still a late arrival.
            with contextlib.suppress(FedtwinError, KeyError, TypeError, ValueError):
                record = store.get_json(layout.update_meta(round_index, twin_id))
                entry["num_samples"] = int(record["num_samples"])
            existing.append(entry)
        store.put_json(key, {"round": round_index, "late": sorted(existing, key=lambda e: e["twin_id"])})
        log.warning("[ROUND %s] late update(s) from %s rejected and recorded in %s", round_index,
                    ", ".join(new), store.describe(key))
    return sorted(known | set(new))


class LateWatcher:
    """Watches an aggregated round's `updates/` for stragglers while the next round waits.

    One listing per poll; the summary is read once (it is write-once) and `late.json` is written
    only when a twin shows up that is neither in the summary nor recorded yet.
    """

    def __init__(self, store: ArtifactStore, layout: RunLayout, round_index: int) -> None:
        self.store, self.layout, self.round = store, layout, round_index
        self.known: set[str] | None = None

    def poll(self) -> None:
        if self.round < 0:
            return
        if self.known is None:
            if not self.store.exists(self.layout.summary(self.round)):
                return
            self.known = counted_twins(self.store.get_json(self.layout.summary(self.round)))
            self.known |= set(record_late(self.store, self.layout, self.round))
        if not set(update_twin_ids(self.store, self.layout, self.round)) <= self.known:
            self.known |= set(record_late(self.store, self.layout, self.round))


def coordinate(
    store: ArtifactStore,
    run_id: str,
    flags: Mapping[str, Any] | None = None,
    retry_failed: bool = False,
    poller: Poller | None = None,
    on_round: Callable[[RoundDecision], None] | None = None,
) -> CoordinatorResult:
    """Aggregate every round of an initialized run as its members' updates arrive, then evaluate.

    A round is aggregated as soon as every twin of the fleet has an update, or when the round
    deadline passes; `steps.aggregate` then enforces `min_twins` (below it the run is marked failed
    and QuorumError is raised, stored rounds untouched). Resumable: it starts at the run's next round.
    """
    ctx = steps.RunContext.load(store, run_id)
    layout, config = ctx.layout, ctx.config
    settings = resolve_settings(config.multicluster, flags)
    poller = poller or Poller(settings)
    state = ctx.state()
    if state.get("status") == "failed":
        if not retry_failed:
            raise RunFailedError(
                f"run {run_id!r} failed: {state.get('reason') or 'no reason recorded'}; its stored rounds "
                f"are intact: rerun with --retry-failed to play round {state['next_round']} again "
                "(restart the members too), or start a new run"
            )
        state = reopen(store, run_id, state)
    expected = [t.id for t in ctx.fleet.train]
    decisions: list[RoundDecision] = []
    round_index = int(state["next_round"])
    while not state.get("training_complete") and round_index < config.federation.rounds:
        decision = _wait_for_updates(store, layout, round_index, expected, settings, poller)
        try:
            decision.summary = steps.aggregate(store, run_id, round_index)
            # The summary is the truth: an update that landed between the last look and the
            # aggregation counts, and so is not missing.
            decision.missing = [t for t in expected if t in decision.summary.get("missing", [])]
        except QuorumError as exc:
            message = str(exc)
            if decision.trigger == "deadline":
                message += (f"; after the round deadline ({settings.round_deadline_seconds:g} s, "
                            f"multicluster.round_deadline_seconds) no update came from: "
                            f"{', '.join(decision.missing)}")
            ctx.write_state(status="failed", reason=message)
            raise QuorumError(message) from exc
        log.info("[ROUND %s/%s] %s after %.1f s: participants=%s missing=%s validation_return=%.1f",
                 round_index + 1, config.federation.rounds, decision.trigger, decision.waited_seconds,
                 len(decision.summary["participants"]), len(decision.missing),
                 decision.summary["validation_return"])
        decisions.append(decision)
        if on_round is not None:
            on_round(decision)
        state = ctx.state()
        round_index += 1
    last = int(state["next_round"]) - 1
    late = {r: ids for r in (last - 1, last) if (ids := record_late(store, layout, r))}
    evaluation = steps.evaluate(store, run_id)
    final = steps.finish(store, run_id, "done")
    return CoordinatorResult(run_id, decisions, late, evaluation, final)


def _wait_for_updates(store: ArtifactStore, layout: RunLayout, round_index: int, expected: list[str],
                      settings: MulticlusterConfig, poller: Poller) -> RoundDecision:
    started = poller.clock()

    stragglers = LateWatcher(store, layout, round_index - 1)

    def check() -> tuple[bool, tuple[str, ...]]:
        stragglers.poll()
        present = tuple(update_twin_ids(store, layout, round_index))
        return set(expected) <= set(present), present

    complete, present = poller.until(check, started + settings.round_deadline_seconds)
    return RoundDecision(
        round=round_index,
        trigger="complete" if complete else "deadline",
        waited_seconds=poller.clock() - started,
        present=list(present),
        missing=[t for t in expected if t not in present],
    )
