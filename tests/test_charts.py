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
    API,
    APP,
    CHARTS,
    PLATFORM,
    REPO,
    by_kind,
    one,
    pod_specs,
    render,
    restricted_violations,
    run_helm,
    template,
    template_error,
    validate_all,
)

WORKFLOWS_RENDERED = REPO / "workflows" / "rendered"
CHART_WTS = APP / "files" / "workflowtemplates"
KUBEOVN = ("--api-versions", "kubeovn.io/v1")
CILIUM = ("--api-versions", "cilium.io/v2")

# (chart, case, helm arguments); every case renders and validates
CASES = {
    "platform-defaults": (PLATFORM, ()),
    "platform-external-s3": (PLATFORM, ("-f", "charts/fedtwin-platform/ci/external-s3-values.yaml")),
    "platform-mlflow-external-db": (
        PLATFORM,
        ("-f", "charts/fedtwin-platform/ci/mlflow-external-db-values.yaml"),
    ),
    "platform-kubeovn": (PLATFORM, (*KUBEOVN, "-f", "charts/fedtwin-platform/ci/kubeovn-values.yaml")),
    "app-defaults": (APP, API),
    "app-external-s3": (APP, ("-f", "charts/fedtwin/ci/external-s3-values.yaml")),
    "app-kubeovn": (APP, (*KUBEOVN, "-f", "charts/fedtwin/ci/kubeovn-values.yaml")),
    "app-karmada": (APP, ("-f", "charts/fedtwin/ci/karmada-values.yaml")),
    "app-privacy": (APP, ("-f", "charts/fedtwin/ci/privacy-values.yaml")),
    "app-cilium": (APP, (*CILIUM, "-f", "charts/fedtwin/ci/cilium-values.yaml")),
}


def secret_value(secret: dict[str, Any], key: str) -> str:
    return base64.b64decode(secret["data"][key]).decode()


# --- lint and schema validation ------------------------------------------------------------------


@pytest.mark.parametrize("chart", [PLATFORM, APP], ids=lambda p: p.name)
def test_helm_lint_strict_with_every_ci_values_file(chart: Path):
    defaults = API if chart == APP else ()  # helm lint has no cluster to look the API server up in
    runs = [defaults] + [("-f", str(f)) for f in sorted((chart / "ci").glob("*-values.yaml"))]
    for extra in runs:
        result = run_helm("lint", "--strict", str(chart), *extra)
        assert result.returncode == 0, f"helm lint {chart.name} {extra}:\n{result.stdout}{result.stderr}"
        assert "0 chart(s) failed" in result.stdout


@pytest.mark.parametrize("case", list(CASES))
def test_every_rendered_object_validates(case: str):
    objects = render(CASES, case)

    validate_all(objects)

    assert objects, case
    names = [(o["kind"], o["metadata"]["name"]) for o in objects]
    assert len(names) == len(set(names)), f"duplicate objects in {case}"


# --- platform chart ------------------------------------------------------------------------------


def test_platform_generates_passwords_instead_of_fixed_defaults():
    first = one(render(CASES, "platform-defaults"), "Secret", "fedtwin-platform-minio-root")
    result = run_helm("template", "fedtwin-platform", str(PLATFORM), "-n", "fedtwin")
    again = one([d for d in yaml.safe_load_all(result.stdout) if d], "Secret", "fedtwin-platform-minio-root")

    password = secret_value(first, "rootPassword")

    assert len(password) >= 32 and password.isalnum()
    assert password != secret_value(again, "rootPassword"), "a fixed default password"
    assert first["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    for identity in ("twin", "aggregator", "logs", "mlflow"):
        secret = one(render(CASES, "platform-defaults"), "Secret", f"fedtwin-platform-s3-{identity}")
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
    cm = one(render(CASES, "platform-kubeovn"), "ConfigMap", "fedtwin-platform-s3-policies")
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
    objects = render(CASES, "platform-kubeovn")
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
        "logs:fedtwin-logs",
        "mlflow:fedtwin-mlflow",
        "twin-twin-0000:fedtwin-twin-own",
        "twin-twin-0001:fedtwin-twin-own",
    ]
    secrets = {s["metadata"]["name"] for s in by_kind(objects, "Secret")}
    assert {"fedtwin-platform-s3-twin-twin-0000", "fedtwin-platform-s3-twin-twin-0001"} <= secrets


