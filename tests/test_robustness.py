"""Kill-and-rerun: a step killed at any write and rerun gives the clean run's final model.

A kill is simulated by making the store raise (a BaseException, like a SIGKILL nothing can catch)
on one chosen write; everything the step wrote before it stays in the store, as after a real kill.
FedAdam is used so the persisted server state (m, v) is part of what must survive.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest
import torch

from fedtwin.run import steps
from fedtwin.run.round import train_round
from fedtwin.store import LocalStore, RunLayout
from tests.helpers import final_model_hash

torch.set_num_threads(1)
ROUNDS = 3


class Killed(BaseException):
    """The process died here."""


FEDADAM = {"federation.strategy": "fedadam", "federation.rounds": ROUNDS, "federation.server_lr": 0.01}


def play(store: LocalStore, run_id: str, start: int = 0) -> None:
    """Rounds `start`.. as the runner plays them (`train_round`, the pool engine, then the aggregate
    step, which returns the summary if it exists)."""
    twin_ids = [t.id for t in steps.RunContext.load(store, run_id).fleet.train]
    for round_index in range(start, ROUNDS):
        train_round(store, run_id, round_index, twin_ids, "pool", 1)
        steps.aggregate(store, run_id, round_index)


def final_hash(store: LocalStore, run_id: str) -> str:
    steps.evaluate(store, run_id)
    return final_model_hash(store, run_id)


def kill_on(store: LocalStore, method: str, predicate: Callable[[str], bool]) -> None:
    """Make `store.<method>(key, ...)` die when `predicate(key)` holds (once)."""
    original = getattr(store, method)

    def dying(key, *args, **kwargs):
        if predicate(key):
            setattr(store, method, original)
            raise Killed(key)
        return original(key, *args, **kwargs)

    setattr(store, method, dying)


KILL_POINTS = {
    # the aggregator, round 1: after the new global, before its server state
    "aggregate-after-global": ("put_bytes", lambda key: key.endswith("rounds/0001/server_state.safetensors")),
    # after global and server state, before the summary
    "aggregate-before-summary": ("put_json", lambda key: key.endswith("rounds/0001/summary.json")),
    # after the summary, before state.json moves on (last round: evaluate must still see the new model)
    "aggregate-before-state": ("put_json", lambda key: key.endswith("state.json")),
    # a twin after committing its weights but before its record (the record's sidecar rename is the
    # record's commit point in the store's batched write)
    "train-mid-write": ("commit", lambda key: key.endswith("rounds/0001/updates/twin-001.json.sha256")),
}


def kill_on_commit(monkeypatch: pytest.MonkeyPatch, predicate: Callable[[str], bool]) -> None:
    """Make the local store's rename onto `dst` die when `predicate(dst)` holds (once)."""
    original = os.replace

    def dying(src, dst, *args, **kwargs):
        if predicate(str(dst)):
            monkeypatch.setattr(os, "replace", original)
            raise Killed(str(dst))
        return original(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", dying)


@pytest.mark.parametrize("point", sorted(KILL_POINTS))
def test_killed_step_reruns_to_the_clean_final_model(tiny_config, point, monkeypatch):
    # Prepare: a clean run, and the same config started under another run id
    clean = tiny_config("clean", **FEDADAM)
    store = LocalStore(clean.store)
    steps.init(store, clean)
    play(store, "clean")
    expected = final_hash(store, "clean")
    killed = tiny_config("killed", **FEDADAM)
    steps.init(store, killed)

    # Execute: play until the kill, then rerun from where the store says the run is
    method, predicate = KILL_POINTS[point]
    if point == "aggregate-before-state":  # only in the last round, once its summary is written
        last = RunLayout("killed").summary(ROUNDS - 1)
        kill_on(store, method, lambda key: predicate(key) and store.exists(last))
    elif method == "commit":
        kill_on_commit(monkeypatch, predicate)
    else:
        kill_on(store, method, predicate)
    with pytest.raises(Killed):
        play(store, "killed")
    rerun_store = LocalStore(clean.store)  # a fresh process
    next_round = steps.RunContext.load(rerun_store, "killed").state()["next_round"]
    play(rerun_store, "killed", next_round)

    # Assert: the same final model, and every round counted each twin once
    assert final_hash(rerun_store, "killed") == expected
    layout = RunLayout("killed")
    for round_index in range(ROUNDS):
        summary = rerun_store.get_json(layout.summary(round_index))
        assert summary["participants"] == ["twin-000", "twin-001", "twin-002"]
        assert rerun_store.get_bytes(layout.global_model(round_index + 1)) == \
            store.get_bytes(RunLayout("clean").global_model(round_index + 1))
