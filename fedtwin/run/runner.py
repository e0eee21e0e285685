"""Local orchestration of the step functions: a process pool, a progress bar, early stop and resume.

The runner owns no learning logic: each round it calls `steps.train` for the twins without an
update (one per process, or shards of twins for the fleet engine) and then `steps.aggregate`,
exactly the calls an Argo round makes, so a local run and a cluster run give the same model.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from concurrent.futures import Executor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from tqdm import tqdm

from fedtwin.config import Config
from fedtwin.core.errors import RunLockedError
from fedtwin.learn.runtime import resolve_device
from fedtwin.run import steps
from fedtwin.run.round import RoundTraining, make_executor, train_round
from fedtwin.run.runstate import reopen
from fedtwin.store import ArtifactStore, Lease, LockHeldError, RunLayout, open_store

log = logging.getLogger("fedtwin.run.runner")


def new_run_id() -> str:
    return "run-" + datetime.now(UTC).strftime("%Y%m%d-%H%M%S")


@dataclass
class RunResult:
    run_id: str
    store: str
    rounds_played: int
    validation_return: float
    env_steps: int
    seconds: float
    evaluation: dict[str, Any] = field(default_factory=dict)
    resumed: bool = False

    @property
    def heldout_return(self) -> float:
        return float(self.evaluation.get("heldout", {}).get("mean_return", float("nan")))


def run(config: Config, progress: bool = True, report: bool = True) -> RunResult:
    """Run (or resume) a whole federated training locally and evaluate the final model."""
    started = time.perf_counter()
    resolve_device(config.execution.device)  # no GPU: one DeviceError (exit 2) before anything is written
    if config.run_id is None:
        config = config.model_copy(update={"run_id": new_run_id()})
    assert config.run_id is not None
    store = open_store(config.store, config.s3)
    with hold_run(store, config.run_id) as lease:
        return _run(store, config, lease, started, progress, report)


@contextmanager
def hold_run(store: ArtifactStore, run_id: str) -> Iterator[Lease]:
    """The run's lock for this runner: a second `fedtwin run` of the same run id refuses at once
    (RunLockedError, exit 1) instead of racing this one through the same rounds."""
    try:
        with store.lock(RunLayout(run_id).runner_lock) as lease:
            yield lease
    except LockHeldError as exc:
        raise locked_error(run_id, exc) from exc


def locked_error(run_id: str, exc: LockHeldError) -> RunLockedError:
    holder = exc.holder
    who = f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}, since {holder.get('since', '?')}"
    expires = holder.get("expires_at")
    if isinstance(expires, int | float):
        until = datetime.fromtimestamp(expires, UTC).isoformat(timespec="seconds")
        who += f"; its lease expires at {until} if that process was killed"
    return RunLockedError(f"run {run_id!r} is being run by another runner ({who}); wait for it to finish, "
                          "or stop that process, then rerun")


def _run(store: ArtifactStore, config: Config, lease: Lease, started: float, progress: bool,
         report: bool) -> RunResult:
    assert config.run_id is not None
    init = steps.init(store, config)
    ctx = steps.RunContext.load(store, config.run_id)
    state = reopen(store, config.run_id, ctx.state())
    workers = config.execution.workers or os.cpu_count() or 1
    engine, device = config.execution.engine, config.execution.device
    rounds = config.federation.rounds
    summary: dict[str, Any] | None = _last_summary(store, ctx.layout, init.next_round)

    bar = tqdm(total=rounds, initial=init.next_round, desc=f"{config.run_id}", unit="round",
               disable=not progress, dynamic_ncols=True)
    try:
        with make_executor(workers) as executor:
            round_index = init.next_round
            while not state.get("training_complete") and round_index < rounds:
                lease.check()  # an S3 lease that could not be renewed was taken over: stop here
                summary = _play_round(store, ctx, round_index, executor, workers, engine, device, bar)
                bar.update(1)
                bar.set_postfix(val_return=f"{summary['validation_return']:.1f}",
                                participants=len(summary["participants"]))
                round_index += 1
                if not summary["continue"]:
                    break
    except BaseException:
        bar.close()
        raise
    bar.close()
    evaluation = steps.evaluate(store, config.run_id)
    if report:
        from fedtwin.observe.report import write_report

        write_report(store, config.run_id)
    steps.finish(store, config.run_id, "done")
    final_state = ctx.state()
    return RunResult(
        run_id=config.run_id,
        store=store.url,
        rounds_played=int(final_state["next_round"]),
        validation_return=float(summary["validation_return"]) if summary else float("nan"),
        env_steps=_total_env_steps(store, ctx.layout, int(final_state["next_round"])),
        seconds=time.perf_counter() - started,
        evaluation=evaluation,
        resumed=init.resumed,
    )


def _play_round(store: ArtifactStore, ctx: steps.RunContext, round_index: int, executor: Executor,
                workers: int, engine: str, device: str, bar: tqdm) -> dict[str, Any]:
    twin_ids = [t.id for t in ctx.fleet.train]
    bar.set_description(f"round {round_index + 1}/{ctx.config.federation.rounds}")

    def progress(done: RoundTraining) -> None:
        bar.set_postfix(twins=f"{len(done.present) + len(done.trained)}/{len(twin_ids)}")

    trained = train_round(store, ctx.layout.run_id, round_index, twin_ids, engine, workers, device, executor,
                          on_job=progress)
    if trained.conflict is not None:  # the runner holds the run's lock: another writer is a fault
        raise trained.conflict
    summary = steps.aggregate(store, ctx.layout.run_id, round_index)
    log.info("[ROUND %s/%s] participants=%s rejected=%s validation_return=%.1f", round_index + 1,
             ctx.config.federation.rounds, len(summary["participants"]), len(summary["rejected"]),
             summary["validation_return"])
    return summary


def _last_summary(store: ArtifactStore, layout: RunLayout, next_round: int) -> dict[str, Any] | None:
    key = layout.summary(next_round - 1)
    return store.get_json(key) if next_round > 0 and store.exists(key) else None


def _total_env_steps(store: ArtifactStore, layout: RunLayout, rounds: int) -> int:
    return sum(int(store.get_json(layout.summary(r))["num_samples"]) for r in range(rounds)
               if store.exists(layout.summary(r)))
