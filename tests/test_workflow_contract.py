"""Contract: the rendered `fedtwin-federated` YAML really drives the fedtwin CLI, under Argo's rules.

tests/argo_local/ executes workflows/rendered/fedtwin-federated.yaml the way the v4 controller
would (its reconcile loop, node names and phase rules, each rule citing the Go function it copies):
parameters substituted, each container's command and args run as a subprocess of the installed CLI
(`fedtwin` becomes `python -m fedtwin`) against a local store, output-parameter files, global
outputs, retries with (shortened) backoff and the exit handler. The scenarios run concurrently:

* clean:   3 rounds x 3 twins, nothing fails: the reference run.
* crash2:  the same, but twin-001's pod dies in round 2 on every attempt: round 2 aggregates the
           other two (min-twins 2) and the run still succeeds.
* resume:  a first submission whose round 2 loses every twin (quorum lost: Failed, and the exit
           handler records why), then a second submission with the same run id: rounds 0 and 1 are
           single Skipped nodes, round 2 plays, and the final global model is the clean run's, bit
           for bit.
* early:   3 twins in shards of 2 (`twins-per-pod`) and a target reached in round 0: rounds 1 and 2
           are single Skipped nodes (no pod at all), and the run ends Succeeded and done.

The template as it was before the early-stop fix (a `gate` pod, then `train` with `withParam` and
`when`, then `aggregate`) is kept, with `sh` steps in place of fedtwin's, as the conformance case
tests/conformance/cases/fedtwin-round-before-early-stop-fix.yaml: under Argo's rules its unplayed
round is a Succeeded task group of Skipped children, `aggregate` runs and the workflow fails.
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

from tests.argo_local import FAILED, OMITTED, POD, RETRY, SKIPPED, SUCCEEDED, TASK_GROUP, LocalArgo, Node, Run
from tests.helpers import TINY, clean_env
from workflows import common

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
FEDERATED = REPO / "workflows" / "rendered" / "fedtwin-federated.yaml"
AS_PARAMETERS = {"seed", "fleet.count", "federation.rounds", "federation.target_return",
                 "federation.min_twins"}
"""Config keys the workflow sets from its parameters (the rest of the tiny budget comes from env)."""
LABEL_VALUE = r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?"
BACKOFF_SCALE = 0.02
"""Retry backoffs (15 s, 30 s, ...) shortened for the test; their order and count are Argo's."""


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


def crash(twins: set[str], rounds: set[str]) -> Callable[[list[str], Node], list[str]]:
    """Replace the training pods of `twins` in `rounds` by a process that dies like a lost pod (exit 1)."""

    def wrap(argv: list[str], node: Node) -> list[str]:
        if node.template == "train" and argv[argv.index("--round") + 1] in rounds:
            shard = set(argv[argv.index("--twin") + 1].split(","))
            if shard & twins:
                return [sys.executable, "-c", f"import sys; sys.exit('simulated crash of {sorted(shard)}')"]
        return argv

    return wrap


def submit(workdir: Path, name: str, *,
           wrap: Callable[[list[str], Node], list[str]] | None = None, **parameters: str) -> Run:
    """`argo submit --from workflowtemplate/fedtwin-federated -p ...`, locally."""
    workdir.mkdir(parents=True)
    values = {"rounds": "3", "twins": "3", "target-return": "", "twin-retries": "1", "min-twins": "2",
              **parameters}
    argo = LocalArgo(yaml.safe_load(FEDERATED.read_text()), workdir, parameters=values, env=tiny_env(),
                     wrap=wrap, workflow_name=name, backoff_scale=BACKOFF_SCALE)
    return argo.run(timeout=900)


def resume_twice(root: Path, store: Path) -> tuple[Run, dict[str, Any], Run]:
    """The failed first submission, the run state it left, and the second submission."""
    every_twin = {"twin-000", "twin-001", "twin-002"}
    first = submit(root / "first", "fedtwin-federated-resume1", **{"run-id": "resume"}, store=str(store),
                   wrap=crash(every_twin, {"2"}))
    left = state(store, "resume")
    second = submit(root / "second", "fedtwin-federated-resume2", store=str(store), **{"run-id": "resume"})
    return first, left, second


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("argo")
    stores = {name: root / f"{name}-store" for name in ("clean", "crash2", "resume", "early")}
    jobs: dict[str, Callable[[], Any]] = {
        "clean": lambda: submit(root / "clean", "fedtwin-federated-cleanx", store=str(stores["clean"])),
        "crash2": lambda: submit(root / "crash2", "fedtwin-federated-crashx", store=str(stores["crash2"]),
                                 wrap=crash({"twin-001"}, {"2"}), **{"run-id": "crash2"}),
        "resume": lambda: resume_twice(root / "resume", stores["resume"]),
        "early": lambda: submit(root / "early", "fedtwin-federated-earlyx", store=str(stores["early"]),
                                **{"run-id": "early", "twins-per-pod": "2", "min-twins": "1",
                                   "target-return": "0"}),
    }
    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        futures = {name: pool.submit(job) for name, job in jobs.items()}
        return {name: (future.result(), stores[name]) for name, future in futures.items()}


