"""Render Helm charts offline and validate every object as strictly as an API server would.

Core kinds go through `kubernetes-validate` (strict schemas: unknown fields are errors);
WorkflowTemplates through the vendored Argo JSON schema; KubeOVN, Karmada and Cilium objects through the
`openAPIV3Schema` of their vendored CRDs, closed against unknown fields the way the API server
prunes or rejects them, with `metadata` checked against Kubernetes' ObjectMeta. helm comes from
`scripts/install-tools.sh`; when it cannot be installed the tests fail, they never skip.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import re
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from kubernetes_validate import utils as kv_utils
from referencing import Registry, Resource

REPO = Path(__file__).resolve().parents[1]
SCHEMAS = REPO / "schemas"  # structure-only copies of upstream schemas (schemas/README.md)
CHARTS = REPO / "charts"
APP = CHARTS / "fedtwin"
PLATFORM = CHARTS / "fedtwin-platform"
KUBE_VERSION = "1.33.0"
# The app chart looks the API server endpoints up at install; `helm template` has no cluster, so the
# tests give them (a kind control-plane node's address, as `kubectl get endpoints kubernetes` shows).
API = ("--set", "networkPolicy.kubernetesApi.cidrs={172.18.0.2/32}")
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


@functools.cache
def helm() -> str:
    """Path of the pinned helm; installs it with scripts/install-tools.sh when missing."""
    explicit = os.environ.get("FEDTWIN_HELM")
    if explicit:
        return explicit
    path = REPO / ".tools" / "bin" / "helm"
    if not os.access(path, os.X_OK):
        result = subprocess.run(
            ["bash", str(REPO / "scripts" / "install-tools.sh")], capture_output=True, text=True, check=False
        )
        if result.returncode != 0 or not os.access(path, os.X_OK):
            pytest.fail(
                "helm is required by the chart tests and could not be installed "
                f"(scripts/install-tools.sh exit {result.returncode}):\n{result.stdout}{result.stderr}"
            )
    return str(path)


def run_helm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([helm(), *args], capture_output=True, text=True, check=False, cwd=REPO)


@functools.cache
def _template(chart: str, args: tuple[str, ...], release: str, namespace: str) -> str:
    result = run_helm(
        "template", release, chart, "--namespace", namespace, "--kube-version", KUBE_VERSION, *args
    )
    if result.returncode != 0:
        pytest.fail(f"helm template {chart} {' '.join(args)} failed:\n{result.stderr}")
    return result.stdout


def template(
    chart: Path, *args: str, release: str | None = None, namespace: str = "fedtwin"
) -> list[dict[str, Any]]:
    """Rendered objects (cached per arguments: each distinct render runs helm once per session).
    The release is named after the chart, as `make single-cluster-setup` installs it."""
    text = _template(str(chart), tuple(args), release or chart.name, namespace)
    return [doc for doc in yaml.safe_load_all(text) if doc]


def render(cases: Mapping[str, tuple[Path, Sequence[str]]], case: str) -> list[dict[str, Any]]:
    """The objects of a named test case: `cases` maps a case to its chart and helm arguments."""
    chart, args = cases[case]
    return template(chart, *args)


def template_error(chart: Path, *args: str) -> str:
    """stderr of a render that must fail."""
    result = run_helm("template", chart.name, str(chart), "--namespace", "fedtwin", *args)
    assert result.returncode != 0, f"helm template {' '.join(args)} unexpectedly succeeded"
    return result.stderr


def by_kind(objects: Iterable[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def one(objects: Iterable[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [o for o in by_kind(objects, kind) if name is None or o["metadata"]["name"] == name]
    assert len(found) == 1, (
        f"expected one {kind} {name or ''}, found {[o['metadata']['name'] for o in found]}"
    )
    return found[0]


# --- schemas -------------------------------------------------------------------------------------


@functools.cache
def _argo_validator() -> jsonschema.Draft7Validator:
    schema = json.loads((SCHEMAS / "argo-workflows" / "schema.json").read_text())
    # The vendored schema types IntOrString as a string; the API server (and Argo) take integers too.
    schema["definitions"]["io.k8s.apimachinery.pkg.util.intstr.IntOrString"] = {"type": ["string", "integer"]}
    return jsonschema.Draft7Validator(
        {
            "$ref": "#/definitions/io.argoproj.workflow.v1alpha1.WorkflowTemplate",
            "definitions": schema["definitions"],
        }
    )


def closed(schema: Any) -> Any:
    """A structural CRD schema with unknown fields forbidden (what the API server's pruning enforces)."""
    schema = copy.deepcopy(schema)

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if (
                node.get("type") == "object"
                and "properties" in node
                and "additionalProperties" not in node
                and not node.get("x-kubernetes-preserve-unknown-fields")
            ):
                node["additionalProperties"] = False
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema)
    return schema


