"""Step functions: idempotent, store-only I/O, quorum, resume refusal, determinism."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedtwin.core.errors import ConfigError, IntegrityError, QuorumError, RunConflictError
from fedtwin.run import steps
from fedtwin.store import LocalStore, RunLayout, context
from tests.helpers import final_model_hash

torch.set_num_threads(1)


def play(store, config):
    """Init + every round + evaluate, through the step functions only."""
    init = steps.init(store, config)
    for round_index in range(config.federation.rounds):
        steps.train(store, init.run_id, round_index, init.twin_ids)
        if not steps.aggregate(store, init.run_id, round_index)["continue"]:
            break
    return steps.evaluate(store, init.run_id)


def test_init_writes_the_run_layout(tiny_config):
    config = tiny_config()
    store = LocalStore(config.store)

    result = steps.init(store, config)

    layout = RunLayout("demo")
    for key in (layout.config, layout.twins, layout.state, layout.global_model(0)):
        assert store.exists(key), key
    assert result.twin_ids == ["twin-000", "twin-001", "twin-002"]
    assert store.get_json(layout.state)["next_round"] == 0


def test_same_seed_gives_bit_identical_final_model(tiny_config, tmp_path):
    a, b = tiny_config("run-a"), tiny_config("run-b")
    store = LocalStore(a.store)
    play(store, a)
    play(store, b)
    assert final_model_hash(store, "run-a") == final_model_hash(store, "run-b")
    c = tiny_config("run-c", seed=1)
    play(store, c)
    assert final_model_hash(store, "run-c") != final_model_hash(store, "run-a")


def test_train_is_idempotent(tiny_config):
    config = tiny_config()
    store = LocalStore(config.store)
    steps.init(store, config)
    first = steps.train(store, "demo", 0, ["twin-000"])[0]
    key = RunLayout("demo").update_weights(0, "twin-000")
    before = store.get_bytes(key)

    again = steps.train(store, "demo", 0, ["twin-000"])[0]

    assert again.sha256 == first.sha256
    assert store.get_bytes(key) == before


def test_aggregate_records_round_and_is_idempotent(tiny_config):
    config = tiny_config()
    store = LocalStore(config.store)
    init = steps.init(store, config)
    steps.train(store, "demo", 0, init.twin_ids)

    summary = steps.aggregate(store, "demo", 0)
    again = steps.aggregate(store, "demo", 0)

    assert summary == again
    assert summary["participants"] == init.twin_ids
    assert summary["num_samples"] == 3 * 2 * 16
    assert summary["continue"] is True
    assert store.exists(RunLayout("demo").global_model(1))


def test_aggregate_of_a_round_that_is_not_next_leaves_the_run_alone(tiny_config):
    """A workflow engine that starts the wrong round (argoproj/argo-workflows#14774) changes nothing."""
    config = tiny_config()
    store = LocalStore(config.store)
    init = steps.init(store, config)
    layout = RunLayout("demo")
    before = store.get_bytes(layout.state)

    result = steps.aggregate(store, "demo", 1)  # round 0 is next

    assert result == {"round": 1, "played": False, "reason": "round 0 is the next round to aggregate",
                      "continue": True, "next_round": 0, "last_round": 1}
    assert store.get_bytes(layout.state) == before and not store.exists(layout.summary(1))
    steps.train(store, "demo", 0, init.twin_ids)
    assert steps.aggregate(store, "demo", 0)["last_round"] == 1  # the final round may still start


def test_below_quorum_fails_the_round_and_keeps_the_store(tiny_config):
    config = tiny_config()  # min_twins = 2
    store = LocalStore(config.store)
    steps.init(store, config)
    steps.train(store, "demo", 0, ["twin-000"])

    with pytest.raises(QuorumError, match="1 valid updates, below the quorum of 2"):
        steps.aggregate(store, "demo", 0)

    layout = RunLayout("demo")
    assert not store.exists(layout.global_model(1))
    assert store.exists(layout.update_meta(0, "twin-000"))
    assert store.get_json(layout.state)["status"] == "failed"


def test_bad_update_is_rejected_with_a_reason_not_a_crash(tiny_config, tmp_path):
    config = tiny_config(**{"federation.min_twins": 1})
    store = LocalStore(config.store)
    init = steps.init(store, config)
    steps.train(store, "demo", 0, init.twin_ids)
    layout = RunLayout("demo")
    record = store.get_json(layout.update_meta(0, "twin-001"))
    record["round"] = 5  # claims another round
    store.put_json(layout.update_meta(0, "twin-001"), record)

    summary = steps.aggregate(store, "demo", 0)

    assert summary["participants"] == ["twin-000", "twin-002"]
    assert summary["rejected"][0]["twin_id"] == "twin-001"
    assert "round 5" in summary["rejected"][0]["reason"]


def test_tampered_global_model_is_refused(tiny_config):
    config = tiny_config()
    store = LocalStore(config.store)
    steps.init(store, config)
    path = store.root / RunLayout("demo").global_model(0)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))

    with pytest.raises(IntegrityError, match=r"global\.safetensors is corrupt"):
        steps.train(store, "demo", 0, ["twin-000"])


