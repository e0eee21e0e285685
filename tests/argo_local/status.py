"""A finished local run as Argo's `status.nodes`, and the size the controller would store it at.

The controller keeps a workflow's whole status in its Workflow object. When the object's JSON passes
MAX_WORKFLOW_SIZE (1 MiB by default), it stores the nodes gzipped and base64-encoded instead
(`status.compressedNodes`), and refuses the update when even that is too large: "workflow is
longer than maximum allowed size" (workflow/packer/packer.go CompressWorkflowIfNeeded). Without a
database for node-status offload that is a hard limit on fleet size x rounds, and
tests/test_workflow_size.py keeps fedtwin's documented configurations under it.

The node records follow wfv1.NodeStatus (pkg/apis/workflow/v1alpha1/workflow_types.go): ids from
`Workflow.NodeID` (fnv-1a of the node name), display names as `initializeNode` derives them, and the
fields the controller fills for each node type; tests/cluster/ holds the model against the status
the real controller wrote for the same run.
"""

from __future__ import annotations

import base64
import gzip
import json
from datetime import UTC, datetime, timedelta
from typing import Any

from tests.argo_local.controller import DAG, POD, RETRY, STEP_GROUP, STEPS, TASK_GROUP, Node, Run, fulfilled

MAX_WORKFLOW_SIZE = 1024 * 1024
"""workflow/packer/packer.go getMaxWorkflowSize: MAX_WORKFLOW_SIZE, default 1 MiB."""
EPOCH = datetime(2026, 1, 1, tzinfo=UTC)
HOST = "fedtwin-worker-1"


def node_id(workflow: str, name: str) -> str:
    """Workflow.NodeID: the workflow name for the root, else `<workflow>-<fnv-1a 32 of the name>`."""
    if name == workflow:
        return workflow
    h = 0x811C9DC5
    for byte in name.encode():
        h = ((h ^ byte) * 0x01000193) & 0xFFFFFFFF
    return f"{workflow}-{h}"


def _time(seconds: float) -> str:
    return (EPOCH + timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%SZ")


def _spread(name: str, low: int, high: int) -> int:
    """A value that varies from node to node as real durations do (compression depends on it)."""
    return low + int(node_id("", name).rsplit("-", 1)[-1]) % (high - low + 1)


def node_status(run: Run, node: Node, template_scope: str, start: float, pods: dict[str, int],
                gpu: bool) -> dict[str, Any]:
    """One wfv1.NodeStatus as the controller serializes it (omitempty fields left out), with the
    fields the v4.0.7 controller fills for each node type (checked against a real run in
    tests/cluster/test_fedtwin_e2e.py)."""
    ids = lambda names: [node_id(run.name, n) for n in names]  # noqa: E731
    out: dict[str, Any] = {"id": node_id(run.name, node.name), "name": node.name,
                           "displayName": node.display_name, "type": node.type}
    if node.type != STEP_GROUP and node.template:
        out["templateName"] = node.template
    out["templateScope"] = template_scope
    out["phase"] = node.phase
    if node.boundary:
        out["boundaryID"] = node_id(run.name, node.boundary)
    if node.message:
        out["message"] = node.message
    begin = node.started - start + _spread(node.name + "s", 0, 40)
    out["startedAt"] = _time(begin)
    if fulfilled(node.phase):
        out["finishedAt"] = _time(begin + _spread(node.name + "f", 1, 90))
    if node.type in (POD, RETRY, DAG, STEPS, STEP_GROUP, TASK_GROUP) and fulfilled(node.phase):
        count = pods.get(node.name, 1)
        out["progress"] = f"{count}/{count}"
        cpu = _spread(node.name + "c", 1, 12) * count
        out["resourcesDuration"] = {"cpu": cpu, "memory": cpu * 12 + _spread(node.name + "m", 0, 11)}
        if gpu:
            out["resourcesDuration"]["nvidia.com/gpu"] = 0
    if node.retried:
        out["nodeFlag"] = {"retried": True}
    elif node.type in (STEP_GROUP, TASK_GROUP):
        out["nodeFlag"] = {}
    elif node.name.endswith(".onExit"):
        out["nodeFlag"] = {"hooked": True}
    if node.inputs:
        out["inputs"] = {"parameters": [{"name": k, "value": v} for k, v in node.inputs.items()]}
    if node.outputs or node.exit_code is not None:
        outputs: dict[str, Any] = {}
        artifacts = (run.templates.get(node.template) or {}).get("outputs", {}).get("artifacts", [])
        if artifacts and node.phase == "Succeeded":
            outputs["artifacts"] = [
                {"archive": {"none": {}}, "name": a["name"], "path": a["path"],
                 "s3": {"key": f"argo/{run.name}/{run.name}-{node.template}-{node_id('', node.name)[1:]}/"
                               f"{a['path'].rsplit('/', 1)[-1]}"}}
                for a in artifacts]
        if node.exit_code is not None:
            outputs["exitCode"] = node.exit_code
        if node.outputs:
            outputs["parameters"] = [
                {"name": k, "value": v, "valueFrom": {"path": f"/tmp/fedtwin/outputs/{k}"}}
                for k, v in node.outputs.items()]
        out["outputs"] = outputs
    if node.children:
        out["children"] = ids(node.children)
    if node.outbound:
        out["outboundNodes"] = ids(node.outbound)
    if node.type == POD:
        out["hostNodeName"] = HOST
        out["taskResultSynced"] = True
    return out


def status_nodes(run: Run, template_scope: str = "local/") -> dict[str, dict[str, Any]]:
    """The run's `status.nodes` (templateScope `local/`: a workflow submitted from a template)."""
    start = min(n.started for n in run.nodes.values())
    pods: dict[str, int] = {}  # pods at or under each node, for `progress`
    for node in run.nodes.values():
        if node.type == POD:
            name = node.name
            while name:
                pods[name] = pods.get(name, 0) + 1
                parent = run.nodes[name].boundary
                name = parent if parent != name else ""
    # the controller sums every resource a pod requested, an unused GPU limit as 0
    gpu = any("nvidia.com/gpu" in json.dumps(n.pod_spec_patch) for n in run.nodes.values())
    return {node_id(run.name, n.name): node_status(run, n, template_scope, start, pods, gpu)
            for n in run.nodes.values()}


def stored_size(nodes: dict[str, Any], rest_of_object: int) -> tuple[int, int]:
    """(bytes of the nodes' JSON, bytes of the object once the nodes are compressed) — the second is
    what must stay under MAX_WORKFLOW_SIZE; `rest_of_object` is the object without its nodes."""
    raw = json.dumps(nodes, separators=(",", ":")).encode()
    compressed = base64.b64encode(gzip.compress(raw, compresslevel=6))
    return len(raw) + rest_of_object, len(compressed) + rest_of_object
