"""The CLI as a user meets it: end to end, resume after a kill, clear errors with exit code 2."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import click
import pytest

from fedtwin.cli import cli
from tests.faultfs import read_only_view, required, small_tmpfs
from tests.helpers import clean_env, fedtwin, final_model_hash, write_tiny_config


def test_run_end_to_end_then_inspect(tmp_path):
    config = write_tiny_config(tmp_path)
    store = tmp_path / "store"

    result = fedtwin("run", "--config", str(config), "--store", str(store), "--run-id", "e2e", "--json",
                     check=True)

    out = json.loads(result.stdout)
    assert out["run_id"] == "e2e" and out["rounds"] == 2
    assert out["env_steps"] == 2 * 3 * 2 * 16
    run_dir = store / "runs" / "e2e"
    for name in ("config.yaml", "twins.yaml", "state.json", "rounds/0001/summary.json",
                 "rounds/0002/global.safetensors", "report/report.md", "report/final.safetensors"):
        assert (run_dir / name).is_file(), name
    listed = fedtwin("runs", "list", "--store", str(store), check=True).stdout
    assert "e2e" in listed and "done" in listed
    shown = json.loads(fedtwin("runs", "show", "e2e", "--store", str(store), "--json", check=True).stdout)
    assert len(shown["rounds"]) == 2
    by_name = fedtwin("report", "e2e", "--store", str(store), check=True).stdout
    by_flag = fedtwin("step", "report", "--run", "e2e", "--store", str(store), check=True).stdout
    assert by_name == by_flag and by_name.strip().endswith("runs/e2e/report/report.html")

    twins_file = tmp_path / "fleet.yaml"
    fedtwin("twins", "generate", "--count", "2", "--seed", "3", "-o", str(twins_file), check=True)
    evaluated = json.loads(fedtwin("evaluate", "--model", str(run_dir / "report/final.safetensors"),
                                   "--twins", str(twins_file), "--episodes", "1", "--json",
                                   check=True).stdout)
    assert set(evaluated) == {"mean_return", "per_twin"}
    assert set(evaluated["per_twin"]) == {"twin-000", "twin-001"}


def test_killed_run_resumes_to_the_same_model(tmp_path):
    config = write_tiny_config(tmp_path, **{"federation.rounds": 3})
    store = tmp_path / "store"
    fedtwin("run", "--config", str(config), "--store", str(store), "--run-id", "clean", "--no-progress",
            check=True)

    args = [sys.executable, "-m", "fedtwin", "run", "--config", str(config), "--store", str(store),
            "--run-id", "killed", "--no-progress"]
    proc = subprocess.Popen(args, env=clean_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    marker = store / "runs" / "killed" / "rounds" / "0000" / "summary.json.sha256"
    deadline = time.time() + 120
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    state = json.loads((store / "runs" / "killed" / "state.json").read_text())
    assert state["status"] == "running" and state["next_round"] < 3  # really interrupted

    fedtwin("run", "--config", str(config), "--store", str(store), "--run-id", "killed", "--no-progress",
            check=True)

    assert final_model_hash(store, "killed") == final_model_hash(store, "clean")


@pytest.mark.parametrize(
    ("yaml_text", "needle"),
    [
        ("fleet:\n  cout: 3\n", "unknown key 'fleet.cout'"),
        ("train:\n  learning_rate: fast\n", "train.learning_rate"),
        ("federation: [\n", "not valid YAML"),
    ],
)
def test_bad_config_exits_2_with_one_line_and_writes_nothing(tmp_path, yaml_text, needle):
    config = tmp_path / "bad.yaml"
    config.write_text(yaml_text)
    store = tmp_path / "store"

    result = fedtwin("run", "--config", str(config), "--store", str(store), "--run-id", "x")

    assert result.returncode == 2
    assert result.stderr.startswith("Error: ") and needle in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not store.exists()


def test_invalid_twin_physics_exits_2(tmp_path):
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text("twins:\n  - id: pole-07\n    masscart: -1.0\n")
    store = tmp_path / "store"

    result = fedtwin("run", "--fleet-file", str(fleet), "--store", str(store), "--run-id", "x")

    assert result.returncode == 2
    assert "pole-07" in result.stderr and "masscart" in result.stderr
    assert not (store / "runs" / "x" / "config.yaml").exists()


def test_conflicting_resume_exits_2(tmp_path):
    config = write_tiny_config(tmp_path, **{"federation.rounds": 1})
    store = tmp_path / "store"
    fedtwin("step", "init", "--config", str(config), "--store", str(store), "--run-id", "r", check=True)

    result = fedtwin("step", "init", "--config", str(config), "--store", str(store), "--run-id", "r",
                     "--seed", "9")

    assert result.returncode == 2
    assert "already exists with a different config (differs in: seed)" in result.stderr


def test_step_outputs_for_workflow_engines(tmp_path):
    config = write_tiny_config(tmp_path, **{"federation.rounds": 1})
    store, out = tmp_path / "store", tmp_path / "out"
    common = ["--store", str(store)]
    fedtwin("step", "init", "--config", str(config), "--run-id", "w", "--shard-size", "2",
            "--outputs-dir", str(out / "init"), *common, check=True)
    assert json.loads((out / "init" / "twins").read_text()) == ["twin-000", "twin-001", "twin-002"]
    assert json.loads((out / "init" / "shards").read_text()) == ["twin-000..twin-001", "twin-002"]

    fedtwin("step", "train", "--run", "w", "--round", "0", "--twin", "twin-000..twin-001", *common,
            check=True)
    fedtwin("step", "train", "--run", "w", "--round", "0", "--twin", "twin-002", *common, check=True)
    fedtwin("step", "aggregate", "--run", "w", "--round", "0", "--outputs-dir", str(out / "agg"), *common,
            check=True)

    assert (out / "agg" / "continue").read_text() == "false"
    assert (out / "agg" / "participants").read_text() == "3"
    outputs = [(out / "agg" / n).read_text() for n in ("played", "next_round", "last_round")]
    assert outputs == ["true", "1", "0"]
    float((out / "agg" / "mean_return").read_text())
    played = (out / "agg" / "model.safetensors").read_bytes()

    # Defence in depth: a round that is not the next one (training is complete) is not played: exit 0,
    # the run untouched, played=false and the newest model as the artifact.
    state_before = (store / "runs" / "w" / "state.json").read_text()
    result = fedtwin("step", "aggregate", "--run", "w", "--round", "1", "--outputs-dir", str(out / "late"),
                     *common, check=True)
    assert json.loads(result.stdout) == {"round": 1, "played": False, "reason": "training is complete",
                                         "continue": False, "next_round": 1}
    assert (store / "runs" / "w" / "state.json").read_text() == state_before
    assert not (store / "runs" / "w" / "rounds" / "0001" / "summary.json").exists()
    assert [(out / "late" / n).read_text() for n in ("played", "participants", "continue", "last_round")] == [
        "false", "0", "false", "0"]
    assert (out / "late" / "model.safetensors").read_bytes() == played


def iter_commands(group: click.Group, prefix: tuple[str, ...] = ()):
    for name, command in group.commands.items():
        yield (*prefix, name), command
        if isinstance(command, click.Group):
            yield from iter_commands(command, (*prefix, name))


def test_one_report_command_with_two_spellings_and_one_run_id(tmp_path):
    assert cli.commands["report"] is cli.commands["step"].commands["report"]
    both = fedtwin("report", "a", "--run", "b", "--store", str(tmp_path / "store"))
    neither = fedtwin("report", "--store", str(tmp_path / "store"))
    assert both.returncode == 2 and "two run ids ('a' and --run 'b')" in both.stderr
    assert neither.returncode == 2 and "report needs a run id" in neither.stderr
    assert not (tmp_path / "store").exists()


def test_every_command_has_help_with_an_example_and_is_documented():
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    for path, command in iter_commands(cli):
        if isinstance(command, click.Group):
            assert command.help, path
            continue
        assert command.help and "Example: fedtwin" in command.help, path
        assert f"fedtwin {' '.join(path)}" in readme, f"`fedtwin {' '.join(path)}` missing from README"


def test_a_failing_step_writes_its_one_line_error_to_the_termination_log(tmp_path):
    """What Kubernetes copies into the container status, and Argo into the failed node's message."""
    log = tmp_path / "termination-log"
    result = fedtwin("step", "aggregate", "--run", "nope", "--round", "0", "--store", str(tmp_path / "s"),
                     env=clean_env(FEDTWIN_TERMINATION_LOG=str(log)))
    assert result.returncode == 1
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("Error: run 'nope' not found") and log.read_text() == line
    bad_flag = fedtwin("step", "aggregate", "--run", "nope", "--round", "x",
                       env=clean_env(FEDTWIN_TERMINATION_LOG=str(log)))
    assert bad_flag.returncode == 2 and log.read_text().startswith("Error: Invalid value for '--round'")


