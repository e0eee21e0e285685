"""The local runner under faults: what is a twin's failure (the quorum decides) and what is the
infrastructure's (exit 1, retryable, the run not marked failed); workers that die with their parent;
one runner per run."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest
import torch

from fedtwin.config import load_config
from fedtwin.core.errors import QuorumError
from fedtwin.run import runner, train_step
from fedtwin.store import LocalStore, RunLayout
from tests.faultfs import grow, required, small_tmpfs
from tests.helpers import fedtwin, final_model_hash, write_tiny_config

torch.set_num_threads(1)


def state_of(store: Path, run_id: str) -> dict:
    return json.loads((store / "runs" / run_id / "state.json").read_text())


# ---------------------------------------------------------------- item 2: twin fault vs infrastructure
def test_a_full_disk_during_training_is_exit_1_not_a_lost_quorum_and_the_rerun_finishes_the_run(tmp_path):
    config = write_tiny_config(tmp_path)
    clean = tmp_path / "clean"
    fedtwin("run", "--config", str(config), "--store", str(clean), "--run-id", "r", "--no-progress",
            "--json", check=True)
    run = ["run", "--config", str(config), "--run-id", "r", "--no-progress"]
    with required(small_tmpfs(tmp_path / "disk", "128k")) as disk:  # init fits, round 0's updates do not
        result = fedtwin(*run, "--store", str(disk))

        assert result.returncode == 1, result.stderr
        [line] = result.stderr.strip().splitlines()
        assert line.startswith(f"Error: cannot write {disk}/runs/r/rounds/0000/updates/")
        assert "no space left on device (ENOSPC)" in line
        assert state_of(disk, "r")["status"] == "running" and state_of(disk, "r")["next_round"] == 0

        grow(disk, "16m")  # space freed
        fedtwin(*run, "--store", str(disk), check=True)
        assert final_model_hash(disk, "r") == final_model_hash(clean, "r")


def crash_twins(monkeypatch: pytest.MonkeyPatch, bad: set[str]) -> None:
    """Twins whose own training raises (a diverging simulator, a bug in their physics)."""
    real = train_step.train_twins

    def train_twins(params, twins, *args, **kwargs):
        if bad & {t.id for t in twins}:
            raise RuntimeError(f"simulated crash of {sorted(bad & {t.id for t in twins})}")
        return real(params, twins, *args, **kwargs)

    monkeypatch.setattr(train_step, "train_twins", train_twins)


def test_a_twin_whose_training_crashes_is_left_out_and_the_quorum_decides(tmp_path, monkeypatch):
    # the pool engine trains each twin alone; the fleet engine's batch fails together (README)
    path = write_tiny_config(tmp_path, **{"federation.rounds": 1, "execution.engine": "pool"})
    config = load_config(path, {"run_id": "r", "store": str(tmp_path / "store")}, environ={})
    crash_twins(monkeypatch, {"twin-001"})

    result = runner.run(config, progress=False, report=False)

    summary = LocalStore(config.store).get_json(RunLayout("r").summary(0))
    assert summary["participants"] == ["twin-000", "twin-002"] and summary["missing"] == ["twin-001"]
    assert result.rounds_played == 1

    crash_twins(monkeypatch, {"twin-000", "twin-001"})
    with pytest.raises(QuorumError, match="1 valid updates, below the quorum of 2"):
        runner.run(config.model_copy(update={"run_id": "s"}), progress=False, report=False)
    assert state_of(tmp_path / "store", "s")["status"] == "failed"


# ------------------------------------------------------------------- item 6: no orphaned workers
def test_pool_workers_exit_when_the_runner_is_killed(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    import psutil

    from tests.helpers import clean_env

    config = write_tiny_config(tmp_path, **{"federation.rounds": 50, "execution.workers": 2})
    workers: list[psutil.Process] = []
    proc = subprocess.Popen([sys.executable, "-m", "fedtwin", "run", "--config", str(config), "--store",
                             str(tmp_path / "store"), "--run-id", "k", "--no-progress"], env=clean_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        marker = tmp_path / "store" / "runs" / "k" / "rounds" / "0001" / "summary.json.sha256"
        deadline = time.monotonic() + 180
        while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert marker.exists(), "the run never reached round 1"
        workers = [p for p in psutil.Process(proc.pid).children(recursive=True)
                   if "multiprocessing" in " ".join(p.cmdline()) and "spawn_main" in " ".join(p.cmdline())]
        assert len(workers) == 2, [p.cmdline() for p in workers]

        proc.send_signal(signal.SIGKILL)
        proc.wait()
        _, alive = psutil.wait_procs(workers, timeout=10)

        assert alive == [], f"{len(alive)} pool worker(s) outlived their killed runner"
    finally:
        proc.kill()
        for worker in workers:  # on failure: orphans belong to init now, not to this test
            with contextlib.suppress(psutil.NoSuchProcess):
                worker.kill()


@pytest.mark.parametrize("marker", ["0001/updates", "0001"], ids=["training", "between-rounds"])
def test_a_killed_pool_worker_is_exit_1_in_one_line_and_the_rerun_finishes_the_run(tmp_path, marker):
    import signal
    import subprocess
    import sys
    import time

    import psutil

    from tests.helpers import clean_env

    config = write_tiny_config(tmp_path, **{"federation.rounds": 6, "execution.workers": 2})
    args = ["run", "--config", str(config), "--run-id", "r", "--no-progress"]
    fedtwin(*args, "--store", str(tmp_path / "clean"), check=True)
    proc = subprocess.Popen([sys.executable, "-m", "fedtwin", *args, "--store", str(tmp_path / "store")],
                            env=clean_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seen = tmp_path / "store" / "runs" / "r" / "rounds" / marker  # workers busy, or idle after round 0
    deadline = time.monotonic() + 180
    while not seen.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    workers = [p for p in psutil.Process(proc.pid).children() if "spawn_main" in " ".join(p.cmdline())]
    assert workers, "no pool worker to kill"
    workers[0].send_signal(signal.SIGKILL)  # the OOM killer's way

    assert proc.wait(timeout=300) == 1
    [line] = proc.stderr.read().strip().splitlines()
    assert line.startswith("Error: a training worker process of round ") and "rerun to resume" in line
    assert state_of(tmp_path / "store", "r")["status"] == "running"
    fedtwin(*args, "--store", str(tmp_path / "store"), check=True)
    assert final_model_hash(tmp_path / "store", "r") == final_model_hash(tmp_path / "clean", "r")


# --------------------------------------------------------------- item 7: one runner per run id
def test_two_runners_on_one_run_id_one_refuses_and_the_other_finishes_the_clean_model(tmp_path):
    import subprocess
    import sys

    from tests.helpers import clean_env

    config = write_tiny_config(tmp_path, **{"federation.rounds": 4})
    args = [sys.executable, "-m", "fedtwin", "run", "--config", str(config), "--run-id", "r", "--no-progress"]
    fedtwin(*args[3:], "--store", str(tmp_path / "clean"), check=True)
    store = tmp_path / "store"
    runners = [subprocess.Popen([*args, "--store", str(store)], env=clean_env(), stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True) for _ in range(2)]
    codes = [r.wait(timeout=600) for r in runners]
    errors = [r.stderr.read() for r in runners]

    assert sorted(codes) == [0, 1], errors
    loser, winner = (0, 1) if codes[0] == 1 else (1, 0)
    [line] = errors[loser].strip().splitlines()
    assert line.startswith(f"Error: run 'r' is being run by another runner (pid {runners[winner].pid} on ")
    assert line.endswith("; wait for it to finish, or stop that process, then rerun")
    assert final_model_hash(store, "r") == final_model_hash(tmp_path / "clean", "r")
    assert fedtwin(*args[3:], "--store", str(store)).returncode == 0  # free again once the first is done


def test_a_runner_refuses_a_run_another_process_holds_and_writes_nothing(tmp_path):
    config = write_tiny_config(tmp_path)
    store = LocalStore(tmp_path / "store")
    with store.lock(RunLayout("r").runner_lock):  # this test process is "the other runner"
        result = fedtwin("run", "--config", str(config), "--run-id", "r", "--no-progress", "--store",
                         str(tmp_path / "store"))
        assert result.returncode == 1
        assert f"is being run by another runner (pid {__import__('os').getpid()} on " in result.stderr
        assert store.list("runs/") == []
