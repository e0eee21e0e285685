"""The train step: twins trained from the round's global model, one update each (idempotent)."""

from __future__ import annotations

import time
from typing import Literal

import numpy as np

from fedtwin.config import Config
from fedtwin.core.errors import ConfigError, RunConflictError
from fedtwin.core.seeding import derive_seed
from fedtwin.federation.updates import (
    UpdateRecord,
    finite_metrics,
    read_record,
    update_twin_ids,
    write_updates,
)
from fedtwin.learn.train import train_twins
from fedtwin.policy.layout import params_to_bytes_many
from fedtwin.run import dp_state
from fedtwin.store import ArtifactStore, sha256_hex
from fedtwin.store.context import RunContext

LIST_FROM_TWINS = 16
"""From this many twins a train step lists the round's updates once instead of looking up each twin's."""


def train_seed(config: Config, twin_id: str, round_index: int) -> int:
    return derive_seed(config.seed, "train", twin_id, round_index)


def choose_engine(engine: str | None, twin_count: int) -> Literal["pool", "fleet"]:
    """A train step's engine: the one named, else the pool engine for one twin and the fleet engine
    (one batched computation) for several."""
    if engine is None:
        return "pool" if twin_count == 1 else "fleet"
    if engine not in ("pool", "fleet"):
        raise ConfigError(f"unknown engine {engine!r}; use pool or fleet")
    return "pool" if engine == "pool" else "fleet"


def train(
    store: ArtifactStore,
    run_id: str,
    round_index: int,
    twin_ids: list[str],
    device: str = "cpu",
    engine: str | None = None,
) -> list[UpdateRecord]:
    """Train the given twins (ids or `FIRST..LAST` ranges) from the round's global model and write one
    update per twin.

    One twin is the pool engine's unit (a process or a pod); several twins are trained together in
    one batched computation (the fleet engine; the default for more than one twin). Twins whose
    update already exists are skipped.
    With local DP, each twin's accountant is restored from its latest record; a twin whose budget
    this round would exceed writes a record saying so instead of training.
    """
    ctx = RunContext.load(store, run_id)
    layout = ctx.layout
    if store.exists(layout.summary(round_index)):
        raise RunConflictError(
            f"round {round_index} of run {run_id!r} is already aggregated; a late update would be ignored"
        )
    twins = ctx.twins(twin_ids)
    engine = choose_engine(engine, len(twins))
    if len(twins) > LIST_FROM_TWINS:  # one listing of the round's updates instead of a lookup per twin
        stored = set(update_twin_ids(store, layout, round_index))
        done = [t for t in twins if t.id in stored]
    else:
        done = [t for t in twins if store.exists(layout.update_meta(round_index, t.id))]
    done_ids = {t.id for t in done}
    todo = [t for t in twins if t.id not in done_ids]
    records = [read_record(store, layout.update_meta(round_index, t.id)) for t in done]
    if not todo:
        return records
    params, base = ctx.global_model(round_index)
    dp_round = dp_state.LocalRound.restore(ctx.config, store, layout, round_index, [t.id for t in todo])
    if dp_round is not None and dp_round.blocked:
        for twin in [t for t in todo if t.id in dp_round.blocked]:
            skip = dp_round.skip_record(twin.id, round_index, sha256_hex(base), engine)
            store.put_json(layout.update_meta(round_index, twin.id), skip.to_json())
            records.append(skip)
        todo = [t for t in todo if t.id not in dp_round.blocked]
        if not todo:
            return records
    # A retried shard keeps its composition: a batch's results differ from a smaller batch's in the
    # last float bits, so the whole shard trains again and only the missing updates are written
    # (with local DP the missing twins train alone: their accountants are restored per twin).
    batch = twins if done and len(twins) > 1 and dp_round is None else todo
    seeds = [train_seed(ctx.config, t.id, round_index) for t in batch]
    dp = dp_round.mechanism(seeds, device) if dp_round else None
    started = time.perf_counter()
    results = train_twins(params, batch, seeds, ctx.config.train, device, dp,
                          env_backend=ctx.config.execution.env_backend)
    seconds = (time.perf_counter() - started) / len(batch)
    base_sha256 = sha256_hex(base)
    todo_ids = {t.id for t in todo}
    trained = [(twin, result) for twin, result in zip(batch, results, strict=True) if twin.id in todo_ids]
    files = params_to_bytes_many(np.stack([result.params for _, result in trained]), ctx.spec)
    written: list[tuple[UpdateRecord, bytes]] = []
    for (twin, result), weights in zip(trained, files, strict=True):
        if dp_round:
            dp_round.spend(twin.id, result.dp_steps)
        record = UpdateRecord(
            twin_id=twin.id,
            round=round_index,
            num_samples=int(result.num_samples),
            sha256="",
            base_sha256=base_sha256,
            metrics=finite_metrics(dp_round.metrics(result.metrics, ctx.config.privacy.release_metrics)
                                   if dp_round else result.metrics),
            epsilon=dp_round.epsilon(twin.id) if dp_round else None,
            seconds=seconds,
            engine=engine,
            extra=dp_round.extra(twin.id, dp_round.plan.steps_per_round) if dp_round else {},
        )
        written.append((record, weights))
    return records + write_updates(store, layout, written)
