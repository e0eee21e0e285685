"""Session fixtures of the local control plane (see tests/cluster/README.md).

`cluster`: etcd + kube-apiserver + Argo's controller + the node agent, started once per session.
`fedtwin_release`: both charts installed into it against the session's SeaweedFS and MLflow.
`clean_run`: the finished fedtwin-federated run (4 rounds, 3 twins) that several tests look at.

The binaries come from `make cluster-tools` (tests/cluster/build.py), which `make test` and `make
cluster-e2e` run first; the fixture never builds (a cold build outlasts a test's timeout). A missing
Go toolchain, a failed build or binaries not built fail the tests that need the cluster with one
line naming the problem (the build's own error when it failed); it is never a skip.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from typing import Any

import pytest

from tests.cluster import build
from tests.cluster.charts import Release, install_charts
from tests.cluster.harness import Cluster, CommandError
from tests.servers import MlflowServer, S3Server


@pytest.fixture(scope="session")
def cluster_binaries() -> build.Binaries:
    try:
        return build.require_built()
    except build.BuildError as exc:
        pytest.fail(f"tests/cluster: {exc}", pytrace=False)


@pytest.fixture(scope="session")
def cluster(cluster_binaries: build.Binaries, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    workdir = tmp_path_factory.mktemp("cluster")
    try:
        running = Cluster.start(workdir, cluster_binaries)
    except Exception as exc:
        pytest.fail(f"tests/cluster: the local control plane did not start: {exc}", pytrace=False)
    try:
        yield running
    finally:
        running.stop()
        # Pods' root overlays hold copies of whatever they wrote; keep only the logs.
        for pod_dir in (workdir / "node" / "pods").glob("*"):
            for heavy in ("upper", "work", "rootfs", "tmp", "volumes"):
                shutil.rmtree(pod_dir / heavy, ignore_errors=True)


@pytest.fixture(scope="session")
def fedtwin_release(cluster: Cluster, s3_server: S3Server, mlflow_server: MlflowServer) -> Release:
    try:
        return install_charts(cluster, s3_server, mlflow_server)
    except CommandError as exc:
        pytest.fail(f"helm install failed against the real API server: {exc}", pytrace=False)


@pytest.fixture(scope="session")
def clean_run(fedtwin_release: Release) -> dict[str, Any]:
    """Test 2's run: fedtwin-federated, 4 rounds, 3 twins (the other tests compare against it).

    Session-scoped: test_fedtwin_e2e.py and test_argo_ui.py both look at this one run (run id
    `clean`, so there can only be one)."""
    cluster = fedtwin_release.cluster
    cluster.clear_faults()
    name = fedtwin_release.submit(
        "fedtwin-federated", {"rounds": 4, "twins": 3, "seed": 0, "run-id": "clean"}
    )
    return fedtwin_release.wait(name, timeout=1200)


@pytest.fixture
def no_faults(cluster: Cluster) -> Iterator[None]:
    """Tests that inject faults leave none behind for the next test."""
    cluster.clear_faults()
    yield
    cluster.clear_faults()
