"""What a step process imports (issue 20): every Argo pod pays its imports every round.

`step train` must not pull in torch._dynamo (torch.optim.Adam's constructor did), sympy (torch.fx's
symbolic shapes, which `nn.utils.skip_init`'s meta device imported), Opacus with privacy off, or
MLflow/matplotlib; `step aggregate` with privacy off needs no torch at all, and its few validation
episodes run on the NumPy path (the same floats) instead of loading numba's kernel. Each step runs as a user
runs it, in a fresh process, and reports its `sys.modules` at exit.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fedtwin.federation.updates import UpdateRecord
from fedtwin.store import LocalStore, RunLayout
from tests.helpers import clean_env, fedtwin, write_tiny_config

WATCHED = ("torch", "torch._dynamo", "sympy", "opacus", "mlflow", "matplotlib", "numba")

RUN_AND_REPORT = (
    "import atexit, json, os, runpy, sys\n"
    "def report(how):\n"
    f"    loaded = {{m: m in sys.modules for m in {WATCHED!r}}}\n"
    "    print(how + ' MODULES=' + json.dumps(loaded), file=sys.stderr, flush=True)\n"
    "atexit.register(report, 'TEARDOWN')\n"
    "real_exit = os._exit\n"
    "def exit_without_teardown(code):\n"
    "    report('NO-TEARDOWN')\n"
    "    real_exit(code)\n"
    "os._exit = exit_without_teardown\n"
    "sys.argv = ['fedtwin', *sys.argv[1:]]\n"
    "runpy.run_module('fedtwin', run_name='__main__')\n"
)


def ended_by(*args: str) -> tuple[str, set[str]]:
    """How `fedtwin *args` ended (TEARDOWN or NO-TEARDOWN) and the watched modules it had loaded then
    (it must succeed)."""
    done = subprocess.run([sys.executable, "-c", RUN_AND_REPORT, *args], capture_output=True, text=True,
                          env=clean_env(), timeout=600)
    assert done.returncode == 0, done.stderr
    line = next(x for x in done.stderr.splitlines() if " MODULES=" in x)
    how, modules = line.split(" MODULES=")
    return how, {name for name, loaded in json.loads(modules).items() if loaded}


def loaded_by(*args: str) -> set[str]:
    """The watched modules loaded when `fedtwin *args` exits (it must succeed)."""
    return ended_by(*args)[1]


@pytest.fixture(scope="module")
def run_store(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    directory = tmp_path_factory.mktemp("imports")
    config = write_tiny_config(directory)
    store = ["--store", str(directory / "store")]
    fedtwin("step", "init", "--config", str(config), "--run-id", "imports", *store, check=True)
    return store


def test_step_train_imports_no_dynamo_opacus_or_tracking(run_store: list[str]) -> None:
    loaded = loaded_by("step", "train", "--run", "imports", "--round", "0", "--twin", "twin-000..twin-002",
                       *run_store)
    assert "torch" in loaded  # the check itself sees modules
    assert loaded.isdisjoint({"torch._dynamo", "sympy", "opacus", "mlflow", "matplotlib"}), loaded


def test_step_aggregate_imports_no_torch_with_privacy_off(run_store: list[str]) -> None:
    loaded_by("step", "train", "--run", "imports", "--round", "0", "--twin", "twin-000..twin-002", *run_store)
    loaded = loaded_by("step", "aggregate", "--run", "imports", "--round", "0", *run_store)
    assert loaded.isdisjoint({"torch", "torch._dynamo", "sympy", "opacus", "mlflow", "matplotlib",
                              "numba"}), loaded


def test_a_train_pod_ends_without_unloading_torch_and_loses_nothing(tmp_path: Path) -> None:
    """`step train` ends by `os._exit` once its updates are stored (Python's teardown of torch costs every
    pod ~0.4 s): its stdout still arrives whole and its updates are readable; other commands end normally."""
    store = ["--store", str(tmp_path / "store")]
    config = str(write_tiny_config(tmp_path))
    fedtwin("step", "init", "--config", config, "--run-id", "pod", *store, check=True)
    train = ["step", "train", "--run", "pod", "--round", "0", "--twin", "twin-000..twin-002", *store]
    done = fedtwin(*train, check=True)
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert [line["twin_id"] for line in lines] == ["twin-000", "twin-001", "twin-002"]
    local = LocalStore(tmp_path / "store")
    for line in lines:
        record = UpdateRecord.from_json(local.get_json(RunLayout("pod").update_meta(0, line["twin_id"])))
        assert record.num_samples == line["num_samples"] > 0
    assert ended_by(*train)[0] == "NO-TEARDOWN"  # the same step again: a no-op that also ends this way
    assert ended_by("runs", "list", *store)[0] == "TEARDOWN"
