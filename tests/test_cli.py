"""The CLI as a user meets it: end to end, resume after a kill, clear errors with exit code 2."""

from __future__ import annotations

import hashlib
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
from tests.helpers import clean_env, fedtwin, write_tiny_config


def final_sha(store: Path, run_id: str) -> str:
    return hashlib.sha256((store / "runs" / run_id / "report" / "final.safetensors").read_bytes()).hexdigest()


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

    assert final_sha(store, "killed") == final_sha(store, "clean")


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
