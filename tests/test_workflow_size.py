"""How large fedtwin-federated's Workflow object grows, against the controller's 1 MiB limit.

The rendered template runs on tests/argo_local with simulated pods (no processes: each pod returns
what the real step would output), for the fleet sizes and round counts workflows/README.md
documents ("Limits on a real cluster"). Its `status.nodes`, serialized as the controller stores
them (tests/argo_local/status.py) and gzipped + base64-encoded as the controller does once the
object passes 1 MiB, must fit; a configuration the README calls too large must not.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import yaml

from fedtwin.core.errors import ConfigError
from fedtwin.run.steps import FanOut
from fedtwin.sim.twins import shard_names, twin_ids
from tests.argo_local import LocalArgo, Node, Run
from tests.argo_local.status import MAX_WORKFLOW_SIZE, status_nodes, stored_size
from workflows.common import MAX_WORKFLOW_NODES

FEDERATED = Path(__file__).resolve().parents[1] / "workflows" / "rendered" / "fedtwin-federated.yaml"
WORKFLOW_NAME = "fedtwin-federated-x7k2p"
OBJECT_OVERHEAD = 4 * 1024
"""Workflow metadata and the rest of its status (phase, conditions, outputs, artifact repository).
The template spec is stored twice besides (status.storedWorkflowTemplateSpec and storedTemplates):
see object_size."""


Simulator = Callable[[Node], tuple[int, dict[str, str]]]


def simulator(twins: int, rounds: int, stop_after: int | None) -> Simulator:
    """What each fedtwin step outputs, without running it (init applies the real fan-out rules)."""
    ids = twin_ids(twins)

    def step(node: Node) -> tuple[int, dict[str, str]]:
        args = node.argv

        def flag(name: str) -> int:
            return int(args[args.index(name) + 1])

        if node.template == "init":
            limit = flag("--max-workflow-nodes") or None
            fan_out = FanOut(flag("--shard-size"), flag("--parallelism"), limit)
            try:
                size = fan_out.shard_size(twins, rounds)
            except ConfigError:
                return 2, {}
            return 0, {"run_id": WORKFLOW_NAME, "round": "0", "shards": json.dumps(shard_names(ids, size)),
                       "first_round": "0", "last_round": str(rounds - 1)}
        if node.template == "aggregate":
            r = flag("--round")
            stop = r == rounds - 1 or r == stop_after
            return 0, {"round": str(r), "played": "true", "participants": str(twins), "rejected": "0",
                       "mean_return": "487.25", "continue": "false" if stop else "true",
                       "next_round": str(r + 1), "last_round": str(r if stop else rounds - 1)}
        if node.template == "evaluate":
            return 0, {"heldout_return": "491.50", "generalization_gap": "3.25"}
        return 0, {}

    return step


def simulate(tmp_path: Path, twins: int, rounds: int, stop_after: int | None = None,
             **parameters: str) -> Run:
    manifest = yaml.safe_load(FEDERATED.read_text())
    argo = LocalArgo(manifest, tmp_path, workflow_name=WORKFLOW_NAME, env={},
                     parameters={"twins": str(twins), "rounds": str(rounds), **parameters},
                     simulate=simulator(twins, rounds, stop_after))
    return argo.run(timeout=600)


def object_size(run: Run) -> tuple[int, int, int]:
    """(nodes, raw bytes, stored bytes once compressed) of the run's Workflow object."""
    spec = yaml.safe_load(FEDERATED.read_text())["spec"]
    rest = 2 * len(json.dumps(spec, separators=(",", ":"))) + OBJECT_OVERHEAD
    raw, stored = stored_size(status_nodes(run), rest)
    return len(run.nodes), raw, stored


def pods_per_round(run: Run, r: int) -> int:
    return sum(1 for n in run.pods() if f".round({r}:{r})." in n.name and n.template == "train")


def test_the_node_count_formula_is_the_workflows(tmp_path: Path) -> None:
    """FanOut.nodes, which `step init` checks against max-workflow-nodes, counts what Argo makes."""
    for twins, rounds, params in [(8, 6, {}), (30, 4, {"parallelism": "7"}), (5, 3, {"twins-per-pod": "2"})]:
        run = simulate(tmp_path / f"{twins}-{rounds}", twins, rounds, **params)
        assert run.phase == "Succeeded", run.explain()[-2000:]
        assert len(run.nodes) == FanOut.nodes(rounds, pods_per_round(run, 0))


LARGEST = {"twins": 100_000, "rounds": 58}
"""The most rounds the defaults allow (parallelism 100, max-workflow-nodes 12000: 11845 nodes), with
the longest shard names (`twin-00000..twin-00999`): the worst case the README promises to fit."""


def test_the_largest_run_the_defaults_allow_fits_in_one_workflow_object(tmp_path: Path) -> None:
    run = simulate(tmp_path, LARGEST["twins"], LARGEST["rounds"])
    assert run.phase == "Succeeded", run.explain()[-2000:]
    assert pods_per_round(run, 0) == 100
    nodes, raw, stored = object_size(run)
    assert nodes <= MAX_WORKFLOW_NODES, nodes
    assert stored < MAX_WORKFLOW_SIZE, f"{nodes} nodes, {raw} raw, {stored} stored"
    assert FanOut.nodes(LARGEST["rounds"] + 1, 100) > MAX_WORKFLOW_NODES  # one round more is refused


TOO_LARGE = {"twins": 600, "rounds": 25, "parallelism": "600"}
"""One pod per twin for 600 twins: 30113 nodes, refused at init (the README's example)."""


def test_a_run_over_the_node_budget_is_refused_at_init_and_would_not_have_fit(tmp_path: Path) -> None:
    twins, rounds, parallelism = TOO_LARGE["twins"], TOO_LARGE["rounds"], TOO_LARGE["parallelism"]
    refused = simulate(tmp_path / "refused", twins, rounds, parallelism=parallelism)
    assert refused.phase == "Failed" and refused.get(".init").phase == "Failed"
    assert not refused.find(r"\.round\(")  # refused before round 0
    unchecked = simulate(tmp_path / "unchecked", twins, rounds, parallelism=parallelism,
                         **{"max-workflow-nodes": "0"})
    nodes, raw, stored = object_size(unchecked)
    assert stored > MAX_WORKFLOW_SIZE, f"{nodes} nodes, {raw} raw, {stored} stored"


def test_an_early_stop_costs_one_node_per_remaining_round(tmp_path: Path) -> None:
    full = simulate(tmp_path / "full", 8, 20)
    early = simulate(tmp_path / "early", 8, 20, stop_after=4)
    skipped = [n for n in early.nodes.values() if n.type == "Skipped" and ".round(" in n.name]
    assert len(skipped) == 15 and all(n.phase == "Skipped" for n in skipped)
    per_round = (len(full.nodes) - len(early.nodes)) / 15
    assert per_round == len([n for n in full.nodes.values() if ".round(5:5)" in n.name]) - 1


def test_the_readme_table_of_rounds_is_the_formula() -> None:
    readme = (FEDERATED.parents[1] / "README.md").read_text()
    pods = re.search(r"^\| pods per round \(`parallelism`\) \|(.*)\|$", readme, re.M)
    rounds = re.search(r"^\| most rounds per workflow \|(.*)\|$", readme, re.M)
    assert pods and rounds
    for p, r in zip(pods.group(1).split("|"), rounds.group(1).split("|"), strict=True):
        p_, r_ = int(p), int(r)
        assert FanOut.nodes(r_, p_) <= MAX_WORKFLOW_NODES < FanOut.nodes(r_ + 1, p_), (p_, r_)