# ------------------------------------------------ full disk, read-only, no permission (issue 17, 4)
def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    return lines[0]


def test_init_on_a_full_disk_exits_1_with_one_line(tmp_path):
    config = write_tiny_config(tmp_path)
    with required(small_tmpfs(tmp_path / "disk", "16k")) as disk:
        result = fedtwin("step", "init", "--config", str(config), "--store", str(disk), "--run-id", "full")

        assert result.returncode == 1
        line = one_error_line(result)
        assert f"cannot write {disk}/runs/full/" in line and "no space left on device (ENOSPC)" in line
        assert not (disk / "runs" / "full" / "config.yaml").exists()  # not initialized: rerun init


def test_step_outputs_on_a_read_only_filesystem_exit_1_naming_the_file(tmp_path):
    config = write_tiny_config(tmp_path)
    store = tmp_path / "store"
    (tmp_path / "out").mkdir()
    with required(read_only_view(tmp_path / "out", tmp_path / "ro")) as out:
        result = fedtwin("step", "init", "--config", str(config), "--store", str(store), "--run-id", "r",
                         "--outputs-dir", str(out / "init"))
        assert result.returncode == 1
        assert f"cannot write {out}/init" in one_error_line(result)
        assert "read-only file system (EROFS)" in result.stderr

        fleet = fedtwin("twins", "generate", "--count", "2", "-o", str(out / "fleet.yaml"))
        assert fleet.returncode == 1
        assert f"cannot write {out}/fleet.yaml: read-only file system" in one_error_line(fleet)


