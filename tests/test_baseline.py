"""Single-agent baseline: same env-step budget per round as the federated run, resumable, both modes."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner

from fedtwin.cli import cli
from fedtwin.config import load_config
from fedtwin.core.errors import ConfigError
from fedtwin.run import steps
from fedtwin.run.baseline import run_baseline
from fedtwin.run.runner import run
from fedtwin.store import LocalStore
from fedtwin.store.baselines import BaselineLayout, list_baselines
from tests.helpers import write_tiny_config

torch.set_num_threads(1)


@pytest.fixture
def federated(tmp_path):
    """A finished tiny federated run (3 twins x 2 rounds) in a local store."""
    config = load_config(write_tiny_config(tmp_path), {"run_id": "demo", "store": str(tmp_path / "store")},
                         environ={})
    run(config, progress=False, report=False)
    return LocalStore(tmp_path / "store"), config


def test_pooled_baseline_matches_the_federated_budget_per_round(federated):
    store, config = federated
    summaries = [store.get_json(f"runs/demo/rounds/{r:04d}/summary.json") for r in range(2)]

    result = run_baseline(store, "demo", "pooled")

    layout = BaselineLayout("demo", "pooled")
    rounds = [store.get_json(layout.summary(r)) for r in range(2)]
    t = config.train
    per_round = 3 * t.updates * t.num_steps * t.num_envs
    assert [r["env_steps"] for r in rounds] == [s["num_samples"] for s in summaries] == [per_round] * 2
    assert [r["cumulative_env_steps"] for r in rounds] == [rounds[0]["env_steps"], 2 * rounds[0]["env_steps"]]
    assert result.rounds_played == 2 and result.env_steps == rounds[-1]["cumulative_env_steps"]
    assert set(result.evaluation["heldout"]["per_twin"]) == {"heldout-000", "heldout-001"}
    assert store.exists(layout.final) and list_baselines(store, "demo") == ["pooled"]


def test_interrupted_baseline_resumes_to_the_same_weights(federated):
    store, _ = federated
    run_baseline(store, "demo", "pooled")
    layout = BaselineLayout("demo", "pooled")
    final = store.get_bytes(layout.model(1))
    # Pretend it died after round-equivalent 0: state back, later outputs gone.
    state = store.get_json(layout.state)
    store.put_json(layout.state, {**state, "next_round": 1, "done": False})
    for key in store.list(layout.prefix):
        if "/rounds/0001/" in key or key.endswith(("evaluation.json", "final.safetensors")):
            (store.root / key).unlink()
            (store.root / (key + ".sha256")).unlink()

    result = run_baseline(store, "demo", "pooled")

    assert result.rounds_played == 2
    assert store.get_bytes(layout.model(1)) == final
    assert run_baseline(store, "demo", "pooled").evaluation == result.evaluation  # done: a no-op


def test_single_mode_trains_one_twin_and_is_named_after_it(federated):
    store, _ = federated

    result = run_baseline(store, "demo", "single", "twin-001")

    assert result.name == "single-twin-001"
    state = store.get_json(BaselineLayout("demo", "single-twin-001").state)
    assert (state["mode"], state["twin_id"], state["chunks_per_round"]) == ("single", "twin-001", 3)
    with pytest.raises(ConfigError, match="--twin selects the twin of a `single` baseline"):
        run_baseline(store, "demo", "pooled", "twin-001")
    with pytest.raises(ConfigError, match="not in the training fleet of run 'demo'"):
        run_baseline(store, "demo", "single", "nope")


def test_baseline_command_documents_both_modes_and_needs_a_run_id(tmp_path):
    runner = CliRunner()
    help_text = runner.invoke(cli, ["baseline", "--help"]).output
    assert "pooled" in help_text and "single" in help_text and "Example:" in help_text
    assert "--run-id" in help_text and "--rounds" in help_text  # the same flags as `fedtwin run`

    config = write_tiny_config(tmp_path, **{"federation.rounds": 1})
    with pytest.raises(ConfigError, match="needs --run-id"):
        cli.main(["baseline", "--config", str(config), "--store", str(tmp_path / "s")],
                 standalone_mode=False)


def test_baseline_command_creates_the_run_when_needed(tmp_path):
    config = write_tiny_config(tmp_path, **{"federation.rounds": 1})
    store = tmp_path / "store"

    out = CliRunner().invoke(cli, ["baseline", "--config", str(config), "--store", str(store),
                                   "--run-id", "fresh", "--json"], catch_exceptions=False)

    assert out.exit_code == 0, out.output
    assert '"baseline": "pooled"' in out.output
    ctx = steps.RunContext.load(LocalStore(store), "fresh")
    assert ctx.state()["next_round"] == 0  # the federated run exists but has not played yet
