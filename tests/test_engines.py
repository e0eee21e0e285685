"""Engines: the fleet engine's updates equal the pool engine's, also end to end; bad names fail clearly."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from torch.func import functional_call

from fedtwin.cli import main
from fedtwin.config import TrainConfig, load_config
from fedtwin.core.errors import ConfigError
from fedtwin.learn.batched import StackedPolicy
from fedtwin.learn.runtime import DeviceError
from fedtwin.learn.train import policy_spec
from fedtwin.policy.layout import layout_for, params_from_bytes
from fedtwin.policy.network import PolicyNet, init_params
from fedtwin.run import steps
from fedtwin.run.round import shard
from fedtwin.store import LocalStore, RunLayout
from tests.helpers import clean_env, fedtwin, write_tiny_config

torch.set_num_threads(1)

TOLERANCE = 1e-5


def update_params(store: LocalStore, run_id: str, round_index: int, twin_id: str) -> np.ndarray:
    params, _ = params_from_bytes(store.get_bytes(RunLayout(run_id).update_weights(round_index, twin_id)))
    return params


# ------------------------------------------------------------------------- step/store level
@pytest.mark.parametrize("algo", ["ppo", "reinforce"])
def test_fleet_step_writes_the_pool_steps_updates(tiny_config, algo):
    # Prepare: two runs with the same config (so the same twins, seeds and global model), 3 twins.
    overrides = {"train.algo": algo, "train.updates": 2, "train.epochs": 2}
    pool_cfg, fleet_cfg = tiny_config("pool-run", **overrides), tiny_config("fleet-run", **overrides)
    store = LocalStore(pool_cfg.store)
    twin_ids = steps.init(store, pool_cfg).twin_ids
    assert steps.init(store, fleet_cfg).twin_ids == twin_ids == ["twin-000", "twin-001", "twin-002"]

    # Execute: the pool engine's unit is one twin per call; the fleet engine trains all in one call.
    pool = [steps.train(store, "pool-run", 0, [t], engine="pool")[0] for t in twin_ids]
    fleet = steps.train(store, "fleet-run", 0, twin_ids, engine="fleet")

    # Assert: one update per twin in the same layout, equal to float tolerance, same bookkeeping.
    assert [r.twin_id for r in fleet] == twin_ids
    for p, f in zip(pool, fleet, strict=True):
        assert (p.engine, f.engine) == ("pool", "fleet")
        assert p.num_samples == f.num_samples == 2 * 16 * 2
        assert p.base_sha256 == f.base_sha256
        assert p.metrics.keys() == f.metrics.keys()
        for tag in p.metrics:
            assert f.metrics[tag] == pytest.approx(p.metrics[tag], rel=1e-4, abs=TOLERANCE), tag
        np.testing.assert_allclose(update_params(store, "fleet-run", 0, f.twin_id),
                                   update_params(store, "pool-run", 0, p.twin_id), rtol=0, atol=TOLERANCE)
    # The twins really differ, so equality per twin is not equality of one shared result.
    first, second = (update_params(store, "fleet-run", 0, t) for t in twin_ids[:2])
    assert not np.allclose(first, second, atol=1e-3)
    # Both runs aggregate the same way from the same layout.
    pool_sum, fleet_sum = steps.aggregate(store, "pool-run", 0), steps.aggregate(store, "fleet-run", 0)
    assert pool_sum["participants"] == fleet_sum["participants"] == twin_ids
    np.testing.assert_allclose(
        params_from_bytes(store.get_bytes(RunLayout("fleet-run").global_model(1)))[0],
        params_from_bytes(store.get_bytes(RunLayout("pool-run").global_model(1)))[0], rtol=0, atol=TOLERANCE)


def test_fleet_step_skips_twins_that_already_have_an_update(tiny_config):
    config = tiny_config("demo")
    store = LocalStore(config.store)
    twin_ids = steps.init(store, config).twin_ids
    first = steps.train(store, "demo", 0, twin_ids[:1])[0]

    records = steps.train(store, "demo", 0, twin_ids, engine="fleet")

    assert [r.twin_id for r in records] == twin_ids
    assert records[0] == first  # returned from the store, not retrained
    assert [r.engine for r in records] == ["pool", "fleet", "fleet"]


@pytest.mark.parametrize("algo", ["ppo", "reinforce"])
def test_stacked_policy_is_vmap_of_the_module(algo):
    # The batched forward (baddbmm over stacked weights) computes what vmap(functional_call) does.
    spec = policy_spec(TrainConfig(algo=algo))
    layout = layout_for(spec)
    stacked = torch.as_tensor(np.stack([init_params(spec, seed) for seed in range(3)]))
    params = layout.to_dict(stacked)
    obs = torch.randn(3, 5, 4, generator=torch.Generator().manual_seed(0))
    model = PolicyNet(spec)
    heads = ["actor", "critic"] if algo == "ppo" else ["actor"]

    net = StackedPolicy(model)

    for head in heads:
        def apply(p, o, head=head):
            sub = {k.removeprefix(head + "."): v for k, v in p.items() if k.startswith(head + ".")}
            return functional_call(getattr(model, head), sub, (o,))
        expected = torch.vmap(apply)(params, obs)
        got = net.logits(params, obs) if head == "actor" else net.value(params, obs).unsqueeze(-1)
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


# ---------------------------------------------------------------------------------- end to end
def test_run_engine_fleet_and_pool_give_the_same_final_model(tmp_path):
    # Pool engine through the real process pool (2 spawn workers); fleet engine all twins inline.
    config = write_tiny_config(tmp_path)
    common = ["run", "--config", str(config), "--store", str(tmp_path / "store"), "--json"]

    fedtwin(*common, "--run-id", "pool", "--engine", "pool", "--workers", "2", check=True)
    fedtwin(*common, "--run-id", "fleet", "--engine", "fleet", "--workers", "1", check=True)

    store = LocalStore(tmp_path / "store")
    pool_final, fleet_final = (params_from_bytes(store.get_bytes(RunLayout(r).report("final.safetensors")))[0]
                               for r in ("pool", "fleet"))
    np.testing.assert_allclose(fleet_final, pool_final, rtol=0, atol=1e-4)
    for round_index in range(2):
        engines = {store.get_json(RunLayout(r).update_meta(round_index, "twin-001"))["engine"]
                   for r in ("pool", "fleet")}
        assert engines == {"pool", "fleet"}


def test_fleet_shards_one_job_per_worker_and_one_per_gpu():
    ids = [f"twin-{i:03d}" for i in range(5)]

    assert shard(ids, "pool", 2) == [[i] for i in ids]
    assert shard(ids, "fleet", 2) == [ids[0::2], ids[1::2]]
    assert shard(ids, "fleet", 8) == [[i] for i in ids]
    assert shard(ids, "fleet", 4, "cuda") == [ids]


# ------------------------------------------------------------------------------- clear errors
@pytest.mark.parametrize(("flag", "value", "valid"), [
    ("--engine", "gpu", "'pool', 'fleet'"),
    ("--device", "tpu", "'cpu', 'cuda'"),
])
def test_bad_engine_or_device_flag_exits_2_naming_the_valid_values(tmp_path, flag, value, valid):
    result = fedtwin("run", flag, value, "--store", str(tmp_path / "store"), cwd=tmp_path)

    assert result.returncode == 2
    assert f"Invalid value for '{flag}': '{value}' is not one of {valid}" in result.stderr
    assert not (tmp_path / "store").exists()


@pytest.mark.parametrize(("key", "value", "valid"), [
    ("engine", "gpu", "'pool' or 'fleet'"),
    ("device", "tpu", "'cpu' or 'cuda'"),
])
def test_bad_engine_or_device_in_config_file_is_a_config_error(tmp_path, key, value, valid):
    path = tmp_path / "bad.yaml"
    path.write_text(f"execution:\n  {key}: {value}\n")

    with pytest.raises(ConfigError, match=f"'execution.{key}': Input should be {valid}"):
        load_config(path, environ={})
    result = fedtwin("run", "--config", str(path), "--store", str(tmp_path / "store"), cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"Error: invalid config ({path} + flags): 'execution.{key}': Input should be {valid}"
    ]


@pytest.mark.parametrize("engine", ["pool", "fleet"])
def test_cuda_without_a_gpu_is_one_line_exit_2_and_writes_nothing(tmp_path, monkeypatch, capsys, engine):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # also "no GPU" on a GPU machine
    config = write_tiny_config(tmp_path)

    with pytest.raises(SystemExit) as exit_info:
        main(["run", "--config", str(config), "--store", str(tmp_path / "store"), "--engine", engine,
              "--device", "cuda", "--no-progress"])

    assert exit_info.value.code == 2 == DeviceError.exit_code
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("Error: device 'cuda' requested but torch.cuda.is_available()")
    assert "use device 'cpu'" in err[0] and "Traceback" not in err[0]
    assert not (tmp_path / "store").exists()


def test_step_train_cuda_without_a_gpu_exits_2(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    config = write_tiny_config(tmp_path)
    store = str(tmp_path / "store")
    steps.init(LocalStore(store), load_config(config, {"run_id": "demo", "store": store}, environ={}))

    with pytest.raises(SystemExit) as exit_info:
        main(["step", "train", "--run", "demo", "--round", "0", "--twin", "twin-000,twin-001",
              "--device", "cuda", "--store", store])

    assert exit_info.value.code == 2
    assert capsys.readouterr().err.startswith("Error: device 'cuda' requested")
    assert not LocalStore(store).exists(RunLayout("demo").update_meta(0, "twin-000"))


# --------------------------------------------------------------------------------- a big fleet
def test_a_1024_twin_round_on_a_tiny_budget(tmp_path):
    """The whole fleet in one fleet-engine call, within the suite's limits (benchmarks/fleet_scale.py
    times the default budget). The store is the slow part here: writing the 1024 updates (weights +
    metadata, atomically) took 3.6 s of the train step's 5.4 s (2 shared cores, load ~3)."""
    config = load_config(None, {
        "run_id": "big", "store": str(tmp_path / "store"), "seed": 0,
        "fleet": {"count": 1024, "validation_count": 1, "heldout_count": 1},
        "train": {"num_steps": 8, "num_envs": 1, "updates": 1, "epochs": 1, "minibatches": 1},
        "federation": {"rounds": 1, "target_return": None, "eval_episodes": 1, "min_twins": 1},
    }, environ={})
    store = LocalStore(config.store)
    twin_ids = steps.init(store, config).twin_ids
    started = time.perf_counter()

    records = steps.train(store, "big", 0, twin_ids, engine="fleet")
    seconds = time.perf_counter() - started
    summary = steps.aggregate(store, "big", 0)

    assert len(records) == len(set(r.twin_id for r in records)) == 1024
    assert len(store.list(RunLayout("big").updates_dir(0))) == 2 * 1024  # weights + metadata per twin
    assert len(summary["participants"]) == 1024 and summary["num_samples"] == 1024 * 8
    assert seconds < 120, f"1024 tiny twins took {seconds:.1f} s"


