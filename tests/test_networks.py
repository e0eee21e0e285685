"""networks/: the standalone isolation manifests validate against the real schemas and equal what
the charts render (so users without Helm get exactly the chart's isolation)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.chart_helpers import (
    APP,
    PLATFORM,
    REPO,
    helm,
    manifest_files,
    one,
    template,
    validate,
    without_helm_labels,
)

NETWORKS = REPO / "networks"
KUBEOVN = ("--api-versions", "kubeovn.io/v1")
# What scripts/render_networks.py renders with: a kind cluster's API endpoint and KubeOVN's default
# subnet (ovn-default) for the DNS pods; networks/README.md says to replace both.
CLUSTER = (
    "--set", "networkPolicy.kubernetesApi.cidrs={172.18.0.2/32}",
    "--set", "networkPolicy.kubernetesApi.ports={6443}",
    "--set", "kubeovn.subnet.dnsCidrs={10.16.0.0/16}",
)


def manifests() -> dict[str, dict]:
    out = manifest_files(NETWORKS)
    assert out, "networks/ holds no manifests"
    return out


@pytest.mark.parametrize("name", sorted(p.name for p in NETWORKS.glob("*.yaml")))
def test_manifest_validates(name: str):
    validate(manifests()[name])


def test_manifests_equal_the_chart_render():
    app = template(APP, *KUBEOVN, *CLUSTER)
    platform = template(PLATFORM, *KUBEOVN)
    files = manifests()

    assert files["twin-networkpolicy.yaml"] == without_helm_labels(one(app, "NetworkPolicy", "fedtwin-twin"))
    assert files["aggregator-networkpolicy.yaml"] == without_helm_labels(
        one(app, "NetworkPolicy", "fedtwin-aggregator")
    )
    assert files["twin-subnet.yaml"] == without_helm_labels(one(app, "Subnet"))
    assert files["storage-subnet.yaml"] == without_helm_labels(one(platform, "Subnet"))


def test_render_script_reports_nothing_stale():
    helm()  # installs the pinned helm the script uses when it is missing
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "render_networks.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_twin_isolation_in_the_standalone_manifests():
    files = manifests()
    twin = files["twin-networkpolicy.yaml"]["spec"]
    subnet = files["twin-subnet.yaml"]["spec"]
    storage = files["storage-subnet.yaml"]

    assert twin["ingress"] == [] and twin["policyTypes"] == ["Ingress", "Egress"]
    ports = sorted((p["protocol"], p["port"]) for rule in twin["egress"] for p in rule["ports"])
    assert ports == [("TCP", 53), ("TCP", 6443), ("TCP", 9000), ("UDP", 53)]
    api = [rule for rule in twin["egress"] if any("ipBlock" in peer for peer in rule["to"])]
    # the API server endpoint, never the `kubernetes` Service IP (policies see traffic after translation)
    assert [peer["ipBlock"]["cidr"] for rule in api for peer in rule["to"]] == ["172.18.0.2/32"]
    assert subnet["private"] is True
    # the storage subnet (S3), the DNS pods' subnet and the API server endpoints
    assert subnet["allowSubnets"] == [storage["spec"]["cidrBlock"], "10.16.0.0/16", "172.18.0.2/32"]
    assert "namespace" not in files["twin-subnet.yaml"]["metadata"]


def test_readme_lists_every_manifest():
    readme = (NETWORKS / "README.md").read_text()
    for name in manifests():
        assert f"`{name}`" in readme
    assert Path(NETWORKS / "README.md").exists()