def test_aggregate_into_a_read_only_store_exits_1_and_the_rerun_plays_the_round(tmp_path):
    config = write_tiny_config(tmp_path, **{"federation.rounds": 1})
    store = tmp_path / "store"
    fedtwin("step", "init", "--config", str(config), "--store", str(store), "--run-id", "r", check=True)
    fedtwin("step", "train", "--run", "r", "--round", "0", "--twin", "twin-000..twin-002", "--store",
            str(store), check=True)
    with required(read_only_view(store, tmp_path / "ro")) as view:
        result = fedtwin("step", "aggregate", "--run", "r", "--round", "0", "--store", str(view))
        assert result.returncode == 1
        assert "read-only file system (EROFS)" in one_error_line(result)
    state = json.loads((store / "runs" / "r" / "state.json").read_text())
    assert state["status"] == "running" and state["next_round"] == 0

    fedtwin("step", "aggregate", "--run", "r", "--round", "0", "--store", str(store), check=True)
    assert json.loads((store / "runs" / "r" / "state.json").read_text())["next_round"] == 1


# ------------------------------------------------------ evaluate --model: bad files (issue 17, 3 and 8)
def model_file(path: Path, spec_json: str, tensors: dict) -> Path:
    from safetensors.numpy import save

    path.write_bytes(save(tensors, metadata={"policy": spec_json}))
    return path


