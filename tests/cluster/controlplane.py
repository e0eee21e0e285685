"""Start and stop a local control plane: etcd, kube-apiserver, Argo's workflow controller.

Everything listens on 127.0.0.1 on free ports, keeps its state in one temp directory and stops
when `stop()` is called (the pytest fixture and `python -m tests.cluster` both do).

What is set up, and why:
- etcd 3.6 (the version kubeadm pairs with Kubernetes 1.34), `--unsafe-no-fsync` (throwaway data).
- kube-apiserver with a generated CA, serving cert and client certs (`pki.py`), service-account
  token signing keys, `--authorization-mode=Node,RBAC`, admission plugins at their defaults plus
  NodeRestriction (PodSecurity and ServiceAccount are on by default), and
  `--endpoint-reconciler-type=none` (no real Service network).
- What kube-controller-manager would otherwise do and the tests need, done once by the harness: a
  `default` ServiceAccount and the `kube-root-ca.crt` ConfigMap in the namespaces it creates.
  No garbage collector, no namespace, Deployment or Job controllers run (see README.md).
- Argo: the full CRDs of the built version, its cluster-install RBAC for the controller and the
  server (ServiceAccounts `argo` and `argo-server` in namespace `argo`), the
  `workflow-controller-configmap` (from scripts/argo-workflows-values.yaml, as the argo-helm chart
  renders it), and the controller process, authenticated with a token of its ServiceAccount (so
  its RBAC is the one upstream ships, not admin).
- Namespace `fedtwin`, labelled `pod-security.kubernetes.io/enforce=restricted`.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.cluster import build
from tests.cluster.kube import Credentials, Kube, KubeError, load_yaml_documents, resource_path
from tests.cluster.pki import Pki, generate
from tests.servers import HOST, ServerProcess, free_ports, port_answers

PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """In the child before exec: SIGKILL it when the process that started it dies (a killed test
    run must not leave an API server behind)."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


class Process(ServerProcess):
    """tests.servers.ServerProcess, but the child also dies with this process."""

    def __init__(self, name: str, workdir: Path, argv: list[str], env: dict[str, str] | None = None) -> None:
        self.name = name
        self.log_path = workdir / f"{name}.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            argv,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=workdir,
            env=env,
            start_new_session=True,
            preexec_fn=die_with_parent,
        )


NODE_NAME = "fedtwin-node"
ARGO_NAMESPACE = "argo"
WORKFLOW_NAMESPACE = "fedtwin"
EXECUTOR_IMAGE = "argoproj/argoexec:" + build.ARGO_VERSION
"""Never pulled (the node agent runs no images); the controller only writes it into pod specs."""
MAIN_UID = 10001
"""The user of the fedtwin image (Dockerfile `USER 10001:10001`)."""
SERVICE_CIDR = "10.96.0.0/12"

RESTRICTED = {
    "runAsNonRoot": True,
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}
RESTRICTED_LABELS = {
    "pod-security.kubernetes.io/enforce": "restricted",
    "pod-security.kubernetes.io/enforce-version": "latest",
    "pod-security.kubernetes.io/warn": "restricted",
}
SETUP_VALUES = Path(__file__).resolve().parents[2] / "scripts" / "argo-workflows-values.yaml"
"""The argo-helm values our cluster setup installs Argo with; the controller here is configured
from the same file, so the tests run the configuration a kind cluster gets."""


def setup_values() -> dict[str, Any]:
    return dict(yaml.safe_load(SETUP_VALUES.read_text()) or {})


def controller_config(metrics_port: int, values: dict[str, Any] | None = None) -> dict[str, Any]:
    """The controller's configuration from the argo-helm values (`executor`, `mainContainer`,
    `controller.workflowDefaults`), as that chart renders its ConfigMap, plus a metrics port."""
    values = setup_values() if values is None else values
    config: dict[str, Any] = {}
    executor = {
        k: v
        for k, v in (values.get("executor") or {}).items()
        if k in ("securityContext", "resources", "env", "args")
    }
    if executor:
        config["executor"] = executor
    if values.get("mainContainer"):
        config["mainContainer"] = values["mainContainer"]
    if (values.get("controller") or {}).get("workflowDefaults"):
        config["workflowDefaults"] = values["controller"]["workflowDefaults"]
    config["metricsConfig"] = {"enabled": True, "port": metrics_port, "secure": False}
    config["telemetryConfig"] = {"enabled": False}
    return config


