"""Helm charts, validated offline as strictly as a cluster would: lint, render several value sets,
validate every object against the real schemas, and check that bad values fail naming the value."""

from __future__ import annotations

import base64
import copy
import fnmatch
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from fedtwin.store import RunLayout
from tests.chart_helpers import (
    APP,
    CHARTS,
    PLATFORM,
    REPO,
    by_kind,
    one,
    pod_specs,
    restricted_violations,
    run_helm,
    template,
    template_error,
    validate_all,
)

WORKFLOWS_RENDERED = REPO / "workflows" / "rendered"
CHART_WTS = APP / "files" / "workflowtemplates"
KUBEOVN = ("--api-versions", "kubeovn.io/v1")

# (chart, case, helm arguments); every case renders and validates
CASES = {
    "platform-defaults": (PLATFORM, ()),
    "platform-external-s3": (PLATFORM, ("-f", "charts/fedtwin-platform/ci/external-s3-values.yaml")),
    "platform-mlflow-external-db": (
        PLATFORM,
        ("-f", "charts/fedtwin-platform/ci/mlflow-external-db-values.yaml"),
    ),
    "platform-kubeovn": (PLATFORM, (*KUBEOVN, "-f", "charts/fedtwin-platform/ci/kubeovn-values.yaml")),
    "app-defaults": (APP, ()),
    "app-external-s3": (APP, ("-f", "charts/fedtwin/ci/external-s3-values.yaml")),
    "app-kubeovn": (APP, (*KUBEOVN, "-f", "charts/fedtwin/ci/kubeovn-values.yaml")),
    "app-karmada": (APP, ("-f", "charts/fedtwin/ci/karmada-values.yaml")),
    "app-privacy": (APP, ("-f", "charts/fedtwin/ci/privacy-values.yaml")),
}


def render(case: str) -> list[dict[str, Any]]:
    chart, args = CASES[case]
    return template(chart, *args)


def secret_value(secret: dict[str, Any], key: str) -> str:
    return base64.b64decode(secret["data"][key]).decode()


# --- lint and schema validation ------------------------------------------------------------------


@pytest.mark.parametrize("chart", [PLATFORM, APP], ids=lambda p: p.name)
def test_helm_lint_strict_with_every_ci_values_file(chart: Path):
    runs = [()] + [("-f", str(f)) for f in sorted((chart / "ci").glob("*-values.yaml"))]
    for extra in runs:
        result = run_helm("lint", "--strict", str(chart), *extra)
        assert result.returncode == 0, f"helm lint {chart.name} {extra}:\n{result.stdout}{result.stderr}"
        assert "0 chart(s) failed" in result.stdout


@pytest.mark.parametrize("case", list(CASES))
def test_every_rendered_object_validates(case: str):
    objects = render(case)

    validate_all(objects)

    assert objects, case
    names = [(o["kind"], o["metadata"]["name"]) for o in objects]
    assert len(names) == len(set(names)), f"duplicate objects in {case}"


# --- platform chart ------------------------------------------------------------------------------