@functools.cache
def _crd_validators() -> dict[tuple[str, str], tuple[jsonschema.Draft7Validator, str]]:
    """(apiVersion, kind) -> (validator, scope) for the vendored KubeOVN, Karmada and Cilium CRDs."""
    validators: dict[tuple[str, str], tuple[jsonschema.Draft7Validator, str]] = {}
    files = [
        SCHEMAS / "kube-ovn" / "kube-ovn-crd.yaml",
        *sorted((SCHEMAS / "karmada").glob("*.yaml")),
        *sorted((SCHEMAS / "cilium").glob("*.yaml")),
    ]
    for path in files:
        for crd in yaml.safe_load_all(path.read_text()):
            if not crd or crd.get("kind") != "CustomResourceDefinition":
                continue
            spec = crd["spec"]
            for version in spec["versions"]:
                schema = closed(version["schema"]["openAPIV3Schema"])
                key = (f"{spec['group']}/{version['name']}", spec["names"]["kind"])
                validators[key] = (jsonschema.Draft7Validator(schema), spec["scope"])
    return validators


@functools.cache
def _objectmeta_validator() -> jsonschema.Draft202012Validator:
    version = f"v{kv_utils.major_minor(KUBE_VERSION)}.0-local-strict"
    schema = kv_utils.schema_contents(
        f"kubernetes-json-schema/{version}/objectmeta-meta-v1.json", KUBE_VERSION
    )
    defs = kv_utils.schema_contents(f"kubernetes-json-schema/{version}/_definitions.json", KUBE_VERSION)
    registry = Resource.from_contents(defs) @ (Resource.from_contents(schema) @ Registry())
    return jsonschema.Draft202012Validator(schema, registry=registry)


def _errors(validator: Any, obj: Any) -> list[str]:
    return [
        f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
        for e in sorted(validator.iter_errors(obj), key=lambda e: list(map(str, e.absolute_path)))
    ]


def validate(obj: dict[str, Any]) -> None:
    """Fail with every schema error of one rendered object."""
    api, kind = obj.get("apiVersion", ""), obj.get("kind", "")
    meta = obj.get("metadata", {})
    where = f"{kind} {meta.get('name')}"
    name = meta.get("name", "")
    assert DNS_SUBDOMAIN.match(name) and len(name) <= 253, f"{where}: name is not a DNS-1123 subdomain"
    if kind == "WorkflowTemplate" and api == "argoproj.io/v1alpha1":
        errors = _errors(_argo_validator(), obj)
    elif (api, kind) in _crd_validators():
        validator, scope = _crd_validators()[(api, kind)]
        errors = _errors(validator, obj) + [f"metadata: {e}" for e in _errors(_objectmeta_validator(), meta)]
        if scope == "Cluster":
            assert "namespace" not in meta, f"{where}: cluster-scoped object has a namespace"
    else:
        try:
            kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)
            errors = []
        except kubernetes_validate.ValidationError as exc:
            errors = [f"{'/'.join(map(str, exc.absolute_path))}: {exc.message}"]
    assert not errors, f"{where} ({api}) is invalid:\n  " + "\n  ".join(errors)
    if kind in {"Deployment", "Job", "Service", "ServiceAccount", "Role", "RoleBinding", "NetworkPolicy"}:
        assert DNS_LABEL.match(name) and len(name) <= 63, f"{where}: name is not a DNS-1123 label"


def validate_all(objects: Iterable[dict[str, Any]]) -> None:
    for obj in objects:
        validate(obj)


def manifest_files(directory: Path) -> dict[str, dict[str, Any]]:
    """`*.yaml` in `directory` by file name, each holding exactly one object (as kubectl applies them)."""
    out = {}
    for path in sorted(directory.glob("*.yaml")):
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
        assert len(docs) == 1, f"{path.name}: one object per file"
        out[path.name] = docs[0]
    return out