@dataclass
class ControlPlane:
    """A running control plane. `admin` is a cluster-admin client; `kubeconfig` its file."""

    workdir: Path
    binaries: build.Binaries
    pki: Pki
    server: str
    admin: Kube
    kubeconfig: Path
    processes: list[ServerProcess] = field(default_factory=list)
    ports: dict[str, int] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    """Seconds each start-up phase took (etcd, kube-apiserver, bootstrap, argo, controller)."""

    @property
    def ca_file(self) -> Path:
        return self.pki.ca.cert

    def credentials(self, cert: Any, user: str) -> Credentials:
        return Credentials(self.server, self.pki.ca.cert, cert.cert, cert.key, user=user)

    def service_account_token(
        self,
        namespace: str,
        name: str,
        seconds: int = 48 * 3600,
        bound_pod: dict[str, Any] | None = None,
        client: Kube | None = None,
    ) -> str:
        """A token of a ServiceAccount from the TokenRequest API (what the kubelet mounts in pods)."""
        spec: dict[str, Any] = {"expirationSeconds": seconds}
        if bound_pod is not None:
            spec["boundObjectRef"] = {
                "kind": "Pod",
                "apiVersion": "v1",
                "name": bound_pod["metadata"]["name"],
                "uid": bound_pod["metadata"]["uid"],
            }
        path = resource_path("ServiceAccount", name, namespace, "token")
        result = (client or self.admin).create(
            path, {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec}
        )
        return str(result["status"]["token"])

    def process_logs(self) -> str:
        return "\n".join(f"--- {p.name} (last lines) ---\n{p.log_tail(40)}" for p in self.processes)

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.stop(grace=5.0)
        self.admin.close()


def start_etcd(binaries: build.Binaries, workdir: Path) -> tuple[ServerProcess, str]:
    client_port, peer_port = free_ports(2)
    data = workdir / "etcd-data"
    data.mkdir(mode=0o700)
    client_url, peer_url = f"http://{HOST}:{client_port}", f"http://{HOST}:{peer_port}"
    argv = [
        str(binaries.etcd),
        "--name",
        "fedtwin",
        "--data-dir",
        str(data),
        "--listen-client-urls",
        client_url,
        "--advertise-client-urls",
        client_url,
        "--listen-peer-urls",
        peer_url,
        "--initial-advertise-peer-urls",
        peer_url,
        "--initial-cluster",
        f"fedtwin={peer_url}",
        "--initial-cluster-state",
        "new",
        "--unsafe-no-fsync",
        "--log-level",
        "warn",
        "--quota-backend-bytes",
        str(2 << 30),
    ]
    process = Process("etcd", workdir, argv, env=clean_env())
    process.wait_until(lambda: port_answers(client_port), 60, "client port open")
    return process, client_url


def clean_env(**extra: str) -> dict[str, str]:
    """A minimal environment for a control-plane process (nothing of the caller's KUBECONFIG etc.)."""
    env = {k: os.environ[k] for k in ("PATH", "HOME", "LANG", "TZ") if k in os.environ}
    env.update(extra)
    return env


def start_apiserver(
    binaries: build.Binaries, workdir: Path, pki: Pki, etcd_url: str
) -> tuple[ServerProcess, str]:
    port = free_ports(1)[0]
    argv = [
        str(binaries.kube_apiserver),
        f"--etcd-servers={etcd_url}",
        f"--bind-address={HOST}",
        f"--advertise-address={HOST}",
        f"--secure-port={port}",
        f"--tls-cert-file={pki.serving.cert}",
        f"--tls-private-key-file={pki.serving.key}",
        f"--client-ca-file={pki.ca.cert}",
        "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
        f"--service-account-key-file={pki.sa_public}",
        f"--service-account-signing-key-file={pki.sa_private}",
        f"--service-cluster-ip-range={SERVICE_CIDR}",
        "--authorization-mode=Node,RBAC",
        # Added to the default set (PodSecurity, ServiceAccount, ... are on by default).
        "--enable-admission-plugins=NodeRestriction",
        "--endpoint-reconciler-type=none",
        "--allow-privileged=false",
        "--profiling=false",
        f"--cert-dir={workdir / 'apiserver-certs'}",
        "--v=1",
    ]
    process = Process("kube-apiserver", workdir, argv, env=clean_env())
    return process, f"https://{HOST}:{port}"