def test_platform_generates_passwords_instead_of_fixed_defaults():
    first = one(render("platform-defaults"), "Secret", "fedtwin-platform-minio-root")
    result = run_helm("template", "fedtwin-platform", str(PLATFORM), "-n", "fedtwin")
    again = one([d for d in yaml.safe_load_all(result.stdout) if d], "Secret", "fedtwin-platform-minio-root")

    password = secret_value(first, "rootPassword")

    assert len(password) >= 32 and password.isalnum()
    assert password != secret_value(again, "rootPassword"), "a fixed default password"
    assert first["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    for identity in ("twin", "aggregator", "mlflow"):
        secret = one(render("platform-defaults"), "Secret", f"fedtwin-platform-s3-{identity}")
        assert len(secret_value(secret, "secretKey")) >= 32


def test_platform_keeps_generated_secrets_stable_with_lookup():
    for path in (PLATFORM / "templates").rglob("*-secret.yaml"):
        text = path.read_text()
        if "randAlphaNum" in text or "stableSecret" in text:
            assert "stableSecret" in text, path
    helpers = (PLATFORM / "templates" / "_helpers.tpl").read_text()
    assert 'lookup "v1" "Secret"' in helpers and "randAlphaNum" in helpers


def test_platform_existing_secrets_are_used_and_not_generated():
    objects = template(
        PLATFORM,
        "--set",
        "minio.existingSecret=my-root",
        "--set",
        "s3.identities.twin.existingSecret=my-twin",
    )
    secrets = {s["metadata"]["name"] for s in by_kind(objects, "Secret")}
    assert "fedtwin-platform-minio-root" not in secrets and "fedtwin-platform-s3-twin" not in secrets
    minio = one(objects, "Deployment", "fedtwin-platform-minio")
    env = {e["name"]: e for e in minio["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["MINIO_ROOT_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "my-root"
    job = one(objects, "Job")
    volumes = {v["name"]: v for v in job["spec"]["template"]["spec"]["volumes"]}
    assert volumes["identity-twin"]["secret"]["secretName"] == "my-twin"


def test_platform_policies_scope_twins_to_reading_models_and_writing_updates():
    cm = one(render("platform-kubeovn"), "ConfigMap", "fedtwin-platform-s3-policies")
    twin = json.loads(cm["data"]["fedtwin-twin.json"])
    own = json.loads(cm["data"]["fedtwin-twin-own.json"])
    aggregator = json.loads(cm["data"]["fedtwin-aggregator.json"])

    def allowed(policy: dict[str, Any], action: str) -> set[str]:
        return {r for s in policy["Statement"] if action in s["Action"] for r in s["Resource"]}

    assert allowed(twin, "s3:PutObject") == {"arn:aws:s3:::fedtwin/runs/*/rounds/*/updates/*"}
    assert allowed(own, "s3:PutObject") == {"arn:aws:s3:::fedtwin/runs/*/rounds/*/updates/${aws:username}.*"}
    # Every key a train step or a multi-cluster member reads (state.json: a member stops as soon as
    # the run fails instead of at its wait timeout), and none of the aggregator's outputs.
    layout = RunLayout("demo")
    reads = [layout.config, layout.twins, layout.global_model(3), layout.summary(3), layout.state,
             layout.update_meta(3, "twin-001")]
    for policy in (twin, own):
        readable = {r.replace("${aws:username}", "twin-001") for r in allowed(policy, "s3:GetObject")}
        for key in reads:
            assert any(fnmatch.fnmatchcase(f"arn:aws:s3:::fedtwin/{key}", r) for r in readable), key
        for key in (layout.report("final.safetensors"), layout.server_state(3)):
            assert not any(fnmatch.fnmatchcase(f"arn:aws:s3:::fedtwin/{key}", r) for r in readable), key
    assert not any("DeleteObject" in s["Action"] for s in twin["Statement"])
    assert allowed(aggregator, "s3:PutObject") == {
        "arn:aws:s3:::fedtwin/runs/*",
        "arn:aws:s3:::fedtwin/argo/*",
    }


def test_platform_bucket_job_creates_bucket_users_and_policies_as_a_hook():
    objects = render("platform-kubeovn")
    job = one(objects, "Job")
    script = one(objects, "ConfigMap", "fedtwin-platform-buckets")["data"]["setup.sh"]
    env = {e["name"]: e.get("value") for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}

    assert job["metadata"]["annotations"]["helm.sh/hook"] == "post-install,post-upgrade"
    for command in (
        "mc mb --ignore-existing",
        "mc admin policy create",
        "mc admin user add",
        "mc admin policy attach",
    ):
        assert command in script
    assert env["PROVISION"] == "true"
    assert env["IDENTITIES"].split() == [
        "twin:fedtwin-twin",
        "aggregator:fedtwin-aggregator",
        "mlflow:fedtwin-mlflow",
        "twin-twin-0000:fedtwin-twin-own",
        "twin-twin-0001:fedtwin-twin-own",
    ]
    secrets = {s["metadata"]["name"] for s in by_kind(objects, "Secret")}
    assert {"fedtwin-platform-s3-twin-twin-0000", "fedtwin-platform-s3-twin-twin-0001"} <= secrets


def test_platform_external_s3_has_no_minio_and_points_everything_at_the_endpoint():
    objects = render("platform-external-s3")
    assert not [o for o in objects if "minio" in o["metadata"]["name"] and o["kind"] != "ConfigMap"]
    mlflow = one(objects, "Deployment", "fedtwin-platform-mlflow")
    env = {e["name"]: e for e in mlflow["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["MLFLOW_S3_ENDPOINT_URL"]["value"] == "https://s3.storage.example.internal"
    job_env = {
        e["name"]: e.get("value")
        for e in one(objects, "Job")["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert job_env["PROVISION"] == "false"


def test_platform_mlflow_backend_store_external_db_from_secret():
    objects = render("platform-mlflow-external-db")
    mlflow = one(objects, "Deployment", "fedtwin-platform-mlflow")
    env = {e["name"]: e for e in mlflow["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["MLFLOW_BACKEND_STORE_URI"]["valueFrom"]["secretKeyRef"] == {"name": "mlflow-db", "key": "url"}
    assert not [p for p in by_kind(objects, "PersistentVolumeClaim") if "mlflow" in p["metadata"]["name"]]
    default = one(render("platform-defaults"), "Deployment", "fedtwin-platform-mlflow")
    args = default["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--artifacts-destination=s3://fedtwin/mlflow" in args


def test_platform_storage_subnet_only_with_the_kubeovn_api():
    assert not by_kind(render("platform-defaults"), "Subnet")
    objects = render("platform-kubeovn")
    subnet = one(objects, "Subnet")
    minio = one(objects, "Deployment", "fedtwin-platform-minio")
    annotations = minio["spec"]["template"]["metadata"]["annotations"]
    assert annotations["ovn.kubernetes.io/logical_switch"] == subnet["metadata"]["name"] == "fedtwin-storage"


def ci_value_sets() -> list[tuple[Path, tuple[str, ...]]]:
    """(chart, helm arguments) for the defaults and every ci/*-values.yaml of both charts."""
    sets = []
    for chart in (PLATFORM, APP):
        sets.append((chart, ()))
        for path in sorted((chart / "ci").glob("*-values.yaml")):
            sets.append((chart, (*(KUBEOVN if "kubeovn" in path.name else ()), "-f", str(path))))
    return sets


@pytest.mark.parametrize(("chart", "args"), ci_value_sets(), ids=lambda v: v.name if isinstance(v, Path) else
                         (Path(v[-1]).name if v else "defaults"))
def test_every_rendered_pod_meets_the_restricted_pod_security_standard(chart: Path, args: tuple[str, ...]):
    pods = [pod for obj in template(chart, *args) for pod in pod_specs(obj)]

    for where, spec, metadata in pods:
        assert restricted_violations(spec, metadata) == [], where
    if chart == PLATFORM:
        assert pods, "the platform chart renders pods (MLflow, the bucket Job)"


RESTRICTED_POD = {
    "securityContext": {"runAsNonRoot": True, "runAsUser": 10001,
                        "seccompProfile": {"type": "RuntimeDefault"}},
    "containers": [{"name": "main", "image": "x", "securityContext": {
        "allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}}],
    "volumes": [{"name": "tmp", "emptyDir": {}}],
}


@pytest.mark.parametrize(
    ("change", "check"),
    [
        (lambda p: p["securityContext"].pop("runAsNonRoot"), "runAsNonRoot"),
        (lambda p: p["containers"][0]["securityContext"].update(runAsNonRoot=False), "runAsNonRoot"),
        (lambda p: p["securityContext"].update(runAsUser=0), "runAsUser"),
        (lambda p: p["securityContext"].pop("runAsUser"), "runAsUser (fedtwin)"),
        (lambda p: p["securityContext"].update(runAsUser="{{workflow.parameters.uid}}"),
         "runAsUser (fedtwin)"),
        (lambda p: p["securityContext"].pop("seccompProfile"), "seccompProfile_restricted"),
        (lambda p: p["containers"][0]["securityContext"].update(seccompProfile={"type": "Unconfined"}),
         "seccompProfile"),
        (lambda p: p["containers"][0]["securityContext"].pop("allowPrivilegeEscalation"),
         "allowPrivilegeEscalation"),
        (lambda p: p["containers"][0]["securityContext"].update(capabilities={"drop": ["NET_RAW"]}),
         "capabilities_restricted"),
        (lambda p: p["containers"][0]["securityContext"]["capabilities"].update(add=["SYS_ADMIN"]),
         "capabilities_baseline"),
        (lambda p: p["containers"][0]["securityContext"].update(privileged=True), "privileged"),
        (lambda p: p.update(hostNetwork=True), "hostNamespaces"),
        (lambda p: p["volumes"].append({"name": "h", "hostPath": {"path": "/"}}), "hostPathVolumes"),
        (lambda p: p["volumes"].append({"name": "n", "nfs": {"server": "s", "path": "/"}}),
         "restrictedVolumes"),
        (lambda p: p["containers"][0].update(ports=[{"containerPort": 80, "hostPort": 80}]), "hostPorts"),
        (lambda p: p["securityContext"].update(sysctls=[{"name": "kernel.msgmax", "value": "1"}]), "sysctls"),
        (lambda p: p.setdefault("initContainers", []).append({"name": "init", "image": "x"}),
         "allowPrivilegeEscalation: container init"),
    ],
)
def test_restricted_checker_flags_each_rule(change, check: str):
    assert restricted_violations(RESTRICTED_POD) == []
    pod = copy.deepcopy(RESTRICTED_POD)

    change(pod)

    assert any(v.startswith(check) for v in restricted_violations(pod)), restricted_violations(pod)


def test_restricted_checker_reads_annotations_and_user_namespaces():
    apparmor = {"annotations": {"container.apparmor.security.beta.kubernetes.io/main": "unconfined"}}
    assert restricted_violations(RESTRICTED_POD, apparmor)[0].startswith("appArmorProfile")
    pod = copy.deepcopy(RESTRICTED_POD)
    pod["securityContext"].update(runAsNonRoot=False, runAsUser=0)
    assert any(v.startswith("runAsNonRoot") for v in restricted_violations(pod))
    pod["hostUsers"] = False  # in a user namespace, root in the pod is not root on the node
    assert not any(v.startswith(("runAsNonRoot", "runAsUser:")) for v in restricted_violations(pod))


def test_images_are_pinned():
    for case in ("platform-defaults", "app-defaults"):
        for obj in render(case):
            pod = obj.get("spec", {}).get("template", {}).get("spec", {})
            for container in pod.get("containers", []):
                repo, _, tag = container["image"].rpartition(":")
                assert repo and tag and tag != "latest", container["image"]


# --- app chart -----------------------------------------------------------------------------------


def egress_ports(policy: dict[str, Any]) -> set[tuple[str, int]]:
    return {(p["protocol"], p["port"]) for rule in policy["spec"]["egress"] for p in rule.get("ports", [])}


def test_twin_network_policy_denies_ingress_and_limits_egress():
    policy = one(render("app-defaults"), "NetworkPolicy", "fedtwin-twin")

    assert policy["spec"]["podSelector"] == {"matchLabels": {"fedtwin.io/role": "twin"}}
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    assert policy["spec"]["ingress"] == []
    assert egress_ports(policy) == {("UDP", 53), ("TCP", 53), ("TCP", 9000), ("TCP", 443), ("TCP", 6443)}
    peers = [peer for rule in policy["spec"]["egress"] for peer in rule["to"]]
    assert {"ipBlock": {"cidr": "10.96.0.1/32"}} in peers
    assert not any("mlflow" in json.dumps(peer) for peer in peers), "twins must not reach MLflow"
    s3 = [
        p
        for p in peers
        if p.get("podSelector", {}).get("matchLabels", {}).get("app.kubernetes.io/component") == "minio"
    ]
    assert s3 and s3[0]["podSelector"]["matchLabels"]["app.kubernetes.io/instance"] == "fedtwin-platform"


def test_aggregator_network_policy_reaches_s3_and_mlflow():
    policy = one(render("app-defaults"), "NetworkPolicy", "fedtwin-aggregator")
    assert policy["spec"]["podSelector"] == {"matchLabels": {"fedtwin.io/role": "aggregator"}}
    assert policy["spec"]["ingress"] == []
    assert {("TCP", 9000), ("TCP", 5000), ("UDP", 53), ("TCP", 443)} <= egress_ports(policy)


def test_external_s3_network_policies_use_ip_blocks():
    objects = render("app-external-s3")
    twin = one(objects, "NetworkPolicy", "fedtwin-twin")
    peers = [peer for rule in twin["spec"]["egress"] for peer in rule["to"]]
    assert {"ipBlock": {"cidr": "192.0.2.10/32"}} in peers
    assert ("TCP", 443) in egress_ports(twin)
    cm = one(objects, "ConfigMap", "artifact-repositories")
    repo = yaml.safe_load(cm["data"]["default-v1-s3-artifact-repository"])["s3"]
    assert repo["endpoint"] == "s3.storage.example.internal" and repo["insecure"] is False
    assert repo["accessKeySecret"] == {"name": "s3-aggregator", "key": "accessKey"}


def test_rbac_is_least_privilege_for_the_argo_executor():
    objects = render("app-defaults")
    twin = one(objects, "Role", "fedtwin-twin")
    aggregator = one(objects, "Role", "fedtwin-aggregator")

    assert twin["rules"] == [
        {"apiGroups": ["argoproj.io"], "resources": ["workflowtaskresults"], "verbs": ["create", "patch"]}
    ]
    assert aggregator["rules"][1] == {
        "apiGroups": [""],
        "resources": ["secrets"],
        "resourceNames": ["fedtwin-platform-s3-aggregator"],
        "verbs": ["get"],
    }
    for role in ("twin", "aggregator"):
        binding = one(objects, "RoleBinding", f"fedtwin-{role}")
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": f"fedtwin-{role}", "namespace": "fedtwin"}
        ]
        assert binding["roleRef"]["name"] == f"fedtwin-{role}"
        one(objects, "ServiceAccount", f"fedtwin-{role}")
    for obj in objects:
        assert obj["kind"] not in {"ClusterRole", "ClusterRoleBinding"}


def test_artifact_repository_configmap_is_the_default_for_argo():
    cm = one(render("app-defaults"), "ConfigMap", "artifact-repositories")
    assert cm["metadata"]["annotations"] == {
        "workflows.argoproj.io/default-artifact-repository": "default-v1-s3-artifact-repository"
    }
    repo = yaml.safe_load(cm["data"]["default-v1-s3-artifact-repository"])["s3"]
    assert repo == {
        "bucket": "fedtwin",
        "endpoint": "fedtwin-platform-minio.fedtwin.svc:9000",
        "insecure": True,
        "region": "us-east-1",
        "keyFormat": "argo/{{workflow.name}}/{{pod.name}}",
        "accessKeySecret": {"name": "fedtwin-platform-s3-aggregator", "key": "accessKey"},
        "secretKeySecret": {"name": "fedtwin-platform-s3-aggregator", "key": "secretKey"},
    }


def test_twin_subnet_only_when_the_cluster_has_kubeovn():
    assert not by_kind(render("app-defaults"), "Subnet")
    assert not by_kind(template(APP, "-f", "charts/fedtwin/ci/kubeovn-values.yaml"), "Subnet")

    subnet = one(render("app-kubeovn"), "Subnet")

    assert subnet["metadata"]["name"] == "fedtwin-twins"
    assert subnet["spec"]["private"] is True
    assert subnet["spec"]["allowSubnets"] == ["10.67.0.0/24", "10.96.0.10/32"]
    assert subnet["spec"]["namespaces"] == ["fedtwin"]
    assert subnet["spec"]["cidrBlock"] == "10.66.0.0/16"


def test_karmada_propagation_policy_sends_templates_configmaps_and_secrets():
    policy = one(render("app-karmada"), "PropagationPolicy")
    kinds = {s["kind"] for s in policy["spec"]["resourceSelectors"]}

    assert {"WorkflowTemplate", "ConfigMap", "Secret", "ServiceAccount", "Role", "RoleBinding"} <= kinds
    assert policy["spec"]["placement"]["clusterAffinity"]["clusterNames"] == ["member1", "member2"]
    assert Path(APP / "templates" / "karmada" / "karmada-propagationpolicy.yaml").exists()
    assert not by_kind(render("app-defaults"), "PropagationPolicy")


def test_helpers_truncate_names_to_63_characters():
    long = "a" * 63
    for chart in (PLATFORM, APP):
        objects = template(chart, "--set", f"fullnameOverride={long}")
        validate_all(objects)
        for obj in objects:
            if obj["kind"] not in {"Subnet"}:
                assert len(obj["metadata"]["name"]) <= 63, obj["metadata"]["name"]
    for chart, prefix in ((PLATFORM, "fedtwin-platform"), (APP, "fedtwin")):
        helpers = (chart / "templates" / "_helpers.tpl").read_text()
        assert f'define "{prefix}.fullname"' in helpers and "trunc 63" in helpers


# --- bad values fail, naming the value -----------------------------------------------------------


@pytest.mark.parametrize(
    ("chart", "args", "named"),
    [
        (PLATFORM, ("--set", "minio.enabled=false"), "s3.external.endpoint"),
        (APP, ("--set", "s3.platformMinio=false"), "s3.endpoint"),
        (APP, ("--set", "run.minTwins=-1"), "run.minTwins"),
        (APP, ("--set", "run.minTwins=0"), "run.minTwins"),
        (APP, ("--set", "run.id=Run_1"), "run.id"),
        (APP, ("--set", "run.id=-run"), "run.id"),
        (APP, ("--set", "kubeovn.subnet.name=Twin.Subnet"), "kubeovn.subnet.name"),
        (APP, ("--set", "serviceAccounts.twin.name=Twins"), "serviceAccounts.twin.name"),
        (APP, ("--set", "platform.releaseName=Platform"), "platform.releaseName"),
        (APP, ("--set", "karmada.enabled=true"), "karmada.clusters"),
        (APP, ("--set", "karmada.clusters={Member_1}"), "karmada.clusters"),
        (APP, ("--set", "run.rounds=many"), "run.rounds"),
        (APP, ("--set", "run.rouds=3"), "rouds"),
        (APP, ("--set", "privacy.mode=global"), "privacy.mode"),
        (
            APP,
            ("--set", "s3.platformMinio=false", "--set", "s3.endpoint=https://s3.example"),
            "networkPolicy.s3.cidrs",
        ),
        (
            APP,
            ("--set", "workflowTemplates.parameters.no-such-param=1"),
            "workflowTemplates.parameters.no-such-param",
        ),
        (PLATFORM, ("--set", "s3.bucket=My_Bucket"), "s3.bucket"),
        (
            PLATFORM,
            ("--set", "minio.enabled=false", "--set", "s3.external.endpoint=https://s3.example"),
            "s3.identities.twin.existingSecret",
        ),
        (PLATFORM, ("--set", "s3.identities.twinIds={Twin_1}"), "s3.identities.twinIds"),
        (PLATFORM, ("--set", "minio.persistence.size=lots"), "minio.persistence.size"),
    ],
    ids=lambda v: v.name if isinstance(v, Path) else None,
)
def test_bad_values_fail_naming_the_value(chart: Path, args: tuple[str, ...], named: str):
    error = template_error(chart, *args)
    assert named in error, error


# --- docs and layout -----------------------------------------------------------------------------


def test_readme_values_tables_are_current_and_every_value_documented():
    result = subprocess.run(
        ["python", str(REPO / "scripts" / "chart_docs.py"), "--check", str(APP), str(PLATFORM)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    for chart in (APP, PLATFORM):
        readme = (chart / "README.md").read_text()
        values = yaml.safe_load((chart / "values.yaml").read_text())
        for key in values:
            assert f"`{key}" in readme, f"{chart.name}: {key} missing from README"


def test_platform_readme_documents_the_argo_deviation():
    readme = (PLATFORM / "README.md").read_text()
    assert "deliberate deviation" in readme and "not vendored" in readme
    pinned = re.search(
        r'ARGO_CHART_VERSION="\$\{ARGO_CHART_VERSION:-([0-9.]+)\}"', (REPO / "scripts" / "lib.sh").read_text()
    )
    assert pinned and f"--version {pinned[1]}" in readme


@pytest.mark.parametrize("chart", [PLATFORM, APP], ids=lambda p: p.name)
def test_chart_layout(chart: Path):
    for path in (chart / "templates").rglob("*"):
        if path.is_dir() or path.name in {"_helpers.tpl", "NOTES.txt", "validate.yaml"}:
            continue
        component = path.parent.name
        assert path.parent.parent == chart / "templates", f"{path} is nested too deep"
        assert path.name.startswith(f"{component}-") and path.suffix == ".yaml", path
    ci = sorted(p.name for p in (chart / "ci").glob("*.yaml"))
    assert ci
    for name in ci:
        assert name.endswith("-values.yaml")
        assert (chart / "ci" / name).read_text().startswith("# Test with "), name
    assert json.loads((chart / "values.schema.json").read_text())["additionalProperties"] is False


def test_ci_values_files_cover_the_optional_features():
    names = {p.name for p in CHARTS.glob("*/ci/*-values.yaml")}
    for feature in ("external-s3", "kubeovn", "karmada", "privacy", "mlflow-external-db"):
        assert f"{feature}-values.yaml" in names, feature


def rendered_notes(chart: Path, tmp_path: Path, *args: str) -> str:
    """NOTES.txt as `helm install` prints it (rendered through a throwaway copy of the chart)."""
    copy_dir = tmp_path / chart.name
    shutil.copytree(chart, copy_dir)
    (copy_dir / "files").mkdir(exist_ok=True)
    shutil.move(copy_dir / "templates" / "NOTES.txt", copy_dir / "files" / "NOTES.txt")
    (copy_dir / "templates" / "zz-notes.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: notes\n"
        'data:\n  notes: {{ tpl (.Files.Get "files/NOTES.txt") . | toJson }}\n'
    )
    result = run_helm(
        "template",
        chart.name,
        str(copy_dir),
        "-n",
        "fedtwin",
        "--show-only",
        "templates/zz-notes.yaml",
        *args,
    )
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)["data"]["notes"]


def test_notes_say_how_to_submit_and_open_the_uis(tmp_path: Path):
    app = rendered_notes(APP, tmp_path)
    platform = rendered_notes(PLATFORM, tmp_path)

    assert "argo submit --from workflowtemplate/fedtwin-federated -n fedtwin -p rounds=20" in app
    for notes in (app, platform):
        assert "kubectl -n argo port-forward svc/argo-workflows-server 2746:2746" in notes
        assert "port-forward svc/fedtwin-platform-mlflow 5000:5000" in notes
        assert "port-forward svc/fedtwin-platform-minio 9001:9001" in notes


# --- WorkflowTemplates ---------------------------------------------------------------------------


def rendered_sources() -> dict[str, dict[str, Any]]:
    files = sorted(CHART_WTS.glob("*.yaml"))
    assert files, "charts/fedtwin/files/workflowtemplates/ is empty: run make charts"
    return {f.name: yaml.safe_load(f.read_text()) for f in files}


def test_chart_copies_of_workflow_templates_are_current():
    sources = sorted(p.name for p in WORKFLOWS_RENDERED.glob("*.yaml"))
    copies = sorted(p.name for p in CHART_WTS.glob("*.yaml"))
    assert sources, "workflows/rendered/ is empty"
    assert copies == sources, "run make charts"
    for name in sources:
        assert (CHART_WTS / name).read_bytes() == (WORKFLOWS_RENDERED / name).read_bytes(), (
            f"{name}: run make charts"
        )


def expected_template(source: dict[str, Any], parameters: dict[str, str], pull_policy: str = "IfNotPresent"):
    """The source WorkflowTemplate with exactly what the chart sets: namespace, labels, parameter
    defaults (only those the template declares) and the containers' pull policy."""
    wt = copy.deepcopy(source)
    wt["metadata"]["namespace"] = "fedtwin"
    wt["metadata"]["labels"] = {
        **{
            "helm.sh/chart": "fedtwin-0.1.0",
            "app.kubernetes.io/name": "fedtwin",
            "app.kubernetes.io/instance": "fedtwin",
            "app.kubernetes.io/version": "0.1.0",
            "app.kubernetes.io/managed-by": "Helm",
            "app.kubernetes.io/part-of": "fedtwin",
            "app.kubernetes.io/component": "workflows",
        },
        **wt["metadata"].get("labels", {}),
    }
    for param in wt["spec"].get("arguments", {}).get("parameters", []):
        own = OWN_PARAMETERS.get(wt["metadata"]["name"], ())
        if param["name"] in parameters and param["name"] not in own:
            param["value"] = parameters[param["name"]]
    for t in wt["spec"]["templates"]:
        for kind in ("container", "script"):
            if kind in t:
                t[kind]["imagePullPolicy"] = pull_policy
    return wt


# Parameters whose meaning in that template differs from the chart value of the same name: the chart
# leaves their template default alone (fedtwin-member's `twins` is a comma list of twin ids that the
# OverridePolicy of each member cluster sets, not the fleet size `run.twins`).
OWN_PARAMETERS = {"fedtwin-member": ("twins",)}

DEFAULT_PARAMETERS = {
    "image": "fedtwin:0.1.0",
    "store": "s3://fedtwin",
    "s3-endpoint": "http://fedtwin-platform-minio.fedtwin.svc:9000",
    "s3-region": "us-east-1",
    "twin-s3-secret": "fedtwin-platform-s3-twin",
    "aggregator-s3-secret": "fedtwin-platform-s3-aggregator",
    "mlflow-uri": "http://fedtwin-platform-mlflow.fedtwin.svc:5000",
    "mlflow-experiment": "fedtwin",
    "run-id": "",
    "rounds": "20",
    "twins": "8",
    "min-twins": "0.5",
    "strategy": "fedavg",
    "target-return": "490",
    "privacy": "off",
    "privacy-epsilon": "8",
    "privacy-delta": "0.000001",  # Helm prints the default 1.0e-6 this way; both are YAML floats
    "twin-dp-noise-secret": "fedtwin-dp-noise-twin",
    "aggregator-dp-noise-secret": "fedtwin-dp-noise-aggregator",
    "twin-service-account": "fedtwin-twin",
    "aggregator-service-account": "fedtwin-aggregator",
    "subnet": "",
    "twin-cpu-request": "500m",
    "twin-memory-request": "512Mi",
    "twin-cpu-limit": "1",
    "twin-memory-limit": "1Gi",
    "aggregator-cpu-request": "500m",
    "aggregator-memory-request": "512Mi",
    "aggregator-cpu-limit": "2",
    "aggregator-memory-limit": "2Gi",
}


def chart_templates(case_or_args: str | tuple[str, ...]) -> dict[str, dict[str, Any]]:
    objects = render(case_or_args) if isinstance(case_or_args, str) else template(APP, *case_or_args)
    return {wt["metadata"]["name"]: wt for wt in by_kind(objects, "WorkflowTemplate")}


@pytest.mark.parametrize(
    ("case", "changes"),
    [
        ("app-defaults", {}),
        ("app-kubeovn", {"subnet": "fedtwin-twins"}),
        (
            "app-privacy",
            {
                "privacy": "local",
                "privacy-epsilon": "4",
                "privacy-delta": "1e-07",
                "twin-dp-noise-secret": "dp-key-twins",
                "aggregator-dp-noise-secret": "dp-key-aggregator",
                "min-twins": "3",
                "twins": "6",
            },
        ),
        (
            "app-external-s3",
            {
                "s3-endpoint": "https://s3.storage.example.internal",
                "store": "s3://fedtwin-runs",
                "twin-s3-secret": "s3-twin",
                "aggregator-s3-secret": "s3-aggregator",
                "mlflow-uri": "http://mlflow.tracking.example.internal:5000",
            },
        ),
    ],
)
def test_chart_workflow_templates_equal_the_rendered_ones_apart_from_values(
    case: str, changes: dict[str, str]
):
    sources = rendered_sources()
    rendered = chart_templates(case)
    parameters = {**DEFAULT_PARAMETERS, **changes}

    assert sorted(rendered) == sorted(s["metadata"]["name"] for s in sources.values())
    for source in sources.values():
        name = source["metadata"]["name"]
        assert rendered[name] == expected_template(source, parameters), name


def test_chart_sets_the_values_it_claims_on_the_templates():
    """Every parameter the chart maps a value to is declared by a template (no silent no-ops)."""
    declared = {
        p["name"]
        for s in rendered_sources().values()
        for p in s["spec"].get("arguments", {}).get("parameters", [])
    }
    assert set(DEFAULT_PARAMETERS) <= declared, set(DEFAULT_PARAMETERS) - declared


@pytest.mark.parametrize(
    "args",
    [(), ("--set", "run.twins=16"), ("--set-string", "workflowTemplates.parameters.twins=16")],
    ids=["defaults", "run.twins", "workflowTemplates.parameters"],
)
def test_member_twins_list_never_gets_the_fleet_size(args: tuple[str, ...]):
    templates = chart_templates(args)

    def value(template: str, name: str) -> str:
        params = templates[template]["spec"]["arguments"]["parameters"]
        return {p["name"]: p.get("value") for p in params}[name]

    assert value("fedtwin-member", "twins") == ""  # a comma list of twin ids, set per member cluster
    fleet = "16" if args else "8"
    for name in ("fedtwin-federated", "fedtwin-single", "fedtwin-coordinator"):
        assert value(name, "twins") == fleet, name


def test_workflow_template_values_pass_through_untouched_by_helm():
    """Argo's {{...}} expressions must arrive byte-identical: the chart never runs `tpl` on them."""
    for path in APP.rglob("templates/**/*.yaml"):
        assert "tpl " not in path.read_text(), f"{path} runs tpl"
    sources = rendered_sources()
    rendered = chart_templates(
        ("--set", "image.tag=9.9.9", "--set", "run.rounds=7", "--set", "workflowTemplates.parameters.seed=42")
    )

    def argo_strings(node: Any) -> list[str]:
        if isinstance(node, dict):
            return [s for v in node.values() for s in argo_strings(v)]
        if isinstance(node, list):
            return [s for v in node for s in argo_strings(v)]
        return [node] if isinstance(node, str) and "{{" in node else []

    for source in sources.values():
        out = rendered[source["metadata"]["name"]]
        assert sorted(argo_strings(out)) == sorted(argo_strings(source))
        params = {p["name"]: p.get("value") for p in out["spec"].get("arguments", {}).get("parameters", [])}
        if "image" in params:
            assert params["image"] == "fedtwin:9.9.9"
        if "rounds" in params:
            assert params["rounds"] == "7"
        if "seed" in params:
            assert params["seed"] == "42"


def pod_templates(wt: dict[str, Any]) -> list[dict[str, Any]]:
    return [t for t in wt["spec"]["templates"] if "container" in t or "script" in t]


def test_every_workflow_pod_is_covered_by_a_network_policy_and_a_service_account():
    objects = render("app-defaults")
    selected = {
        p["spec"]["podSelector"]["matchLabels"]["fedtwin.io/role"] for p in by_kind(objects, "NetworkPolicy")
    }
    for wt in by_kind(objects, "WorkflowTemplate"):
        params = {p["name"]: p.get("value") for p in wt["spec"]["arguments"]["parameters"]}
        for t in pod_templates(wt):
            role = t.get("metadata", {}).get("labels", {}).get("fedtwin.io/role")
            assert role in selected, f"{wt['metadata']['name']}/{t['name']}: pod escapes the NetworkPolicies"
            account = t["serviceAccountName"].removeprefix("{{workflow.parameters.").removesuffix("}}")
            assert params[account] == f"fedtwin-{role}", f"{wt['metadata']['name']}/{t['name']}"


def test_twin_pods_land_on_the_subnet_the_chart_creates():
    objects = render("app-kubeovn")
    subnet = one(objects, "Subnet")["metadata"]["name"]
    federated = one(objects, "WorkflowTemplate", "fedtwin-federated")
    params = {p["name"]: p.get("value") for p in federated["spec"]["arguments"]["parameters"]}
    (train,) = [t for t in pod_templates(federated) if t["metadata"]["labels"]["fedtwin.io/role"] == "twin"]
    ((key, value),) = train["metadata"]["annotations"].items()

    assert params["subnet"] == subnet
    assert "ovn.kubernetes.io/logical_switch" in key and "subnet" in key
    assert value == "{{workflow.parameters.subnet}}"
    default = one(render("app-defaults"), "WorkflowTemplate", "fedtwin-federated")
    assert {p["name"]: p.get("value") for p in default["spec"]["arguments"]["parameters"]}["subnet"] == ""
