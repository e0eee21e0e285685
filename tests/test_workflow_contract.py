"""Contract: the rendered `fedtwin-federated` YAML really drives the fedtwin CLI.

tests/argo_local.py executes workflows/rendered/fedtwin-federated.yaml as Argo would: parameters
substituted, each container's command and args run as a subprocess of the installed CLI (`fedtwin`
becomes `python -m fedtwin`) against a local store, `depends`/`when`/`withParam`, output-parameter
files, retries and the exit handler followed. Three submissions run concurrently:

* quorum: 2 rounds x 3 twins, one twin crashes every round (a wrapper in this test replaces its pod's
  command; its retry crashes too): each round still aggregates the other two (min-twins 2).
* below:  the same crash with 2 twins and min-twins 2: round 0 fails clearly, no further round starts,
  and the exit handler records the failure without hiding the quorum reason.
* early:  3 twins in pods of 2 (`twins-per-pod`: a shard trained by the fleet engine) and a target
  return reached in round 0: round 1's gate stops the run, which ends done.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.argo_local import FAILED, OMITTED, SKIPPED, SUCCEEDED, LocalArgo, Node, Run
from tests.helpers import TINY, clean_env
from workflows import common

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
FEDERATED = REPO / "workflows" / "rendered" / "fedtwin-federated.yaml"
CRASHING_TWIN = "twin-001"
AS_PARAMETERS = {"seed", "fleet.count", "federation.rounds", "federation.target_return",
                 "federation.min_twins"}
"""Config keys the workflow sets from its parameters (the rest of the tiny budget comes from env)."""
LABEL_VALUE = r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?"


def tiny_env() -> dict[str, str]:
    """The tiny training budget of tests/helpers.py as FEDTWIN_<SECTION>__<KEY> variables."""
    env = clean_env()
    for section, values in TINY.items():
        if not isinstance(values, dict):
            continue
        for key, value in values.items():
            if f"{section}.{key}" not in AS_PARAMETERS:
                env[f"FEDTWIN_{section.upper()}__{key.upper()}"] = json.dumps(value)
    return env


def crash(twin: str) -> Callable[[list[str], Node], list[str]]:
    """Replace the training pod of `twin` by a process that dies like a lost pod (exit 1)."""

    def wrap(argv: list[str], node: Node) -> list[str]:
        if node.template == "train" and twin in argv[argv.index("--twin") + 1].split(","):
            return [sys.executable, "-c", f"import sys; sys.exit('simulated crash of {twin}')"]
        return argv

    return wrap


def submit(workdir: Path, suffix: str, crashing: str | None, **parameters: str) -> tuple[Run, Path]:
    """`argo submit --from workflowtemplate/fedtwin-federated -p ...`, locally."""
    store = workdir / "store"
    workdir.mkdir(parents=True)
    values = {"store": str(store), "rounds": "2", "twins": "3", "target-return": "", "twin-retries": "1",
              **parameters}
    argo = LocalArgo(yaml.safe_load(FEDERATED.read_text()), workdir, parameters=values, env=tiny_env(),
                     wrap=crash(crashing) if crashing else None, workflow_name=f"fedtwin-federated-{suffix}")
    return argo.run(), store


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Run, Path]]:
    root = tmp_path_factory.mktemp("argo")
    scenarios: dict[str, tuple[str | None, dict[str, str]]] = {
        "quorum": (CRASHING_TWIN, {"min-twins": "2"}),  # run-id left empty: the workflow name
        "below": (CRASHING_TWIN, {"run-id": "below", "twins": "2", "min-twins": "2"}),
        "early": (None, {"run-id": "early", "twins": "3", "twins-per-pod": "2", "min-twins": "1",
                         "target-return": "0"}),
    }
    with ThreadPoolExecutor(max_workers=len(scenarios)) as pool:
        futures = {name: pool.submit(submit, root / name, f"{name}x", crashing, **params)
                   for name, (crashing, params) in scenarios.items()}
        return {name: future.result() for name, future in futures.items()}


def state(store: Path, run_id: str) -> dict[str, Any]:
    return json.loads((store / "runs" / run_id / "state.json").read_text())


def summary(store: Path, run_id: str, round_index: int) -> dict[str, Any]:
    path = store / "runs" / run_id / "rounds" / f"{round_index:04d}" / "summary.json"
    return json.loads(path.read_text())


def explain(run: Run) -> str:
    return "\n".join(f"{n.path}: {n.phase} {n.message}" for n in run.nodes)


def assert_pods_ran_the_cli(run: Run) -> None:
    for pod in run.pods():
        assert pod.argv[:3] == [sys.executable, "-m", "fedtwin"], pod.argv
        for key, value in pod.labels.items():
            assert re.fullmatch(LABEL_VALUE, value) and len(value) <= 63, (key, value)
        assert pod.labels[common.LABEL_APP] == "fedtwin"


# ------------------------------------------------------------------------------ with quorum
def test_rounds_aggregate_with_quorum_despite_a_crashing_twin(runs: Mapping[str, tuple[Run, Path]]) -> None:
    run, store = runs["quorum"]
    assert run.phase == SUCCEEDED, explain(run)
    run_id = "fedtwin-federated-quorumx"  # run-id "" = the workflow name
    assert run.global_outputs["run-id"] == run_id
    assert run.mutexes == [f"fedtwin-run-{run_id}"]
    assert_pods_ran_the_cli(run)
    for r in (0, 1):
        prefix = rf"main/rounds/round\({r}:{r}\)"
        assert run.one(f"{prefix}/gate$").outputs["play"] == "true"
        ok = [run.one(rf"{prefix}/train\({i}:twin-00{i}\)$") for i in (0, 2)]
        crashed = run.one(rf"{prefix}/train\(1:{CRASHING_TWIN}\)$")
        assert [n.phase for n in ok] == [SUCCEEDED, SUCCEEDED] and crashed.phase == FAILED
        assert crashed.attempts == 2 and f"simulated crash of {CRASHING_TWIN}" in crashed.message
        for node in [*ok, crashed]:
            twin = node.argv[node.argv.index("--twin") + 1]
            assert node.labels[common.LABEL_ROLE] == "twin" and node.labels[common.LABEL_TWIN] == twin
            assert node.labels[common.LABEL_RUN] == run_id and node.labels[common.LABEL_ROUND] == str(r)
            assert node.annotations == {common.UNUSED_SWITCH: ""}  # no subnet: no KubeOVN annotation

        aggregate = run.one(f"{prefix}/aggregate$")
        assert aggregate.phase == SUCCEEDED, aggregate.log
        out = aggregate.outputs
        assert (out["round"], out["participants"], out["rejected"]) == (str(r), "2", "0")
        assert out["continue"] == ("true" if r == 0 else "false")
        stored = summary(store, run_id, r)
        assert float(out["mean_return"]) == pytest.approx(stored["validation_return"], abs=0.01)
        assert stored["participants"] == ["twin-000", "twin-002"] and stored["missing"] == [CRASHING_TWIN]
        model = store / "runs" / run_id / "rounds" / f"{r + 1:04d}" / "global.safetensors"
        assert aggregate.artifacts["global-model"].read_bytes() == model.read_bytes()
        metrics = {mt["name"]: mt for mt in aggregate.metrics}
        assert metrics["fedtwin_validation_return"]["value"] == out["mean_return"]
        assert metrics["fedtwin_rejected_updates"]["value"] == "0"
        assert metrics["fedtwin_round_participants"]["labels"] == {"run_id": run_id}

    float(run.one("main/evaluate$").outputs["heldout_return"])
    assert run.one("main/report$").phase == SUCCEEDED
    finish = run.one("onExit/finish$")
    assert finish.phase == SUCCEEDED and finish.argv[finish.argv.index("--status") + 1] == "Succeeded"
    final = state(store, run_id)
    assert (final["status"], final["next_round"], final["training_complete"]) == ("done", 2, True)
    assert final["reason"] is None


# ----------------------------------------------------------------------------- below quorum
def test_round_fails_clearly_below_quorum(runs: Mapping[str, tuple[Run, Path]]) -> None:
    run, store = runs["below"]
    assert run.phase == FAILED, explain(run)
    aggregate = run.one(r"main/rounds/round\(0:0\)/aggregate$")
    assert aggregate.phase == FAILED
    assert "1 valid updates, below the quorum of 2" in aggregate.log
    assert not run.find(r"round\(1:1\)"), "a round started after a failed round"
    assert run.one("main/rounds$").phase == FAILED
    assert [run.one(f"main/{n}$").phase for n in ("evaluate", "report")] == [OMITTED, OMITTED]
    finish = run.one("onExit/finish$")
    assert finish.phase == SUCCEEDED and finish.argv[finish.argv.index("--status") + 1] == "Failed"
    final = state(store, "below")
    assert final["status"] == "failed" and "below the quorum" in final["reason"]  # not "workflow ended"


# ------------------------------------------------------------------------------- early stop
def test_gate_skips_rounds_after_the_target_is_reached(runs: Mapping[str, tuple[Run, Path]]) -> None:
    run, store = runs["early"]
    assert run.phase == SUCCEEDED, explain(run)
    assert_pods_ran_the_cli(run)
    shard = run.one(r"round\(0:0\)/train\(0:twin-000,twin-001\)$")
    assert shard.phase == SUCCEEDED and shard.labels[common.LABEL_TWIN] == "twin-000.twin-001"
    assert run.one(r"round\(0:0\)/train\(1:twin-002\)$").phase == SUCCEEDED
    init = run.one("main/init$").argv
    assert init[init.index("--engine") + 1] == "fleet" and init[init.index("--shard-size") + 1] == "2"
    assert run.one(r"round\(0:0\)/aggregate$").outputs["participants"] == "3"
    assert run.one(r"round\(0:0\)/aggregate$").outputs["continue"] == "false"
    assert run.one(r"round\(1:1\)/gate$").outputs["play"] == "false"
    assert run.one(r"round\(1:1\)/train$").phase == SKIPPED
    assert run.one(r"round\(1:1\)/aggregate$").phase == OMITTED
    final = state(store, "early")
    assert (final["status"], final["next_round"], final["training_complete"]) == ("done", 1, True)