def wait_ready(process: ServerProcess, admin: Kube, timeout: float = 120.0) -> None:
    def ready() -> bool:
        response = admin.session.get(admin.creds.server + "/readyz", timeout=5)
        return response.status_code == 200

    process.wait_until(ready, timeout, "/readyz answers ok")


def ensure_namespace(admin: Kube, name: str, labels: dict[str, str] | None = None) -> None:
    """The namespace, with what kube-controller-manager would add: `default` ServiceAccount and
    the `kube-root-ca.crt` ConfigMap (the ServiceAccount admission plugin mounts both)."""
    admin.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels or {}}})
    admin.apply(
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "default", "namespace": name}}
    )
    ca = Path(admin.creds.ca_file).read_text()
    admin.apply(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "kube-root-ca.crt", "namespace": name},
            "data": {"ca.crt": ca},
        }
    )


def install_argo(admin: Kube, manifests: Path, metrics_port: int) -> None:
    crds = sorted((manifests / "manifests/base/crds/full").glob("argoproj.io_*.yaml"))
    if not crds:
        raise RuntimeError(
            f"no Argo CRDs under {manifests}; rebuild with `python -m tests.cluster.build --force`"
        )
    for path in crds:
        for doc in load_yaml_documents(path):
            admin.apply(doc)
    for path in crds:
        for doc in load_yaml_documents(path):
            name = doc["metadata"]["name"]

            def established(name: str = name) -> bool:
                crd = admin.get(resource_path("CustomResourceDefinition", name))
                return any(
                    c["type"] == "Established" and c["status"] == "True"
                    for c in crd.get("status", {}).get("conditions", [])
                )

            admin.wait_for(f"CRD {name} established", established, 60)
    ensure_namespace(admin, ARGO_NAMESPACE)
    rbac_files = [
        manifests / "manifests/base/workflow-controller/workflow-controller-sa.yaml",
        manifests / "manifests/base/argo-server/argo-server-sa.yaml",
    ]
    for directory in ("workflow-controller-rbac", "argo-server-rbac"):
        rbac_files += sorted(
            p
            for p in (manifests / "manifests/cluster-install-no-crds" / directory).glob("*.yaml")
            if p.name != "kustomization.yaml"
        )
    for path in rbac_files:
        for doc in load_yaml_documents(path):
            # What kustomize's `namespace: argo` does to these manifests.
            if doc["kind"] in ("ServiceAccount", "Role", "RoleBinding"):
                doc["metadata"]["namespace"] = ARGO_NAMESPACE
            for subject in doc.get("subjects", []):
                if subject.get("kind") == "ServiceAccount":
                    subject.setdefault("namespace", ARGO_NAMESPACE)
            admin.apply(doc)
    # Argo's quick-start grant to the `default` ServiceAccount of the workflow namespace: what the
    # executor needs (create/patch WorkflowTaskResults), for the tests' own workflows. fedtwin's
    # chart grants its own service accounts the same.
    for rel in ("executor/emissary/executor-role.yaml", "executor-default-rolebinding.yaml"):
        for doc in load_yaml_documents(manifests / "manifests/quick-start/base" / rel):
            doc["metadata"]["namespace"] = WORKFLOW_NAMESPACE
            for subject in doc.get("subjects", []):
                subject.setdefault("namespace", WORKFLOW_NAMESPACE)
            admin.apply(doc)
    admin.apply(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "workflow-controller-configmap", "namespace": ARGO_NAMESPACE},
            "data": {
                k: yaml.safe_dump(v, sort_keys=False) for k, v in controller_config(metrics_port).items()
            },
        }
    )


