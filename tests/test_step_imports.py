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

import pytest

from tests.helpers import clean_env, fedtwin, write_tiny_config

WATCHED = ("torch", "torch._dynamo", "sympy", "opacus", "mlflow", "matplotlib", "numba")

RUN_AND_REPORT = (
    "import atexit, json, runpy, sys\n"
    f"atexit.register(lambda: print('MODULES=' + json.dumps({{m: m in sys.modules for m in {WATCHED!r}}}),"
    " file=sys.stderr))\n"
    "sys.argv = ['fedtwin', *sys.argv[1:]]\n"
    "runpy.run_module('fedtwin', run_name='__main__')\n"
)


def loaded_by(*args: str) -> set[str]:
    """The watched modules loaded when `fedtwin *args` exits (it must succeed)."""
    done = subprocess.run([sys.executable, "-c", RUN_AND_REPORT, *args], capture_output=True, text=True,
                          env=clean_env(), timeout=600)
    assert done.returncode == 0, done.stderr
    line = next(x for x in done.stderr.splitlines() if x.startswith("MODULES="))
    return {name for name, loaded in json.loads(line.removeprefix("MODULES=")).items() if loaded}


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