def without_helm_labels(obj: dict[str, Any]) -> dict[str, Any]:
    """The object as a user without Helm applies it: no chart, version or managed-by labels."""
    obj = copy.deepcopy(obj)
    labels = obj.get("metadata", {}).get("labels", {})
    for key in ("helm.sh/chart", "app.kubernetes.io/managed-by", "app.kubernetes.io/version"):
        labels.pop(key, None)
    return obj


# --- Pod Security Standards: restricted ----------------------------------------------------------
# The checks of k8s.io/pod-security-admission (policy/check_*.go, v0.34) at level `restricted`,
# which includes every `baseline` check, evaluated on one pod spec as plain data. One rule goes
# beyond the admission plugin: a numeric, non-zero runAsUser must be set (pod or every container),
# because the kubelet can enforce runAsNonRoot only against a numeric user, and an image whose USER
# is a name (or unset) then fails to start.

_BASELINE_CAPABILITIES = {
    "AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD", "NET_BIND_SERVICE",
    "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT",
}
_SAFE_SYSCTLS = {
    "kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range", "net.ipv4.ip_unprivileged_port_start", "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes", "net.ipv4.tcp_rmem", "net.ipv4.tcp_wmem",
}
_RESTRICTED_VOLUMES = {
    "configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "image", "persistentVolumeClaim", "projected",
    "secret",
}
_SELINUX_TYPES = {"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"}
_SECCOMP_OK = {"RuntimeDefault", "Localhost"}


def _containers(pod_spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        *(pod_spec.get("initContainers") or []),
        *(pod_spec.get("containers") or []),
        *(pod_spec.get("ephemeralContainers") or []),
    ]


