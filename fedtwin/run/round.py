"""One round's training: the twins' jobs sharded, submitted to an executor and collected.

The local runner, the multi-cluster member, the benchmarks and the tests all train a round through
`train_round`, so they shard the same way and make the same `steps.train` calls: the same updates,
bit for bit.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import BrokenExecutor, Executor, Future, ProcessPoolExecutor, as_completed
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from multiprocessing import get_context
from typing import Any

from fedtwin.core.errors import FedtwinError, RunConflictError, StoreError
from fedtwin.run import steps
from fedtwin.store import ArtifactStore, RunLayout

log = logging.getLogger("fedtwin.round")


def is_infrastructure_fault(exc: BaseException) -> bool:
    """A failure of the store, the disk, the memory or the worker pool, not of a twin's training.

    It would fail every twin alike, so it must not be counted against the quorum (which fails the run
    for good, exit 3): it ends the step with exit 1, retryable, and the run stays resumable. Anything
    else a training job raises is that twin's own failure, and the round goes on without it.
    """
    return isinstance(exc, StoreError | RunConflictError | OSError | MemoryError | BrokenExecutor)


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


def train_job(store: ArtifactStore, run_id: str, round_index: int, twin_ids: list[str], device: str,
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


def pending_twins(store: ArtifactStore, run_id: str, round_index: int, twin_ids: list[str]) -> list[str]:
    """The twins of `twin_ids` without a stored update in the round."""
    layout = RunLayout(run_id)
    return [t for t in twin_ids if not store.exists(layout.update_meta(round_index, t))]


def worker_died(round_index: int, exc: BaseException) -> FedtwinError:
    return FedtwinError(f"a training worker process of round {round_index} died ({exc}); if the kernel "
                        "killed it for memory (see dmesg), lower execution.workers; rerun to resume the "
                        "round")


@dataclass
class RoundTraining:
    """What `train_round` did with the twins it was given."""

    present: list[str] = field(default_factory=list)
    """Twins whose update was already stored: skipped."""
    trained: list[str] = field(default_factory=list)
    """Twins with an update now (written by this call, or by a retried job that found it)."""
    refused: list[str] = field(default_factory=list)
    """Twins not trained because the round was aggregated first (RunConflictError)."""
    failed: list[str] = field(default_factory=list)
    """Twins whose training raised (logged; the quorum decides whether the round survives)."""
    conflict: RunConflictError | None = None
    """The first RunConflictError a job raised, for a caller that treats it as a fault."""


def train_round(
    store: ArtifactStore,
    run_id: str,
    round_index: int,
    twin_ids: list[str],
    engine: str,
    workers: int,
    device: str = "cpu",
    executor: Executor | None = None,
    on_job: Callable[[RoundTraining], None] | None = None,
) -> RoundTraining:
    """Train the round's twins among `twin_ids` that have no update yet, and say what happened.

    The shards are fixed by `twin_ids`, the engine, the workers and the device, and only those with a
    pending twin are submitted: a resumed round retrains the same batches, so the updates are
    bit-identical. A twin's own failure is logged and counted in `failed`; an infrastructure fault
    (store, disk, memory, a dead worker) cancels the other jobs and is raised. `executor` None: one is
    made for this round. `on_job` is called after each finished job (a progress bar).
    """
    pending = pending_twins(store, run_id, round_index, twin_ids)
    result = RoundTraining(present=[t for t in twin_ids if t not in pending])
    with ExitStack() as stack:
        if executor is None:
            executor = stack.enter_context(make_executor(workers))
        try:
            jobs = {executor.submit(train_job, store, run_id, round_index, ids, device, engine): ids
                    for ids in shard(twin_ids, engine, workers, device) if any(t in pending for t in ids)}
        except BrokenExecutor as exc:  # a worker died while the pool was idle, between rounds
            raise worker_died(round_index, exc) from exc
        for future in as_completed(jobs):
            ids = jobs[future]
            try:
                result.trained += [t for t in future.result() if t in pending]
            except RunConflictError as exc:
                result.refused += [t for t in ids if t in pending]
                result.conflict = result.conflict or exc
                log.warning("[ROUND %s] already aggregated; %s not trained", round_index, ", ".join(ids))
            except Exception as exc:
                if is_infrastructure_fault(exc):
                    for other in jobs:
                        other.cancel()
                    if isinstance(exc, BrokenExecutor):
                        raise worker_died(round_index, exc) from exc
                    raise
                result.failed += [t for t in ids if t in pending]
                log.warning("[ROUND %s] training %s failed: %s", round_index, ", ".join(ids), exc)
            if on_job is not None:
                on_job(result)
    result.trained.sort()
    result.refused.sort()
    result.failed.sort()
    return result


__all__ = [
    "InlineExecutor",
    "RoundTraining",
    "is_infrastructure_fault",
    "make_executor",
    "pending_twins",
    "shard",
    "train_job",
    "train_round",
]
