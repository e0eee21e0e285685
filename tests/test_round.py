"""train_round: the one round loop of the runner, the multi-cluster member, the benchmarks and the tests."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from fedtwin.core.errors import RunConflictError
from fedtwin.run import round as round_module
from fedtwin.run.round import InlineExecutor, train_round
from fedtwin.store import LocalStore, RunLayout

TWINS = ["twin-000", "twin-001", "twin-002", "twin-003"]


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, ...]]:
    """Each `steps.train` call (twins, device, engine); twin-002 fails, twin-003's round was aggregated."""
    seen: list[tuple[Any, ...]] = []

    def train(store: Any, run_id: str, round_index: int, twin_ids: list[str], device: str,
              engine: str) -> list[SimpleNamespace]:
        seen.append((twin_ids, device, engine))
        if "twin-003" in twin_ids:
            raise RunConflictError("round 0 is already aggregated")
        if "twin-002" in twin_ids:
            raise ValueError("diverged")
        return [SimpleNamespace(twin_id=t) for t in twin_ids]

    monkeypatch.setattr(round_module.steps, "train", train)
    return seen


def test_only_shards_with_a_pending_twin_are_trained_with_the_device(tmp_path, monkeypatch):
    store = LocalStore(tmp_path)
    store.put_json(RunLayout("r").update_meta(0, "twin-000"), {})
    store.put_json(RunLayout("r").update_meta(0, "twin-002"), {})
    seen: list[tuple[Any, ...]] = []
    monkeypatch.setattr(round_module.steps, "train", lambda s, r, i, ids, device, engine: (
        seen.append((ids, device, engine)) or [SimpleNamespace(twin_id=t) for t in ids]))

    done = train_round(store, "r", 0, TWINS, "fleet", 2, "cpu", InlineExecutor())

    # the runner's fixed shards (twin i goes to shard i % 2); the shard of twins 0 and 2 has nothing to do
    assert seen == [(["twin-001", "twin-003"], "cpu", "fleet")]
    assert (done.present, done.trained) == (["twin-000", "twin-002"], ["twin-001", "twin-003"])
    seen.clear()
    train_round(store, "r", 0, TWINS, "fleet", 4, "cuda", InlineExecutor())
    assert seen == [(TWINS, "cuda", "fleet")]  # one shard on a GPU, the device passed on


def test_a_twins_failure_and_a_late_round_are_reported_not_raised(tmp_path, calls):
    done = train_round(LocalStore(tmp_path), "r", 0, TWINS, "pool", 1, "cpu", InlineExecutor())

    assert [c[0] for c in calls] == [[t] for t in TWINS]  # the pool engine: one job per twin
    assert (done.trained, done.failed, done.refused) == (["twin-000", "twin-001"], ["twin-002"], ["twin-003"])
    assert isinstance(done.conflict, RunConflictError)


def test_an_infrastructure_fault_is_raised(tmp_path, monkeypatch):
    def full_disk(*args: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(round_module.steps, "train", full_disk)
    with pytest.raises(OSError, match="No space left"):
        train_round(LocalStore(tmp_path), "r", 0, TWINS, "fleet", 1)