def test_reusing_a_run_id_with_another_config_is_refused(tiny_config):
    config = tiny_config()
    store = LocalStore(config.store)
    steps.init(store, config)
    before = store.get_text(RunLayout("demo").config)

    with pytest.raises(RunConflictError, match=r"differs in: train.learning_rate"):
        steps.init(store, tiny_config(**{"train.learning_rate": 0.1}))

    assert store.get_text(RunLayout("demo").config) == before
    assert steps.init(store, config).resumed is True


def test_evaluate_reports_heldout_and_gap(tiny_config):
    config = tiny_config()
    store = LocalStore(config.store)

    evaluation = play(store, config)

    assert evaluation["model_round"] == 2
    assert set(evaluation["heldout"]["per_twin"]) == {"heldout-000", "heldout-001"}
    gap = evaluation["train"]["mean_return"] - evaluation["heldout"]["mean_return"]
    assert evaluation["generalization_gap"] == pytest.approx(gap)
    assert np.isfinite(evaluation["heldout"]["mean_return"])


@pytest.mark.parametrize(("fleet", "request_", "parallelism", "size"), [
    (8, 0, None, 1), (1000, 0, None, 10), (1000, 0, 64, 16), (7, 1, None, 1), (1000, 50, 20, 50),
    (100_000, 0, 100, 1000),
])
def test_shard_size_keeps_a_round_within_its_parallelism(fleet, request_, parallelism, size):
    assert steps.FanOut(request_, parallelism).shard_size(fleet, rounds=20) == size
    assert -(-fleet // size) <= (parallelism or steps.DEFAULT_PARALLELISM) or request_ > 0


def test_a_fan_out_wider_than_the_parallelism_is_refused_before_anything_is_written(tiny_config):
    config = tiny_config()
    store = LocalStore(config.store)
    message = (r"1 twin\(s\) per pod makes 3 training pods per round for 3 twins, "
               r"more than the parallelism of 2;")
    with pytest.raises(ConfigError, match=message):
        steps.init(store, config, steps.FanOut(twins_per_pod=1, parallelism=2))
    assert not store.exists(RunLayout("demo").state)
    assert steps.init(store, config, steps.FanOut(twins_per_pod=0, parallelism=2)).shard_size == 2


def test_a_run_too_large_for_one_workflow_object_is_refused_with_a_parallelism_that_fits():
    fan_out = steps.FanOut(twins_per_pod=0, parallelism=100, max_nodes=12_000)
    assert fan_out.shard_size(1000, rounds=50) == 10  # 13 + 50 * 204 = 10213 nodes
    message = (r"200 rounds of 100 training pods make 40813 Argo workflow nodes, "
               r"more than max-workflow-nodes \(12000.*lower the parallelism to 27")
    with pytest.raises(ConfigError, match=message):
        fan_out.shard_size(1000, rounds=200)
    assert steps.FanOut(0, 27, 12_000).shard_size(1000, rounds=200) == 38  # 27 pods: 11613 nodes


def test_a_process_parses_a_runs_fleet_once_until_it_changes(tiny_config, monkeypatch):
    """A pool worker runs one job per twin: the largest fleet's copy takes about a second to parse."""
    config = tiny_config()
    store = LocalStore(config.store)
    steps.init(store, config)
    context._FLEET_CACHE.clear()
    parsed = []
    real = context.parse_fleet
    monkeypatch.setattr(context, "parse_fleet",
                        lambda text, source: parsed.append(source) or real(text, source))

    first = steps.RunContext.load(store, "demo").fleet
    assert steps.RunContext.load(store, "demo").fleet is first and len(parsed) == 1
    store.put_text(RunLayout("demo").twins, store.get_text(RunLayout("demo").twins) + "\n")
    assert steps.RunContext.load(store, "demo").fleet == first and len(parsed) == 2


def test_evaluate_killed_between_its_two_writes_leaves_a_final_model_on_the_rerun(tiny_config):
    """Found by benchmarks/faults.py: a kill -9 after evaluation.json, before final.safetensors, left the
    rerun (which found evaluation.json) without a final model, for good."""

    class Killed(BaseException):
        pass

    config = tiny_config()
    store = LocalStore(config.store)
    init = steps.init(store, config)
    for round_index in range(config.federation.rounds):
        steps.train(store, init.run_id, round_index, init.twin_ids)
        steps.aggregate(store, init.run_id, round_index)
    real = store.put_bytes

    def dying(key, *args, **kwargs):
        if key.endswith("report/final.safetensors"):
            raise Killed(key)
        return real(key, *args, **kwargs)

    store.put_bytes = dying
    with pytest.raises(Killed):
        steps.evaluate(store, "demo")
    del store.put_bytes

    steps.evaluate(store, "demo")

    layout = RunLayout("demo")
    assert store.get_bytes(layout.report("final.safetensors")) == store.get_bytes(layout.global_model(2))
