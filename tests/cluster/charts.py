"""Install fedtwin's two charts into the local cluster, against real S3 (SeaweedFS) and MLflow.

The platform chart runs with `minio.enabled=false` and `mlflow.enabled=false` (the node agent
cannot run images, so in-cluster MinIO/MLflow could never start): S3 is given as an external
endpoint and MLflow as the fedtwin chart's `tracking.uri`, both test servers on 127.0.0.1. The
chart's scoped S3 identities need the MinIO admin API, which SeaweedFS does not speak, so every
identity Secret holds the SeaweedFS admin keys here (S3 least privilege is tested elsewhere, in
tests/test_e2e_s3.py against the same server, not by this harness).
"""

from __future__ import annotations

import base64
import json
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.cluster.controlplane import RESTRICTED_LABELS, ensure_namespace
from tests.cluster.harness import ROOT, Cluster
from tests.cluster.kube import resource_path
from tests.servers import MlflowServer, S3Server

PLATFORM_CHART = ROOT / "charts" / "fedtwin-platform"
FEDTWIN_CHART = ROOT / "charts" / "fedtwin"
PLATFORM_RELEASE = "fedtwin-platform"
FEDTWIN_RELEASE = "fedtwin"
SECRET_PREFIX = "fedtwin-s3-"


@dataclass
class Release:
    """Both charts installed in `cluster.namespace`, with the servers they point at."""

    cluster: Cluster
    s3: S3Server
    mlflow: MlflowServer
    platform_values: dict[str, Any]
    fedtwin_values: dict[str, Any]
    install_output: dict[str, str]

    @property
    def store(self) -> str:
        return f"s3://{self.s3.bucket}"

    def submit(self, template: str, params: dict[str, Any] | None = None) -> str:
        return self.cluster.submit(template, params)

    def wait(self, name: str, timeout: float = 600.0) -> dict[str, Any]:
        return self.cluster.wait(name, timeout)

    def summary(self) -> str:
        return json.dumps(
            {
                "s3": self.s3.endpoint,
                "mlflow": self.mlflow.uri,
                "releases": [PLATFORM_RELEASE, FEDTWIN_RELEASE],
            }
        )


def chart_values(chart: Path) -> dict[str, Any]:
    return dict(yaml.safe_load((chart / "values.yaml").read_text()))


def identity_names(platform_defaults: dict[str, Any]) -> list[str]:
    """The platform chart's S3 identities (twin, aggregator, and whichever others this version has)."""
    identities = platform_defaults.get("s3", {}).get("identities", {})
    return [
        name for name, value in identities.items() if isinstance(value, dict) and "existingSecret" in value
    ]


def create_s3_secrets(cluster: Cluster, s3: S3Server, names: list[str], namespace: str | None = None) -> None:
    for name in names:
        cluster.plane.admin.apply(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "type": "Opaque",
                "metadata": {"name": SECRET_PREFIX + name, "namespace": namespace or cluster.namespace},
                "data": {
                    "accessKey": base64.b64encode(s3.access_key.encode()).decode(),
                    "secretKey": base64.b64encode(s3.secret_key.encode()).decode(),
                },
            }
        )


def platform_values(s3: S3Server, identities: list[str]) -> dict[str, Any]:
    return {
        "minio": {"enabled": False},
        "mlflow": {"enabled": False},
        "s3": {
            "bucket": s3.bucket,
            "region": s3.region,
            "external": {"endpoint": s3.endpoint, "adminSecret": ""},
            "identities": {
                "create": False,
                **{name: {"existingSecret": SECRET_PREFIX + name} for name in identities},
            },
        },
    }


def fedtwin_values(
    cluster: Cluster, s3: S3Server, mlflow: MlflowServer, defaults: dict[str, Any], identities: list[str]
) -> dict[str, Any]:
    s3_port = urllib.parse.urlparse(s3.endpoint).port
    mlflow_port = urllib.parse.urlparse(mlflow.uri).port
    values: dict[str, Any] = {
        "image": {"repository": "fedtwin", "tag": "cluster-e2e"},
        "s3": {
            "platformMinio": False,
            "endpoint": s3.endpoint,
            "bucket": s3.bucket,
            "region": s3.region,
            "twinSecret": SECRET_PREFIX + "twin",
            "aggregatorSecret": SECRET_PREFIX + "aggregator",
        },
        "tracking": {"enabled": True, "uri": mlflow.uri},
        "networkPolicy": {
            # What `kubectl get endpoints kubernetes` would list; this API server has no endpoint
            # reconciler (its only address is loopback, which Endpoints may not hold).
            "kubernetesApi": {"cidrs": ["127.0.0.1/32"], "ports": [cluster.plane.ports["apiserver"]]},
            "s3": {"port": s3_port, "cidrs": ["127.0.0.1/32"]},
            "mlflow": {"port": mlflow_port, "cidrs": ["127.0.0.1/32"]},
        },
    }
    if "logsSecret" in defaults.get("s3", {}) and "logs" in identities:
        values["s3"]["logsSecret"] = SECRET_PREFIX + "logs"
    return values


def install_charts(cluster: Cluster, s3: S3Server, mlflow: MlflowServer) -> Release:
    """`helm install` both charts; raise CommandError with helm's message when one fails."""
    platform_defaults = chart_values(PLATFORM_CHART)
    identities = identity_names(platform_defaults)
    create_s3_secrets(cluster, s3, identities)
    values_dir = cluster.workdir / "values"
    values_dir.mkdir(exist_ok=True)
    platform = platform_values(s3, identities)
    fedtwin = fedtwin_values(cluster, s3, mlflow, chart_values(FEDTWIN_CHART), identities)
    outputs: dict[str, str] = {}
    for release, chart, values in (
        (PLATFORM_RELEASE, PLATFORM_CHART, platform),
        (FEDTWIN_RELEASE, FEDTWIN_CHART, fedtwin),
    ):
        path = values_dir / f"{release}.yaml"
        path.write_text(yaml.safe_dump(values, sort_keys=False))
        proc = cluster.helm(
            "upgrade",
            "--install",
            release,
            str(chart),
            "-n",
            cluster.namespace,
            "-f",
            str(path),
            "--timeout",
            "120s",
        )
        outputs[release] = proc.stdout + proc.stderr
    return Release(cluster, s3, mlflow, platform, fedtwin, outputs)


def install_second_namespace(release: Release, namespace: str) -> None:
    """The fedtwin chart again, in another namespace labelled `restricted`: a stand-in for a second
    member cluster (Argo's mutexes, e.g. fedtwin-member's one per run, are per namespace)."""
    cluster = release.cluster
    ensure_namespace(cluster.plane.admin, namespace, RESTRICTED_LABELS)
    identities = identity_names(chart_values(PLATFORM_CHART))
    create_s3_secrets(cluster, release.s3, identities, namespace)
    path = cluster.workdir / "values" / f"{FEDTWIN_RELEASE}-{namespace}.yaml"
    path.write_text(yaml.safe_dump(release.fedtwin_values, sort_keys=False))
    cluster.helm(
        "upgrade",
        "--install",
        FEDTWIN_RELEASE,
        str(FEDTWIN_CHART),
        "-n",
        namespace,
        "-f",
        str(path),
        "--timeout",
        "120s",
    )


def installed_workflow_templates(cluster: Cluster) -> list[str]:
    listing = cluster.plane.admin.get(resource_path("WorkflowTemplate", namespace=cluster.namespace))
    return sorted(item["metadata"]["name"] for item in listing.get("items", []))
