"""A multi-cluster member: trains its twins in every round of a run, meeting the coordinator only
through the store (see fedtwin.run.multicluster)."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

from fedtwin.config import MulticlusterConfig
from fedtwin.core.errors import ConfigError
from fedtwin.core.formats import check_dns_label
from fedtwin.run import steps
from fedtwin.run.polling import (
    Poller,
    StateReader,
    WaitTimeoutError,
    _raise_if_failed,
    counted_twins,
    first_open_round,
    resolve_settings,
)
from fedtwin.run.round import make_executor, train_round
from fedtwin.store import ArtifactStore, RunLayout

log = logging.getLogger("fedtwin.run.multicluster")


@dataclass
class MemberRound:
    """What one member did in one round, and what the aggregation made of its twins."""

    round: int
    trained: list[str] = field(default_factory=list)
    """Twins whose update this member wrote in this round."""
    present: list[str] = field(default_factory=list)
    """Twins whose update was already there (a restarted member): skipped."""
    refused: list[str] = field(default_factory=list)
    """Twins not trained because the round was aggregated first (this member came late)."""
    failed: list[str] = field(default_factory=list)
    """Twins whose training raised (logged; the quorum decides whether the round survives)."""
    aggregated: list[str] = field(default_factory=list)
    """This member's twins among the round's participants."""
    rejected: list[str] = field(default_factory=list)
    """This member's twins whose updates the aggregator rejected (reasons in the summary)."""
    skipped: list[str] = field(default_factory=list)
    """This member's twins the round skipped on purpose (e.g. a spent privacy budget)."""
    left_out: list[str] = field(default_factory=list)
    """This member's twins in none of the lists: missing at the deadline, or written after it (late)."""

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items()}


@dataclass
class MemberResult:
    run_id: str
    twins: list[str]
    rounds: list[MemberRound]
    status: str
    """`complete` (the last round is aggregated) or `done` (the run had already finished)."""


def member(
    store: ArtifactStore,
    run_id: str,
    twin_ids: list[str],
    flags: Mapping[str, Any] | None = None,
    device: str = "cpu",
    workers: int | None = None,
    poller: Poller | None = None,
    on_round: Callable[[MemberRound], None] | None = None,
) -> MemberResult:
    """Train `twin_ids` in every round of `run_id` until its last round is aggregated.

    Resumable: it starts at the first round without a summary and skips twins whose update is
    already stored. A round aggregated before this member trained it is skipped (never a stale
    update); the member goes on with the next round.
    """
    try:
        check_dns_label(run_id, "run id")
    except ValueError as exc:
        raise ConfigError(f"{exc}; pass the coordinator's run id with --run") from exc
    if not twin_ids:
        raise ConfigError("a member needs at least one twin: pass --twins ID,ID,...")
    layout = RunLayout(run_id)
    settings = resolve_settings(None, flags)
    poller = poller or Poller(settings)

    deadline = poller.clock() + settings.wait_timeout_seconds
    ok, _ = poller.until(lambda: (store.exists(layout.config), None), deadline)
    if not ok:
        raise WaitTimeoutError(
            f"run {run_id!r} did not appear in {store.url} within {settings.wait_timeout_seconds:g} s "
            "(multicluster.wait_timeout_seconds); start it on the host with `fedtwin step init` and "
            "`fedtwin step coordinate`, and check that both use the same store"
        )
    ctx = steps.RunContext.load(store, run_id)
    ctx.twins(twin_ids)  # ConfigError (exit 2) for a twin outside the run's fleet, before any wait
    poller.settings = settings = resolve_settings(ctx.config.multicluster, flags)
    try:
        settings.check_member_patience()
    except ValueError as exc:
        raise ConfigError(f"{exc}; raise --wait-timeout") from exc
    engine = ctx.config.execution.engine
    workers = workers or ctx.config.execution.workers or os.cpu_count() or 1
    state = StateReader(store, layout)
    rounds: list[MemberRound] = []

    first = state.read()
    _raise_if_failed(first, run_id)
    round_index = first_open_round(store, layout)
    if (first is not None and first.get("status") == "done") or _complete_before(store, layout, round_index):
        return MemberResult(run_id, twin_ids, rounds, "done")

    with make_executor(min(workers, len(twin_ids))) as executor:
        while True:
            opened = [layout.global_model(round_index), layout.summary(round_index)]
            _wait(poller, settings, state, run_id, opened, f"the global model of round {round_index}")
            report = MemberRound(round_index)
            if not store.exists(layout.summary(round_index)):
                _train_round(store, run_id, round_index, twin_ids, device, engine, workers, executor, report)
            _wait(poller, settings, state, run_id, [layout.summary(round_index)],
                  f"the aggregation of round {round_index}")
            summary = store.get_json(layout.summary(round_index))
            _classify(report, twin_ids, summary)
            rounds.append(report)
            if on_round is not None:
                on_round(report)
            if not summary.get("continue"):
                return MemberResult(run_id, twin_ids, rounds, "complete")
            round_index += 1


def _complete_before(store: ArtifactStore, layout: RunLayout, round_index: int) -> bool:
    """True when the round before `round_index` was the run's last (its summary says so)."""
    return round_index > 0 and not store.get_json(layout.summary(round_index - 1)).get("continue")


def _wait(poller: Poller, settings: MulticlusterConfig, state: StateReader, run_id: str,
          keys: list[str], what: str) -> None:
    """Poll until one of `keys` exists; stop at once when the run failed; give up after the wait timeout."""

    def check() -> tuple[bool, None]:
        _raise_if_failed(state.read(), run_id)
        return any(state.store.exists(key) for key in keys), None

    ok, _ = poller.until(check, poller.clock() + settings.wait_timeout_seconds)
    if not ok:
        hint = "" if state.readable else (" (state.json is unreadable with these credentials, so a failed "
                                          "run looks the same)")
        raise WaitTimeoutError(
            f"run {run_id!r}: waited {settings.wait_timeout_seconds:g} s (multicluster.wait_timeout_seconds) "
            f"for {what}, which never came{hint}; is the coordinator running?"
        )


def _train_round(store: ArtifactStore, run_id: str, round_index: int, twin_ids: list[str], device: str,
                 engine: str, workers: int, executor: Executor, report: MemberRound) -> None:
    """The member's twins through `train_round`, as the single-cluster runner trains them (the same
    shards and device, so the same updates, bit for bit); a twin refused because the round was
    aggregated first means this member came late."""
    done = train_round(store, run_id, round_index, twin_ids, engine, workers, device, executor)
    report.present, report.trained = done.present, done.trained
    report.refused, report.failed = done.refused, done.failed


def _classify(report: MemberRound, twin_ids: list[str], summary: Mapping[str, Any]) -> None:
    participants = set(summary.get("participants", []))
    rejected = {r["twin_id"] for r in summary.get("rejected", [])}
    skipped = {s["twin_id"] for s in summary.get("skipped", [])}
    report.aggregated = [t for t in twin_ids if t in participants]
    report.rejected = [t for t in twin_ids if t in rejected]
    report.skipped = [t for t in twin_ids if t in skipped]
    report.left_out = [t for t in twin_ids if t not in counted_twins(summary)]
    late = [t for t in report.trained if t in report.left_out]
    if late:
        log.warning("[ROUND %s] %s written after the round was aggregated: not part of its model "
                    "(the coordinator records it as late)", report.round, ", ".join(late))