def test_cli_help_names_both_engines():
    result = fedtwin("run", "--help", env=clean_env())

    assert "pool: one job per twin" in result.stdout and "fleet (default)" in result.stdout \
        and "[pool|fleet]" in result.stdout


def test_a_retried_fleet_shard_reproduces_a_lost_update_bit_for_bit(tmp_path):
    """A shard killed after writing some of its updates retrains as the same batch."""
    import hashlib

    from fedtwin.run import steps
    from fedtwin.store import LocalStore, RunLayout
    from tests.helpers import write_tiny_config

    config = load_config(write_tiny_config(tmp_path), {"run_id": "shard", "store": str(tmp_path / "s")},
                         environ={})
    store = LocalStore(config.store)
    init = steps.init(store, config)
    steps.train(store, "shard", 0, init.twin_ids, engine="fleet")
    layout = RunLayout("shard")
    weights = store.root / layout.update_weights(0, "twin-002")
    before = hashlib.sha256(weights.read_bytes()).hexdigest()
    for key in (layout.update_meta(0, "twin-002"), layout.update_weights(0, "twin-002")):
        (store.root / key).unlink()
        (store.root / (key + ".sha256")).unlink()  # as if killed before these were written

    steps.train(store, "shard", 0, init.twin_ids, engine="fleet")

    assert hashlib.sha256(weights.read_bytes()).hexdigest() == before