def state(store: Path, run_id: str) -> dict[str, Any]:
    return json.loads((store / "runs" / run_id / "state.json").read_text())


def summary(store: Path, run_id: str, round_index: int) -> dict[str, Any]:
    path = store / "runs" / run_id / "rounds" / f"{round_index:04d}" / "summary.json"
    return json.loads(path.read_text())


def global_model(store: Path, run_id: str, round_index: int) -> bytes:
    return (store / "runs" / run_id / "rounds" / f"{round_index:04d}" / "global.safetensors").read_bytes()


def round_node(run: Run, r: int, rest: str = "") -> Node:
    return run.get(f".rounds[0].round({r}:{r}){rest}")


def assert_pods_ran_the_cli(run: Run) -> None:
    for pod in run.pods():
        assert pod.argv[:3] == [sys.executable, "-m", "fedtwin"], pod.argv
        for key, value in pod.labels.items():
            assert re.fullmatch(LABEL_VALUE, value) and len(value) <= 63, (key, value)
        assert pod.labels[common.LABEL_APP] == "fedtwin"


def assert_round_played(run: Run, store: Path, run_id: str, r: int, participants: list[str],
                        fan_out: str = SUCCEEDED) -> None:
    """Round r: one pod per twin under the fan-out's task group, then an aggregate matching the store."""
    group = round_node(run, r, ".train")
    assert (group.type, group.phase) == (TASK_GROUP, fan_out), run.explain()
    aggregate = round_node(run, r, ".aggregate")
    assert (aggregate.type, aggregate.phase) == (RETRY, SUCCEEDED), run.explain()
    out = aggregate.outputs
    assert (out["round"], out["played"], out["participants"], out["rejected"]) == (
        str(r), "true", str(len(participants)), "0")
    stored = summary(store, run_id, r)
    assert stored["participants"] == participants
    assert float(out["mean_return"]) == pytest.approx(stored["validation_return"], abs=0.01)
    attempt = run.get(aggregate.children[-1][len(run.name):])
    assert attempt.artifacts["global-model"].read_bytes() == global_model(store, run_id, r + 1)
    metrics = {mt["name"]: mt for mt in aggregate.metrics}
    assert metrics["fedtwin_validation_return"]["value"] == out["mean_return"]
    assert metrics["fedtwin_round_participants"]["labels"] == {"run_id": run_id}
    for i, twin in enumerate(["twin-000", "twin-001", "twin-002"]):
        pod = run.get(f".rounds[0].round({r}:{r}).train({i}:{twin})(0)")
        assert pod.type == POD
        assert pod.labels[common.LABEL_ROLE] == "twin" and pod.labels[common.LABEL_TWIN] == twin
        assert pod.labels[common.LABEL_RUN] == run_id and pod.labels[common.LABEL_ROUND] == str(r)
        assert pod.annotations == {common.UNUSED_SWITCH: ""}  # no subnet: no KubeOVN annotation


def assert_finished(run: Run, status: str) -> Node:
    finish = run.get(".onExit[0].finish")
    assert finish.phase == SUCCEEDED, run.explain()
    attempt = run.get(finish.children[-1][len(run.name):])
    assert attempt.argv[attempt.argv.index("--status") + 1] == status
    return attempt


# ---------------------------------------------------------------------------------------- clean
def test_clean_run_plays_every_round_in_order(runs: Mapping[str, Any]) -> None:
    run, store = runs["clean"]
    assert run.phase == SUCCEEDED, run.explain()
    run_id = "fedtwin-federated-cleanx"  # run-id "" = the workflow name
    heldout = run.get(".evaluate").outputs["heldout_return"]
    assert run.global_outputs == {"run-id": run_id, "first-round": "0", "last-round": "2",
                                  "heldout-return": heldout,
                                  "generalization-gap": run.get(".evaluate").outputs["generalization_gap"]}
    assert run.mutexes == [f"fedtwin-run-{run_id}"]
    assert_pods_ran_the_cli(run)
    for r in range(3):
        assert_round_played(run, store, run_id, r, ["twin-000", "twin-001", "twin-002"])
    loop = run.get(".rounds[0]")
    assert [run.nodes[c].display_name for c in loop.children] == ["round(0:0)", "round(1:1)", "round(2:2)"]
    assert not [m for n in run.nodes.values() for m in n.dropped_metrics], "a metric value was not a number"
    float(run.get(".evaluate").outputs["heldout_return"])
    assert run.get(".report").phase == SUCCEEDED
    assert_finished(run, "Succeeded")
    final = state(store, run_id)
    assert (final["status"], final["next_round"], final["training_complete"]) == ("done", 3, True)


