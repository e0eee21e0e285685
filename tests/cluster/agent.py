"""The node agent: a scheduler and a kubelet for one Node, running pods as local processes.

It registers a Ready Node, binds every pending pod scheduled to nobody, and runs the pods bound to
it. For an Argo pod (`init`, `wait` and `main` containers) it does what the kubelet and Argo
v4.0.7's executor would, in the same order:

1. init (emulated): the template comes from the init container's `ARGO_TEMPLATE` (or the
   ConfigMap it was offloaded to); input artifacts (`raw`, and `s3` through the artifact
   repository, with the credentials the wait/init containers get mounted) are written where main
   sees them; a script template's source is staged at `/argo/staging/script`.
2. wait (emulated) creates the pod's WorkflowTaskResult (named after the node id, labelled with
   the workflow and `report-outputs-completed: "false"`, owned by the Workflow), authenticated
   as the pod's ServiceAccount (a TokenRequest bound to the pod, like a mounted token), so the
   RBAC the charts grant is what is exercised.
3. main runs: the command after the first `--` of `argoexec emissary ... --` plus the args
   (for other pods: command + args), as a local process in its own mount namespace whose root is
   a copy-on-write overlay of this machine's filesystem (the "image"), with a private `/tmp`,
   `/dev` (null, zero, random, urandom, tty, shm, termination-log) and every volume mount
   (emptyDir, configMap, secret, downwardAPI, projected) at its path; user and group from the
   security context (`setpriv`, no_new_privs when allowPrivilegeEscalation is false, all
   capabilities dropped when asked); environment from the pod spec (values, Secret and ConfigMap
   references and envFrom read as the Node identity, fieldRefs, `$(VAR)` expansion); PATH starts
   with the venv's bin, so `fedtwin` is the real CLI. activeDeadlineSeconds (from the pod start)
   and ARGO_DEADLINE are enforced: SIGTERM, then SIGKILL after the grace period.
4. wait reports the outputs: parameters read from their `valueFrom.path` (one trailing newline
   trimmed, `default` when the file is missing, an error otherwise), artifacts uploaded to the
   artifact repository (S3, as the wait container does, with the repository's credentials read
   mounted for the wait container, i.e. read as the Node; `archive: none` as the file, otherwise
   `.tgz`), the script
   result when `ARGO_INCLUDE_SCRIPT_OUTPUT` is true; then labels the result completed.
5. Only then the pod status: init, wait and main terminated with their exit codes (a signalled
   main exits 137 as under the emissary; main's message from its terminationMessagePath, or the
   log tail with FallbackToLogsOnError), phase Succeeded or Failed; a pod past its
   activeDeadlineSeconds is Failed with reason DeadlineExceeded, as the kubelet reports it.

Deleting a pod kills its process and completes the deletion (as the kubelet confirms it).

Fault injection (for tests): a JSON file (`FEDTWIN_AGENT_FAULTS` or the `faults_file` argument),
read again for every pod, and/or a Python callback. The file:

    {"rules": [{"match": {"labels": {"fedtwin.io/role": "twin"},      # pod labels (subset)
                          "command_contains": "twin-001",              # substring of the command
                          "template": "train",                         # Argo template name
                          "node_name_contains": ".train(",             # Argo node name substring
                          "workflow": "my-wf"},                        # workflow label
                "action": "kill",            # "kill": send `signal` after `after_seconds`
                "after_seconds": 1.0,        #   (default 0.5; signal default 9 -> exit 137)
                "times": 1},                 # the first N matching pods only (omit: every one)
               {"match": {"command_contains": "twin-002"},
                "action": "exit", "exit_code": 1}]}  # run `exit 1` instead of the command

Every key of `match` is optional; all given keys must match. Counts of `times` live in the
agent (a rule is identified by its JSON), so rewriting the file with new rules starts afresh.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import io
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.cluster.controlplane import NODE_NAME, ControlPlane, die_with_parent
from tests.cluster.kube import Credentials, Kube, KubeError, resource_path

ARGOEXEC = "/var/run/argo/argoexec"
DEADLINE_MESSAGE = "Pod was active on the node longer than the specified deadline"
ZERO_TIME = "0001-01-01T00:00:00Z"
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
MAX_RESULT = 256 * 1024
"""Argo keeps at most the last 256 kB of a script's stdout as its result."""


def now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Fault:
    """What to do to one pod's main process instead of letting it run normally."""

    action: str  # "kill" or "exit"
    after_seconds: float = 0.5
    exit_code: int = 1
    signal: int = signal.SIGKILL
    rule: str = ""


FaultHook = Callable[[dict[str, Any], list[str]], "Fault | None"]
"""(pod, command) -> a Fault or None, called for every pod before its main process starts."""


class FaultRules:
    """Rules from a JSON file (see the module docstring), read again for every pod."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.hits: dict[str, int] = {}
        self.lock = threading.Lock()

    def match(self, pod: dict[str, Any], command: list[str], template: dict[str, Any]) -> Fault | None:
        if self.path is None or not self.path.is_file():
            return None
        try:
            rules = json.loads(self.path.read_text()).get("rules", [])
        except (OSError, ValueError) as exc:
            raise ValueError(f"fault file {self.path} is not valid JSON ({exc}); fix it") from exc
        meta = pod["metadata"]
        labels, annotations = meta.get("labels") or {}, meta.get("annotations") or {}
        joined = " ".join(command)
        for index, rule in enumerate(rules):
            match = rule.get("match", {})
            checks = [
                all(labels.get(k) == v for k, v in match.get("labels", {}).items()),
                all(annotations.get(k) == v for k, v in match.get("annotations", {}).items()),
                match.get("command_contains", "") in joined,
                match.get("template") in (None, template.get("name")),
                match.get("node_name_contains", "") in annotations.get("workflows.argoproj.io/node-name", ""),
                match.get("workflow") in (None, labels.get("workflows.argoproj.io/workflow")),
            ]
            if not all(checks):
                continue
            key = f"{index}:{json.dumps(rule, sort_keys=True)}"
            with self.lock:
                count = self.hits.get(key, 0)
                if rule.get("times") is not None and count >= int(rule["times"]):
                    continue
                self.hits[key] = count + 1
            action = rule.get("action", "kill")
            if action not in ("kill", "exit"):
                raise ValueError(
                    f"fault file {self.path}: rule {index} has action {action!r}; use 'kill' or 'exit'"
                )
            return Fault(
                action=action,
                after_seconds=float(rule.get("after_seconds", 0.5)),
                exit_code=int(rule.get("exit_code", 1)),
                signal=int(rule.get("signal", signal.SIGKILL)),
                rule=key,
            )
        return None


class PodSetupError(Exception):
    """The pod cannot start (yet): reported like the kubelet's CreateContainerConfigError."""


class PodUnsupported(Exception):
    """Something the agent does not emulate: the pod fails with this message."""


@dataclass
class RunRecord:
    """What the agent did with one pod (for tests and logs)."""

    namespace: str
    name: str
    uid: str
    labels: dict[str, str]
    command: list[str] = field(default_factory=list)
    exit_code: int | None = None
    fault: str = ""
    phase: str = ""
    log_path: Path | None = None


