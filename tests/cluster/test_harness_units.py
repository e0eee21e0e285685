"""Unit tests of the harness's own logic (no control plane needed): build errors and cache keys,
fault rules, `$(VAR)` expansion, artifact packing."""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import pytest

from tests.cluster import build
from tests.cluster.agent import FaultRules, expand, hidden_by_pod_tmp, tgz_bytes, unpack


def fake_go(directory: Path, version: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    go = directory / "go"
    go.write_text(f"#!/bin/sh\nif [ \"$1 $2\" = 'env GOVERSION' ]; then echo {version}; exit 0; fi\nexit 1\n")
    go.chmod(0o755)
    return go


def test_missing_go_is_one_clear_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setenv("FEDTWIN_CLUSTER_CACHE", str(tmp_path / "cache"))
    with pytest.raises(build.BuildError) as error:
        build.ensure()
    assert str(error.value).startswith("go not found on PATH") and "Go 1.25.7 or newer" in str(error.value)
    assert "\n" not in str(error.value)
    assert build.last_error_file().read_text().startswith("go not found on PATH")  # for the fixtures


def test_too_old_go_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_go(tmp_path / "bin", "go1.24.3")
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    monkeypatch.setenv("FEDTWIN_CLUSTER_CACHE", str(tmp_path / "cache"))
    with pytest.raises(build.BuildError, match=r"go1.24.3; the Argo v4.0.7 module needs Go 1.25.7 or newer"):
        build.ensure()


def test_cache_is_keyed_by_version_and_found_without_building(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_go(tmp_path / "bin", "go1.26.8")
    monkeypatch.setenv("PATH", str(tmp_path / "bin") + os.pathsep + os.environ["PATH"])
    monkeypatch.setenv("FEDTWIN_CLUSTER_CACHE", str(tmp_path / "cache"))
    assert build.cached() is None
    for component in build.COMPONENTS:
        directory = tmp_path / "cache" / component.key("go1.26.8")
        (directory / "bin").mkdir(parents=True)
        (directory / "manifest.json").write_text("{}")
    found = build.cached()
    assert found is not None and found.kube_apiserver.parent.parent.name.startswith(
        "kube-k8sv1.34.4-etcdv3.6.5-"
    )
    assert build.ensure().argo == found.argo  # a cache hit builds nothing (the fake go could not)
    assert build.KUBE.key("go1.26.8") != build.KUBE.key("go1.26.9")


def test_go_output_names() -> None:
    assert build.go_output_name("go.etcd.io/etcd/server/v3") == "server"
    assert build.go_output_name("k8s.io/kubernetes/cmd/kube-apiserver") == "kube-apiserver"


def test_fault_rules_match_and_count(tmp_path: Path) -> None:
    path = tmp_path / "faults.json"
    rules = FaultRules(path)
    pod = {
        "metadata": {
            "labels": {"fedtwin.io/role": "twin"},
            "annotations": {"workflows.argoproj.io/node-name": "wf.train(1:twin-001)(0)"},
        }
    }
    assert rules.match(pod, ["fedtwin", "step", "train"], {"name": "train"}) is None  # no file: no fault
    path.write_text(
        json.dumps(
            {
                "rules": [
                    {
                        "match": {"labels": {"fedtwin.io/role": "twin"}, "command_contains": "twin-001"},
                        "action": "kill",
                        "times": 1,
                    },
                    {
                        "match": {"template": "train", "node_name_contains": "twin-001"},
                        "action": "exit",
                        "exit_code": 3,
                    },
                ]
            }
        )
    )
    first = rules.match(pod, ["fedtwin", "--twin", "twin-001"], {"name": "train"})
    second = rules.match(pod, ["fedtwin", "--twin", "twin-001"], {"name": "train"})
    assert first is not None and first.action == "kill"
    assert second is not None and second.action == "exit" and second.exit_code == 3
    assert rules.match(pod, ["fedtwin", "--twin", "twin-002"], {"name": "aggregate"}) is None
    path.write_text("{not json")
    with pytest.raises(ValueError, match="is not valid JSON"):
        rules.match(pod, [], {})


def test_kubelet_variable_expansion() -> None:
    env = {"A": "x", "B": "y"}
    assert expand("$(A)-$(B)-$(C)-$$(A)", env) == "x-y-$(C)-$(A)"


def test_tgz_round_trip(tmp_path: Path) -> None:
    source = tmp_path / "model"
    source.mkdir()
    (source / "w.bin").write_bytes(b"\x00\x01")
    (source / "meta.json").write_text("{}")
    data = tgz_bytes(source, {})
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        assert sorted(tar.getnames()) == ["model", "model/meta.json", "model/w.bin"]
    unpack(data, tmp_path / "out")
    assert (tmp_path / "out" / "w.bin").read_bytes() == b"\x00\x01"
    single = tmp_path / "one.txt"
    single.write_text("hello")
    unpack(tgz_bytes(single, {}), tmp_path / "one-out.txt")
    assert (tmp_path / "one-out.txt").read_text() == "hello"
    unpack(b"plain bytes", tmp_path / "plain")
    assert (tmp_path / "plain").read_bytes() == b"plain bytes"


def test_setup_values_pin_the_built_argo_and_restricted_executor() -> None:
    """scripts/argo-workflows-values.yaml runs the controller these tests build, and its executor
    containers pass PodSecurity `restricted` (the harness configures the controller from it)."""
    from tests.cluster.controlplane import controller_config, setup_values

    values = setup_values()
    assert values.get("images", {}).get("tag") == build.ARGO_VERSION, values.get("images")
    executor = controller_config(1234, values)["executor"]["securityContext"]
    assert (
        executor["runAsNonRoot"] is True
        and isinstance(executor["runAsUser"], int)
        and executor["runAsUser"] > 0
    )
    assert executor["allowPrivilegeEscalation"] is False and executor["capabilities"]["drop"] == ["ALL"]
    assert executor["seccompProfile"]["type"] == "RuntimeDefault"


def test_mount_targets_stay_inside_the_pod_root() -> None:
    """/var/run is a link to /run on this machine: a volume at /var/run/argo must be mounted at
    <root>/run/argo, never followed out of the pod's root."""
    from tests.cluster.agent import in_root

    if os.path.islink("/var/run"):
        assert in_root("/var/run/argo") == os.path.join(os.path.realpath("/var/run"), "argo")
    assert in_root("/tmp/fedtwin/model.safetensors") == "/tmp/fedtwin/model.safetensors"
    assert in_root("/dev/termination-log") == "/dev/termination-log"
    assert in_root("/etc/fedtwin/../fedtwin/fleet") == "/etc/fedtwin/fleet"


def test_fixture_never_builds_and_repeats_the_last_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_go(tmp_path / "bin", "go1.26.8")
    monkeypatch.setenv("PATH", str(tmp_path / "bin") + os.pathsep + os.environ["PATH"])
    monkeypatch.setenv("FEDTWIN_CLUSTER_CACHE", str(tmp_path / "cache"))
    with pytest.raises(build.BuildError, match=r"not built: run `make cluster-tools`") as error:
        build.require_built()
    assert "last failed" not in str(error.value)
    build.last_error_file().parent.mkdir(parents=True)
    build.last_error_file().write_text(
        "go build of kube failed (exit 1): no space left on device; full log: x\n"
    )
    with pytest.raises(build.BuildError, match=r"it last failed: go build of kube failed .*no space left"):
        build.require_built()


def test_a_checkout_under_tmp_is_bound_back_into_pods() -> None:
    """Each pod gets its own /tmp: a checkout or venv under the host's /tmp (a fresh clone in a
    temporary directory) must be bound back, once, at its outermost path."""
    paths = [Path("/tmp/a/c"), Path("/tmp/a/c/.venv"), Path("/usr/bin"), Path("/tmp/b")]
    assert hidden_by_pod_tmp(paths) == [Path("/tmp/b"), Path("/tmp/a/c")]
    assert hidden_by_pod_tmp([Path("/work/main"), Path("/work/main/.venv")]) == []
