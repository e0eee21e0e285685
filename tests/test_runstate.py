"""The light steps (`step status`, Argo's per-round gate, and `step finish`) read and update a run's
state without importing torch, and keep their behaviour."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fedtwin.core.errors import ConfigError, StoreError
from fedtwin.run.runstate import finish, write_outputs
from fedtwin.store import LocalStore, RunLayout
from fedtwin.store.state import load_state, save_state
from tests.helpers import clean_env, fedtwin, write_tiny_config

# Run the CLI in-process in a fresh interpreter, then report whether torch got imported.
NO_TORCH = """
import json, sys
from fedtwin.cli import main
try:
    main(sys.argv[1:])
except SystemExit as exc:
    if exc.code:
        raise
print(json.dumps({"torch": "torch" in sys.modules}))
"""


@pytest.fixture(scope="module")
def initialized(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("runstate")
    config = write_tiny_config(root)
    fedtwin("step", "init", "--config", str(config), "--store", str(root / "store"), "--run-id", "light",
            check=True)
    return root / "store"


def light_step(*args: str) -> tuple[dict, list[str]]:
    result = subprocess.run([sys.executable, "-c", NO_TORCH, *args], capture_output=True, text=True,
                            env=clean_env(), timeout=120, check=True)
    lines = result.stdout.strip().splitlines()
    return json.loads(lines[-1]), lines[:-1]


def test_status_and_finish_steps_never_import_torch(initialized: Path, tmp_path: Path) -> None:
    store = str(initialized)
    imported, output = light_step("step", "status", "--run", "light", "--round", "0", "--store", store,
                                  "--outputs-dir", str(tmp_path))
    assert imported == {"torch": False}
    assert json.loads(output[0])["play"] is True
    assert (tmp_path / "play").read_text() == "true" and (tmp_path / "next_round").read_text() == "0"

    imported, output = light_step("step", "finish", "--run", "light", "--status", "Failed",
                                  "--reason", "pod OOMKilled", "--store", store)
    assert imported == {"torch": False}
    assert json.loads(output[0])["status"] == "failed"
    assert load_state(LocalStore(initialized), "light")["reason"] == "pod OOMKilled"


def test_finish_keeps_the_first_failure_reason_and_rejects_other_statuses(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    layout = RunLayout("r")
    store.put_text(layout.config, "{}")
    store.put_json(layout.state, {"status": "running", "next_round": 2})

    assert finish(store, "r", "failed", "round 2 below the quorum")["reason"] == "round 2 below the quorum"
    assert finish(store, "r", "failed", "workflow ended")["reason"] == "round 2 below the quorum"
    assert finish(store, "r", "done")["status"] == "done"
    state = save_state(store, "r", load_state(store, "r"), next_round=3)
    assert (state["next_round"], state["status"]) == (3, "done") and "updated_at" in state
    with pytest.raises(ConfigError, match="'done' or 'failed'"):
        finish(store, "r", "Succeeded")


def test_state_of_an_unknown_run_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match=r"run 'nope' not found in .*fedtwin step init"):
        load_state(LocalStore(tmp_path), "nope")


def test_write_outputs_writes_one_file_per_value(tmp_path: Path) -> None:
    write_outputs(tmp_path / "out", {"play": False, "round": "3", "twins": ["a", "b"], "mean": 1.5})
    files = {p.name: p.read_text() for p in (tmp_path / "out").iterdir()}
    assert files == {"play": "false", "round": "3", "twins": '["a", "b"]', "mean": "1.5"}
    write_outputs(None, {"play": True})  # no directory: nothing to write, no error