# ----------------------------------------------------------------------------- crash in round 2
def test_a_twin_crashing_in_round_2_is_retried_then_aggregated_around(runs: Mapping[str, Any]) -> None:
    run, store = runs["crash2"]
    assert run.phase == SUCCEEDED, run.explain()
    for r in (0, 1):
        assert_round_played(run, store, "crash2", r, ["twin-000", "twin-001", "twin-002"])
    crashed = round_node(run, 2, ".train(1:twin-001)")
    assert (crashed.type, crashed.phase) == (RETRY, FAILED)
    attempts = [run.nodes[c] for c in crashed.children]
    assert [a.display_name for a in attempts] == ["train(1:twin-001)(0)", "train(1:twin-001)(1)"]
    assert all(a.phase == FAILED and a.exit_code == "1" for a in attempts)
    # a failed child fails its task group, and aggregate runs all the same
    assert_round_played(run, store, "crash2", 2, ["twin-000", "twin-002"], fan_out=FAILED)
    assert summary(store, "crash2", 2)["missing"] == ["twin-001"]
    assert round_node(run, 2).phase == SUCCEEDED  # the round's result is its aggregation's
    assert state(store, "crash2")["status"] == "done"


# ---------------------------------------------------------------------------------------- resume
def test_a_lost_quorum_fails_the_run_with_its_reason(runs: Mapping[str, Any]) -> None:
    (first, left, _), _ = runs["resume"]
    assert first.phase == FAILED, first.explain()
    aggregate = round_node(first, 2, ".aggregate")
    assert (aggregate.phase, aggregate.message) == (FAILED, "retryStrategy.expression evaluated to false")
    attempts = [first.nodes[c] for c in aggregate.children]
    assert len(attempts) == 1, "exit 3 (lost quorum) must not be retried"
    reason = "round 2: 0 valid updates, below the quorum of 2 (federation.min_twins); rejected: none rejected"
    assert attempts[0].message == f"main: Error (exit code 3): Error: {reason}"  # the UI shows why
    assert first.get(".rounds").phase == FAILED
    assert first.get(".evaluate").phase == OMITTED
    assert_finished(first, "Failed")
    # the exit handler kept the specific reason, not "workflow ended Failed"
    assert (left["status"], left["reason"], left["next_round"]) == ("failed", reason, 2)


def test_a_resumed_run_skips_played_rounds_and_matches_the_clean_run(runs: Mapping[str, Any]) -> None:
    (_, _, second), store = runs["resume"]
    _, clean_store = runs["clean"]
    assert second.phase == SUCCEEDED, second.explain()
    assert second.global_outputs["first-round"] == "2"
    for r in (0, 1):
        skipped = round_node(second, r)
        assert (skipped.type, skipped.phase) == ("Skipped", SKIPPED)
        assert skipped.message == f"when '{r} >= 2 && {r} <= 2' evaluated false"
        assert not second.find(rf"round\({r}:{r}\)\.")  # nothing under a skipped round
    assert_round_played(second, store, "resume", 2, ["twin-000", "twin-001", "twin-002"])
    assert global_model(store, "resume", 3) == global_model(clean_store, "fedtwin-federated-cleanx", 3)
    final = state(store, "resume")
    assert (final["status"], final["next_round"], final["reason"]) == ("done", 3, None)


# ------------------------------------------------------------------------------------ early stop
def test_rounds_after_an_early_stop_are_single_skipped_nodes(runs: Mapping[str, Any]) -> None:
    run, store = runs["early"]
    assert run.phase == SUCCEEDED, run.explain()
    assert_pods_ran_the_cli(run)
    shard = round_node(run, 0, ".train(0:twin-000..twin-001)(0)")
    assert shard.phase == SUCCEEDED and shard.labels[common.LABEL_TWIN] == "twin-000..twin-001"
    assert round_node(run, 0, ".train(1:twin-002)(0)").phase == SUCCEEDED
    aggregate = round_node(run, 0, ".aggregate")
    assert (aggregate.outputs["participants"], aggregate.outputs["continue"]) == ("3", "false")
    assert run.global_outputs["last-round"] == "0"
    for r in (1, 2):
        node = round_node(run, r)
        assert (node.type, node.phase) == ("Skipped", SKIPPED)
        assert not run.find(rf"round\({r}:{r}\)\.")
    assert len(run.pods()) == 3 + 4  # round 0's three, plus init, evaluate, report, finish
    final = state(store, "early")
    assert (final["status"], final["next_round"], final["training_complete"]) == ("done", 1, True)
