"""The shared conformance cases (tests/conformance/cases/*.yaml) under tests/argo_local.

Each case is a small Workflow whose expected node phases come from Argo's own tests, examples, issues
or controller code (its `source`). tests/cluster/test_conformance_real.py runs the same files under
the real v4.0.7 controller, so the home-made executor and Argo are held to the same answers. The
cases run concurrently (they are `sh` steps, a few milliseconds each), one executor per case.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.argo_local import LocalArgo, Run

CASES_DIR = Path(__file__).resolve().parent / "conformance" / "cases"
CASES = sorted(CASES_DIR.glob("*.yaml"))
BACKOFF_SCALE = 0.1
"""The cases' retry backoffs are already ~1 s; shorter still here (the real-controller run keeps them)."""


def load(path: Path) -> dict[str, Any]:
    case = yaml.safe_load(path.read_text())
    assert {"source", "description", "workflow", "expect"} <= set(case), f"{path.name}: missing keys"
    assert case["source"].strip() and "phase" in case["expect"], path.name
    return dict(case)


def execute(path: Path, workdir: Path) -> Run:
    case = load(path)
    workdir.mkdir()
    generate = case["workflow"]["metadata"].get("generateName") or case["workflow"]["metadata"]["name"]
    argo = LocalArgo(case["workflow"], workdir, workflow_name=f"{generate.rstrip('-')}-local", env={},
                     backoff_scale=BACKOFF_SCALE)
    return argo.run(timeout=120)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Run | BaseException]:
    root = tmp_path_factory.mktemp("conformance")

    def one(path: Path) -> Run | BaseException:
        try:
            return execute(path, root / path.stem)
        except Exception as exc:  # reported by the case's own test
            return exc

    with ThreadPoolExecutor(max_workers=8) as pool:
        return dict(zip([p.stem for p in CASES], pool.map(one, CASES), strict=True))


def test_there_are_enough_cases_with_their_sources() -> None:
    assert len(CASES) >= 15
    names = {p.stem for p in CASES}
    assert "dag-withparam-when-false-taskgroup-succeeded" in names  # argoproj/argo-workflows#14774
    assert "fedtwin-round-before-early-stop-fix" in names
    for path in CASES:
        assert "argo-workflows" in load(path)["source"] or "argoproj" in load(path)["source"], path.name


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_case(path: Path, runs: dict[str, Run | BaseException]) -> None:
    case = load(path)
    run = runs[path.stem]
    if isinstance(run, BaseException):
        raise run
    expect = case["expect"]
    got = {run.relative(n): n.phase for n in run.nodes.values()}
    wrong = {name: (phase, got.get(name, "<no such node>")) for name, phase in expect.get("nodes", {}).items()
             if got.get(name) != phase}
    assert run.phase == expect["phase"] and not wrong, (
        f"{case['description']}\nsource: {case['source']}\n"
        f"workflow {run.phase} (expected {expect['phase']}); nodes (expected, got): {wrong}\n{run.explain()}")


HAZARD = CASES_DIR.parent / "hazards" / "when-turns-false-while-running.yaml"


def test_a_running_child_whose_when_turns_false_is_never_advanced(tmp_path: Path) -> None:
    """Why fedtwin's round loop keeps the running round's `when` true (workflows/README.md)."""
    case = yaml.safe_load(HAZARD.read_text())
    argo = LocalArgo(case["workflow"], tmp_path, workflow_name="when-turns-false-local", env={})
    with pytest.raises(RuntimeError, match="cannot progress") as stuck:
        argo.run(timeout=60)
    phases = {name[len(argo.name):]: node.phase for name, node in argo.nodes.items()}
    assert all(phases[n] == "Running" for n in case["hangs"]["running"]), stuck.value
    assert all(phases[n] == "Succeeded" for n in case["hangs"]["succeeded"]), stuck.value
