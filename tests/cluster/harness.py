"""A running local cluster for tests and humans: control plane + node agent + CLI helpers.

cluster = Cluster.start(workdir)                 # etcd, kube-apiserver, Argo, node agent
name = cluster.submit_manifest(workflow_dict)    # or cluster.submit("fedtwin-federated", {"rounds": "4"})
wf = cluster.wait(name, timeout=300)             # the final Workflow object
cluster.node(wf, "train(0:twin-000)")            # a status node by display name
cluster.pod_logs(name)                           # {pod name: its main log}
cluster.set_faults([...])                        # fault rules for the agent (agent.py)
cluster.stop()
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from tests.cluster import build, controlplane
from tests.cluster.agent import FaultHook, NodeAgent
from tests.cluster.controlplane import WORKFLOW_NAMESPACE, ControlPlane, Process
from tests.cluster.kube import Credentials, resource_path
from tests.servers import free_ports

ROOT = Path(__file__).resolve().parents[2]
TOOLS_BIN = ROOT / ".tools" / "bin"
FINAL_PHASES = ("Succeeded", "Failed", "Error")


class CommandError(RuntimeError):
    pass


@dataclass
class Cluster:
    plane: ControlPlane
    agent: NodeAgent
    workdir: Path
    faults_file: Path
    namespace: str = WORKFLOW_NAMESPACE
    owns_workdir: bool = False
    extra_processes: list[Any] = field(default_factory=list)

    # -- lifecycle -----------------------------------------------------------------------------------
    @classmethod
    def start(
        cls,
        workdir: Path | None = None,
        binaries: build.Binaries | None = None,
        fault_hook: FaultHook | None = None,
    ) -> Cluster:
        owns = workdir is None
        workdir = workdir or Path(tempfile.mkdtemp(prefix="fedtwin-cluster-"))
        plane = controlplane.start(workdir / "control-plane", binaries)
        faults_file = workdir / "faults.json"
        try:
            agent = NodeAgent(plane, workdir / "node", faults_file=faults_file, fault_hook=fault_hook)
            agent.start()
        except BaseException:
            plane.stop()
            raise
        return cls(plane, agent, workdir, faults_file, owns_workdir=owns)

    def stop(self) -> None:
        for process in self.extra_processes:
            process.stop(grace=3.0)
        self.agent.stop()
        self.plane.stop()
        if self.owns_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def start_argo_server(self) -> str:
        """`argo server` (auth mode server, plain HTTP) as the argo-server ServiceAccount; its URL.

        Built without the UI (see README.md): the API and the placeholder page are served."""
        port = free_ports(1)[0]
        token = self.plane.service_account_token(controlplane.ARGO_NAMESPACE, "argo-server")
        creds = Credentials(self.plane.server, self.plane.ca_file, token=token, user="argo-server")
        kubeconfig = creds.kubeconfig(
            self.workdir / "argo-server.kubeconfig", namespace=controlplane.ARGO_NAMESPACE
        )
        argv = [
            str(self.plane.binaries.argo),
            "server",
            "--kubeconfig",
            str(kubeconfig),
            "--auth-mode",
            "server",
            "--secure=false",
            "--port",
            str(port),
            "--browser=false",
            "--loglevel",
            "info",
        ]
        process = Process("argo-server", self.workdir, argv, env=controlplane.clean_env())
        self.extra_processes.append(process)
        url = f"http://127.0.0.1:{port}"

        def ready() -> bool:
            return requests.get(f"{url}/api/v1/version", timeout=2).status_code == 200

        process.wait_until(ready, 60, "/api/v1/version answers")
        return url

    def argo_api(self, url: str, path: str, patience: float = 30.0) -> requests.Response:
        """GET from `argo server`, retrying its 503s (its HTTP gateway answers before its gRPC
        side is up); the last answer, with the server's log in the test's message if it fails."""
        deadline = time.monotonic() + patience
        while True:
            response = requests.get(f"{url}{path}", timeout=30)
            if response.status_code != 503 or time.monotonic() > deadline:
                return response
            time.sleep(0.5)

    def argo_server_log(self) -> str:
        return "\n".join(p.log_tail(40) for p in self.extra_processes if p.name == "argo-server")

    # -- CLIs ------------------------------------------------------------------------------------------
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("KUBE", "ARGO_", "HELM_"))}
        env["KUBECONFIG"] = str(self.plane.kubeconfig)
        env["PATH"] = f"{TOOLS_BIN}:{self.plane.binaries.argo.parent}:{env.get('PATH', '')}"
        # Helm keeps its caches and repository config out of the user's home.
        for name, sub in (
            ("HELM_CACHE_HOME", "cache"),
            ("HELM_CONFIG_HOME", "config"),
            ("HELM_DATA_HOME", "data"),
        ):
            env[name] = str(self.workdir / "helm" / sub)
        return env

    def run(
        self, argv: list[str], check: bool = True, timeout: float = 300, stdin: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        tool = argv[0]
        if tool in ("helm", "kubectl") and not (TOOLS_BIN / tool).exists():
            raise CommandError(f"{tool} not found in {TOOLS_BIN}: run `make tools` (pinned helm and kubectl)")
        proc = subprocess.run(
            argv, env=self.env(), capture_output=True, text=True, timeout=timeout, input=stdin, cwd=ROOT
        )
        if check and proc.returncode != 0:
            output = f"{clip(proc.stdout, 1500)}\n{clip(proc.stderr, 3000)}"
            raise CommandError(f"`{' '.join(argv)}` exited {proc.returncode}:\n{output}")
        return proc

    def kubectl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run(["kubectl", *args], check=check)

    def helm(self, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return self.run(["helm", *args], check=check, timeout=timeout)

    def argo(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run([str(self.plane.binaries.argo), *args], check=check)

    # -- workflows --------------------------------------------------------------------------------------
    def submit_manifest(self, workflow: dict[str, Any], *extra: str, restricted: bool = True) -> str:
        """`argo submit` a Workflow manifest; returns the workflow's name.

        `restricted`: a workflow that sets no security context of its own (the conformance cases,
        the smoke tests) gets one PodSecurity `restricted` admits, at the workflow level (the pod's
        securityContext and a podSpecPatch for main), so it may run in `fedtwin`; fedtwin's own
        templates carry theirs and are submitted with `submit`, untouched."""
        if restricted:
            workflow = with_restricted_defaults(workflow)
        # JSON, not YAML: Argo parses YAML 1.1, where a value such as `n` would turn into a bool.
        path = Path(tempfile.mkstemp(prefix="wf-", suffix=".json", dir=self.workdir)[1])
        path.write_text(json.dumps(workflow))
        proc = self.argo("submit", "-n", self.namespace, str(path), "-o", "name", *extra)
        return proc.stdout.strip().splitlines()[-1]

    def submit(
        self, template: str, params: dict[str, Any] | None = None, *extra: str, namespace: str | None = None
    ) -> str:
        """`argo submit --from workflowtemplate/<template> -p k=v ...`; returns the workflow's name."""
        args = [
            "submit",
            "-n",
            namespace or self.namespace,
            "--from",
            f"workflowtemplate/{template}",
            "-o",
            "name",
        ]
        for key, value in (params or {}).items():
            args += ["-p", f"{key}={value}"]
        proc = self.argo(*args, *extra)
        return proc.stdout.strip().splitlines()[-1]

    def workflow(self, name: str, namespace: str | None = None) -> dict[str, Any]:
        return dict(self.plane.admin.get(resource_path("Workflow", name, namespace or self.namespace)))

    def wait(self, name: str, timeout: float = 300.0, namespace: str | None = None) -> dict[str, Any]:
        """Poll until the workflow is in a final phase and marked completed; the final object.

        On timeout, raise with the workflow's nodes, the agent's errors and the logs' tails."""
        deadline = time.monotonic() + timeout
        wf: dict[str, Any] = {}
        while time.monotonic() < deadline:
            wf = self.workflow(name, namespace)
            phase = wf.get("status", {}).get("phase")
            completed = (wf["metadata"].get("labels") or {}).get("workflows.argoproj.io/completed") == "true"
            if phase in FINAL_PHASES and completed:
                return wf
            if self.agent.errors:
                break
            time.sleep(0.5)
        raise TimeoutError(
            f"workflow {name} not finished after {timeout:.0f} s:\n{self.describe(wf)}\n"
            f"agent errors: {self.agent.errors}\n{self.diagnostics()}"
        )

    @staticmethod
    def nodes(wf: dict[str, Any]) -> list[dict[str, Any]]:
        return list((wf.get("status", {}).get("nodes") or {}).values())

    def node(self, wf: dict[str, Any], display_name: str) -> dict[str, Any]:
        """The one status node with this display name (e.g. `init`, `train(0:twin-000)`)."""
        found = [n for n in self.nodes(wf) if n.get("displayName") == display_name]
        if len(found) != 1:
            raise KeyError(
                f"{len(found)} nodes named {display_name!r} in {wf['metadata']['name']}:\n{self.describe(wf)}"
            )
        return found[0]

    @staticmethod
    def relative_nodes(wf: dict[str, Any]) -> dict[str, dict[str, Any]]:
        """Nodes by name without the workflow-name prefix (`.A`, `[0].a`, `` for the root)."""
        name = wf["metadata"]["name"]
        return {
            n["name"][len(name) :] if n["name"].startswith(name) else n["name"]: n for n in Cluster.nodes(wf)
        }

    @staticmethod
    def outputs(node: dict[str, Any]) -> dict[str, str]:
        return {
            p["name"]: p.get("value", "") for p in (node.get("outputs") or {}).get("parameters", []) or []
        }

    def pods(self, workflow: str) -> list[dict[str, Any]]:
        listing = self.plane.admin.get(
            resource_path("Pod", namespace=self.namespace),
            labelSelector=f"workflows.argoproj.io/workflow={workflow}",
        )
        return list(listing.get("items", []))

    def pod_logs(self, workflow: str) -> dict[str, str]:
        """Each pod's main-container output (stdout and stderr), from the agent's log files."""
        return {
            r.name: self.agent.pod_log(r.namespace, r.name)
            for r in self.agent.all_records()
            if r.labels.get("workflows.argoproj.io/workflow") == workflow
        }

    def set_faults(self, rules: list[dict[str, Any]]) -> None:
        """Fault rules for pods started from now on (format: tests/cluster/agent.py)."""
        tmp = self.faults_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"rules": rules}, indent=2))
        tmp.replace(self.faults_file)

    def clear_faults(self) -> None:
        self.faults_file.unlink(missing_ok=True)

    def describe(self, wf: dict[str, Any]) -> str:
        if not wf:
            return "(no workflow object)"
        status = wf.get("status", {})
        lines = [f"workflow {wf['metadata']['name']}: {status.get('phase')} {status.get('message', '')}"]
        for name, node in sorted(self.relative_nodes(wf).items()):
            lines.append(
                f"  {name or '(root)'} [{node.get('type')}] {node.get('phase')} {node.get('message', '')}"
            )
        return "\n".join(lines)

    def diagnostics(self, lines: int = 25) -> str:
        agent_log = self.agent.log_path.read_text(errors="replace").splitlines()[-lines:]
        return "--- node agent ---\n" + "\n".join(agent_log) + "\n" + self.plane.process_logs()


def clip(text: str, limit: int) -> str:
    """The head and the tail of a long message (an API server's validation error names the object
    first and can list hundreds of fields after)."""
    text = text.strip()
    if len(text) <= limit:
        return text
    return f"{text[: limit * 2 // 3]} [... {len(text) - limit} characters ...] {text[-limit // 3 :]}"


def venv_bin() -> Path:
    return Path(sys.executable).parent


def with_restricted_defaults(workflow: dict[str, Any]) -> dict[str, Any]:
    workflow = json.loads(json.dumps(workflow))
    spec = workflow.setdefault("spec", {})
    spec.setdefault(
        "securityContext",
        {
            "runAsNonRoot": True,
            "runAsUser": controlplane.MAIN_UID,
            "runAsGroup": controlplane.MAIN_UID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
    )
    spec.setdefault(
        "podSpecPatch",
        json.dumps(
            {
                "containers": [
                    {
                        "name": "main",
                        "securityContext": {
                            "allowPrivilegeEscalation": False,
                            "capabilities": {"drop": ["ALL"]},
                        },
                    }
                ]
            }
        ),
    )
    return workflow