def test_platform_external_s3_has_no_minio_and_points_everything_at_the_endpoint():
    objects = render(CASES, "platform-external-s3")
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
    objects = render(CASES, "platform-mlflow-external-db")
    mlflow = one(objects, "Deployment", "fedtwin-platform-mlflow")
    env = {e["name"]: e for e in mlflow["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["MLFLOW_BACKEND_STORE_URI"]["valueFrom"]["secretKeyRef"] == {"name": "mlflow-db", "key": "url"}
    assert not [p for p in by_kind(objects, "PersistentVolumeClaim") if "mlflow" in p["metadata"]["name"]]
    default = one(render(CASES, "platform-defaults"), "Deployment", "fedtwin-platform-mlflow")
    args = default["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--artifacts-destination=s3://fedtwin/mlflow" in args


def test_platform_storage_subnet_only_with_the_kubeovn_api():
    assert not by_kind(render(CASES, "platform-defaults"), "Subnet")
    objects = render(CASES, "platform-kubeovn")
    subnet = one(objects, "Subnet")
    minio = one(objects, "Deployment", "fedtwin-platform-minio")
    annotations = minio["spec"]["template"]["metadata"]["annotations"]
    assert annotations["ovn.kubernetes.io/logical_switch"] == subnet["metadata"]["name"] == "fedtwin-storage"


def ci_value_sets() -> list[tuple[Path, tuple[str, ...]]]:
    """(chart, helm arguments) for the defaults and every ci/*-values.yaml of both charts."""
    sets = []
    for chart in (PLATFORM, APP):
        sets.append((chart, API if chart == APP else ()))
        for path in sorted((chart / "ci").glob("*-values.yaml")):
            capability = {"kubeovn": KUBEOVN, "cilium": CILIUM}.get(path.name.split("-")[0], ())
            sets.append((chart, (*capability, "-f", str(path))))
    return sets


@pytest.mark.parametrize(("chart", "args"), ci_value_sets(), ids=lambda v: v.name if isinstance(v, Path) else
                         (Path(v[-1]).name if "-f" in v else "defaults"))
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
        for obj in render(CASES, case):
            pod = obj.get("spec", {}).get("template", {}).get("spec", {})
            for container in pod.get("containers", []):
                repo, _, tag = container["image"].rpartition(":")
                assert repo and tag and tag != "latest", container["image"]


@pytest.mark.parametrize("component", ["minio", "mc", "mlflow"])
def test_platform_images_can_be_pinned_by_digest(component: str):
    digest = "sha256:" + "0123456789abcdef" * 4
    objects = template(PLATFORM, "--set", f"{component}.image.digest={digest}")
    values = yaml.safe_load((PLATFORM / "values.yaml").read_text())[component]["image"]
    images = {c["image"] for o in objects for _, spec, _ in pod_specs(o) for c in spec["containers"]}

    assert f"{values['repository']}:{values['tag']}@{digest}" in images
    assert f"{values['repository']}:{values['tag']}" not in images
    error = template_error(PLATFORM, "--set", f"{component}.image.digest=latest")
    assert f"{component}.image.digest" in error


# --- app chart -----------------------------------------------------------------------------------


def egress_ports(policy: dict[str, Any]) -> set[tuple[str, int]]:
    return {(p["protocol"], p["port"]) for rule in policy["spec"]["egress"] for p in rule.get("ports", [])}


def test_twin_network_policy_denies_ingress_and_limits_egress():
    policy = one(render(CASES, "app-defaults"), "NetworkPolicy", "fedtwin-twin")

    assert policy["spec"]["podSelector"] == {"matchLabels": {"fedtwin.io/role": "twin"}}
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    assert policy["spec"]["ingress"] == []
    assert egress_ports(policy) == {("UDP", 53), ("TCP", 53), ("TCP", 9000), ("TCP", 443), ("TCP", 6443)}
    peers = [peer for rule in policy["spec"]["egress"] for peer in rule["to"]]
    assert {"ipBlock": {"cidr": "172.18.0.2/32"}} in peers
    assert not any("mlflow" in json.dumps(peer) for peer in peers), "twins must not reach MLflow"
    s3 = [
        p
        for p in peers
        if p.get("podSelector", {}).get("matchLabels", {}).get("app.kubernetes.io/component") == "minio"
    ]
    assert s3 and s3[0]["podSelector"]["matchLabels"]["app.kubernetes.io/instance"] == "fedtwin-platform"


def test_aggregator_network_policy_reaches_s3_and_mlflow():
    policy = one(render(CASES, "app-defaults"), "NetworkPolicy", "fedtwin-aggregator")
    assert policy["spec"]["podSelector"] == {"matchLabels": {"fedtwin.io/role": "aggregator"}}
    assert policy["spec"]["ingress"] == []
    assert {("TCP", 9000), ("TCP", 5000), ("UDP", 53), ("TCP", 443)} <= egress_ports(policy)


def test_external_s3_network_policies_use_ip_blocks():
    objects = render(CASES, "app-external-s3")
    twin = one(objects, "NetworkPolicy", "fedtwin-twin")
    peers = [peer for rule in twin["spec"]["egress"] for peer in rule["to"]]
    assert {"ipBlock": {"cidr": "192.0.2.10/32"}} in peers
    assert ("TCP", 443) in egress_ports(twin)
    cm = one(objects, "ConfigMap", "artifact-repositories")
    repo = yaml.safe_load(cm["data"]["default-v1-s3-artifact-repository"])["s3"]
    assert repo["endpoint"] == "s3.storage.example.internal" and repo["insecure"] is False
    assert repo["accessKeySecret"] == {"name": "s3-aggregator", "key": "accessKey"}


def chart_with_cluster(tmp_path: Path, objects: dict[str, dict[str, Any]]) -> Path:
    """A copy of the app chart whose `lookup` answers from `objects` (keys "apiVersion/kind/namespace/
    name") the way a cluster would: `helm template` has no cluster, so this stands in for one."""
    chart = tmp_path / "fedtwin"
    shutil.copytree(APP, chart)
    helpers = chart / "templates" / "_helpers.tpl"
    real = "{{- toJson (lookup (index . 1) (index . 2) (index . 3) (index . 4)) -}}"
    assert real in helpers.read_text(), "the chart has no fedtwin.lookup helper to stand in for"
    stand_in = (
        '{{- $key := printf "%s/%s/%s/%s" (index . 1) (index . 2) (index . 3) (index . 4) -}}'
        f"{{{{- toJson (get (`{json.dumps(objects)}` | fromJson) $key | default dict) -}}}}"
    )
    helpers.write_text(helpers.read_text().replace(real, stand_in))
    return chart


KUBERNETES_SLICE = {
    "discovery.k8s.io/v1/EndpointSlice/default/kubernetes": {
        "addressType": "IPv4",
        "endpoints": [
            {"addresses": ["172.18.0.2"], "conditions": {"ready": True}},
            {"addresses": ["172.18.0.5"], "conditions": {"ready": True}},
            {"addresses": ["172.18.0.9"], "conditions": {"ready": False}},  # a stopped API server
        ],
        "ports": [{"name": "https", "port": 6443, "protocol": "TCP"}],
    }
}
KUBERNETES_ENDPOINTS = {
    "v1/Endpoints/default/kubernetes": {
        "subsets": [{"addresses": [{"ip": "fd00:10::2"}], "ports": [{"name": "https", "port": 443}]}]
    }
}


def api_rules(objects: list[dict[str, Any]], policy: str) -> list[dict[str, Any]]:
    rules = one(objects, "NetworkPolicy", policy)["spec"]["egress"]
    return [r for r in rules if any("ipBlock" in peer for peer in r["to"])]


@pytest.mark.parametrize(
    ("cluster", "cidrs", "ports"),
    [
        (KUBERNETES_SLICE, ["172.18.0.2/32", "172.18.0.5/32"], [6443]),
        (KUBERNETES_ENDPOINTS, ["fd00:10::2/128"], [443]),  # no EndpointSlice: the Endpoints
    ],
    ids=["endpointslice", "endpoints"],
)
def test_api_egress_is_the_endpoints_looked_up_at_install(
    tmp_path: Path, cluster: dict[str, Any], cidrs: list[str], ports: list[int]
):
    """Policies see traffic after Service translation: the API peer is the endpoints (node IP:6443),
    never the `kubernetes` Service IP, so the chart looks them up at install."""
    objects = template(chart_with_cluster(tmp_path, cluster))

    for policy in ("fedtwin-twin", "fedtwin-aggregator"):
        (rule,) = api_rules(objects, policy)
        assert [peer["ipBlock"]["cidr"] for peer in rule["to"]] == cidrs
        assert rule["ports"] == [{"protocol": "TCP", "port": port} for port in ports]
    validate_all(objects)


def test_api_egress_value_overrides_the_lookup_and_karmada_never_looks_up(tmp_path: Path):
    chart = chart_with_cluster(tmp_path, KUBERNETES_SLICE)
    override = ("--set", "networkPolicy.kubernetesApi.cidrs={10.0.0.10/32}")

    (rule,) = api_rules(template(chart, *override), "fedtwin-twin")
    assert rule["to"] == [{"ipBlock": {"cidr": "10.0.0.10/32"}}]
    assert rule["ports"] == [{"protocol": "TCP", "port": 443}, {"protocol": "TCP", "port": 6443}]
    (rule,) = api_rules(template(chart, *override, "--set", "networkPolicy.kubernetesApi.ports={8443}"),
                        "fedtwin-twin")
    assert rule["ports"] == [{"protocol": "TCP", "port": 8443}]
    # In the Karmada API server the lookup would find Karmada's own endpoints, not the members'.
    karmada = ("--set", "karmada.enabled=true", "--set", "karmada.clusters={member1}")
    error = template_error(chart, *karmada)
    assert "networkPolicy.kubernetesApi.cidrs is required when karmada.enabled is true" in error


def test_dns_and_platform_peers_are_pods_not_service_ips():
    for case in ("app-defaults", "app-kubeovn", "app-privacy"):
        objects = render(CASES, case)
        for name in ("fedtwin-twin", "fedtwin-aggregator"):
            policy = one(objects, "NetworkPolicy", name)
            for rule in policy["spec"]["egress"]:
                ports = {p["port"] for p in rule["ports"]}
                for peer in rule["to"]:
                    if ports & {53, 9000, 5000}:  # DNS, the platform's MinIO and MLflow
                        assert "ipBlock" not in peer and peer["podSelector"]["matchLabels"], (case, name)
                    else:
                        assert ports <= {443, 6443} and peer["ipBlock"]["cidr"] == "172.18.0.2/32"
    dns = one(template(APP, *API, "--set", "networkPolicy.dns.port=5353"), "NetworkPolicy", "fedtwin-twin")
    assert {("UDP", 5353), ("TCP", 5353)} <= egress_ports(dns)  # the DNS pods' port, not the Service's


def test_cilium_gets_the_kube_apiserver_entity_and_needs_no_addresses():
    objects = template(APP, *CILIUM)  # no API addresses: the Cilium entity allows the API server

    policy = one(objects, "CiliumNetworkPolicy")
    validate_all(objects)
    assert policy["spec"]["endpointSelector"] == {
        "matchExpressions": [{"key": "fedtwin.io/role", "operator": "In", "values": ["twin", "aggregator"]}]
    }
    (rule,) = policy["spec"]["egress"]
    assert rule["toEntities"] == ["kube-apiserver"]
    ports = [{"port": "443", "protocol": "TCP"}, {"port": "6443", "protocol": "TCP"}]
    assert rule["toPorts"] == [{"ports": ports}]
    assert not api_rules(objects, "fedtwin-twin")
    assert not by_kind(render(CASES, "app-defaults"), "CiliumNetworkPolicy")
    off = template(APP, *CILIUM, *API, "--set", "networkPolicy.cilium.apiServerEntity=false")
    assert not by_kind(off, "CiliumNetworkPolicy") and api_rules(off, "fedtwin-twin")


def test_private_subnet_lets_dns_and_the_api_server_through(tmp_path: Path):
    """A private KubeOVN Subnet drops all but allowSubnets after Service translation: the DNS pods'
    subnet (from the DNS namespace's ovn.kubernetes.io/cidr) and the API endpoints are in it."""
    cluster = {
        **KUBERNETES_SLICE,
        "v1/Namespace//kube-system": {"metadata": {"name": "kube-system", "annotations": {
            "ovn.kubernetes.io/cidr": "10.16.0.0/16,fd00:10:16::/64",
            "ovn.kubernetes.io/logical_switch": "ovn-default"}}},
    }
    objects = template(chart_with_cluster(tmp_path, cluster), *KUBEOVN)

    subnet = one(objects, "Subnet")
    validate_all(objects)
    assert subnet["spec"]["private"] is True
    assert subnet["spec"]["allowSubnets"] == [
        "10.67.0.0/24", "10.16.0.0/16", "fd00:10:16::/64", "172.18.0.2/32", "172.18.0.5/32"
    ]
    # without NetworkPolicies the Subnet still lets the API endpoints through
    no_policies = template(APP, *KUBEOVN, *API, "--set", "networkPolicy.enabled=false",
                           "--set", "kubeovn.subnet.dnsCidrs={10.16.0.0/16}")
    assert not by_kind(no_policies, "NetworkPolicy")
    allowed = one(no_policies, "Subnet")["spec"]["allowSubnets"]
    assert allowed == ["10.67.0.0/24", "10.16.0.0/16", "172.18.0.2/32"]


# --- chart fail messages: one line each, as README.md's bad-input table shows them ----------------
API_UNKNOWN = (
    "networkPolicy.kubernetesApi.cidrs is required: the kubernetes endpoints in namespace default "
    "could not be looked up (helm template, --dry-run or no read access); set it to the addresses "
    "kubectl get endpoints kubernetes -n default prints "
    "(e.g. --set networkPolicy.kubernetesApi.cidrs={172.18.0.2/32})"
)
CHART_FAILURES = [
    (APP, (), API_UNKNOWN),
    (
        APP,
        ("--set", "karmada.enabled=true", "--set", "karmada.clusters={member1,member2}"),
        "networkPolicy.kubernetesApi.cidrs is required when karmada.enabled is true: the policies go to the "
        "member clusters, whose API servers this release cannot look up; list the addresses kubectl get "
        "endpoints kubernetes -n default prints in every member cluster (e.g. --set "
        "networkPolicy.kubernetesApi.cidrs={172.18.0.3/32,172.18.0.4/32})",
    ),
    (
        APP,
        (*KUBEOVN, *API),
        "kubeovn.subnet.dnsCidrs is required: the private twin Subnet drops all traffic outside "
        "allowSubnets, and the subnet of the DNS pods could not be looked up (no ovn.kubernetes.io/cidr "
        "annotation on namespace kube-system, or helm template); set it to the CIDR of that subnet, "
        "kubectl get subnet "
        "(usually ovn-default, e.g. --set kubeovn.subnet.dnsCidrs={10.16.0.0/16})",
    ),
    (
        APP,
        (*KUBEOVN, "--set", "networkPolicy.enabled=false", "--set", "kubeovn.subnet.dnsCidrs={10.16.0.0/16}"),
        API_UNKNOWN,
    ),
]


CHART_FAILURES.append((
    PLATFORM,
    ("-f", "charts/fedtwin-platform/ci/external-s3-values.yaml",
     "--set", "s3.identities.logs.existingSecret="),
    "s3.identities.logs.existingSecret is required: this S3 endpoint cannot get users created by the chart "
    "(minio.enabled=false and s3.external.minioAdminApi=false, or s3.identities.create=false), so give a "
    "Secret with keys accessKey and secretKey",
))


@pytest.mark.parametrize(("chart", "args", "message"), CHART_FAILURES,
                         ids=["api", "api-karmada", "kubeovn-dns", "kubeovn-api", "platform-logs-secret"])
def test_chart_fails_with_one_line_naming_the_value_and_the_readme_shows_it(
    chart: Path, args: tuple[str, ...], message: str
):
    error = template_error(chart, *args)

    (line,) = [line for line in error.splitlines() if line.startswith("Error:")]
    assert line.endswith(f": {message}"), line
    table = (REPO / "README.md").read_text().split("## What bad input looks like", 1)[1].split("\n## ", 1)[0]
    assert f"`Error: execution error at (...): {message}`" in table, "add the message to README's table"


def test_rbac_is_least_privilege_for_the_argo_executor():
    objects = render(CASES, "app-defaults")
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
    cm = one(render(CASES, "app-defaults"), "ConfigMap", "artifact-repositories")
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


LOGS_LOCATION = {
    "archiveLogs": True,
    "s3": {
        "bucket": "fedtwin",
        "endpoint": "{{=sprig.regexReplaceAll('^https?://', workflow.parameters['s3-endpoint'], '')}}",
        "insecure": True,
        "region": "us-east-1",
        "key": "logs/{{workflow.name}}/{{pod.name}}",
        "accessKeySecret": {"name": "fedtwin-platform-s3-logs", "key": "accessKey"},
        "secretKeySecret": {"name": "fedtwin-platform-s3-logs", "key": "secretKey"},
    },
}


def pods_by_role(wt: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for t in wt["spec"]["templates"]:
        if "container" in t or "script" in t:
            out.setdefault(t.get("metadata", {}).get("labels", {}).get("fedtwin.io/role"), []).append(t)
    return out


def test_twin_logs_are_archived_with_the_logs_identity_never_the_aggregators():
    """Argo mounts the archive location's Secret into the wait container (workflowpod.go,
    createSecretVolumesAndMounts, v4.0.7), never into main; a twin template without a location of
    its own would get the workflow's repository, i.e. the aggregator identity, in its wait container."""
    objects = render(CASES, "app-defaults")
    cm = one(objects, "ConfigMap", "artifact-repositories")
    logs = yaml.safe_load(cm["data"]["fedtwin-logs-s3-artifact-repository"])
    templates = by_kind(objects, "WorkflowTemplate")

    assert logs == {"archiveLogs": True, "s3": {
        **{k: v for k, v in LOGS_LOCATION["s3"].items() if k not in {"key", "endpoint"}},
        "endpoint": "fedtwin-platform-minio.fedtwin.svc:9000",
        "keyFormat": "logs/{{workflow.name}}/{{pod.name}}",
    }}
    twins = [t for wt in templates for t in pods_by_role(wt).get("twin", [])]
    assert {t["name"] for t in twins} == {"train", "member"}
    for t in twins:
        assert t["archiveLocation"] == LOGS_LOCATION, t["name"]
        assert "s3-aggregator" not in json.dumps(t), t["name"]
    for wt in templates:
        for t in pods_by_role(wt).get("aggregator", []):
            # aggregator pods archive with the default repository
            assert "fedtwin-platform-s3-logs" not in json.dumps(t)
        roles = set(pods_by_role(wt))
        ref = wt["spec"].get("artifactRepositoryRef")
        if roles == {"twin"}:  # a Workflow of twin pods only (fedtwin-member) refers to the logs repository
            assert ref == {"configMap": "artifact-repositories", "key": "fedtwin-logs-s3-artifact-repository"}
        elif ref:
            assert ref == {"configMap": "artifact-repositories", "key": "default-v1-s3-artifact-repository"}


def test_twin_logs_off_never_falls_back_to_the_aggregator_repository():
    off = template(APP, *API, "--set", "artifactRepository.archiveLogs=false")
    external = render(CASES, "app-external-s3")  # not the platform's S3: off by default

    for objects in (off, external):
        assert "fedtwin-logs-s3-artifact-repository" not in one(objects, "ConfigMap")["data"]
        for wt in by_kind(objects, "WorkflowTemplate"):
            for t in pods_by_role(wt).get("twin", []):
                assert t["archiveLocation"] == {"archiveLogs": False}, t["name"]
    on = template(APP, "-f", "charts/fedtwin/ci/external-s3-values.yaml",
                  "--set", "artifactRepository.archiveLogs=true", "--set", "s3.logsSecret=s3-logs")
    member = one(on, "WorkflowTemplate", "fedtwin-member")
    location = pods_by_role(member)["twin"][0]["archiveLocation"]
    assert location["s3"]["accessKeySecret"]["name"] == "s3-logs" and location["s3"]["insecure"] is False


def test_member_logs_follow_each_member_clusters_s3_endpoint():
    """The archive location's endpoint comes from the Workflow's s3-endpoint parameter, which each
    member cluster's OverridePolicy sets (an Argo expression, evaluated with the template)."""
    objects = template(APP, "-f", "charts/fedtwin/ci/karmada-values.yaml", "--set", "karmada.runId=demo")
    member = one(objects, "WorkflowTemplate", "fedtwin-member")
    location = pods_by_role(member)["twin"][0]["archiveLocation"]
    assert "workflow.parameters['s3-endpoint']" in location["s3"]["endpoint"]
    declared = {p["name"] for p in member["spec"]["arguments"]["parameters"]}
    assert "s3-endpoint" in declared


def test_platform_logs_identity_writes_and_reads_only_logs():
    objects = render(CASES, "platform-defaults")
    policies = one(objects, "ConfigMap", "fedtwin-platform-s3-policies")["data"]
    logs = json.loads(policies["fedtwin-logs.json"])
    job = one(objects, "Job")
    env = {e["name"]: e.get("value") for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
    mounts = {m["mountPath"] for m in job["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]}

    objects_allowed = {r for s in logs["Statement"] for r in s["Resource"] if r.endswith("*")}
    assert objects_allowed == {"arn:aws:s3:::fedtwin/logs/*"}
    for statement in logs["Statement"]:
        assert set(statement["Action"]) <= {"s3:PutObject", "s3:GetObject", "s3:GetBucketLocation"}
        assert "s3:DeleteObject" not in statement["Action"] and "s3:ListBucket" not in statement["Action"]
    assert "logs:fedtwin-logs" in env["IDENTITIES"].split() and "/identities/logs" in mounts
    secret = one(objects, "Secret", "fedtwin-platform-s3-logs")
    assert secret_value(secret, "accessKey") == "fedtwin-logs"
    assert len(secret_value(secret, "secretKey")) >= 32
    # the aggregator's own repository prefix is not the logs prefix
    aggregator = json.loads(policies["fedtwin-aggregator.json"])
    assert "arn:aws:s3:::fedtwin/logs/*" not in {r for s in aggregator["Statement"] for r in s["Resource"]}


def test_twin_subnet_only_when_the_cluster_has_kubeovn():
    assert not by_kind(render(CASES, "app-defaults"), "Subnet")
    assert not by_kind(template(APP, "-f", "charts/fedtwin/ci/kubeovn-values.yaml"), "Subnet")

    subnet = one(render(CASES, "app-kubeovn"), "Subnet")

    assert subnet["metadata"]["name"] == "fedtwin-twins"
    assert subnet["spec"]["private"] is True
    # storage (S3), the DNS pods' subnet, the API server endpoints, then extraAllowSubnets
    assert subnet["spec"]["allowSubnets"] == ["10.67.0.0/24", "10.16.0.0/16", "172.18.0.2/32", "10.68.0.0/24"]
    assert subnet["spec"]["namespaces"] == ["fedtwin"]
    assert subnet["spec"]["cidrBlock"] == "10.66.0.0/16"


def test_karmada_propagation_policy_sends_templates_configmaps_and_secrets():
    policy = one(render(CASES, "app-karmada"), "PropagationPolicy")
    kinds = {s["kind"] for s in policy["spec"]["resourceSelectors"]}

    assert {"WorkflowTemplate", "ConfigMap", "Secret", "ServiceAccount", "Role", "RoleBinding"} <= kinds
    assert policy["spec"]["placement"]["clusterAffinity"]["clusterNames"] == ["member1", "member2"]
    assert Path(APP / "templates" / "karmada" / "karmada-propagationpolicy.yaml").exists()
    assert not by_kind(render(CASES, "app-defaults"), "PropagationPolicy")


def test_helpers_truncate_names_to_63_characters():
    long = "a" * 63
    for chart in (PLATFORM, APP):
        objects = template(chart, "--set", f"fullnameOverride={long}", *(API if chart == APP else ()))
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
        (APP, (*API, "--set", "s3.platformMinio=false"), "s3.endpoint"),
        (APP, (*API, "--set", "run.minTwins=-1"), "run.minTwins"),
        (APP, (*API, "--set", "run.minTwins=0"), "run.minTwins"),
        (APP, (*API, "--set", "run.id=Run_1"), "run.id"),
        (APP, (*API, "--set", "run.id=-run"), "run.id"),
        (APP, (*API, "--set", "kubeovn.subnet.name=Twin.Subnet"), "kubeovn.subnet.name"),
        (APP, (*API, "--set", "serviceAccounts.twin.name=Twins"), "serviceAccounts.twin.name"),
        (APP, (*API, "--set", "platform.releaseName=Platform"), "platform.releaseName"),
        (APP, (*API, "--set", "karmada.enabled=true"), "karmada.clusters"),
        (APP, (*API, "--set", "karmada.clusters={Member_1}"), "karmada.clusters"),
        (APP, (*API, "--set", "run.rounds=many"), "run.rounds"),
        (APP, (*API, "--set", "run.rouds=3"), "rouds"),
        (APP, (*API, "--set", "privacy.mode=global"), "privacy.mode"),
        (
            APP,
            (*API, "--set", "s3.platformMinio=false", "--set", "s3.endpoint=https://s3.example"),
            "networkPolicy.s3.cidrs",
        ),
        (
            APP,
            (*API, "--set", "workflowTemplates.parameters.no-such-param=1"),
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
    for feature in ("external-s3", "kubeovn", "karmada", "privacy", "mlflow-external-db", "cilium"):
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
    app = rendered_notes(APP, tmp_path, *API)
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


def expected_template(
    source: dict[str, Any], parameters: dict[str, str], pull_policy: str = "IfNotPresent",
    twin_archive: dict[str, Any] | None = None,
):
    """The source WorkflowTemplate with exactly what the chart sets: namespace, labels, parameter
    defaults (only those the template declares), the containers' pull policy, the twin pods' archive
    location (`twin_archive`; None = logs off) and, for a Workflow of twin pods only, the logs
    repository."""
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
    roles = set()
    for t in wt["spec"]["templates"]:
        for kind in ("container", "script"):
            if kind in t:
                t[kind]["imagePullPolicy"] = pull_policy
                roles.add(t.get("metadata", {}).get("labels", {}).get("fedtwin.io/role"))
                if roles and t["metadata"]["labels"]["fedtwin.io/role"] == "twin":
                    t["archiveLocation"] = twin_archive or {"archiveLogs": False}
    if roles == {"twin"} and twin_archive:
        wt["spec"]["artifactRepositoryRef"] = {
            "configMap": "artifact-repositories", "key": "fedtwin-logs-s3-artifact-repository"
        }
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
    if isinstance(case_or_args, str):
        objects = render(CASES, case_or_args)
    else:
        objects = template(APP, *API, *case_or_args)
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
        archive = None if case == "app-external-s3" else LOGS_LOCATION  # on with the platform's S3
        assert rendered[name] == expected_template(source, parameters, twin_archive=archive), name


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
        out = copy.deepcopy(rendered[source["metadata"]["name"]])
        for t in out["spec"]["templates"]:
            t.pop("archiveLocation", None)  # the chart's own (twin logs), see the logs tests
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
    objects = render(CASES, "app-defaults")
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
    objects = render(CASES, "app-kubeovn")
    subnet = one(objects, "Subnet")["metadata"]["name"]
    federated = one(objects, "WorkflowTemplate", "fedtwin-federated")
    params = {p["name"]: p.get("value") for p in federated["spec"]["arguments"]["parameters"]}
    (train,) = [t for t in pod_templates(federated) if t["metadata"]["labels"]["fedtwin.io/role"] == "twin"]
    ((key, value),) = train["metadata"]["annotations"].items()

    assert params["subnet"] == subnet
    assert "ovn.kubernetes.io/logical_switch" in key and "subnet" in key
    assert value == "{{workflow.parameters.subnet}}"
    default = one(render(CASES, "app-defaults"), "WorkflowTemplate", "fedtwin-federated")
    assert {p["name"]: p.get("value") for p in default["spec"]["arguments"]["parameters"]}["subnet"] == ""


def test_the_workflow_deadline_is_a_value_of_the_chart():
    """spec.activeDeadlineSeconds is an integer field: Argo cannot take it from a parameter."""
    assert {t["spec"]["activeDeadlineSeconds"] for t in chart_templates(()).values()} == {7 * 86400}
    templates = chart_templates(("--set", "workflowTemplates.activeDeadlineSeconds=3600"))
    assert {t["spec"]["activeDeadlineSeconds"] for t in templates.values()} == {3600}