class NodeAgent:
    """Scheduler + kubelet for one Node. `start()` registers the node and starts watching."""

    def __init__(
        self,
        plane: ControlPlane,
        workdir: Path,
        venv_bin: Path | None = None,
        faults_file: Path | None = None,
        fault_hook: FaultHook | None = None,
        node_name: str = NODE_NAME,
    ) -> None:
        self.plane = plane
        self.workdir = workdir
        self.node_name = node_name
        self.venv_bin = venv_bin or Path(sys.executable).parent
        faults_env = os.environ.get("FEDTWIN_AGENT_FAULTS")
        self.faults = FaultRules(faults_file or (Path(faults_env) if faults_env else None))
        self.fault_hook = fault_hook
        self.node_creds = plane.credentials(plane.pki.node, f"system:node:{node_name}")
        self.scheduler_creds = plane.credentials(plane.pki.scheduler, "system:kube-scheduler")
        self.node = Kube(self.node_creds)
        self.scheduler = Kube(self.scheduler_creds)
        self.runs: dict[str, PodRun] = {}
        self.records: dict[str, RunRecord] = {}
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.threads: list[threading.Thread] = []
        self.errors: list[str] = []
        workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = workdir / "agent.log"
        self._log = self.log_path.open("a")

    # -- lifecycle -------------------------------------------------------------------------------
    def log(self, message: str) -> None:
        with self.lock:
            self._log.write(f"{now()} {message}\n")
            self._log.flush()

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.register_node()
        for target in (self.schedule_loop, self.kubelet_loop):
            thread = threading.Thread(target=target, name=target.__name__, daemon=True)
            thread.start()
            self.threads.append(thread)

    def stop(self) -> None:
        self.stopping.set()
        with self.lock:
            runs = list(self.runs.values())
        for run in runs:
            run.kill_now()
        for run in runs:
            run.join(timeout=15)
        self.node.close()
        self.scheduler.close()
        self._log.close()

    def register_node(self) -> None:
        cpu = os.cpu_count() or 1
        memory_kib = 0
        with contextlib.suppress(OSError, ValueError):
            for line in Path("/proc/meminfo").read_text().splitlines():
                if line.startswith("MemTotal:"):
                    memory_kib = int(line.split()[1])
        capacity = {"cpu": str(cpu), "memory": f"{memory_kib}Ki", "pods": "110", "ephemeral-storage": "64Gi"}
        node = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": self.node_name,
                "labels": {
                    "kubernetes.io/hostname": self.node_name,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64",
                    "fedtwin.io/node-agent": "true",
                },
            },
        }
        with contextlib.suppress(KubeError):
            self.node.create(resource_path("Node"), node)
        self.node.merge_patch(
            resource_path("Node", self.node_name, subresource="status"),
            {
                "status": {
                    "capacity": capacity,
                    "allocatable": capacity,
                    "addresses": [
                        {"type": "InternalIP", "address": "127.0.0.1"},
                        {"type": "Hostname", "address": self.node_name},
                    ],
                    "conditions": [
                        {
                            "type": t,
                            "status": "False",
                            "reason": f"KubeletHas{r}",
                            "lastHeartbeatTime": now(),
                            "lastTransitionTime": now(),
                            "message": "node agent (tests/cluster)",
                        }
                        for t, r in (
                            ("MemoryPressure", "SufficientMemory"),
                            ("DiskPressure", "NoDiskPressure"),
                            ("PIDPressure", "SufficientPID"),
                        )
                    ]
                    + [
                        {
                            "type": "Ready",
                            "status": "True",
                            "reason": "KubeletReady",
                            "lastHeartbeatTime": now(),
                            "lastTransitionTime": now(),
                            "message": "node agent (tests/cluster) is ready",
                        }
                    ],
                    "nodeInfo": {
                        "kubeletVersion": "v1.34.4",
                        "kubeProxyVersion": "",
                        "operatingSystem": "linux",
                        "architecture": "amd64",
                        "containerRuntimeVersion": "fedtwin-agent://1",
                        "osImage": "this machine (tests/cluster node agent)",
                        "kernelVersion": os.uname().release,
                        "machineID": "",
                        "systemUUID": "",
                        "bootID": "",
                    },
                }
            },
        )

    # -- watching ----------------------------------------------------------------------------------
    def _watch_pods(
        self, client: Kube, field_selector: str, handle: Callable[[dict[str, Any]], None]
    ) -> None:
        while not self.stopping.is_set():
            try:
                listing = client.get("/api/v1/pods", fieldSelector=field_selector)
                for pod in listing.get("items", []):
                    handle(pod)
                version = listing["metadata"]["resourceVersion"]
                while not self.stopping.is_set():
                    for event in client.watch(
                        "/api/v1/pods", version, timeout_seconds=30, fieldSelector=field_selector
                    ):
                        if event["type"] == "ERROR":
                            raise KubeError(int(event["object"].get("code", 500)), str(event["object"]))
                        obj = event["object"]
                        version = obj["metadata"]["resourceVersion"]
                        if event["type"] in ("ADDED", "MODIFIED"):
                            handle(obj)
                        if self.stopping.is_set():
                            return
            except Exception as exc:  # re-list after any watch failure (410 Gone, connection reset)
                if not self.stopping.is_set():
                    self.log(f"watch {field_selector!r}: {exc}; listing again")
                    time.sleep(0.5)

    def schedule_loop(self) -> None:
        self._watch_pods(self.scheduler, "spec.nodeName=", self.bind)

    def kubelet_loop(self) -> None:
        self._watch_pods(self.node, f"spec.nodeName={self.node_name}", self.sync_pod)

    def bind(self, pod: dict[str, Any]) -> None:
        meta, spec = pod["metadata"], pod["spec"]
        if (
            spec.get("nodeName")
            or meta.get("deletionTimestamp")
            or pod.get("status", {}).get("phase") != "Pending"
        ):
            return
        if spec.get("schedulerName", "default-scheduler") != "default-scheduler":
            return
        binding = {
            "apiVersion": "v1",
            "kind": "Binding",
            "metadata": {"name": meta["name"]},
            "target": {"apiVersion": "v1", "kind": "Node", "name": self.node_name},
        }
        try:
            self.scheduler.create(resource_path("Pod", meta["name"], meta["namespace"], "binding"), binding)
            self.log(f"bound {meta['namespace']}/{meta['name']}")
        except KubeError as exc:
            if exc.status not in (404, 409):
                self.log(f"binding {meta['namespace']}/{meta['name']} failed: {exc}")

    def sync_pod(self, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        uid = meta["uid"]
        with self.lock:
            run = self.runs.get(uid)
            if (
                run is None
                and not meta.get("deletionTimestamp")
                and pod.get("status", {}).get("phase") not in ("Succeeded", "Failed")
                and not self.stopping.is_set()
            ):
                run = PodRun(self, pod)
                self.runs[uid] = run
                self.records[uid] = run.record
                run.start()
                return
        if meta.get("deletionTimestamp"):
            if run is not None and run.is_alive():
                run.request_delete()
            else:
                self.finish_deletion(pod)

    def finish_deletion(self, pod: dict[str, Any]) -> None:
        """Confirm a graceful deletion (what the kubelet does once the containers are gone)."""
        meta = pod["metadata"]
        try:
            self.node.request(
                "DELETE",
                resource_path("Pod", meta["name"], meta["namespace"]),
                {
                    "apiVersion": "v1",
                    "kind": "DeleteOptions",
                    "gracePeriodSeconds": 0,
                    "preconditions": {"uid": meta["uid"]},
                },
                ok_missing=True,
            )
        except KubeError as exc:
            if exc.status != 409:
                self.log(f"deleting {meta['namespace']}/{meta['name']} failed: {exc}")

    # -- for tests ------------------------------------------------------------------------------------
    def record(self, namespace: str, name: str) -> RunRecord | None:
        with self.lock:
            for record in self.records.values():
                if record.namespace == namespace and record.name == name:
                    return record
        return None

    def pod_log(self, namespace: str, name: str) -> str:
        record = self.record(namespace, name)
        if record is None or record.log_path is None or not record.log_path.is_file():
            return ""
        return record.log_path.read_text(errors="replace")

    def all_records(self) -> list[RunRecord]:
        with self.lock:
            return list(self.records.values())


class PodRun(threading.Thread):
    """One pod's life on the node, in its own thread."""

    def __init__(self, agent: NodeAgent, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        super().__init__(name=f"pod-{meta['name']}", daemon=True)
        self.agent = agent
        self.pod = pod
        self.namespace, self.pod_name, self.uid = meta["namespace"], meta["name"], meta["uid"]
        self.dir = agent.workdir / "pods" / f"{self.namespace}_{self.pod_name}_{self.uid[:8]}"
        self.record = RunRecord(
            self.namespace,
            self.pod_name,
            self.uid,
            dict(meta.get("labels") or {}),
            log_path=self.dir / "main.log",
        )
        self.node = Kube(agent.node_creds)
        self.delete_requested = threading.Event()
        self.kill_requested = threading.Event()
        self.proc: subprocess.Popen[bytes] | None = None
        self.start_time = now()
        self._sa_client: Kube | None = None

    # -- helpers ------------------------------------------------------------------------------------
    def log(self, message: str) -> None:
        self.agent.log(f"{self.namespace}/{self.pod_name}: {message}")

    def request_delete(self) -> None:
        self.delete_requested.set()

    def kill_now(self) -> None:
        self.kill_requested.set()
        self.signal(signal.SIGKILL)

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, sig)

    def sa_client(self) -> Kube:
        """A client authenticated as the pod's ServiceAccount (a token bound to this pod)."""
        if self._sa_client is None:
            account = self.pod["spec"].get("serviceAccountName") or "default"
            token = self.node_call(
                lambda: self.agent.plane.service_account_token(
                    self.namespace, account, seconds=3600, bound_pod=self.pod, client=self.node
                )
            )
            creds = Credentials(
                self.agent.plane.server,
                self.agent.plane.ca_file,
                token=token,
                user=f"system:serviceaccount:{self.namespace}:{account}",
            )
            self._sa_client = Kube(creds)
        return self._sa_client

    def node_call(self, call: Callable[[], Any], patience: float = 20.0) -> Any:
        """Call the API as the Node, retrying 403s for a while: the Node authorizer and
        NodeRestriction learn that a pod is bound here from their informers, a moment after the
        binding (the kubelet retries the same way)."""
        deadline = time.monotonic() + patience
        while True:
            try:
                return call()
            except KubeError as exc:
                if exc.status != 403 or time.monotonic() > deadline:
                    raise
                time.sleep(0.3)

    def patch_status(self, status: dict[str, Any]) -> None:
        path = resource_path("Pod", self.pod_name, self.namespace, "status")
        self.node_call(lambda: self.node.merge_patch(path, {"status": status}))

    # -- the pod's life ----------------------------------------------------------------------------
    def run(self) -> None:
        try:
            self.live()
        except Exception as exc:  # an agent bug must show up as a failed pod with the reason, not a hang
            self.log(f"agent error: {exc!r}")
            self.agent.errors.append(f"{self.namespace}/{self.pod_name}: {exc!r}")
            with contextlib.suppress(Exception):
                self.patch_status(self.agent_error_status(f"node agent: {exc}"))
        finally:
            if self.delete_requested.is_set() and not self.agent.stopping.is_set():
                self.agent.finish_deletion(self.pod)
            for client in (self.node, self._sa_client):
                if client is not None:
                    client.close()

    def live(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        spec = self.pod["spec"]
        argo = self.node_call(lambda: ArgoPod.parse(self))
        try:
            plan = self.prepare(argo)
        except PodUnsupported as exc:
            self.fail_pod(str(exc), argo)
            return
        if plan is None:  # deleted or stopped while waiting for its configuration
            return
        start = time.monotonic()
        self.patch_status(self.running_status(argo, plan))
        if argo is not None:
            argo.initialize_result()
        deadline = spec.get("activeDeadlineSeconds")
        exit_code, reason, how = self.run_main(plan, start, deadline, argo)
        self.record.exit_code = exit_code
        wait_code, wait_message = 0, ""
        if argo is not None:
            wait_code, wait_message = argo.report_outputs(plan, how)
        self.patch_status(self.final_status(argo, plan, exit_code, reason, how, wait_code, wait_message))
        self.record.phase = "Succeeded" if exit_code == 0 and wait_code == 0 and how == "exited" else "Failed"
        self.log(f"main exited {exit_code} ({how}); wait {wait_code}; phase {self.record.phase}")

    def prepare(self, argo: ArgoPod | None) -> Plan | None:
        """Resolve env, volumes, command; retry (Pending) while a referenced object is missing."""
        while True:
            if self.delete_requested.is_set() or self.kill_requested.is_set():
                return None
            try:
                return self.node_call(lambda: Plan.build(self, argo))
            except PodSetupError as exc:
                self.log(f"waiting: {exc}")
                with contextlib.suppress(KubeError):
                    self.patch_status(self.waiting_status(argo, "CreateContainerConfigError", str(exc)))
                time.sleep(2.0)

    def container_names(self, argo: ArgoPod | None) -> tuple[list[str], list[str]]:
        spec = self.pod["spec"]
        return [c["name"] for c in spec.get("initContainers", [])], [c["name"] for c in spec["containers"]]

    def container_status(self, name: str, state: dict[str, Any], ready: bool = False) -> dict[str, Any]:
        image = next(
            (
                c.get("image", "")
                for c in self.pod["spec"].get("containers", []) + self.pod["spec"].get("initContainers", [])
                if c["name"] == name
            ),
            "",
        )
        return {
            "name": name,
            "state": state,
            "lastState": {},
            "ready": ready,
            "restartCount": 0,
            "image": image,
            "imageID": f"fedtwin-agent://{image}",
            "containerID": f"fedtwin-agent://{self.uid}/{name}",
            "started": "running" in state,
        }

    def conditions(self, ready: bool, initialized: bool = True, reason: str = "") -> list[dict[str, Any]]:
        t = now()
        ready_status = "True" if ready else "False"
        extra = {"reason": reason} if reason and not ready else {}
        return [
            {"type": "PodReadyToStartContainers", "status": "True", "lastTransitionTime": t},
            {"type": "Initialized", "status": "True" if initialized else "False", "lastTransitionTime": t},
            {"type": "Ready", "status": ready_status, "lastTransitionTime": t, **extra},
            {"type": "ContainersReady", "status": ready_status, "lastTransitionTime": t, **extra},
            {"type": "PodScheduled", "status": "True", "lastTransitionTime": t},
        ]

    def base_status(self) -> dict[str, Any]:
        return {
            "hostIP": "127.0.0.1",
            "hostIPs": [{"ip": "127.0.0.1"}],
            "podIP": "127.0.0.1",
            "podIPs": [{"ip": "127.0.0.1"}],
            "startTime": self.start_time,
        }

    def waiting_status(self, argo: ArgoPod | None, reason: str, message: str) -> dict[str, Any]:
        inits, mains = self.container_names(argo)
        return {
            **self.base_status(),
            "phase": "Pending",
            "conditions": self.conditions(False, reason="ContainersNotReady"),
            "initContainerStatuses": [
                self.container_status(
                    n,
                    {
                        "terminated": {
                            "exitCode": 0,
                            "reason": "Completed",
                            "startedAt": self.start_time,
                            "finishedAt": now(),
                        }
                    },
                )
                for n in inits
            ],
            "containerStatuses": [
                self.container_status(n, {"waiting": {"reason": reason, "message": message}}) for n in mains
            ],
        }

    def running_status(self, argo: ArgoPod | None, plan: Plan) -> dict[str, Any]:
        inits, mains = self.container_names(argo)
        plan.started_at = now()
        return {
            **self.base_status(),
            "phase": "Running",
            "conditions": self.conditions(True),
            "initContainerStatuses": [
                self.container_status(
                    n,
                    {
                        "terminated": {
                            "exitCode": 0,
                            "reason": "Completed",
                            "startedAt": self.start_time,
                            "finishedAt": plan.started_at,
                            "containerID": f"fedtwin-agent://{self.uid}/{n}",
                        }
                    },
                )
                for n in inits
            ],
            "containerStatuses": [
                self.container_status(n, {"running": {"startedAt": plan.started_at}}, True) for n in mains
            ],
        }

    def final_status(
        self,
        argo: ArgoPod | None,
        plan: Plan,
        exit_code: int,
        reason: str,
        how: str,
        wait_code: int,
        wait_message: str,
    ) -> dict[str, Any]:
        inits, mains = self.container_names(argo)
        finished = now()
        statuses = []
        for name in mains:
            if name == plan.container_name:
                code, message = exit_code, plan.termination_message(exit_code)
            elif name == "wait":
                code, message = wait_code, wait_message
            else:
                code, message = 0, ""
            terminated = {
                "exitCode": code,
                "reason": reason if name == plan.container_name else ("Completed" if code == 0 else "Error"),
                "startedAt": plan.started_at,
                "finishedAt": finished,
                "containerID": f"fedtwin-agent://{self.uid}/{name}",
            }
            if message:
                terminated["message"] = message
            statuses.append(self.container_status(name, {"terminated": terminated}))
        failed = how != "exited" or exit_code != 0 or wait_code != 0
        status = {
            **self.base_status(),
            "phase": "Failed" if failed else "Succeeded",
            "conditions": self.conditions(False, reason="PodCompleted" if not failed else "PodFailed"),
            "initContainerStatuses": [
                self.container_status(
                    n,
                    {
                        "terminated": {
                            "exitCode": 0,
                            "reason": "Completed",
                            "startedAt": self.start_time,
                            "finishedAt": plan.started_at,
                            "containerID": f"fedtwin-agent://{self.uid}/{n}",
                        }
                    },
                )
                for n in inits
            ],
            "containerStatuses": statuses,
        }
        if how == "deadline":
            status["reason"] = "DeadlineExceeded"
            status["message"] = DEADLINE_MESSAGE
        return status

    def agent_error_status(self, message: str) -> dict[str, Any]:
        """Failed, with every container terminated (exit 128, StartError: what a runtime reports for a
        container it could not start), so Argo ends the node with the agent's reason at once; a
        Failed pod whose containers still claim to run leaves the workflow Running until a timeout."""
        inits, mains = self.container_names(None)
        finished = now()

        def terminated(name: str) -> dict[str, Any]:
            return self.container_status(name, {"terminated": {
                "exitCode": 128, "reason": "StartError", "message": message, "startedAt": self.start_time,
                "finishedAt": finished, "containerID": f"fedtwin-agent://{self.uid}/{name}",
            }})

        return {
            **self.base_status(),
            "phase": "Failed",
            "reason": "NodeAgentError",
            "message": message,
            "conditions": self.conditions(False, reason="PodFailed"),
            "initContainerStatuses": [terminated(n) for n in inits],
            "containerStatuses": [terminated(n) for n in mains],
        }

    def fail_pod(self, message: str, argo: ArgoPod | None) -> None:
        """A pod the agent cannot run: init fails (Argo) or the pod fails with the reason."""
        self.log(f"cannot run: {message}")
        self.record.phase = "Failed"
        inits, mains = self.container_names(argo)
        t = now()
        if argo is not None:
            # As argoexec's init would: exit 64 with its error as the termination message.
            argo.initialize_result()
            argo.finalize_result()
            self.patch_status(
                {
                    **self.base_status(),
                    "phase": "Failed",
                    "conditions": self.conditions(False),
                    "initContainerStatuses": [
                        self.container_status(
                            n,
                            {
                                "terminated": {
                                    "exitCode": 64,
                                    "reason": "Error",
                                    "message": message,
                                    "startedAt": t,
                                    "finishedAt": t,
                                }
                            },
                        )
                        for n in inits
                    ],
                    "containerStatuses": [
                        self.container_status(n, {"waiting": {"reason": "PodInitializing"}}) for n in mains
                    ],
                }
            )
        else:
            self.patch_status(
                {
                    **self.base_status(),
                    "phase": "Failed",
                    "reason": "NodeAgentUnsupported",
                    "message": message,
                    "conditions": self.conditions(False),
                    "containerStatuses": [
                        self.container_status(
                            n,
                            {
                                "terminated": {
                                    "exitCode": 128,
                                    "reason": "StartError",
                                    "message": message,
                                    "startedAt": t,
                                    "finishedAt": t,
                                }
                            },
                        )
                        for n in mains
                    ],
                }
            )

    def run_main(self, plan: Plan, start: float, deadline: Any, argo: ArgoPod | None) -> tuple[int, str, str]:
        """Run main to its end: (exit code, terminated reason, how: exited|deadline|killed|deleted)."""
        fault = None
        if self.agent.fault_hook is not None:
            fault = self.agent.fault_hook(self.pod, plan.command)
        if fault is None:
            fault = self.agent.faults.match(self.pod, plan.command, argo.template if argo else {})
        command = plan.command
        if fault is not None:
            self.record.fault = fault.rule or fault.action
            self.log(f"fault injected: {fault}")
            if fault.action == "exit":
                command = [
                    "/bin/sh",
                    "-c",
                    f"echo 'node agent: injected fault, exit {fault.exit_code}' >&2; exit {fault.exit_code}",
                ]
        self.record.command = command
        if plan.missing_command:
            plan.write_log(f"{plan.missing_command}\n")
            return plan.not_found_exit, "Error" if argo else "StartError", "exited"
        self.proc = plan.spawn(command)
        deadline_at = start + float(deadline) if deadline is not None else None
        argo_deadline = argo.deadline() if argo is not None else None
        grace = float(self.pod["spec"].get("terminationGracePeriodSeconds", 30))
        how, term_sent = "exited", None
        fault_at = time.monotonic() + fault.after_seconds if fault and fault.action == "kill" else None
        while self.proc.poll() is None:
            t = time.monotonic()
            if fault_at is not None and t >= fault_at:
                self.signal(fault.signal if fault else signal.SIGKILL)
                fault_at = None
            if term_sent is None:
                if deadline_at is not None and t >= deadline_at:
                    how = "deadline"
                elif argo_deadline is not None and time.time() >= argo_deadline:
                    how = "argo-deadline"
                    plan.wait_message = "Step exceeded its deadline"
                elif self.delete_requested.is_set():
                    how = "deleted"
                elif self.kill_requested.is_set():
                    how = "killed"
                if how != "exited":
                    self.log(f"stopping main ({how}): SIGTERM, SIGKILL after {grace:.0f} s")
                    self.signal(signal.SIGTERM)
                    term_sent = t
            elif t - term_sent >= grace or self.kill_requested.is_set():
                self.signal(signal.SIGKILL)
            time.sleep(0.05)
        plan.finish_logs()
        code = self.proc.returncode
        if code < 0:  # signalled: argoexec emissary exits 137; a runtime reports 128 + signal
            code = 137 if argo is not None else 128 - code
        if plan.exec_marker.exists() is False and code != 0 and not plan.missing_command:
            # The namespace setup itself failed before exec: not the command's fault.
            setup = plan.log_tail(5)
            raise RuntimeError(f"pod sandbox setup failed (exit {code}): {setup}")
        if how == "argo-deadline":
            how = "exited"  # the wait container killed main; the pod fails through main's exit code
        reason = "Completed" if code == 0 else "Error"
        return code, reason, how


@dataclass
class ArgoPod:
    """What makes a pod an Argo workflow pod, and the wait container's reporting."""

    run: PodRun
    template: dict[str, Any]
    node_id: str
    workflow: str
    workflow_uid: str
    env: dict[str, str]
    errors: list[str] = field(default_factory=list)
    """The wait container's errors so far (it exits 64 with the first ones as its message)."""

    @classmethod
    def parse(cls, run: PodRun) -> ArgoPod | None:
        pod = run.pod
        annotations = pod["metadata"].get("annotations") or {}
        node_id = annotations.get("workflows.argoproj.io/node-id")
        main = next((c for c in pod["spec"]["containers"] if c["name"] == "main"), None)
        if node_id is None or main is None or not (main.get("command") or [""])[0].endswith("argoexec"):
            return None
        init = next((c for c in pod["spec"].get("initContainers", []) if c["name"] == "init"), None)
        wait = next((c for c in pod["spec"]["containers"] if c["name"] == "wait"), None)
        # The executor's variables (ARGO_WORKFLOW_UID, ARGO_DEADLINE, ...) as the wait container has them.
        env = {
            e["name"]: e.get("value", "")
            for c in (main, wait)
            if c
            for e in (c.get("env") or [])
            if "value" in e
        }
        template_json = ""
        for e in (init or {}).get("env", []) or []:
            if e["name"] == "ARGO_TEMPLATE":
                template_json = e.get("value", "")
        if not template_json or not template_json.lstrip().startswith("{"):
            # Offloaded (over 128 kB) into a ConfigMap named after the pod.
            cm = run.node.get(resource_path("ConfigMap", run.pod_name, run.namespace))
            template_json = cm["data"]["ARGO_TEMPLATE"]
        workflow = (pod["metadata"].get("labels") or {}).get("workflows.argoproj.io/workflow", "")
        owner_uid = next(
            (o["uid"] for o in pod["metadata"].get("ownerReferences") or [] if o.get("kind") == "Workflow"),
            "",
        )
        return cls(
            run, json.loads(template_json), node_id, workflow, env.get("ARGO_WORKFLOW_UID", owner_uid), env
        )

    def deadline(self) -> float | None:
        value = self.env.get("ARGO_DEADLINE", "")
        if not value or value.startswith("0001-01-01"):
            return None
        return datetime.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()

    def result_path(self) -> str:
        return resource_path("WorkflowTaskResult", self.node_id, self.run.namespace)

    def initialize_result(self) -> None:
        """The wait container's InitializeOutput: an empty result, not yet complete."""
        body = {
            "apiVersion": "argoproj.io/v1alpha1",
            "kind": "WorkflowTaskResult",
            "metadata": {
                "name": self.node_id,
                "labels": {
                    "workflows.argoproj.io/workflow": self.workflow,
                    "workflows.argoproj.io/report-outputs-completed": "false",
                },
                "ownerReferences": [
                    {
                        "apiVersion": "argoproj.io/v1alpha1",
                        "kind": "Workflow",
                        "name": self.workflow,
                        "uid": self.workflow_uid,
                    }
                ],
            },
        }
        try:
            self.run.sa_client().create(
                resource_path("WorkflowTaskResult", namespace=self.run.namespace), body
            )
        except KubeError as exc:
            # argoexec retries only transient errors; a Forbidden is logged and the wait container
            # carries on, to fail at the end with this error (exit 64).
            if exc.status != 409:
                self.errors.append(str(exc))

    def finalize_result(self) -> None:
        try:
            self.run.sa_client().merge_patch(
                self.result_path(),
                {"metadata": {"labels": {"workflows.argoproj.io/report-outputs-completed": "true"}}},
            )
        except KubeError as exc:
            self.errors.append(str(exc))

    def report_outputs(self, plan: Plan, how: str) -> tuple[int, str]:
        """SaveParameters, SaveArtifacts, CaptureScriptResult, ReportOutputs, FinalizeOutput.

        Returns the wait container's (exit code, termination message)."""
        outputs = json.loads(json.dumps(self.template.get("outputs") or {}))
        errors: list[str] = []
        for param in outputs.get("parameters", []) or []:
            source = param.get("valueFrom") or {}
            if not source.get("path"):
                continue
            data = plan.read_output(source["path"])
            if data is None:
                if "default" in source:
                    param["value"] = source["default"]
                else:
                    # SaveParameters returns at the first missing file: later parameters stay
                    # without a value, as the wait container reports them.
                    errors.append(f"open {source['path']}: no such file or directory")
                    break
            else:
                param["value"] = data.decode(errors="replace").removesuffix("\n")
        saved: list[dict[str, Any]] = []
        for art in outputs.get("artifacts", []) or []:
            if not art.get("path"):
                continue
            try:
                if plan.save_artifact(self, art):
                    saved.append(art)
            except Exception as exc:
                errors.append(f"artifact {art.get('name')}: {exc}")
        outputs["artifacts"] = saved
        if self.env.get("ARGO_INCLUDE_SCRIPT_OUTPUT") == "true":
            out = plan.stdout_path.read_bytes() if plan.stdout_path.is_file() else b""
            text = out.decode(errors="replace").removesuffix("\n")
            outputs["result"] = text[-MAX_RESULT:]
        if (self.template.get("archiveLocation") or {}).get("archiveLogs"):
            try:
                saved.append(plan.save_logs(self))
            except Exception as exc:
                errors.append(f"main-logs: {exc}")
        try:
            self.run.sa_client().merge_patch(self.result_path(), {"outputs": outputs})
        except KubeError as exc:
            if exc.status == 404:  # InitializeOutput failed: upsert creates it
                self.initialize_result()
                with contextlib.suppress(KubeError):
                    self.run.sa_client().merge_patch(self.result_path(), {"outputs": outputs})
            else:
                errors.append(str(exc))
        self.finalize_result()
        errors = self.errors + errors
        if errors:
            return 64, "; ".join(dict.fromkeys(errors))
        return 0, plan.wait_message


class Plan:
    """How one main container runs: command, environment, mounts, user; its files on the host."""

    def __init__(self, run: PodRun, container: dict[str, Any]) -> None:
        self.run = run
        self.container = container
        self.container_name = container["name"]
        self.root = run.dir / "rootfs"
        self.tmp = run.dir / "tmp"
        self.volumes_dir = run.dir / "volumes"
        self.exec_marker = run.dir / ".exec"
        self.stdout_path = run.dir / "main.stdout"
        self.log_path = run.dir / "main.log"
        self.termination_log = run.dir / "termination-log"
        self.command: list[str] = []
        self.env: dict[str, str] = {}
        self.mounts: list[tuple[str, Path, bool]] = []  # (container path, host path, read only)
        self.uid: int = 0
        self.gid: int = 0
        self.no_new_privs = False
        self.drop_caps = False
        self.workdir = "/"
        self.started_at = ""
        self.wait_message = ""
        self.missing_command = ""
        self.not_found_exit = 127
        self._threads: list[threading.Thread] = []
        self._log_lock = threading.Lock()

    # -- building ------------------------------------------------------------------------------------
    @classmethod
    def build(cls, run: PodRun, argo: ArgoPod | None) -> Plan:
        spec = run.pod["spec"]
        containers = spec["containers"]
        if argo is not None:
            mains = [c for c in containers if c["name"] not in ("wait",)]
            if len(mains) != 1 or mains[0]["name"] != "main":
                raise PodUnsupported(
                    f"containers {[c['name'] for c in mains]} besides wait: sidecars and "
                    "containerSet templates are not emulated by the node agent (tests/cluster)"
                )
        elif len(containers) != 1:
            raise PodUnsupported("the node agent (tests/cluster) runs pods with one container (or Argo pods)")
        container = containers[-1] if argo is None else next(c for c in containers if c["name"] == "main")
        plan = cls(run, container)
        plan.resolve_command(argo)
        plan.resolve_env(argo)
        plan.resolve_security()
        plan.resolve_volumes(argo)
        plan.workdir = container.get("workingDir") or "/"
        return plan

    def resolve_command(self, argo: ArgoPod | None) -> None:
        command = list(self.container.get("command") or [])
        args = list(self.container.get("args") or [])
        if argo is not None:
            if "--" not in command:
                raise PodUnsupported(f"main command {command} has no `--` after argoexec emissary")
            command = command[command.index("--") + 1 :]
            args_file = next(
                (e for e in self.container.get("env", []) or [] if e["name"] == "ARGO_CONTAINER_ARGS_FILE"),
                None,
            )
            if args_file is not None:
                cm = self.run.node.get(resource_path("ConfigMap", self.run.pod_name, self.run.namespace))
                args = args + json.loads(cm["data"][Path(args_file.get("value", "")).name])
        full = command + args
        if not full:
            raise PodUnsupported(
                "the container has no command: the node agent cannot read an image's entrypoint"
            )
        self.command = full

    def field_value(self, path: str) -> str:
        pod = self.run.pod
        meta = pod["metadata"]
        match = re.fullmatch(r"metadata\.(labels|annotations)\['([^']+)'\]", path)
        if match:
            return str((meta.get(match.group(1)) or {}).get(match.group(2), ""))
        values = {
            "metadata.name": meta["name"],
            "metadata.namespace": meta["namespace"],
            "metadata.uid": meta["uid"],
            "spec.nodeName": self.run.agent.node_name,
            "spec.serviceAccountName": pod["spec"].get("serviceAccountName", "default"),
            "status.hostIP": "127.0.0.1",
            "status.hostIPs": "127.0.0.1",
            "status.podIP": "127.0.0.1",
            "status.podIPs": "127.0.0.1",
        }
        if path not in values:
            raise PodUnsupported(f"fieldRef {path} is not emulated by the node agent")
        return values[path]

    def resource_value(self, ref: dict[str, Any]) -> str:
        resource = ref["resource"]
        kind, _, name = resource.partition(".")
        value = ((self.container.get("resources") or {}).get(kind) or {}).get(name)
        if value is None:  # the kubelet falls back to node allocatable
            value = str(os.cpu_count() or 1) if name == "cpu" else "0"
        return str(value)

    def lookup(self, kind: str, ref: dict[str, Any], key: str | None) -> str | None:
        name = ref.get("name", "")
        obj = self.run.node.get_optional(resource_path(kind, name, self.run.namespace))
        optional = bool(ref.get("optional"))
        if obj is None:
            if optional:
                return None
            raise PodSetupError(f'{kind.lower()} "{name}" not found')
        if key is None:
            return ""
        data = obj.get("data") or {}
        if key in data:
            return base64.b64decode(data[key]).decode() if kind == "Secret" else str(data[key])
        binary = obj.get("binaryData") or {}
        if key in binary:
            return base64.b64decode(binary[key]).decode(errors="replace")
        if optional:
            return None
        raise PodSetupError(f"couldn't find key {key} in {kind} {self.run.namespace}/{name}")

    def resolve_env(self, argo: ArgoPod | None) -> None:
        env: dict[str, str] = {}
        for source in self.container.get("envFrom", []) or []:
            prefix = source.get("prefix", "")
            for kind, field_name in (("ConfigMap", "configMapRef"), ("Secret", "secretRef")):
                ref = source.get(field_name)
                if ref is None:
                    continue
                obj = self.run.node.get_optional(resource_path(kind, ref["name"], self.run.namespace))
                if obj is None:
                    if ref.get("optional"):
                        continue
                    raise PodSetupError(f'{kind.lower()} "{ref["name"]}" not found')
                for key, value in (obj.get("data") or {}).items():
                    env[prefix + key] = base64.b64decode(value).decode() if kind == "Secret" else value
        for var in self.container.get("env", []) or []:
            name = var["name"]
            if "value" in var or "valueFrom" not in var:
                env[name] = expand(var.get("value", ""), env)
                continue
            source = var["valueFrom"]
            value: str | None
            if "secretKeyRef" in source:
                value = self.lookup("Secret", source["secretKeyRef"], source["secretKeyRef"]["key"])
            elif "configMapKeyRef" in source:
                value = self.lookup("ConfigMap", source["configMapKeyRef"], source["configMapKeyRef"]["key"])
            elif "fieldRef" in source:
                value = self.field_value(source["fieldRef"]["fieldPath"])
            elif "resourceFieldRef" in source:
                value = self.resource_value(source["resourceFieldRef"])
            else:
                raise PodUnsupported(
                    f"env {name}: valueFrom {sorted(source)} is not emulated by the node agent"
                )
            if value is not None:
                env[name] = value
        env.setdefault("PATH", f"{self.run.agent.venv_bin}:{SYSTEM_PATH}")
        env.setdefault("HOME", "/tmp")
        env.setdefault("HOSTNAME", self.run.pod_name)
        self.env = env
        self.command = [expand(part, env) for part in self.command]
        name = self.command[0]
        if "/" not in name:
            found = shutil.which(name, path=env["PATH"])
            if found is None:
                if argo is not None:  # argoexec emissary: "failed to find name in PATH", exit 64
                    self.missing_command = (
                        f'failed to find name in PATH: exec: "{name}": executable file not found in $PATH'
                    )
                    self.not_found_exit = 64
                else:
                    self.missing_command = f'exec: "{name}": executable file not found in $PATH'
                    self.not_found_exit = 128

    def resolve_security(self) -> None:
        pod_sc = self.run.pod["spec"].get("securityContext") or {}
        sc = self.container.get("securityContext") or {}

        def pick(key: str) -> Any:
            return sc.get(key, pod_sc.get(key))

        self.uid = int(pick("runAsUser") or 0)
        self.gid = int(pick("runAsGroup") or 0)
        if pick("runAsNonRoot") and self.uid == 0:
            raise PodSetupError(
                "container has runAsNonRoot and image will run as root (the node agent runs "
                "images as root unless runAsUser is set)"
            )
        self.no_new_privs = sc.get("allowPrivilegeEscalation") is False
        self.drop_caps = "ALL" in ((sc.get("capabilities") or {}).get("drop") or [])

    def materialize(self, volume: dict[str, Any], target: Path, argo: ArgoPod | None) -> None:
        """Write a configMap/secret/downwardAPI/projected volume's files into `target`."""
        target.mkdir(parents=True, exist_ok=True)
        target.chmod(0o755)

        def write_items(
            kind: str, ref: dict[str, Any], items: list[dict[str, Any]] | None, mode: int
        ) -> None:
            name = ref.get("name") or ref.get("secretName") or ""
            obj = self.run.node.get_optional(resource_path(kind, name, self.run.namespace))
            if obj is None:
                if ref.get("optional"):
                    return
                raise PodSetupError(
                    f'MountVolume.SetUp failed for volume "{volume["name"]}": '
                    f'{kind.lower()} "{name}" not found'
                )
            data = {
                k: (base64.b64decode(v) if kind == "Secret" else v.encode())
                for k, v in (obj.get("data") or {}).items()
            }
            data.update({k: base64.b64decode(v) for k, v in (obj.get("binaryData") or {}).items()})
            selected = (
                [(i["key"], i.get("path", i["key"]), i.get("mode", mode)) for i in items]
                if items
                else [(k, k, mode) for k in data]
            )
            for key, rel, file_mode in selected:
                if key not in data:
                    if ref.get("optional"):
                        continue
                    raise PodSetupError(f"configmap/secret {name}: no key {key}")
                path = target / rel
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(data[key])
                path.chmod(file_mode)

        default_mode = volume.get("defaultMode", 0o644)
        if "configMap" in volume["source"]:
            src = volume["source"]["configMap"]
            write_items("ConfigMap", src, src.get("items"), src.get("defaultMode", 0o644))
        elif "secret" in volume["source"]:
            src = volume["source"]["secret"]
            write_items("Secret", src, src.get("items"), src.get("defaultMode", 0o644))
        elif "downwardAPI" in volume["source"]:
            for item in volume["source"]["downwardAPI"].get("items", []):
                (target / item["path"]).write_text(self.field_value(item["fieldRef"]["fieldPath"]))
        elif "projected" in volume["source"]:
            projected = volume["source"]["projected"]
            mode = projected.get("defaultMode", default_mode)
            for source in projected.get("sources", []):
                if "configMap" in source:
                    write_items("ConfigMap", source["configMap"], source["configMap"].get("items"), mode)
                elif "secret" in source:
                    write_items("Secret", source["secret"], source["secret"].get("items"), mode)
                elif "downwardAPI" in source:
                    for item in source["downwardAPI"].get("items", []):
                        path = target / item["path"]
                        path.write_text(self.field_value(item["fieldRef"]["fieldPath"]))
                        path.chmod(mode)
                elif "serviceAccountToken" in source:
                    token_spec = source["serviceAccountToken"]
                    account = self.run.pod["spec"].get("serviceAccountName") or "default"
                    token = self.run.agent.plane.service_account_token(
                        self.run.namespace,
                        account,
                        seconds=max(int(token_spec.get("expirationSeconds", 3607)), 600),
                        bound_pod=self.run.pod,
                        client=self.run.node,
                    )
                    path = target / token_spec["path"]
                    path.write_text(token)
                    path.chmod(mode)
                else:
                    raise PodUnsupported(f"projected volume source {sorted(source)} is not emulated")

    def resolve_volumes(self, argo: ArgoPod | None) -> None:
        volumes = {v["name"]: v for v in self.run.pod["spec"].get("volumes", []) or []}
        for path in (self.tmp, self.volumes_dir):
            path.mkdir(parents=True, exist_ok=True)
        self.tmp.chmod(0o1777)
        for mount in self.container.get("volumeMounts", []) or []:
            volume = volumes.get(mount["name"])
            if volume is None:
                raise PodUnsupported(f"volumeMount {mount['name']} has no volume")
            host = self.volumes_dir / mount["name"]
            kinds = set(volume) - {"name"}
            if kinds <= {"emptyDir"}:
                if not host.exists():
                    host.mkdir(parents=True)
                    host.chmod(0o1777)
            elif kinds & {"configMap", "secret", "downwardAPI", "projected"}:
                if not host.exists():
                    kind = next(iter(kinds & {"configMap", "secret", "downwardAPI", "projected"}))
                    self.materialize({"name": mount["name"], "source": {kind: volume[kind]}}, host, argo)
            else:
                raise PodUnsupported(
                    f"volume {mount['name']} ({', '.join(sorted(kinds))}) is not emulated by "
                    "the node agent (tests/cluster): only emptyDir, configMap, secret, "
                    "downwardAPI and projected volumes"
                )
            # A subPath may name a file the init container writes (Argo's input artifacts are
            # mounted so): it is resolved after init, as the kubelet resolves it at container start.
            source = host / mount["subPath"] if mount.get("subPath") else host
            self.mounts.append((mount["mountPath"], source, bool(mount.get("readOnly"))))
        if argo is not None:
            self.stage_inputs(argo)
        for _, source, _ in self.mounts:
            if not source.exists():  # the kubelet creates a missing subPath as a directory
                source.mkdir(parents=True)
                source.chmod(0o1777)

    def stage_inputs(self, argo: ArgoPod) -> None:
        """The init container's work: script source and input artifacts."""
        template = argo.template
        script = template.get("script")
        if script is not None:
            staging = self.host_path("/argo/staging")
            if staging is None:
                raise PodUnsupported("script template without the argo-staging volume")
            (staging / "script").write_text(script.get("source", ""))
            (staging / "script").chmod(0o755)
        for art in (template.get("inputs") or {}).get("artifacts", []) or []:
            path = art.get("path")
            if not path:
                continue
            destination = self.host_path(path)
            if destination is None:
                raise PodUnsupported(f"input artifact {art['name']}: {path} is not on a volume")
            if "raw" in art:
                destination.parent.mkdir(parents=True, exist_ok=True)
                destination.write_text(art["raw"].get("data", ""))
                destination.chmod(0o644)
            elif "s3" in art or "s3" in (template.get("archiveLocation") or {}):
                try:
                    data = S3Repo.for_artifact(argo, art).get(art)
                except PodUnsupported:
                    raise
                except Exception as exc:
                    if art.get("optional"):
                        continue
                    raise PodUnsupported(f"failed to load artifact '{art['name']}': {exc}") from exc
                unpack(data, destination)
            else:
                kind = sorted(
                    set(art)
                    - {
                        "name",
                        "path",
                        "mode",
                        "optional",
                        "archive",
                        "from",
                        "globalName",
                        "subPath",
                        "recurseMode",
                        "deleted",
                        "fromExpression",
                        "artifactGC",
                    }
                )
                raise PodUnsupported(
                    f"input artifact {art['name']} of kind {kind} is not emulated by the "
                    "node agent (only raw and s3)"
                )

    # -- paths -----------------------------------------------------------------------------------------
    def host_path(self, container_path: str) -> Path | None:
        """Where a container path lives on the host: a volume mount, /tmp, or the rootfs upper layer."""
        path = os.path.normpath(container_path)
        best: tuple[str, Path] | None = None
        for mount_path, host, _ in self.mounts:
            mp = os.path.normpath(mount_path)
            if (path == mp or path.startswith(mp.rstrip("/") + "/")) and (
                best is None or len(mp) > len(best[0])
            ):
                best = (mp, host)
        if best is not None:
            rel = os.path.relpath(path, best[0])
            return best[1] if rel == "." else best[1] / rel
        if path == "/tmp" or path.startswith("/tmp/"):
            return self.tmp / os.path.relpath(path, "/tmp")
        return None

    def read_output(self, container_path: str) -> bytes | None:
        host = self.host_path(container_path)
        candidates = (
            [host]
            if host is not None
            else [self.run.dir / "upper" / container_path.lstrip("/"), Path(container_path)]
        )
        for candidate in candidates:
            if candidate is not None and candidate.is_file():
                return candidate.read_bytes()
        return None

    def output_source(self, container_path: str) -> Path | None:
        host = self.host_path(container_path)
        for candidate in (
            [host]
            if host is not None
            else [self.run.dir / "upper" / container_path.lstrip("/"), Path(container_path)]
        ):
            if candidate is not None and candidate.exists():
                return candidate
        return None

    def termination_message(self, exit_code: int) -> str:
        path = self.container.get("terminationMessagePath") or "/dev/termination-log"
        source = self.termination_log if path == "/dev/termination-log" else self.host_path(path)
        message = ""
        if source is not None and source.is_file():
            message = source.read_text(errors="replace")[-4096:]
        if (
            not message
            and exit_code != 0
            and self.container.get("terminationMessagePolicy") == "FallbackToLogsOnError"
        ):
            lines = self.log_tail(80).splitlines()
            message = "\n".join(lines)[-2048:]
        if not message and self.missing_command:
            message = self.missing_command
        return message

    def log_tail(self, lines: int) -> str:
        if not self.log_path.is_file():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    # -- running -----------------------------------------------------------------------------------------
    def sandbox_script(self) -> str:
        """Shell run by `unshare --mount` as root: the overlay root, /dev, /tmp, volumes, then exec."""
        q = shlex.quote
        pod = self.run.dir
        root = q(str(self.root))
        lines = [
            "set -eu",
            f"mkdir -p {q(str(pod / 'upper'))} {q(str(pod / 'work'))} {root}",
            f"mount -t overlay overlay -o lowerdir=/,upperdir={q(str(pod / 'upper'))},"
            f"workdir={q(str(pod / 'work'))} {root}",
            f"mount --rbind /proc {root}/proc",
            f"mount --rbind /sys {root}/sys",
            f"mount -t tmpfs -o mode=755,nosuid tmpfs {root}/dev",
        ]
        for dev in ("null", "zero", "full", "random", "urandom", "tty"):
            lines += [f": > {root}/dev/{dev}", f"mount --bind /dev/{dev} {root}/dev/{dev}"]
        lines += [
            f"mkdir {root}/dev/shm && mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs {root}/dev/shm",
            f"ln -s /proc/self/fd {root}/dev/fd",
            *(f"ln -s /proc/self/fd/{i} {root}/dev/{n}" for i, n in enumerate(("stdin", "stdout", "stderr"))),
            f": > {root}/dev/termination-log",
            f"mount --bind {q(str(self.termination_log))} {root}/dev/termination-log",
            f"mount --bind {q(str(self.tmp))} {root}/tmp",
        ]
        # A checkout or venv under /tmp (a fresh clone in a temporary directory) would be hidden by the
        # pod's own /tmp: bind it back at the same path, as an image carries its code.
        for host in hidden_by_pod_tmp([REPOSITORY, Path(sys.prefix), Path(sys.executable).resolve().parent]):
            lines += [f"mkdir -p {root}{q(str(host))}", f"mount --rbind {q(str(host))} {root}{q(str(host))}"]
        # The venv's interpreter may live under a directory only root may enter (e.g. /root/.pyenv);
        # let the pod's user through in the pod's own copy of the filesystem, as an image would.
        for directory in untraversable_dirs(
            [Path(sys.executable).resolve(), self.run.agent.venv_bin.resolve()]
        ):
            lines.append(f"chmod o+x {root}{q(str(directory))}")
        for mount_path, host, read_only in sorted(self.mounts, key=lambda m: len(m[0])):
            target = f"{root}{q(in_root(mount_path))}"
            if host.is_dir():
                lines.append(f"mkdir -p {target}")
            else:
                lines.append(f'mkdir -p "$(dirname {target})" && : > {target}')
            lines.append(f"mount --bind {q(str(host))} {target}")
            if read_only:
                lines.append(f"mount -o remount,bind,ro {target}")
        setpriv = ["/usr/bin/setpriv", "--pdeathsig=KILL"]
        if self.uid or self.gid:
            setpriv += [f"--reuid={self.uid}", f"--regid={self.gid}", "--clear-groups"]
        if self.no_new_privs:
            setpriv.append("--no-new-privs")
        if self.drop_caps:
            setpriv += ["--inh-caps=-all", "--bounding-set=-all"]
        lines.append(f": > {q(str(self.exec_marker))}")
        lines.append(
            f'exec chroot {root} {" ".join(setpriv)} -- /bin/sh -c \'cd "$0" && exec "$@"\' '
            f'{q(self.workdir)} "$@"'
        )
        return "\n".join(lines)

    def spawn(self, command: list[str]) -> subprocess.Popen[bytes]:
        self.termination_log.write_text("")
        self.termination_log.chmod(0o666)
        argv = [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "--",
            "/bin/sh",
            "-c",
            self.sandbox_script(),
            "fedtwin-pod-sandbox",
            *command,
        ]
        proc = subprocess.Popen(
            argv,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
            cwd="/",
            preexec_fn=die_with_parent,
        )
        self.log_path.write_bytes(b"")
        self.stdout_path.write_bytes(b"")
        assert proc.stdout is not None and proc.stderr is not None
        for stream, also in ((proc.stdout, self.stdout_path), (proc.stderr, None)):
            thread = threading.Thread(target=self._pump, args=(stream, also), daemon=True)
            thread.start()
            self._threads.append(thread)
        return proc

    def _pump(self, stream: io.BufferedReader | Any, also: Path | None) -> None:
        with (
            self.log_path.open("ab") as combined,
            also.open("ab") if also else contextlib.nullcontext() as extra,
        ):
            for chunk in iter(lambda: stream.read1(65536), b""):
                with self._log_lock:
                    combined.write(chunk)
                    combined.flush()
                if extra is not None:
                    extra.write(chunk)

    def write_log(self, text: str) -> None:
        with self.log_path.open("a") as out:
            out.write(text)

    def finish_logs(self) -> None:
        for thread in self._threads:
            thread.join(timeout=10)

    # -- artifacts ----------------------------------------------------------------------------------------
    def save_artifact(self, argo: ArgoPod, art: dict[str, Any]) -> bool:
        source = self.output_source(art["path"])
        if source is None:
            if art.get("optional"):
                return False
            raise FileNotFoundError(f"{art['path']} no such file or directory")
        archive = art.get("archive") or {"tar": {}}
        if "none" in archive:
            if source.is_dir():
                raise PodUnsupported("directory output artifacts with archive none are not emulated")
            file_name, data = Path(art["path"]).name, source.read_bytes()
        elif "zip" in archive:
            file_name, data = f"{art['name']}.zip", zip_bytes(source)
        else:
            file_name, data = f"{art['name']}.tgz", tgz_bytes(source, archive.get("tar") or {})
        repo = S3Repo.for_artifact(argo, art)
        key = (art.get("s3") or {}).get("key") or f"{repo.key_prefix.rstrip('/')}/{file_name}"
        repo.put(key, data)
        art["s3"] = {**(art.get("s3") or {}), "key": key}
        return True

    def save_logs(self, argo: ArgoPod) -> dict[str, Any]:
        repo = S3Repo.for_artifact(argo, {"name": "main-logs"})
        key = f"{repo.key_prefix.rstrip('/')}/main.log"
        repo.put(key, self.log_path.read_bytes() if self.log_path.is_file() else b"")
        return {"name": "main-logs", "s3": {"key": key}}


class S3Repo:
    """The artifact repository as the executor sees it: the template's archiveLocation (resolved by
    the controller from the artifact repository ConfigMap) and the artifact's own s3 fields."""

    def __init__(self, location: dict[str, Any], argo: ArgoPod) -> None:
        self.location = location
        self.argo = argo
        self.key_prefix = location.get("key", "")

    @classmethod
    def for_artifact(cls, argo: ArgoPod, art: dict[str, Any]) -> S3Repo:
        archive = argo.template.get("archiveLocation") or {}
        location = {
            **(archive.get("s3") or {}),
            **{k: v for k, v in (art.get("s3") or {}).items() if k != "key"},
        }
        if not location:
            kinds = sorted(k for k in archive if k not in ("archiveLogs",))
            raise PodUnsupported(f"artifact repository {kinds or 'none'} is not emulated (only s3)")
        return cls(location, argo)

    def secret(self, ref: dict[str, Any] | None) -> str | None:
        """A repository credential. The controller mounts these Secrets into the wait and init
        containers (`createSecretVolumesAndMounts`) and the executor reads the files, so the kubelet,
        i.e. the Node identity, reads them; the pod's ServiceAccount needs no access."""
        if not ref:
            return None
        obj = self.argo.run.node.get(resource_path("Secret", ref["name"], self.argo.run.namespace))
        return base64.b64decode(obj["data"][ref["key"]]).decode()

    def client(self) -> Any:
        import boto3
        from botocore.config import Config

        endpoint = self.location.get("endpoint", "")
        scheme = "http" if self.location.get("insecure") else "https"
        url = endpoint if "://" in endpoint else f"{scheme}://{endpoint}"
        return boto3.session.Session().client(
            "s3",
            endpoint_url=url,
            region_name=self.location.get("region") or "us-east-1",
            aws_access_key_id=self.secret(self.location.get("accessKeySecret")),
            aws_secret_access_key=self.secret(self.location.get("secretKeySecret")),
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 3, "mode": "standard"}),
        )

    def put(self, key: str, data: bytes) -> None:
        self.client().put_object(Bucket=self.location["bucket"], Key=key, Body=data)

    def get(self, art: dict[str, Any]) -> bytes:
        key = (art.get("s3") or {}).get("key")
        if not key:
            raise PodUnsupported(f"input artifact {art['name']} has no s3 key")
        obj = self.client().get_object(Bucket=self.location["bucket"], Key=key)
        return bytes(obj["Body"].read())