def start_controller(plane: ControlPlane) -> ServerProcess:
    token = plane.service_account_token(ARGO_NAMESPACE, "argo")
    creds = Credentials(plane.server, plane.pki.ca.cert, token=token, user="argo-workflow-controller")
    kubeconfig = creds.kubeconfig(plane.workdir / "workflow-controller.kubeconfig", namespace=ARGO_NAMESPACE)
    argv = [
        str(plane.binaries.workflow_controller),
        "--kubeconfig",
        str(kubeconfig),
        "--configmap",
        "workflow-controller-configmap",
        "--executor-image",
        EXECUTOR_IMAGE,
        "--loglevel",
        os.environ.get("FEDTWIN_CLUSTER_CONTROLLER_LOGLEVEL", "info"),
    ]
    env = clean_env(
        LEADER_ELECTION_DISABLE="true",
        # Requeue after 1 s instead of 10 s when waiting on something (Argo's own e2e setting).
        DEFAULT_REQUEUE_TIME="1s",
    )
    process = Process("workflow-controller", plane.workdir, argv, env=env)
    process.wait_until(
        lambda: (
            "Starting Workflow Controller" in process.log_path.read_text(errors="replace")
            or "Manager initialized" in process.log_path.read_text(errors="replace")
        ),
        60,
        "controller started",
    )
    return process


def start(
    workdir: Path | None = None, binaries: build.Binaries | None = None, with_controller: bool = True
) -> ControlPlane:
    """Start etcd, kube-apiserver and (by default) Argo; raise RuntimeError naming what failed."""
    binaries = binaries or build.ensure()
    workdir = workdir or Path(tempfile.mkdtemp(prefix="fedtwin-cluster-"))
    workdir.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    clock = time.monotonic()

    def lap(name: str) -> None:
        nonlocal clock
        timings[name] = round(time.monotonic() - clock, 2)
        clock = time.monotonic()

    pki = generate(workdir / "pki", NODE_NAME)
    processes: list[ServerProcess] = []
    try:
        etcd, etcd_url = start_etcd(binaries, workdir)
        processes.append(etcd)
        lap("etcd")
        apiserver, server = start_apiserver(binaries, workdir, pki, etcd_url)
        processes.append(apiserver)
        admin_creds = Credentials(server, pki.ca.cert, pki.admin.cert, pki.admin.key, user="fedtwin-admin")
        admin = Kube(admin_creds)
        wait_ready(apiserver, admin)
        lap("kube-apiserver")
        kubeconfig = admin_creds.kubeconfig(workdir / "admin.kubeconfig", namespace=WORKFLOW_NAMESPACE)
        plane = ControlPlane(
            workdir,
            binaries,
            pki,
            server,
            admin,
            kubeconfig,
            processes,
            {"apiserver": int(urllib.parse.urlparse(server).port or 0)},
            timings,
        )
        ensure_namespace(admin, "default")
        ensure_namespace(admin, WORKFLOW_NAMESPACE, RESTRICTED_LABELS)
        lap("namespaces")
        if with_controller:
            metrics_port = free_ports(1)[0]
            plane.ports["controller-metrics"] = metrics_port
            install_argo(admin, binaries.argo_manifests, metrics_port)
            lap("argo-crds-rbac")
            processes.append(start_controller(plane))
            lap("workflow-controller")
        return plane
    except BaseException:
        for process in reversed(processes):
            process.stop(grace=3.0)
        raise


def describe(plane: ControlPlane) -> str:
    return json.dumps(
        {
            "server": plane.server,
            "kubeconfig": str(plane.kubeconfig),
            "workdir": str(plane.workdir),
            "ports": plane.ports,
        },
        indent=2,
    )


def remove_workdir(plane: ControlPlane) -> None:
    shutil.rmtree(plane.workdir, ignore_errors=True)


def retry_conflicts(action: Any, attempts: int = 5) -> Any:
    for attempt in range(attempts):
        try:
            return action()
        except KubeError as exc:
            if exc.status != 409 or attempt == attempts - 1:
                raise
            time.sleep(0.2)
    return None
