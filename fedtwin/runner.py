"""Local orchestration of the step functions: a process pool, a progress bar, early stop and resume.

The runner owns no learning logic: each round it calls `steps.train` for the twins without an
update (one per process, or shards of twins for the fleet engine) and then `steps.aggregate`,
exactly the calls an Argo round makes, so a local run and a cluster run give the same model.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import BrokenExecutor, Executor, Future, ProcessPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from multiprocessing import get_context
from typing import Any

from tqdm import tqdm

from fedtwin import steps
from fedtwin.config import Config
from fedtwin.errors import FedtwinError, RunConflictError, RunLockedError, StoreError
from fedtwin.learn.train import resolve_device
from fedtwin.store import ArtifactStore, Lease, LockHeldError, RunLayout, open_store

log = logging.getLogger("fedtwin.runner")


def is_infrastructure_fault(exc: BaseException) -> bool:
    """A failure of the store, the disk, the memory or the worker pool, not of a twin's training.

    It would fail every twin alike, so it must not be counted against the quorum (which fails the run
    for good, exit 3): it ends the step with exit 1, retryable, and the run stays resumable. Anything
    else a training job raises is that twin's own failure, and the round goes on without it.
    """
    return isinstance(exc, StoreError | RunConflictError | OSError | MemoryError | BrokenExecutor)


def new_run_id() -> str:
    return "run-" + datetime.now(UTC).strftime("%Y%m%d-%H%M%S")


def _init_worker(parent_pid: int | None = None) -> None:
    import torch

    torch.set_num_threads(1)
    if parent_pid is not None:
        exit_with_parent(parent_pid)


def exit_with_parent(parent_pid: int, interval: float = 0.5) -> None:
    """Make this pool worker exit once its parent is gone.

    A runner killed with SIGKILL cannot stop its pool, and a spawned worker holds both ends of the
    pool's call queue, so it would wait on it forever (with torch loaded: about 0.5 GiB each). A
    daemon thread notices the reparenting (getppid changes) and ends the process.
    """

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(interval)
        os._exit(1)

    threading.Thread(target=watch, name="fedtwin-exit-with-parent", daemon=True).start()


def _train_job(store: ArtifactStore, run_id: str, round_index: int, twin_ids: list[str], device: str,
               engine: str) -> list[str]:
    """Runs in a worker process: the same `steps.train` an Argo pod runs.

    The store travels pickled, with its settings (an S3 store reconnects in the worker).
    """
    records = steps.train(store, run_id, round_index, twin_ids, device, engine)
    return [r.twin_id for r in records]


class InlineExecutor(Executor):
    """Runs jobs in this process (workers=1): no start-up cost, easier to debug."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        future: Future[Any] = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:  # delivered through the future, like a pool would
            future.set_exception(exc)
        return future


@contextmanager
def make_executor(workers: int) -> Iterator[Executor]:
    if workers <= 1:
        _init_worker()
        yield InlineExecutor()
        return
    # spawn: torch and fork do not mix safely; the pool lives for the whole run, so it starts once.
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=_init_worker,
                             initargs=(os.getpid(),)) as pool:
        yield pool


def shard(twin_ids: list[str], engine: str, workers: int, device: str = "cpu") -> list[list[str]]:
    """Pool engine: one job per twin. Fleet engine: one batched job per worker (CPU), or one per GPU.

    On a GPU, more shards would only add CUDA contexts contending for the same device.
    """
    if engine == "pool":
        return [[t] for t in twin_ids]
    count = max(1, min(1 if device.startswith("cuda") else workers, len(twin_ids)))
    return [twin_ids[i::count] for i in range(count) if twin_ids[i::count]]


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
    state = ctx.state()
    if state.get("status") == "failed":
        ctx.write_state(status="running", reason=None)  # a resume is a fresh attempt at the failed round
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
        from fedtwin.report import write_report

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
    pending = [t for t in twin_ids if not store.exists(ctx.layout.update_meta(round_index, t))]
    finished = set(twin_ids) - set(pending)
    bar.set_description(f"round {round_index + 1}/{ctx.config.federation.rounds}")
    try:
        futures = [
            executor.submit(_train_job, store, ctx.layout.run_id, round_index, ids, device, engine)
            # Fixed shards: a resumed round retrains the same batches, so the updates are bit-identical.
            for ids in shard(twin_ids, engine, workers, device)
            if any(twin in pending for twin in ids)
        ]
    except BrokenExecutor as exc:  # a worker died while the pool was idle, between rounds
        raise worker_died(round_index, exc) from exc
    for future in as_completed(futures):
        try:
            finished.update(future.result())
        except Exception as exc:
            if is_infrastructure_fault(exc):
                for other in futures:
                    other.cancel()
                if isinstance(exc, BrokenExecutor):
                    raise worker_died(round_index, exc) from exc
                raise
            log.warning("[ROUND %s] a training job failed: %s", round_index, exc)  # the quorum decides
        bar.set_postfix(twins=f"{len(finished)}/{len(twin_ids)}")
    summary = steps.aggregate(store, ctx.layout.run_id, round_index)
    log.info("[ROUND %s/%s] participants=%s rejected=%s validation_return=%.1f", round_index + 1,
             ctx.config.federation.rounds, len(summary["participants"]), len(summary["rejected"]),
             summary["validation_return"])
    return summary


def worker_died(round_index: int, exc: BaseException) -> FedtwinError:
    return FedtwinError(f"a training worker process of round {round_index} died ({exc}); if the kernel "
                        "killed it for memory (see dmesg), lower execution.workers; rerun to resume the "
                        "round")


def _last_summary(store: ArtifactStore, layout: RunLayout, next_round: int) -> dict[str, Any] | None:
    key = layout.summary(next_round - 1)
    return store.get_json(key) if next_round > 0 and store.exists(key) else None


def _total_env_steps(store: ArtifactStore, layout: RunLayout, rounds: int) -> int:
    return sum(int(store.get_json(layout.summary(r))["num_samples"]) for r in range(rounds)
               if store.exists(layout.summary(r)))
