"""fedtwin's WorkflowTemplates, as Helm installed them, under the real Argo controller (issue 21, tests 2-6).

Pods run the real `fedtwin` CLI (the venv's, in place of the image) against the session's
SeaweedFS and MLflow. Each test states the issue's claim it checks.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.agent import SYSTEM_PATH
from tests.cluster.charts import Release, install_second_namespace
from tests.cluster.harness import Cluster

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(1500)]

FEDTWIN = str(Path(sys.executable).parent / "fedtwin")
SECOND_NAMESPACE = "fedtwin-member2"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def s3_object(release: Release, key: str) -> bytes:
    body = release.s3.client().get_object(Bucket=release.s3.bucket, Key=key)["Body"]
    return bytes(body.read())


def round_nodes(cluster: Cluster, wf: dict[str, Any], template: str = "aggregate") -> list[dict[str, Any]]:
    """Pod nodes of `template` that succeeded and played their round (a validation return), in round order."""
    nodes = [
        n
        for n in cluster.nodes(wf)
        if n.get("templateName") == template
        and n["type"] == "Pod"
        and n["phase"] == "Succeeded"
        and cluster.outputs(n).get("mean_return")
    ]
    return sorted(nodes, key=lambda n: int(cluster.outputs(n).get("round", "0")))


def local_reference(tmp_path: Path, run_id: str, rounds: int, twins: int, seed: int = 0) -> bytes:
    """`fedtwin run` with the same config and seed, on a local store: its final weights.

    It runs with the environment a pod gets (its spec's variables, PATH and HOME), not this
    process's: this machine's environment sets OPENBLAS_CORETYPE, which selects other BLAS kernels
    and so other float bits (and, RL being chaotic, a different run), as an image's ENV would. With
    the pool engine: a pod of one twin trains it alone (`step train` picks the pool engine for one
    twin), while `fedtwin run`'s default fleet engine batches the twins, whose products round
    differently."""
    store = tmp_path / "store"
    env = {"PATH": f"{Path(sys.executable).parent}:{SYSTEM_PATH}", "HOME": str(tmp_path)}
    proc = subprocess.run(
        [
            FEDTWIN,
            "run",
            "--run-id",
            run_id,
            "--rounds",
            str(rounds),
            "--twins",
            str(twins),
            "--seed",
            str(seed),
            "--store",
            str(store),
            "--engine",
            "pool",
            "--no-progress",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return (store / "runs" / run_id / "report" / "final.safetensors").read_bytes()


def test_federated_run_matches_local_run(
    fedtwin_release: Release, clean_run: dict[str, Any], tmp_path: Path
) -> None:
    """Test 2: Succeeded, a held-out return in the workflow outputs, the same final weights as
    `fedtwin run` with the same config and seed, bit for bit."""
    cluster = fedtwin_release.cluster
    assert clean_run["status"]["phase"] == "Succeeded", cluster.describe(clean_run)
    remote = s3_object(fedtwin_release, "runs/clean/report/final.safetensors")
    assert sha256(remote) == sha256(local_reference(tmp_path, "clean", rounds=4, twins=3))
    evaluate = cluster.outputs(cluster.node(clean_run, "evaluate"))
    assert float(evaluate["heldout_return"]) > 0, evaluate
    outputs = {
        p["name"]: p.get("value") for p in clean_run["status"].get("outputs", {}).get("parameters", [])
    }
    assert any("heldout" in name for name in outputs), (
        f"no held-out return among the workflow outputs {outputs}"
    )


def test_early_stop_is_success(fedtwin_release: Release) -> None:
    """Test 3: a run that stops early (validation return over a low target) ends Succeeded."""
    cluster = fedtwin_release.cluster
    name = fedtwin_release.submit(
        "fedtwin-federated", {"rounds": 4, "twins": 2, "target-return": 5, "run-id": "early"}
    )
    wf = fedtwin_release.wait(name, timeout=900)
    assert wf["status"]["phase"] == "Succeeded", cluster.describe(wf)
    played = round_nodes(cluster, wf)
    assert len(played) == 1 and cluster.outputs(played[0])["continue"].lower() == "false", cluster.describe(
        wf
    )


def test_killed_twin_is_retried_and_run_matches(
    fedtwin_release: Release, clean_run: dict[str, Any], no_faults: None
) -> None:
    """Test 4a: a twin pod the agent kills is retried, and the run still matches the clean run."""
    cluster = fedtwin_release.cluster
    cluster.set_faults(
        [
            {
                "match": {"template": "train", "command_contains": "--twin twin-001"},
                "action": "kill",
                "after_seconds": 2,
                "times": 1,
            }
        ]
    )
    name = fedtwin_release.submit(
        "fedtwin-federated", {"rounds": 4, "twins": 3, "seed": 0, "run-id": "killed"}
    )
    wf = fedtwin_release.wait(name, timeout=1200)
    assert wf["status"]["phase"] == "Succeeded", cluster.describe(wf)
    failed = [n for n in cluster.nodes(wf) if n["type"] == "Pod" and n["phase"] == "Failed"]
    assert len(failed) == 1 and "exit code 137" in failed[0]["message"], cluster.describe(wf)
    assert s3_object(fedtwin_release, "runs/killed/report/final.safetensors") == s3_object(
        fedtwin_release, "runs/clean/report/final.safetensors"
    )


def test_always_failing_twin_is_aggregated_around_or_fails_quorum(
    fedtwin_release: Release, no_faults: None
) -> None:
    """Test 4b: a twin that always fails is left out while the quorum holds; without quorum the
    run fails with the quorum message."""
    cluster = fedtwin_release.cluster
    cluster.set_faults(
        [
            {
                "match": {"template": "train", "command_contains": "--twin twin-002"},
                "action": "exit",
                "exit_code": 1,
            }
        ]
    )
    held = fedtwin_release.submit(
        "fedtwin-federated",
        {"rounds": 1, "twins": 3, "min-twins": 2, "twin-retries": 0, "run-id": "quorum-held"},
    )
    lost = fedtwin_release.submit(
        "fedtwin-federated",
        {"rounds": 1, "twins": 3, "min-twins": 3, "twin-retries": 0, "run-id": "quorum-lost"},
    )
    wf = fedtwin_release.wait(held, timeout=900)
    assert wf["status"]["phase"] == "Succeeded", cluster.describe(wf)
    (aggregate,) = round_nodes(cluster, wf)
    assert cluster.outputs(aggregate)["participants"] == "2", cluster.outputs(aggregate)
    wf = fedtwin_release.wait(lost, timeout=900)
    # Before the fix this ended Error, "node ...round(0:0) already initialized": the failed aggregate
    # left "" in the controller's global `last-round`, the round's `when` no longer parsed, and
    # executeStepGroup panicked (conformance case steps-failed-pod-blanks-global). The loop now reads
    # its bounds through sprig.default (workflows/federated.py `bound`).
    assert wf["status"]["phase"] == "Failed", cluster.describe(wf)
    messages = " ".join(n.get("message", "") for n in cluster.nodes(wf))
    logs = " ".join(cluster.pod_logs(lost).values())
    assert "quorum" in messages or "quorum" in logs, cluster.describe(wf)


def test_evaluate_and_single(fedtwin_release: Release, clean_run: dict[str, Any], tmp_path: Path) -> None:
    """Test 5a: fedtwin-evaluate (the clean run's final model, an S3 input artifact) and
    fedtwin-single run to Succeeded."""
    cluster = fedtwin_release.cluster
    fleet = tmp_path / "fleet.yaml"
    proc = subprocess.run(
        [FEDTWIN, "twins", "generate", "--count", "3", "--seed", "7", "-o", str(fleet)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    cluster.plane.admin.apply(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "eval-fleet", "namespace": cluster.namespace},
            "data": {"fleet.yaml": fleet.read_text()},
        }
    )
    evaluate = fedtwin_release.submit(
        "fedtwin-evaluate", {"run-id": "clean", "twins-configmap": "eval-fleet"}
    )
    single = fedtwin_release.submit("fedtwin-single", {"rounds": 2, "twins": 2, "run-id": "single"})
    for name in (evaluate, single):
        wf = fedtwin_release.wait(name, timeout=900)
        assert wf["status"]["phase"] == "Succeeded", cluster.describe(wf)


def test_multi_cluster_pair_completes(fedtwin_release: Release) -> None:
    """Test 5b: fedtwin-coordinator and two fedtwin-member workflows finish a 3-round run through S3.

    The second member runs in a second namespace with its own fedtwin release, standing in for a
    second member cluster: fedtwin-member holds a per-run mutex, which Argo scopes to a namespace,
    so two members of one run in one namespace would take turns (by design: one per cluster)."""
    cluster = fedtwin_release.cluster
    install_second_namespace(fedtwin_release, SECOND_NAMESPACE)
    coordinator = fedtwin_release.submit("fedtwin-coordinator", {"run-id": "multi", "rounds": 3, "twins": 3})
    members = [
        (
            cluster.submit("fedtwin-member", {"run-id": "multi", "twins": twins}, namespace=namespace),
            namespace,
        )
        for twins, namespace in (("twin-000,twin-001", cluster.namespace), ("twin-002", SECOND_NAMESPACE))
    ]
    for name, namespace in ((coordinator, cluster.namespace), *members):
        wf = cluster.wait(name, timeout=1200, namespace=namespace)
        assert wf["status"]["phase"] == "Succeeded", cluster.describe(wf)
    summaries = [
        key["Key"]
        for key in fedtwin_release.s3.client().list_objects_v2(
            Bucket=fedtwin_release.s3.bucket, Prefix="runs/multi/rounds/"
        )["Contents"]
        if key["Key"].endswith("summary.json")
    ]
    assert len(summaries) == 3, summaries


def test_argo_server_serves_round_outputs(fedtwin_release: Release, clean_run: dict[str, Any]) -> None:
    """Test 6 (API part): `argo server` serves the finished workflow and every round node carries
    its participants and validation return (the screenshot: test_argo_ui.py)."""
    cluster = fedtwin_release.cluster
    url = cluster.start_argo_server()
    name = clean_run["metadata"]["name"]
    response = cluster.argo_api(url, f"/api/v1/workflows/{cluster.namespace}/{name}")
    assert response.status_code == 200, f"{response.text[:500]}\n{cluster.argo_server_log()}"
    served = response.json()
    rounds = round_nodes(cluster, served)
    assert len(rounds) == 4, cluster.describe(served)
    for node in rounds:
        outputs = cluster.outputs(node)
        assert int(outputs["participants"]) == 3 and float(outputs["mean_return"]) > 0, outputs


def test_status_size_model_matches_the_real_controller(
    fedtwin_release: Release, clean_run: dict[str, Any], tmp_path: Path
) -> None:
    """tests/test_workflow_size.py sizes large runs with a model of Argo's node records
    (tests/argo_local/status.py); here the model of the clean run is held against the status the
    real controller wrote for it: the same nodes, and about as many bytes, raw and compressed."""
    import base64
    import gzip
    import json

    from tests.argo_local.status import status_nodes
    from tests.test_workflow_size import simulate

    real = clean_run["status"]["nodes"]
    model = status_nodes(simulate(tmp_path, twins=3, rounds=4))
    real_names = sorted(n["name"][len(clean_run["metadata"]["name"]):] for n in real.values())
    model_names = sorted(n["name"][len("fedtwin-federated-x7k2p"):] for n in model.values())
    assert real_names == model_names

    def sizes(nodes: dict[str, Any]) -> tuple[int, int]:
        raw = json.dumps(nodes, separators=(",", ":")).encode()
        return len(raw), len(base64.b64encode(gzip.compress(raw)))

    (real_raw, real_packed), (model_raw, model_packed) = sizes(real), sizes(model)
    print(f"status nodes: real {real_raw} raw / {real_packed} packed, model {model_raw} / {model_packed}")
    assert 0.85 <= model_raw / real_raw <= 1.15, (real_raw, model_raw)
    assert 0.85 <= model_packed / real_packed <= 1.15, (real_packed, model_packed)
