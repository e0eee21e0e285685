"""`helm install` of both charts against the real API server (issue 21, test 1).

The `fedtwin_release` fixture installs fedtwin-platform (external S3 = the session's SeaweedFS,
in-cluster MLflow off) and fedtwin (tracking.uri = the session's MLflow) into `fedtwin`, a
namespace labelled PodSecurity `restricted`. The negative controls first show that the API server
really enforces what a passing install is evidence of: CRD schemas and PodSecurity.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.cluster.charts import FEDTWIN_RELEASE, PLATFORM_RELEASE, Release, installed_workflow_templates
from tests.cluster.harness import Cluster
from tests.cluster.kube import KubeError, resource_path

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]


def test_api_server_enforces_crd_schema_and_pod_security(cluster: Cluster) -> None:
    admin = cluster.plane.admin
    bad_template = {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "WorkflowTemplate",
        "metadata": {"name": "schema-check", "namespace": cluster.namespace},
        "spec": {"templates": "not-a-list"},
    }
    with pytest.raises(KubeError) as schema_error:
        admin.create(resource_path("WorkflowTemplate", namespace=cluster.namespace), bad_template)
    assert schema_error.value.status == 422 and "spec.templates" in str(schema_error.value)

    root_pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "root-check", "namespace": cluster.namespace},
        "spec": {"containers": [{"name": "c", "image": "busybox", "command": ["id"]}]},
    }
    with pytest.raises(KubeError) as admission_error:
        admin.create(resource_path("Pod", namespace=cluster.namespace), root_pod)
    assert admission_error.value.status == 403 and 'violates PodSecurity "restricted:latest"' in str(
        admission_error.value
    )


def test_both_charts_install(fedtwin_release: Release) -> None:
    cluster = fedtwin_release.cluster
    for release in (PLATFORM_RELEASE, FEDTWIN_RELEASE):
        status = json.loads(cluster.helm("status", release, "-n", cluster.namespace, "-o", "json").stdout)
        assert status["info"]["status"] == "deployed", status["info"]
    templates = installed_workflow_templates(cluster)
    assert {"fedtwin-federated", "fedtwin-single", "fedtwin-evaluate"} <= set(templates), templates

    manifest = cluster.helm("get", "manifest", FEDTWIN_RELEASE, "-n", cluster.namespace).stdout
    kinds = {(doc["kind"], doc["metadata"]["name"]) for doc in yaml.safe_load_all(manifest) if doc}
    for kind, name in kinds:
        if kind in ("ServiceAccount", "Role", "RoleBinding", "ConfigMap", "WorkflowTemplate"):
            assert (
                cluster.plane.admin.get(resource_path(kind, name, cluster.namespace))["metadata"]["name"]
                == name
            )

    # The service accounts the templates run pods as exist (the ServiceAccount admission plugin
    # would refuse the pods otherwise) and may write WorkflowTaskResults, as the executor must.
    for template in templates:
        spec = cluster.plane.admin.get(resource_path("WorkflowTemplate", template, cluster.namespace))["spec"]
        params = {p["name"]: p.get("value", "") for p in spec.get("arguments", {}).get("parameters", [])}
        for key in ("twin-service-account", "aggregator-service-account"):
            if params.get(key):
                account = params[key]
                assert cluster.plane.admin.get_optional(
                    resource_path("ServiceAccount", account, cluster.namespace)
                ), f"{template}: {key}={account} does not exist"
                review = cluster.kubectl(
                    "auth",
                    "can-i",
                    "create",
                    "workflowtaskresults.argoproj.io",
                    "-n",
                    cluster.namespace,
                    f"--as=system:serviceaccount:{cluster.namespace}:{account}",
                    check=False,
                )
                assert review.stdout.strip() == "yes", f"{account} may not create WorkflowTaskResults"


def test_installed_templates_pass_argo_lint(fedtwin_release: Release, tmp_path: Path) -> None:
    """Argo's own validation (the controller's code, through the built CLI) of what Helm installed."""
    cluster = fedtwin_release.cluster
    manifest = cluster.helm("get", "manifest", FEDTWIN_RELEASE, "-n", cluster.namespace).stdout
    docs = [doc for doc in yaml.safe_load_all(manifest) if doc and doc.get("kind") == "WorkflowTemplate"]
    assert docs
    path = tmp_path / "templates.yaml"
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    lint = cluster.argo("lint", "--offline", "--kinds", "workflowtemplates", str(path), check=False)
    assert lint.returncode == 0, lint.stdout + lint.stderr