# -- small helpers ----------------------------------------------------------------------------------------
def expand(value: str, env: dict[str, str]) -> str:
    """The kubelet's `$(VAR)` expansion: defined variables are replaced, `$$` escapes, others stay."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1)
        return env.get(name, match.group(0))

    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)", replace, value)


def in_root(path: str) -> str:
    """`path` with the symlinks the pod's root has resolved: that root is an overlay of this
    machine's `/`, so e.g. /var/run/argo is /run/argo there. Without this, `mkdir -p <root>/var/run/x`
    would follow the absolute link /var/run -> /run out of the pod's root onto the host."""
    norm = os.path.normpath(path)
    if norm in ("/tmp", "/dev") or norm.startswith(("/tmp/", "/dev/")):
        return norm  # the pod's own /tmp and /dev, not the host's
    return os.path.realpath(norm)


REPOSITORY = Path(__file__).resolve().parents[2]


def hidden_by_pod_tmp(paths: list[Path]) -> list[Path]:
    """The outermost of `paths` that live under /tmp, which each pod replaces with its own."""
    resolved = {path.resolve() for path in paths}
    under_tmp = sorted((p for p in resolved if p.is_relative_to("/tmp")), key=lambda p: len(p.parts))
    outermost: list[Path] = []
    for path in under_tmp:
        if not any(path.is_relative_to(kept) for kept in outermost):
            outermost.append(path)
    return outermost