def _numeric_uid(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def restricted_violations(pod_spec: dict[str, Any], pod_metadata: dict[str, Any] | None = None) -> list[str]:
    """Why `pod_spec` breaks the `restricted` Pod Security Standard; [] when it meets it.

    Each entry names the check (the admission plugin's check id) and the offending pod or
    container. `pod_metadata` (annotations) feeds the two checks that read annotations (AppArmor
    and the deprecated seccomp annotations). Argo templates: pass the pod as it will run (the
    template's securityContext as the pod's, its container as a container)."""
    annotations = (pod_metadata or {}).get("annotations") or {}
    pod_sc = pod_spec.get("securityContext") or {}
    containers = _containers(pod_spec)
    windows = (pod_spec.get("os") or {}).get("name") == "windows"
    out: list[str] = []

    def sc(c: dict[str, Any]) -> dict[str, Any]:
        return c.get("securityContext") or {}

    # --- baseline --------------------------------------------------------------------------------
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if pod_spec.get(field):
            out.append(f"hostNamespaces: pod sets {field}=true")
    for c in containers:
        name = c.get("name")
        if sc(c).get("privileged"):
            out.append(f"privileged: container {name} sets securityContext.privileged=true")
        extra = set((sc(c).get("capabilities") or {}).get("add") or []) - _BASELINE_CAPABILITIES
        if extra:
            out.append(f"capabilities_baseline: container {name} adds {sorted(extra)}")
        if any(p.get("hostPort") for p in c.get("ports") or []):
            out.append(f"hostPorts: container {name} uses a hostPort")
        if sc(c).get("procMount", "Default") != "Default":
            out.append(f"procMount: container {name} sets procMount {sc(c)['procMount']}")
        if (sc(c).get("windowsOptions") or {}).get("hostProcess"):
            out.append(f"windowsHostProcess: container {name} sets windowsOptions.hostProcess=true")
        handlers = [c.get(p) for p in ("livenessProbe", "readinessProbe", "startupProbe")]
        handlers += [(c.get("lifecycle") or {}).get(h) for h in ("postStart", "preStop")]
        for handler in filter(None, handlers):
            for kind in ("httpGet", "tcpSocket"):
                if (handler.get(kind) or {}).get("host"):
                    out.append(f"hostProbesAndhostLifecycle: container {name} sets a {kind} host")
    if (pod_sc.get("windowsOptions") or {}).get("hostProcess"):
        out.append("windowsHostProcess: pod sets windowsOptions.hostProcess=true")
    for volume in pod_spec.get("volumes") or []:
        if "hostPath" in volume:
            out.append(f"hostPathVolumes: volume {volume.get('name')} is a hostPath")
    for setter, ctx in [("pod", pod_sc), *((f"container {c.get('name')}", sc(c)) for c in containers)]:
        apparmor = (ctx.get("appArmorProfile") or {}).get("type")
        if apparmor is not None and apparmor not in {"RuntimeDefault", "Localhost"}:
            out.append(f"appArmorProfile: {setter} sets AppArmor profile {apparmor}")
        selinux = ctx.get("seLinuxOptions")
        if selinux and (
            selinux.get("type", "") not in _SELINUX_TYPES or selinux.get("user") or selinux.get("role")
        ):
            out.append(f"seLinuxOptions: {setter} sets a forbidden seLinuxOptions {selinux}")
        seccomp = (ctx.get("seccompProfile") or {}).get("type")
        if seccomp is not None and seccomp not in _SECCOMP_OK:
            out.append(f"seccompProfile: {setter} sets seccompProfile.type {seccomp}")
    for key, value in annotations.items():
        if key.startswith("container.apparmor.security.beta.kubernetes.io/") and value and not (
            value == "runtime/default" or value.startswith("localhost/")
        ):
            out.append(f"appArmorProfile: annotation {key}={value}")
        seccomp_annotation = key == "seccomp.security.alpha.kubernetes.io/pod" or key.startswith(
            "container.seccomp.security.alpha.kubernetes.io/"
        )
        allowed = value in {"runtime/default", "docker/default"} or value.startswith("localhost/")
        if seccomp_annotation and not allowed:
            out.append(f"seccompProfile: annotation {key}={value}")
    for sysctl in pod_sc.get("sysctls") or []:
        if sysctl.get("name") not in _SAFE_SYSCTLS:
            out.append(f"sysctls: pod sets the unsafe sysctl {sysctl.get('name')}")

    # --- restricted ------------------------------------------------------------------------------
    for volume in pod_spec.get("volumes") or []:
        kinds = set(volume) - {"name"}
        if not kinds & _RESTRICTED_VOLUMES:
            out.append(f"restrictedVolumes: volume {volume.get('name')} is of type {sorted(kinds)}")
    user_namespace = pod_spec.get("hostUsers") is False
    if not user_namespace:
        if pod_sc.get("runAsNonRoot") is False:
            out.append("runAsNonRoot: pod sets runAsNonRoot=false")
        if pod_sc.get("runAsUser") == 0:
            out.append("runAsUser: pod sets runAsUser=0")
    for c in containers:
        name, csc = c.get("name"), sc(c)
        if not user_namespace:
            own = csc.get("runAsNonRoot")
            if own is False or (own is None and pod_sc.get("runAsNonRoot") is not True):
                out.append(f"runAsNonRoot: pod or container {name} must set runAsNonRoot=true")
            if csc.get("runAsUser") == 0:
                out.append(f"runAsUser: container {name} sets runAsUser=0")
        uid = csc.get("runAsUser", pod_sc.get("runAsUser"))
        if not _numeric_uid(uid):
            out.append(f"runAsUser (fedtwin): pod or container {name} must set a numeric non-zero runAsUser")
        if windows:
            continue
        if csc.get("allowPrivilegeEscalation") is not False:
            out.append(f"allowPrivilegeEscalation: container {name} must set allowPrivilegeEscalation=false")
        if (csc.get("seccompProfile") or pod_sc.get("seccompProfile") or {}).get("type") not in _SECCOMP_OK:
            out.append(f"seccompProfile_restricted: pod or container {name} must set RuntimeDefault")
        capabilities = csc.get("capabilities") or {}
        if "ALL" not in (capabilities.get("drop") or []):
            out.append(f'capabilities_restricted: container {name} must set capabilities.drop=["ALL"]')
        if set(capabilities.get("add") or []) - {"NET_BIND_SERVICE"}:
            out.append(f"capabilities_restricted: container {name} may add only NET_BIND_SERVICE")
    return out


def pod_specs(obj: dict[str, Any]) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(where, pod spec, pod metadata) of every pod a core object makes (Pod, Deployment, Job, ...)."""
    kind, name = obj.get("kind"), obj.get("metadata", {}).get("name")
    spec = obj.get("spec") or {}
    if kind == "Pod":
        return [(f"Pod {name}", spec, obj.get("metadata") or {})]
    if kind == "CronJob":
        spec = (spec.get("jobTemplate") or {}).get("spec") or {}
    template = spec.get("template")
    if kind in {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "CronJob"} and template:
        return [(f"{kind} {name}", template.get("spec") or {}, template.get("metadata") or {})]
    return []
