"""Smoke workflows under the real Argo controller (v4.0.7) with the node agent.

Each asserts what the controller concluded from what the agent reported: phases, retries,
output parameters (including aggregated fan-out outputs), messages, and that the pods passed
PodSecurity `restricted` with the controller's security context.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.harness import Cluster
from tests.cluster.kube import resource_path

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]


def container(script: str) -> dict[str, Any]:
    return {"image": "busybox", "command": ["sh", "-c", script]}


def workflow(name: str, templates: list[dict[str, Any]], **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Workflow",
        "metadata": {"generateName": f"{name}-"},
        "spec": {"entrypoint": "main", "templates": templates, **spec},
    }


FAN_OUT = workflow(
    "smoke",
    [
        {
            "name": "main",
            "dag": {
                "tasks": [
                    {"name": "gen", "template": "gen"},
                    {
                        "name": "square",
                        "dependencies": ["gen"],
                        "template": "square",
                        "withParam": "{{tasks.gen.outputs.parameters.items}}",
                        "arguments": {"parameters": [{"name": "num", "value": "{{item}}"}]},
                    },
                    {
                        "name": "total",
                        "dependencies": ["square"],
                        "template": "total",
                        "arguments": {
                            "parameters": [
                                {"name": "squares", "value": "{{tasks.square.outputs.parameters.sq}}"}
                            ]
                        },
                    },
                    {"name": "flaky", "template": "flaky"},
                    {"name": "broken", "template": "broken", "continueOn": {"failed": True}},
                ]
            },
        },
        {
            "name": "gen",
            "container": container("printf '[1,2,3]\\n' > /tmp/items; id -u > /tmp/uid"),
            "outputs": {
                "parameters": [
                    {"name": "items", "valueFrom": {"path": "/tmp/items"}},
                    {"name": "uid", "valueFrom": {"path": "/tmp/uid"}},
                    {"name": "missing", "valueFrom": {"path": "/tmp/never-written", "default": "fallback"}},
                ]
            },
        },
        {
            "name": "square",
            "inputs": {"parameters": [{"name": "num"}]},
            "container": container(
                "echo $(( {{inputs.parameters.num}} * {{inputs.parameters.num}} )) > /tmp/sq"
            ),
            "outputs": {"parameters": [{"name": "sq", "valueFrom": {"path": "/tmp/sq"}}]},
        },
        {
            "name": "total",
            "inputs": {"parameters": [{"name": "squares"}]},
            "container": container(
                "s=0; for x in $(echo '{{inputs.parameters.squares}}' | tr -d '[]\" ' | tr , ' '); "
                "do s=$((s + x)); done; echo $s > /tmp/total"
            ),
            "outputs": {"parameters": [{"name": "total", "valueFrom": {"path": "/tmp/total"}}]},
        },
        {
            "name": "flaky",
            "retryStrategy": {"limit": 2},
            "container": container("echo attempt {{retries}}; test {{retries}} -ge 1"),
        },
        {
            "name": "broken",
            "retryStrategy": {"limit": 1},
            "container": container("echo 'broken on purpose' > /dev/termination-log; exit 3"),
        },
    ],
)


def children(cluster: Cluster, wf: dict[str, Any], node: dict[str, Any]) -> list[dict[str, Any]]:
    nodes = wf["status"]["nodes"]
    return [nodes[child] for child in node.get("children", [])]


def test_dag_fan_out_outputs_and_retries(cluster: Cluster) -> None:
    name = cluster.submit_manifest(FAN_OUT)
    wf = cluster.wait(name, timeout=240)
    summary = cluster.describe(wf)
    assert wf["status"]["phase"] == "Succeeded", summary

    gen = cluster.outputs(cluster.node(wf, "gen"))
    assert gen == {"items": "[1,2,3]", "uid": "10001", "missing": "fallback"}, summary
    squares = {
        n["displayName"]: cluster.outputs(n).get("sq")
        for n in cluster.nodes(wf)
        if n["displayName"].startswith("square(")
    }
    assert squares == {"square(0:1)": "1", "square(1:2)": "4", "square(2:3)": "9"}, summary
    assert cluster.outputs(cluster.node(wf, "total")) == {"total": "14"}, summary

    flaky = cluster.node(wf, "flaky")
    attempts = children(cluster, wf, flaky)
    assert flaky["phase"] == "Succeeded" and [a["phase"] for a in attempts] == ["Failed", "Succeeded"], (
        summary
    )
    assert "exit code 1" in attempts[0]["message"], summary

    broken = cluster.node(wf, "broken")
    attempts = children(cluster, wf, broken)
    assert broken["phase"] == "Failed" and [a["phase"] for a in attempts] == ["Failed", "Failed"], summary
    assert all("exit code 3" in a["message"] and "broken on purpose" in a["message"] for a in attempts), (
        summary
    )

    # What the node agent reported is what a kubelet and Argo's wait container report.
    pods = cluster.pods(name)
    assert len(pods) == 9, [p["metadata"]["name"] for p in pods]  # gen, 3 squares, total, 2 flaky, 2 broken
    for pod in pods:
        main = next(c for c in pod["spec"]["containers"] if c["name"] == "main")
        assert main["securityContext"]["allowPrivilegeEscalation"] is False
        assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
        assert pod["spec"]["securityContext"]["runAsUser"] == 10001
        statuses = {s["name"]: s["state"] for s in pod["status"]["containerStatuses"]}
        assert set(statuses) == {"wait", "main"} and all("terminated" in s for s in statuses.values())
    results = cluster.plane.admin.get(
        resource_path("WorkflowTaskResult", namespace=cluster.namespace),
        labelSelector=f"workflows.argoproj.io/workflow={name}",
    )["items"]
    assert len(results) == 9
    for result in results:
        assert result["metadata"]["labels"]["workflows.argoproj.io/report-outputs-completed"] == "true"
        assert result["metadata"]["ownerReferences"][0]["uid"] == wf["metadata"]["uid"]
    logs = cluster.pod_logs(name)
    assert sorted(
        line for log in logs.values() for line in log.splitlines() if line.startswith("attempt")
    ) == ["attempt 0", "attempt 1"]


def test_deadline_and_injected_kill(cluster: Cluster, no_faults: None) -> None:
    cluster.set_faults(
        [{"match": {"template": "killed"}, "action": "kill", "after_seconds": 0.3, "times": 1}]
    )
    manifest = workflow(
        "faults",
        [
            {
                "name": "main",
                "dag": {
                    "tasks": [
                        {"name": "slow", "template": "slow", "continueOn": {"failed": True}},
                        {"name": "killed", "template": "killed"},
                    ]
                },
            },
            {"name": "slow", "activeDeadlineSeconds": 3, "container": container("sleep 60")},
            {
                "name": "killed",
                "retryStrategy": {"limit": 2},
                "container": container("sleep 2; echo done > /tmp/out"),
                "outputs": {"parameters": [{"name": "out", "valueFrom": {"path": "/tmp/out"}}]},
            },
        ],
    )
    name = cluster.submit_manifest(manifest)
    wf = cluster.wait(name, timeout=180)
    summary = cluster.describe(wf)
    assert wf["status"]["phase"] == "Succeeded", summary
    slow = cluster.node(wf, "slow")
    assert slow["phase"] == "Failed" and "longer than the specified deadline" in slow["message"], summary
    killed = cluster.node(wf, "killed")
    attempts = children(cluster, wf, killed)
    assert [a["phase"] for a in attempts] == ["Failed", "Succeeded"], summary
    assert "exit code 137" in attempts[0]["message"], summary
    assert cluster.outputs(attempts[1]) == {"out": "done"}, summary


def test_env_from_secret_configmap_volume_and_fieldref(cluster: Cluster) -> None:
    admin = cluster.plane.admin
    admin.apply(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "smoke-secret", "namespace": cluster.namespace},
            "data": {"token": base64.b64encode(b"s3cr3t").decode()},
        }
    )
    admin.apply(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "smoke-config", "namespace": cluster.namespace},
            "data": {"greeting.txt": "hello from a configmap"},
        }
    )
    manifest = workflow(
        "env",
        [
            {
                "name": "main",
                "volumes": [{"name": "config", "configMap": {"name": "smoke-config"}}],
                "container": {
                    **container(
                        'echo "$TOKEN" > /tmp/token; cat /etc/smoke/greeting.txt > /tmp/greeting; '
                        'echo "$POD_NAME" > /tmp/pod; echo x > /etc/smoke/y 2>/dev/null || '
                        "echo read-only > /tmp/ro"
                    ),
                    "env": [
                        {
                            "name": "TOKEN",
                            "valueFrom": {"secretKeyRef": {"name": "smoke-secret", "key": "token"}},
                        },
                        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                    ],
                    "volumeMounts": [{"name": "config", "mountPath": "/etc/smoke", "readOnly": True}],
                },
                "outputs": {
                    "parameters": [
                        {"name": n, "valueFrom": {"path": f"/tmp/{n}"}}
                        for n in ("token", "greeting", "pod", "ro")
                    ]
                },
            }
        ],
    )
    name = cluster.submit_manifest(manifest)
    wf = cluster.wait(name, timeout=120)
    assert wf["status"]["phase"] == "Succeeded", cluster.describe(wf)
    # The pod's mounts lived in its own root: nothing appeared on this machine.
    assert not Path("/etc/smoke").exists()
    assert not Path(os.path.realpath("/var/run"), "argo").exists()
    root = cluster.node(wf, name)
    pod_name = cluster.pods(name)[0]["metadata"]["name"]
    assert cluster.outputs(root) == {
        "token": "s3cr3t",
        "greeting": "hello from a configmap",
        "pod": pod_name,
        "ro": "read-only",
    }


def test_pod_security_restricted_rejects_root(cluster: Cluster) -> None:
    """A template asking to run as root is refused by PodSecurity admission in `fedtwin`."""
    manifest = workflow(
        "root",
        [
            {
                "name": "main",
                "container": {**container("id"), "securityContext": {"runAsNonRoot": False, "runAsUser": 0}},
            }
        ],
    )
    name = cluster.submit_manifest(manifest)
    wf = cluster.wait(name, timeout=120)
    message = cluster.node(wf, name).get("message", "")
    assert wf["status"]["phase"] in ("Failed", "Error"), cluster.describe(wf)
    assert 'violates PodSecurity "restricted:latest"' in message and "runAsUser=0" in message, message
    assert cluster.pods(name) == []