def untraversable_dirs(paths: list[Path]) -> list[Path]:
    found: list[Path] = []
    for path in paths:
        for parent in reversed(path.parents):
            with contextlib.suppress(OSError):
                if not parent.stat().st_mode & 0o001 and parent not in found:
                    found.append(parent)
    return found


def tgz_bytes(source: Path, tar_opts: dict[str, Any]) -> bytes:
    buffer = io.BytesIO()
    level = tar_opts.get("compressionLevel")
    with tarfile.open(
        fileobj=buffer, mode="w:gz", compresslevel=9 if level is None else max(0, int(level))
    ) as tar:
        tar.add(source, arcname=source.name)
    return buffer.getvalue()


def zip_bytes(source: Path) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        if source.is_dir():
            for path in sorted(source.rglob("*")):
                archive.write(path, str(path.relative_to(source.parent)))
        else:
            archive.write(source, source.name)
    return buffer.getvalue()


def unpack(data: bytes, destination: Path) -> None:
    """As the executor loads an artifact: a .tgz is extracted to the path, anything else written there."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    if data[:2] == b"\x1f\x8b":
        with (
            contextlib.suppress(tarfile.TarError),
            tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar,
        ):
            members = tar.getmembers()
            if len(members) == 1 and members[0].isfile():
                extracted = tar.extractfile(members[0])
                assert extracted is not None
                destination.write_bytes(extracted.read())
            else:
                destination.mkdir(parents=True, exist_ok=True)
                top = os.path.commonpath([m.name for m in members]) if members else ""
                for member in members:
                    rel = os.path.relpath(member.name, top) if top else member.name
                    member.name = rel
                    if rel != ".":
                        tar.extract(member, destination, filter="data")
            destination.chmod(0o755 if destination.is_dir() else 0o644)
            return
    destination.write_bytes(data)
    destination.chmod(0o644)