def bad_models(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """name -> (model file, what the one-line error must say)."""
    import numpy as np

    from fedtwin.policy.layout import PolicySpec, params_to_bytes
    from fedtwin.policy.network import init_params

    models: dict[str, tuple[Path, str]] = {}
    huge = '{"act_dim": 2, "hidden": [1000000000, 1000000000], "kind": "actor_critic", "obs_dim": 4}'
    models["huge network"] = (model_file(tmp_path / "huge.safetensors", huge, {}),
                              "hidden layer sizes must be 1 to 1024, at most 4 layers")
    small = PolicySpec("actor_critic", (8,))
    wrong_shape = {n: np.zeros((3,), np.float32) for n in ("actor.0.weight",)}
    models["shapes"] = (model_file(tmp_path / "shapes.safetensors", small.to_json(), wrong_shape),
                        "actor.0.weight has shape [3], expected [8, 4]")
    five = PolicySpec("actor_critic", (8,), obs_dim=5)
    (tmp_path / "obs.safetensors").write_bytes(params_to_bytes(init_params(five, 0), five))
    models["observations"] = (tmp_path / "obs.safetensors",
                              "takes 5 observations, but cart-pole twins give 4")
    three = PolicySpec("reinforce", (8,), act_dim=3)
    (tmp_path / "act.safetensors").write_bytes(params_to_bytes(init_params(three, 0), three))
    models["actions"] = (tmp_path / "act.safetensors", "chooses among 3 actions, but cart-pole twins take 2")
    params = init_params(small, 0)
    params[3] = np.nan
    (tmp_path / "nan.safetensors").write_bytes(params_to_bytes(params, small))
    models["non-finite"] = (tmp_path / "nan.safetensors", "holds non-finite weights (NaN or Inf)")
    (tmp_path / "fleet.safetensors").write_text("twins:\n  - id: a\n")
    models["not a model"] = (tmp_path / "fleet.safetensors", "not a safetensors model file")
    return models


def test_evaluate_refuses_a_bad_model_file_with_exit_2_before_building_anything(tmp_path):
    twins = tmp_path / "fleet.yaml"
    twins.write_text("twins:\n  - id: a\n")
    for name, (model, needle) in bad_models(tmp_path).items():
        result = fedtwin("evaluate", "--model", str(model), "--twins", str(twins), "--episodes", "1")
        assert result.returncode == 2, (name, result.stderr[-2000:])
        line = one_error_line(result)
        assert needle in line and str(model) in line, (name, line)


# ---------------------------------------------------- bounds where memory follows input (issue 17, 3)
@pytest.mark.parametrize(("flags", "yaml_text", "needle"), [
    ((), "fleet:\n  validation_count: 100000000\n", "'fleet.validation_count': Input should be less than or "
                                                    "equal to 10000"),
    ((), "fleet:\n  heldout_count: 100000000\n", "'fleet.heldout_count': Input should be less than or equal "
                                                 "to 10000"),
    ((), "train:\n  hidden: [1000000, 1000000]\n", "'train.hidden.0': Input should be less than or equal to "
                                                   "1024"),
    ((), "train:\n  num_envs: 100000\n  num_steps: 100000\n  minibatches: 1\n",
     "more than the 1048576 transitions one rollout may keep in memory"),
    (("--twins", "1000000"), "{}\n", "'fleet.count': Input should be less than or equal to 100000"),
])
def test_sizes_past_the_documented_limits_exit_2_and_write_nothing(tmp_path, flags, yaml_text, needle):
    config = tmp_path / "c.yaml"
    config.write_text(yaml_text)
    result = fedtwin("run", "--config", str(config), "--store", str(tmp_path / "store"), "--run-id", "x",
                     *flags)
    assert result.returncode == 2
    assert needle in one_error_line(result)
    assert not (tmp_path / "store").exists()


def test_a_huge_action_delay_or_twin_count_is_refused_with_exit_2(tmp_path):
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text("twins:\n  - id: pole-07\n    action_delay: 1000000000\n")
    result = fedtwin("run", "--fleet-file", str(fleet), "--store", str(tmp_path / "store"), "--run-id", "x")
    assert result.returncode == 2
    assert "action_delay must be at most 500 steps" in one_error_line(result)
    assert not (tmp_path / "store").exists()  # not even the runner's lock: nothing written
    generated = fedtwin("twins", "generate", "--count", "100000000", "-o", str(tmp_path / "big.yaml"))
    assert generated.returncode == 2 and "100000000 is not in the range 1<=x<=100000" in generated.stderr
    assert not (tmp_path / "big.yaml").exists()
