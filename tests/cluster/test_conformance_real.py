"""The shared conformance cases (tests/conformance/cases/*.yaml) under the real controller.

Every case's Workflow is submitted with the built `argo` CLI to Argo v4.0.7's controller, its pods
run by the node agent; the final workflow phase and the phase of every node the case lists must be
what the case expects (node names without the workflow-name prefix). The cases run a few at a
time (`IN_FLIGHT`), all from one module fixture, so the whole set costs about as long as its
slowest few cases rather than their sum.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.cluster.harness import Cluster, CommandError

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1200)]

CASES_DIR = Path(__file__).resolve().parents[1] / "conformance" / "cases"
CASES = sorted(CASES_DIR.glob("*.yaml"))
IN_FLIGHT = 6
CASE_TIMEOUT = 240.0


@dataclass
class Outcome:
    case: dict[str, Any]
    name: str = ""
    workflow: dict[str, Any] = field(default_factory=dict)
    error: str = ""


def load_case(path: Path) -> dict[str, Any]:
    case = yaml.safe_load(path.read_text())
    missing = {"source", "workflow", "expect"} - set(case or {})
    if missing:
        raise ValueError(
            f"{path.name}: missing top-level keys {sorted(missing)} (format: tests/conformance/README.md)"
        )
    if "phase" not in case["expect"]:
        raise ValueError(f"{path.name}: expect.phase is required")
    return dict(case)


@pytest.fixture(scope="module")
def outcomes(cluster: Cluster) -> dict[str, Outcome]:
    """Run every case, at most IN_FLIGHT at once; an outcome per file name."""
    results: dict[str, Outcome] = {}
    pending: list[Path] = list(CASES)
    running: dict[str, tuple[Outcome, float]] = {}
    while pending or running:
        while pending and len(running) < IN_FLIGHT:
            path = pending.pop(0)
            try:
                outcome = Outcome(load_case(path))
                outcome.name = cluster.submit_manifest(outcome.case["workflow"])
                running[path.name] = (outcome, time.monotonic())
            except (ValueError, CommandError, yaml.YAMLError) as exc:
                results[path.name] = Outcome({}, error=f"could not submit: {exc}")
        for file_name, (outcome, started) in list(running.items()):
            wf = cluster.workflow(outcome.name)
            phase = wf.get("status", {}).get("phase")
            completed = (wf["metadata"].get("labels") or {}).get("workflows.argoproj.io/completed") == "true"
            if phase in ("Succeeded", "Failed", "Error") and completed:
                outcome.workflow = wf
            elif time.monotonic() - started > CASE_TIMEOUT:
                outcome.workflow = wf
                outcome.error = f"not finished after {CASE_TIMEOUT:.0f} s"
            else:
                continue
            results[file_name] = outcome
            del running[file_name]
        time.sleep(0.5)
    return results


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_case_matches_real_controller(path: Path, outcomes: dict[str, Outcome], cluster: Cluster) -> None:
    outcome = outcomes[path.name]
    context = ""
    if outcome.workflow:
        logs = cluster.pod_logs(outcome.name)
        context = (
            cluster.describe(outcome.workflow)
            + "\n"
            + "\n".join(f"  [{pod}] {log.strip()[-300:]}" for pod, log in sorted(logs.items()) if log.strip())
        )
    assert not outcome.error, f"{path.name}: {outcome.error}\n{context}\n{cluster.diagnostics(10)}"
    expect = outcome.case["expect"]
    actual = {name: node["phase"] for name, node in Cluster.relative_nodes(outcome.workflow).items()}
    mismatches = (
        [f"workflow phase: expected {expect['phase']}, got {outcome.workflow['status']['phase']}"]
        if outcome.workflow["status"]["phase"] != expect["phase"]
        else []
    )
    for node, phase in (expect.get("nodes") or {}).items():
        if actual.get(node) != phase:
            mismatches.append(f"node {node!r}: expected {phase}, got {actual.get(node, 'no such node')}")
    assert not mismatches, (
        f"{path.name} ({outcome.case['source']}):\n  " + "\n  ".join(mismatches) + f"\n{context}"
    )


def test_cases_exist() -> None:
    """The runner is only evidence if there are cases to run."""
    assert CASES, f"no conformance cases under {CASES_DIR}"


@pytest.fixture(scope="module")
def local_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Every case under tests/argo_local too (issue 21, test 7)."""
    from tests.test_conformance import execute

    root = tmp_path_factory.mktemp("argo-local")
    runs: dict[str, Any] = {}
    for path in CASES:
        try:
            runs[path.name] = execute(path, root / path.stem)
        except Exception as exc:  # reported by the comparison
            runs[path.name] = exc
    return runs


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_home_made_executor_agrees_with_the_real_controller(
    path: Path, outcomes: dict[str, Outcome], local_runs: dict[str, Any]
) -> None:
    """Not only the nodes a case lists: the same nodes, each in the same phase, and the same workflow
    phase, under tests/argo_local as under Argo v4.0.7."""
    outcome, local = outcomes[path.name], local_runs[path.name]
    assert not outcome.error and outcome.workflow, f"{path.name}: no finished real run: {outcome.error}"
    assert not isinstance(local, Exception), f"{path.name}: argo_local failed: {local!r}"
    real = {name: node["phase"] for name, node in Cluster.relative_nodes(outcome.workflow).items()}
    mine = {local.relative(node): node.phase for node in local.nodes.values()}
    differences = sorted(
        f"{name!r}: real {real.get(name, 'absent')}, argo_local {mine.get(name, 'absent')}"
        for name in real.keys() | mine.keys()
        if real.get(name) != mine.get(name)
    )
    if outcome.workflow["status"]["phase"] != local.phase:
        real_phase = outcome.workflow["status"]["phase"]
        differences.insert(0, f"workflow: real {real_phase}, argo_local {local.phase}")
    assert not differences, f"{path.name}:\n  " + "\n  ".join(differences)
