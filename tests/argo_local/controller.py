"""A local Argo Workflows controller for tests: the reconcile loop of the real one, pods as processes.

This is test code, not a product feature, and it is not Argo. It exists so that every test can run
fedtwin's rendered WorkflowTemplates in seconds without a cluster; `tests/cluster/` runs the same
templates under the real controller, and `tests/conformance/` holds cases both must agree on.

It follows the structure of the v4.0.7 controller (`workflow/controller/` in argoproj/argo-workflows)
so that each rule can be checked against the Go function it copies, named in a comment beside it:
`operate` calls pod reconciliation and then walks the template tree from the entrypoint on every
pass; nodes carry Argo's names, types, boundaries and child links; a task group's phase, DAG phase,
step-group phase, `depends`, `when`, retries with backoff, template parallelism and failFast,
global outputs and the exit handler are decided by the same rules, at the same moment in the loop.

What it does not do (it raises `Unsupported` for what fedtwin's templates could start using):
artifacts other than output files kept on disk, volumes (ignored), script/resource/suspend/HTTP/
plugin/containerSet templates, templateRef, daemons, hooks other than the workflow's `onExit`,
memoization, synchronization (mutex names are recorded only), and Kubernetes itself (no images,
resources, security contexts or network policies: those are checked by the manifest tests and by
the real control plane in tests/cluster/). A reference that Argo would requeue forever waiting for
is an error here, so a broken template fails fast instead of hanging.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.argo_local.expressions import (
    Expression,
    Unresolved,
    Unsupported,
    as_text,
    condition,
    deep_substitute,
    evaluate,
    substitute,
)

# Node phases and types (pkg/apis/workflow/v1alpha1/workflow_types.go).
PENDING, RUNNING, SUCCEEDED, FAILED, ERROR, SKIPPED, OMITTED = (
    "Pending",
    "Running",
    "Succeeded",
    "Failed",
    "Error",
    "Skipped",
    "Omitted",
)
POD, STEPS, STEP_GROUP, DAG, TASK_GROUP, RETRY, SKIPPED_TYPE = (
    "Pod",
    "Steps",
    "StepGroup",
    "DAG",
    "TaskGroup",
    "Retry",
    "Skipped",
)
WORKFLOW_PHASE = {
    PENDING: PENDING,
    RUNNING: RUNNING,
    SUCCEEDED: SUCCEEDED,
    SKIPPED: SUCCEEDED,
    FAILED: FAILED,
    ERROR: ERROR,
    OMITTED: SUCCEEDED,
}
"""Entrypoint node phase -> workflow phase (operator.go operate)."""
DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h)?$")
DEADLINE_MESSAGE = "Pod was active on the node longer than the specified deadline"
"""The kubelet's pod status message when activeDeadlineSeconds passes (Argo shows pod messages as is)."""


def completed(phase: str) -> bool:
    """NodePhase.Completed: Succeeded, Failed or Error (Skipped and Omitted are not)."""
    return phase in (SUCCEEDED, FAILED, ERROR)


def fulfilled(phase: str) -> bool:
    """NodePhase.Fulfilled: completed, skipped or omitted."""
    return completed(phase) or phase in (SKIPPED, OMITTED)


def failed_or_error(phase: str) -> bool:
    return phase in (FAILED, ERROR)


def parse_duration(text: str) -> float:
    """wfv1.ParseStringToDuration: a bare number is seconds, else a Go duration (subset)."""
    match = DURATION.match(str(text).strip())
    if not match:
        raise Unsupported(f"duration {text!r}")
    value, unit = float(match.group(1)), match.group(2) or "s"
    return value * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]


class WorkflowError(Exception):
    """A controller panic that operate() recovers: the workflow ends Error with this message."""


class ParallelismReached(Exception):
    """ErrParallelismReached: the node is not created (or not advanced) in this pass."""


# ----------------------------------------------------------------------------------- the state
@dataclass
class Node:
    """One entry of `status.nodes` (wfv1.NodeStatus), plus what the local pod left behind."""

    name: str
    display_name: str
    type: str
    template: str
    boundary: str
    phase: str
    message: str = ""
    children: list[str] = field(default_factory=list)
    outbound: list[str] = field(default_factory=list)
    outputs: dict[str, str] = field(default_factory=dict)
    exit_code: str | None = None
    inputs: dict[str, str] = field(default_factory=dict)
    retried: bool = False
    """NodeFlag.Retried: an attempt under a Retry node."""
    started: float = 0.0
    finished: float = 0.0
    # pods only
    argv: list[str] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    container: dict[str, Any] = field(default_factory=dict)
    pod_spec_patch: dict[str, Any] = field(default_factory=dict)
    artifacts: dict[str, Path] = field(default_factory=dict)
    metrics: list[dict[str, Any]] = field(default_factory=list)
    dropped_metrics: list[str] = field(default_factory=list)
    """Metrics Argo would drop (and log) because their value is not a number."""
    pod_dir: Path | None = None
    log_path: Path | None = None

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path and self.log_path.exists() else ""


@dataclass
class Run:
    """The finished workflow: phase, message and every node by its Argo name."""

    name: str
    phase: str
    message: str
    nodes: dict[str, Node]
    global_outputs: dict[str, str]
    parameters: dict[str, str]
    mutexes: list[str]
    templates: dict[str, Any] = field(default_factory=dict)

    def relative(self, node: Node) -> str:
        """The node's name without the workflow name (the conformance cases' keys)."""
        return node.name[len(self.name) :]

    def get(self, relative_name: str) -> Node:
        return self.nodes[self.name + relative_name]

    def find(self, pattern: str) -> list[Node]:
        """Nodes whose relative name matches a regular expression (searched, not anchored)."""
        return [n for n in self.nodes.values() if re.search(pattern, self.relative(n))]

    def one(self, pattern: str) -> Node:
        found = self.find(pattern)
        assert len(found) == 1, f"{pattern!r} matches {[self.relative(n) for n in found]}"
        return found[0]

    def pods(self) -> list[Node]:
        return [n for n in self.nodes.values() if n.type == POD]

    def explain(self) -> str:
        return "\n".join(
            f"{self.relative(n) or '<root>'}: {n.type} {n.phase} {n.message}" for n in self.nodes.values()
        )


@dataclass
class Process:
    """A pod's main container running as a local process."""

    node: Node
    popen: subprocess.Popen[bytes] | None
    deadline: float | None
    """activeDeadlineSeconds, counted from the start of the process."""
    argv: list[str]
    env: dict[str, str]
    deadline_at: float | None = None
    killed_for_deadline: bool = False


Wrapper = Callable[[list[str], Node], list[str]]
Simulator = Callable[[Node], tuple[int, dict[str, str]]]


# ------------------------------------------------------------------------------- the controller
class LocalArgo:
    """Run one Workflow (or a WorkflowTemplate as `argo submit --from` would) to completion."""

    def __init__(
        self,
        manifest: Mapping[str, Any],
        workdir: Path,
        *,
        parameters: Mapping[str, str] | None = None,
        env: Mapping[str, str] | None = None,
        wrap: Wrapper | None = None,
        workflow_name: str = "fedtwin-federated-local",
        max_parallel: int = 8,
        entrypoint_binary: Mapping[str, list[str]] | None = None,
        backoff_scale: float = 1.0,
        simulate: Simulator | None = None,
    ) -> None:
        if manifest.get("kind") not in ("WorkflowTemplate", "Workflow"):
            raise Unsupported(f"kind {manifest.get('kind')!r}")
        self.spec = manifest["spec"]
        self.templates = {t["name"]: t for t in self.spec["templates"]}
        self.name = workflow_name
        self.workdir = workdir
        self.env = dict(os.environ if env is None else env)
        self.wrap = wrap
        self.max_parallel = max_parallel
        """Pods running at once on this machine; more wait as Pending (a node's capacity)."""
        self.binaries = {
            "sh": ["sh"],
            **(entrypoint_binary or {"fedtwin": [sys.executable, "-m", "fedtwin"]}),
        }
        self.simulate = simulate
        """Instead of processes: a function giving each pod's exit code and output parameters (for
        structure-only runs, e.g. counting the nodes of a 1000-twin, 100-round workflow)."""
        self.simulated: list[Node] = []
        self.backoff_scale = backoff_scale
        """Multiplies retry backoff waits (tests shorten them; 1.0 is Argo's timing)."""
        arguments = self.spec.get("arguments", {}).get("parameters", [])
        declared = {p["name"]: str(p.get("value", "")) for p in arguments}
        unknown = set(parameters or {}) - set(declared)
        if unknown:
            raise Unresolved(f"unknown workflow parameters {sorted(unknown)}")
        missing = [p["name"] for p in arguments if "value" not in p and p["name"] not in (parameters or {})]
        if missing:
            raise Unresolved(f"workflow parameters without a value: {missing}")
        self.params = {**declared, **(parameters or {})}
        # setGlobalParameters (operator.go)
        self.global_params: dict[str, str] = {
            "workflow.name": workflow_name,
            "workflow.namespace": "fedtwin",
            "workflow.uid": workflow_name,
            "workflow.mainEntrypoint": self.spec["entrypoint"],
            **{f"workflow.parameters.{k}": v for k, v in self.params.items()},
        }
        self.global_outputs: dict[str, str] = {}
        self.nodes: dict[str, Node] = {}
        self.in_boundary: dict[str, list[Node]] = {}
        self.processes: dict[str, Process] = {}
        self.wakeups: list[float] = []
        self.pod_counter = 0
        self.phase = ""
        self.message = ""

    # -- public ------------------------------------------------------------------------------
    def run(self, timeout: float = 3600.0) -> Run:
        """Reconcile until the workflow is fulfilled.

        As in Argo, where every status update triggers another reconciliation, a pass that changed
        anything is followed at once by another; otherwise the loop sleeps until a pod ends, a pod's
        deadline passes or a retry's backoff is over.
        """
        mutexes = [
            substitute(m["name"], self.global_params)
            for m in (self.spec.get("synchronization") or {}).get("mutexes", [])
        ]
        give_up = time.monotonic() + timeout
        try:
            while True:
                before = self._fingerprint()
                self.operate()
                if self.phase:
                    break
                if time.monotonic() > give_up:
                    raise TimeoutError(
                        f"workflow {self.name} still running after {timeout} s:\n{self._explain()}"
                    )
                if self._fingerprint() == before:
                    self._wait()
        finally:
            for proc in self.processes.values():
                if proc.popen and proc.popen.poll() is None:
                    os.killpg(proc.popen.pid, signal.SIGKILL)
                    proc.popen.wait()
        return Run(
            self.name,
            self.phase,
            self.message,
            dict(self.nodes),
            dict(self.global_outputs),
            dict(self.params),
            mutexes,
            dict(self.templates),
        )

    def _fingerprint(self) -> tuple[Any, ...]:
        return tuple((n.name, n.phase, len(n.children), n.message) for n in self.nodes.values())

    def _explain(self) -> str:
        return "\n".join(f"{n.name}: {n.type} {n.phase} {n.message}" for n in self.nodes.values())

    def _wait(self) -> None:
        """Block until something can change: a pod exits, its deadline passes, or a backoff ends."""
        while True:
            now = time.monotonic()
            procs = list(self.processes.values())
            started = [p for p in procs if p.popen is not None]
            if any(p.popen.poll() is not None for p in started if p.popen):
                return
            if any(p.deadline_at is not None and now >= p.deadline_at for p in started):
                return
            if len(started) < len(procs) and self._running_count() < self.max_parallel:
                return
            if any(w <= now for w in self.wakeups):
                self.wakeups = [w for w in self.wakeups if w > now]
                return
            if self.simulated:
                return
            if not started and not self.wakeups:
                raise RuntimeError(
                    f"workflow {self.name} cannot progress (nothing runs, nothing waits):\n{self._explain()}"
                )
            time.sleep(0.02)

    def _running_count(self) -> int:
        return sum(1 for p in self.processes.values() if p.popen and p.popen.poll() is None)

    # -- operate (operator.go operate) ---------------------------------------------------------
    def operate(self) -> None:
        self.pod_reconciliation()
        self._start_pending_pods()
        try:
            root = self.execute_template(self.name, {"template": self.spec["entrypoint"]}, {}, "")
        except WorkflowError as exc:
            # operate's recover(): markWorkflowError, the root node "Workflow operation error"
            self.phase, self.message = ERROR, str(exc)
            if self.name in self.nodes:
                self._mark(self.nodes[self.name], ERROR, "Workflow operation error")
            return
        if root is None:
            return
        status = WORKFLOW_PHASE[root.phase]
        self.global_params["workflow.status"] = status
        self.global_params["workflow.failures"] = json.dumps(
            [
                {
                    "displayName": n.display_name,
                    "message": n.message,
                    "templateName": n.template,
                    "phase": n.phase,
                }
                for n in self.nodes.values()
                if failed_or_error(n.phase)
            ]
        )
        if not fulfilled(root.phase):
            return
        exit_node = None
        if self.spec.get("onExit"):
            exit_node = self.execute_template(
                f"{self.name}.onExit", {"template": self.spec["onExit"]}, {}, ""
            )
            if exit_node is None or not fulfilled(exit_node.phase):
                return
        if status == SUCCEEDED and exit_node is not None and failed_or_error(exit_node.phase):
            self.phase, self.message = (FAILED if exit_node.phase == FAILED else ERROR), exit_node.message
        else:
            self.phase, self.message = status, root.message

    # -- pods: creation, reconciliation ---------------------------------------------------------
    def pod_reconciliation(self) -> None:
        """podReconciliation + assessNodeStatus: finished processes become node phases and outputs."""
        for node in self.simulated:
            assert self.simulate is not None
            code, outputs = self.simulate(node)
            node.exit_code, node.finished = str(code), time.monotonic()
            node.phase = SUCCEEDED if code == 0 else FAILED
            node.message = "" if code == 0 else f"main: Error (exit code {code})"
            declared = (self.templates[node.template].get("outputs") or {}).get("parameters", [])
            node.outputs = {p["name"]: outputs.get(p["name"], str(p["valueFrom"].get("default", "")))
                            for p in declared}
            self.add_outputs_to_global_scope(node)
        self.simulated.clear()
        for name, proc in list(self.processes.items()):
            node = proc.node
            if proc.popen is None:
                continue
            code = proc.popen.poll()
            if code is None and proc.deadline_at is not None and time.monotonic() >= proc.deadline_at:
                os.killpg(proc.popen.pid, signal.SIGKILL)
                proc.popen.wait()
                proc.killed_for_deadline = True
                code = proc.popen.returncode
            if code is None:
                continue
            del self.processes[name]
            node.finished = time.monotonic()
            if code < 0:
                code = 128 - code  # a signal, as a container runtime reports it
            node.exit_code = str(code)
            if proc.killed_for_deadline:
                # inferFailedReason: a pod status message wins over container statuses
                node.phase, node.message = FAILED, DEADLINE_MESSAGE
            elif code == 0:
                node.phase, node.message = SUCCEEDED, ""
            else:
                termination = self._termination_message(node)
                node.phase = FAILED
                node.message = f"main: Error (exit code {code})" + (f": {termination}" if termination else "")
            self._collect_outputs(node)
            # podReconciliation: outputs of a finished pod reach the global scope before the tree walk
            self.add_outputs_to_global_scope(node)

    def _termination_message(self, node: Node) -> str:
        """What the kubelet puts in state.terminated.message: the terminationMessagePath file."""
        path = node.container.get("terminationMessagePath", "/dev/termination-log")
        local = self._local(node, path)
        if local.exists():
            return local.read_text(errors="replace")[:4096].strip()
        return ""

    def _local(self, node: Node, path: str) -> Path:
        assert node.pod_dir is not None
        return Path(str(node.pod_dir) + path)

    def _collect_outputs(self, node: Node) -> None:
        """The wait container's job (workflow/executor/executor.go SaveParameters): parameters in
        order, from their files, a missing file taking its `default`; the first missing file without
        one stops the saving (the rest stay without a value), and errors a pod that succeeded."""
        tmpl = self.templates[node.template]
        outputs = tmpl.get("outputs") or {}
        node.outputs = {}
        for p in outputs.get("parameters", []):
            value_from = p.get("valueFrom") or {}
            if "path" not in value_from:
                raise Unsupported(f"output parameter {p['name']!r} without valueFrom.path")
            path = self._local(node, value_from["path"])
            if path.is_file():
                text = path.read_text()
                node.outputs[p["name"]] = text[:-1] if text.endswith("\n") else text
            elif "default" in value_from:
                node.outputs[p["name"]] = str(value_from["default"])
            else:
                if node.phase == SUCCEEDED:
                    node.phase = ERROR
                    node.message = (
                        f"wait: Error (exit code 1): open {value_from['path']}: no such file or directory"
                    )
                break
        for a in outputs.get("artifacts", []):
            path = self._local(node, a["path"])
            if path.exists():
                node.artifacts[a["name"]] = path
            elif node.phase == SUCCEEDED and not a.get("optional"):
                node.phase = ERROR
                node.message = f"wait: Error (exit code 1): open {a['path']}: no such file or directory"

    def add_outputs_to_global_scope(self, node: Node) -> None:
        """addOutputsToGlobalScope/addParamToGlobalScope: `globalName` outputs, last writer wins.

        A parameter that was not saved still "has a value" to Argo (Parameter.HasValue is true for a
        valueFrom) and its GetValue is "": the controller's global parameters then read "" for it,
        while `status.outputs` keeps the previous value (wfutil.AddParamToGlobalScope overwrites
        only with a value). A `when` reading such a global must survive "".
        """
        tmpl = self.templates.get(node.template) or {}
        for p in (tmpl.get("outputs") or {}).get("parameters", []):
            if not p.get("globalName"):
                continue
            key = f"workflow.outputs.parameters.{p['globalName']}"
            if p["name"] in node.outputs:
                value = node.outputs[p["name"]]
                self.global_outputs[p["globalName"]] = value
                self.global_params[key] = value
            elif node.type == POD:
                self.global_params[key] = ""

    def _start_pending_pods(self) -> None:
        for proc in self.processes.values():
            if proc.popen is None and self._running_count() < self.max_parallel:
                self._start(proc)

    def _start(self, proc: Process) -> None:
        node = proc.node
        assert node.log_path is not None
        with node.log_path.open("ab") as log:
            proc.popen = subprocess.Popen(
                proc.argv,
                env=proc.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                start_new_session=True,
            )
        node.phase = RUNNING
        node.started = time.monotonic()
        if proc.deadline is not None:
            proc.deadline_at = node.started + proc.deadline

    # -- executeTemplate (operator.go) ---------------------------------------------------------
    def execute_template(
        self,
        node_name: str,
        step: Mapping[str, Any],
        args: Mapping[str, str],
        boundary: str,
        *,
        retried: bool = False,
    ) -> Node | None:
        """Create or advance the node `node_name` running `step['template']` with `args`.

        Returns the node, or None when parallelism keeps it from being created in this pass.
        """
        if "templateRef" in step:
            raise Unsupported("templateRef")
        name = step["template"]
        if name not in self.templates:
            raise Unresolved(f"template {name!r} does not exist")
        node = self.nodes.get(node_name)
        if node is not None and fulfilled(node.phase):
            # handleNodeFulfilled (Argo processes the arguments first; their result is unused here)
            return node
        tmpl = self.process_args(self.templates[name], args, node_name)
        try:
            self.check_parallelism(tmpl, node, boundary)
        except ParallelismReached:
            return node

        retry = tmpl.get("retryStrategy")
        retry_name = ""
        if retry is not None:
            retry_name = node_name
            retry_node = node or self._init_node(node_name, RETRY, name, boundary, RUNNING, step)
            proceed = self.process_node_retries(retry_node, retry)
            if not proceed:
                return retry_node  # backing off
            attempts = self._attempts(retry_node)
            if fulfilled(retry_node.phase):
                if attempts:
                    retry_node.outputs = dict(attempts[-1].outputs)
                    retry_node.exit_code = attempts[-1].exit_code
                self._emit_metrics(tmpl, retry_node)
                return retry_node
            last = attempts[-1] if attempts else None
            if last is not None and not fulfilled(last.phase):
                node_name, node, number = last.name, last, len(attempts) - 1
            else:
                number = len(attempts)
                node_name, node = f"{retry_name}({number})", None
                self._add_child(retry_name, node_name)
            local = {
                "retries": str(number),
                "lastRetry.exitCode": (last.exit_code or "0") if last else "0",
                "lastRetry.status": last.phase if last else "",
                "lastRetry.duration": str(last.finished - last.started) if last else "0",
                "lastRetry.message": last.message if last else "",
            }
            tmpl = deep_substitute(tmpl, local, lenient=True)
            step = {**step, "name": f"{step.get('name') or retry_name}({number})"}
            retried = True

        kinds = [
            k
            for k in (
                "container",
                "dag",
                "steps",
                "script",
                "resource",
                "suspend",
                "http",
                "plugin",
                "containerSet",
                "data",
            )
            if k in tmpl
        ]
        if kinds == ["container"]:
            node = self.execute_container(node_name, tmpl, step, boundary, retried)
        elif kinds == ["steps"]:
            node = self.execute_steps(node_name, tmpl, step, boundary)
        elif kinds == ["dag"]:
            node = self.execute_dag(node_name, tmpl, step, boundary)
        else:
            raise Unsupported(f"template {name!r} of kind {kinds}")

        if retry_name:
            retry_node = self.nodes[retry_name]
            if not fulfilled(retry_node.phase) and fulfilled(node.phase):
                # "if the retry child has completed we need to update the parent's status"
                updated = self.execute_template(retry_name, step, args, boundary)
                assert updated is not None
                return updated
            return retry_node
        if fulfilled(node.phase):
            self._emit_metrics(tmpl, node)
        return node

    def process_args(
        self, tmpl: Mapping[str, Any], args: Mapping[str, str], node_name: str
    ) -> dict[str, Any]:
        """common.ProcessArgs: inputs from arguments or defaults, then substitution of what is known."""
        declared = {p["name"]: p for p in (tmpl.get("inputs") or {}).get("parameters", [])}
        extra = set(args) - set(declared)
        if extra:
            raise Unresolved(f"template {tmpl['name']!r} got arguments {sorted(extra)} it does not declare")
        inputs: dict[str, str] = {}
        for pname, p in declared.items():
            if pname in args:
                inputs[pname] = args[pname]
            elif "value" in p or "default" in p:
                inputs[pname] = str(p.get("value", p.get("default")))
            else:
                raise Unresolved(f"inputs.parameters.{pname} was not supplied (template {tmpl['name']!r})")
        if (tmpl.get("inputs") or {}).get("artifacts"):
            raise Unsupported(f"input artifacts of {tmpl['name']!r}")
        scope = {
            **self.global_params,
            **{f"inputs.parameters.{k}": v for k, v in inputs.items()},
            "node.name": node_name,
        }
        inputs_section = tmpl.get("inputs")
        # A container and its metadata are substituted once, strictly, when the pod is made.
        later = ("inputs", "container", "metadata")
        body = {k: v for k, v in tmpl.items() if k not in later}
        processed = deep_substitute(body, scope, lenient=True)
        processed.update({k: tmpl[k] for k in ("container", "metadata") if k in tmpl})
        if inputs_section is not None:
            processed["inputs"] = {"parameters": [{"name": k, "value": v} for k, v in inputs.items()]}
        return processed

    def check_parallelism(self, tmpl: Mapping[str, Any], node: Node | None, boundary: str) -> None:
        """checkParallelism (operator.go): workflow, template and boundary limits, and failFast."""
        limit = self.spec.get("parallelism")
        if (
            limit is not None
            and self._count(lambda n: n.type == POD and n.phase in (PENDING, RUNNING)) >= limit
        ):
            raise ParallelismReached
        if node is not None and ("dag" in tmpl or "steps" in tmpl):
            if tmpl.get("failFast") and self._unsuccessful_children(node.name) > 0:
                if self._active_pods(node.name) == 0:
                    self._mark_fail_fast(tmpl, node)
                raise ParallelismReached
            if tmpl.get("parallelism") and self._active_pods(node.name) >= int(tmpl["parallelism"]):
                raise ParallelismReached
        if boundary and (node is None or node.phase not in (PENDING, RUNNING)):
            boundary_node = self.nodes[boundary]
            boundary_tmpl = self.templates[boundary_node.template]
            if boundary_tmpl.get("failFast") and self._unsuccessful_children(boundary) > 0:
                if self._active_pods(boundary) == 0:
                    self._mark_fail_fast(boundary_tmpl, boundary_node)
                raise ParallelismReached
            if boundary_tmpl.get("parallelism") and self._active_children(boundary) >= int(
                boundary_tmpl["parallelism"]
            ):
                raise ParallelismReached

    def _mark_fail_fast(self, tmpl: Mapping[str, Any], node: Node) -> None:
        message = "template has failed or errored children and failFast enabled"
        if "steps" in tmpl:
            leaf = self._find_leaf(node.name, STEP_GROUP)
            if leaf is not None:
                self._mark(leaf, FAILED, message)
        self._mark(node, FAILED, message)

    def _find_leaf(self, start: str, node_type: str) -> Node | None:
        """findLeafNodeWithType: the last node of that type in a depth-first walk."""
        found: Node | None = None

        def dfs(name: str) -> None:
            nonlocal found
            node = self.nodes[name]
            if node.type == node_type:
                found = node
            for child in node.children:
                dfs(child)

        dfs(start)
        return found

    def _count(self, predicate: Callable[[Node], bool], boundary: str | None = None) -> int:
        """node_counters.go countNodes (over one boundary's nodes when given: the same count, faster)."""
        nodes = self.nodes.values() if boundary is None else self.in_boundary.get(boundary, [])
        return sum(1 for n in nodes if predicate(n))

    def _active_pods(self, boundary: str) -> int:
        """node_counters.go getActivePods: created pods in the boundary, Pending or Running."""
        return self._count(lambda n: n.type == POD and n.phase in (PENDING, RUNNING), boundary)

    def _active_children(self, boundary: str) -> int:
        """getActiveChildren: pods, Steps and DAGs in the boundary, Pending or Running."""
        return self._count(lambda n: n.type in (POD, STEPS, DAG) and n.phase in (PENDING, RUNNING), boundary)

    def _unsuccessful_children(self, boundary: str) -> int:
        """getUnsuccessfulChildren: pods, Steps and DAGs in the boundary, Failed or Error."""
        return self._count(lambda n: n.type in (POD, STEPS, DAG) and failed_or_error(n.phase), boundary)

    # -- retries (operator.go processNodeRetries) ----------------------------------------------
    def _attempts(self, retry_node: Node) -> list[Node]:
        """getChildNodeIdsRetried: the attempts, in order."""
        return [self.nodes[c] for c in retry_node.children if self.nodes[c].retried]

    def process_node_retries(self, node: Node, strategy: Mapping[str, Any]) -> bool:
        """Decide the Retry node's fate after an attempt; False while backing off."""
        if fulfilled(node.phase):
            return True
        attempts = self._attempts(node)
        if not attempts:
            return True
        last = attempts[-1]
        if not fulfilled(last.phase):
            return True
        if not failed_or_error(last.phase):
            node.outputs = dict(last.outputs)
            self._mark(node, SUCCEEDED)
            return True
        limit = strategy.get("limit")
        backoff = strategy.get("backoff")
        if backoff is not None:
            max_deadline = None
            if backoff.get("maxDuration"):
                max_deadline = (
                    attempts[0].started + parse_duration(backoff["maxDuration"]) * self.backoff_scale
                )
                if time.monotonic() > max_deadline:
                    self._mark(node, last.phase, "Max duration limit exceeded")
                    return True
            if not backoff.get("duration"):
                raise Unsupported("no base duration specified for retryStrategy")
            wait = parse_duration(backoff["duration"])
            factor = int(str(backoff.get("factor", 0)) or 0)
            if factor > 0:
                wait *= math.pow(factor, len(attempts) - 1)
            if backoff.get("cap"):
                wait = min(wait, parse_duration(backoff["cap"]))
            wait *= self.backoff_scale
            waiting_deadline = last.finished + wait
            if max_deadline is not None and waiting_deadline > max_deadline:
                self._mark(node, last.phase, "Backoff would exceed max duration limit")
                return True
            if time.monotonic() < waiting_deadline and limit is not None and len(attempts) <= int(limit):
                self.wakeups.append(waiting_deadline)
                node.message = f"Backoff for {wait:g} seconds"
                return False
            node.message = ""
        policy = strategy.get("retryPolicy", "OnFailure")
        on_failed = policy in ("Always", "OnFailure")
        on_error = policy in ("Always", "OnError")
        if policy == "OnTransientError":
            raise Unsupported("retryPolicy OnTransientError")
        if (last.phase == FAILED and not on_failed) or (last.phase == ERROR and not on_error):
            self._mark(node, last.phase, last.message)
            return True
        if limit is not None and len(attempts) > int(limit):
            self._mark(node, last.phase, "No more retries left")
            return True
        if strategy.get("expression"):
            scope = {
                "retries": str(len(attempts) - 1),
                "lastRetry.exitCode": last.exit_code or "-1",
                "lastRetry.status": last.phase,
                "lastRetry.duration": str(last.finished - last.started),
                "lastRetry.message": last.message,
            }
            if not evaluate(strategy["expression"], scope):
                self._mark(node, last.phase, "retryStrategy.expression evaluated to false")
                return True
        return True

    # -- containers (operator.go executeContainer, workflowpod.go createWorkflowPod) -------------
    def execute_container(
        self, node_name: str, tmpl: Mapping[str, Any], step: Mapping[str, Any], boundary: str, retried: bool
    ) -> Node:
        node = self.nodes.get(node_name)
        if node is not None:
            return node
        node = self._init_node(node_name, POD, tmpl["name"], boundary, PENDING, step)
        node.retried = retried
        node.inputs = {p["name"]: p["value"] for p in (tmpl.get("inputs") or {}).get("parameters", [])}
        pod_scope = {
            **self.global_params,
            **{f"inputs.parameters.{k}": v for k, v in node.inputs.items()},
            "pod.name": node_name,
            "node.name": node_name,
        }
        container = deep_substitute(tmpl["container"], pod_scope)
        metadata = deep_substitute(tmpl.get("metadata") or {}, pod_scope)
        pod_metadata = deep_substitute(self.spec.get("podMetadata") or {}, self.global_params)
        node.labels = {**pod_metadata.get("labels", {}), **metadata.get("labels", {})}
        node.annotations = {**pod_metadata.get("annotations", {}), **metadata.get("annotations", {})}
        node.container = container
        if tmpl.get("podSpecPatch"):  # merged into the pod by Argo; here it must at least be a valid patch
            node.pod_spec_patch = json.loads(substitute(tmpl["podSpecPatch"], pod_scope))
        if self.simulate is not None:
            node.argv = [*(container.get("command") or []), *container.get("args", [])]
            node.phase = RUNNING
            self.simulated.append(node)
            return node
        self.pod_counter += 1
        node.pod_dir = self.workdir / f"pod-{self.pod_counter:03d}-{tmpl['name']}"
        node.pod_dir.mkdir(parents=True)
        node.log_path = node.pod_dir / "log"
        mapped = self._mapped_dirs(tmpl, container)
        for d in mapped:
            Path(str(node.pod_dir) + d).mkdir(parents=True, exist_ok=True)

        def local(text: str) -> str:
            return _map_paths(text, mapped, str(node.pod_dir))

        command = container.get("command") or []
        if not command:
            raise Unsupported(
                f"template {tmpl['name']!r}: no command (Argo would look up the image entrypoint)"
            )
        if command[0] not in self.binaries:
            raise Unsupported(f"command {command!r} (known entrypoints: {sorted(self.binaries)})")
        argv = [
            *self.binaries[command[0]],
            *[local(c) for c in command[1:]],
            *[local(a) for a in container.get("args", [])],
        ]
        env = dict(self.env)
        for var in container.get("env", []):
            if "value" in var:
                env[var["name"]] = local(var["value"])
            elif not var.get("valueFrom", {}).get("secretKeyRef", {}).get("optional"):
                raise Unsupported(f"env {var['name']!r} from a required Secret")
        node.argv = argv
        run_argv = self.wrap(argv, node) if self.wrap else argv
        deadline = tmpl.get("activeDeadlineSeconds")
        proc = Process(node, None, float(deadline) if deadline not in (None, "") else None, run_argv, env)
        self.processes[node_name] = proc
        if self._running_count() < self.max_parallel:
            self._start(proc)
        return node

    @staticmethod
    def _mapped_dirs(tmpl: Mapping[str, Any], container: Mapping[str, Any]) -> list[str]:
        """Container paths given a per-pod local directory: output files and the termination message."""
        outputs = tmpl.get("outputs") or {}
        paths = [
            p["valueFrom"]["path"] for p in outputs.get("parameters", []) if "path" in p.get("valueFrom", {})
        ]
        paths += [a["path"] for a in outputs.get("artifacts", [])]
        dirs = {str(Path(p).parent) for p in paths}
        dirs.add(str(Path(container.get("terminationMessagePath", "/dev/termination-log")).parent))
        return sorted(dirs, key=len, reverse=True)

    # -- steps (steps.go) -----------------------------------------------------------------------
    def execute_steps(
        self, node_name: str, tmpl: Mapping[str, Any], step: Mapping[str, Any], boundary: str
    ) -> Node:
        node = self.nodes.get(node_name) or self._init_node(
            node_name, STEPS, tmpl["name"], boundary, RUNNING, step
        )
        scope: dict[str, Any] = {
            f"inputs.parameters.{p['name']}": p["value"]
            for p in (tmpl.get("inputs") or {}).get("parameters", [])
        }
        for i, group in enumerate(tmpl["steps"]):
            sg_name = f"{node_name}[{i}]"
            sg = self.nodes.get(sg_name)
            if sg is None:
                sg = self._init_node(sg_name, STEP_GROUP, "", node.name, RUNNING, {"name": f"[{i}]"})
            elif not fulfilled(sg.phase):
                sg.phase = RUNNING
            if i == 0:
                self._add_child(node_name, sg_name)
            else:
                previous = self.nodes[f"{node_name}[{i - 1}]"]
                if not previous.children:
                    self._add_child(previous.name, sg_name)
                for child in previous.children:
                    for out in self.outbound(child):
                        self._add_child(out, sg_name)
            sg = self.execute_step_group(group, sg_name, node, scope)
            if not fulfilled(sg.phase):
                return node
            if failed_or_error(sg.phase):
                self._update_outbound_steps(node, tmpl)
                self._mark(node, FAILED, sg.message)
                return node
            for s in group:  # outputs of each step of the group into the scope
                child = self.nodes.get(f"{sg_name}.{s['name']}")
                prefix = f"steps.{s['name']}"
                if child is None:  # expanded: aggregate outputs as a JSON list
                    expanded = [
                        n
                        for n in self.in_boundary.get(node.name, [])
                        if n.name.startswith(f"{sg_name}.{s['name']}(")
                        and n.type != SKIPPED_TYPE
                    ]
                    scope[f"{prefix}.outputs.parameters"] = json.dumps([n.outputs for n in expanded])
                else:
                    scope[f"{prefix}.status"] = child.phase
                    for key, value in child.outputs.items():
                        scope[f"{prefix}.outputs.parameters.{key}"] = value
        self._update_outbound_steps(node, tmpl)
        self._mark(node, SUCCEEDED)
        return node

    def _update_outbound_steps(self, node: Node, tmpl: Mapping[str, Any]) -> None:
        """updateOutboundNodes: the outbound nodes of the last initialized step group's children."""
        for i in range(len(tmpl["steps"]) - 1, -1, -1):
            last = self.nodes.get(f"{node.name}[{i}]")
            if last is not None:
                node.outbound = [o for child in last.children for o in self.outbound(child)]
                return

    def execute_step_group(
        self, group: list[Mapping[str, Any]], sg_name: str, steps_node: Node, scope: dict[str, Any]
    ) -> Node:
        """executeStepGroup: resolve, expand, `when` per (expanded) step, then the group's phase."""
        sg = self.nodes[sg_name]
        if fulfilled(sg.phase) and all(fulfilled(self.nodes[c].phase) for c in sg.children):
            return sg
        step_scope = {**self.global_params, **scope}
        expanded: list[dict[str, Any]] = []
        for s in group:
            resolved = self._resolve_step(s, step_scope)
            items = self._items(resolved, step_scope)
            if items is None:
                expanded.append(resolved)
                continue
            if not items:  # expandStepGroup: empty list
                name = f"{sg_name}.{s['name']}"
                if name not in self.nodes:
                    self._init_node(
                        name,
                        SKIPPED_TYPE,
                        s["template"],
                        steps_node.name,
                        SKIPPED,
                        s,
                        "Skipped, empty params",
                    )
                    self._add_child(sg_name, name)
            expanded += self._expand(resolved, items, step_scope)
        by_name = {f"{sg_name}.{s['name']}": s for s in expanded}
        for s in expanded:
            child_name = f"{sg_name}.{s['name']}"
            try:
                proceed = not s.get("when") or condition(substitute(s["when"], step_scope))
            except (SyntaxError, Unresolved) as exc:
                # shouldExecute failed: initializeNode of an Error node, which panics when the child
                # exists already (the controller recovers it as a workflow error in operate)
                if child_name in self.nodes:
                    raise WorkflowError(f"node {child_name} already initialized") from exc
                self._init_node(child_name, SKIPPED_TYPE, s["template"], steps_node.name, ERROR, s, str(exc))
                self._add_child(sg_name, child_name)
                self._mark(sg, ERROR, str(exc))
                return sg
            if not proceed:
                if child_name not in self.nodes:
                    self._init_node(
                        child_name,
                        SKIPPED_TYPE,
                        s["template"],
                        steps_node.name,
                        SKIPPED,
                        s,
                        f"when '{s['when']}' evaluated false",
                    )
                    self._add_child(sg_name, child_name)
                continue
            child = self.execute_template(child_name, s, self._args(s, step_scope), steps_node.name)
            if child is not None:
                self._add_child(sg_name, child_name)
        # Only created children count: one that parallelism held back is created in a later pass,
        # while its running siblings keep the group open (failFast is the exception, as in Argo).
        if not all(fulfilled(self.nodes[c].phase) for c in sg.children):
            if fulfilled(sg.phase):
                sg.phase = RUNNING
            return sg
        for c in sg.children:
            child = self.nodes[c]
            s = by_name.get(c, {})
            if failed_or_error(child.phase) and not _continues(s.get("continueOn"), child.phase):
                self._mark(sg, FAILED, f"child '{c}' failed")
                return sg
        self._mark(sg, SUCCEEDED)
        return sg

    def _resolve_step(self, s: Mapping[str, Any], scope: Mapping[str, Any]) -> dict[str, Any]:
        """resolveReferences / resolveDependencyReferences: substitute what is known now.

        The `when` is resolved first: when it is already false (it has no `{{item}}`), the step is
        returned with nothing else substituted, so a `withParam` naming a step or task output stays
        a literal that expands to nothing (PR argoproj/argo-workflows#11570). `{{item}}` waits for
        the expansion.
        """
        refs = re.compile(r"\{\{\s*((?:steps|tasks)\.[^}]*?)\s*\}\}")

        def strict(text: str) -> None:
            for ref in refs.findall(text):
                if ref not in scope:
                    raise Unresolved(f"{{{{{ref}}}}} has no value (Argo would requeue forever)")

        if s.get("when"):
            strict(s["when"])
            when = substitute(s["when"], scope, lenient=True)
            try:
                proceed = condition(substitute(when, scope))
            except (Unresolved, SyntaxError):
                proceed = True  # an `{{item}}` in it: decided per expanded step
            if not proceed:
                return {**s, "when": when}
        for p in (s.get("arguments") or {}).get("parameters", []):
            strict(str(p.get("value", "")))
        return deep_substitute(dict(s), scope, lenient=True)

    @staticmethod
    def _items(s: Mapping[str, Any], scope: Mapping[str, Any]) -> list[Any] | None:
        """The items of withItems / withParam / withSequence, or None when the step does not expand.

        expandTask/expandStep: a withParam that is not a JSON list is an error unless the `when`
        is already false, and then there is nothing to expand.
        """
        if "withItems" in s:
            return list(s["withItems"])
        if "withParam" in s:
            text = s["withParam"]  # as resolved above: a false `when` left it unsubstituted
            try:
                items = json.loads(text)
                if not isinstance(items, list):
                    raise ValueError(text)
            except ValueError as exc:
                try:
                    never = bool(s.get("when")) and not condition(substitute(s["when"], scope))
                except (Unresolved, SyntaxError):
                    never = False
                if never:
                    return []
                raise Unresolved(f"withParam value could not be parsed as a JSON list: {text[:200]}") from exc
            return items
        if "withSequence" in s:
            seq = {k: substitute(str(v), scope) for k, v in s["withSequence"].items()}
            start = int(seq.get("start", 0))
            if "end" in seq:
                end = int(seq["end"])
            elif "count" in seq:
                count = int(seq["count"])
                if count == 0:
                    return []
                end = start + count - 1
            else:
                raise Unresolved("neither end nor count was specified in withSequence")
            fmt = seq.get("format", "%d")
            step = 1 if start <= end else -1
            return [fmt % i for i in range(start, end + step, step)]
        return None

    def _expand(
        self, s: Mapping[str, Any], items: list[Any], scope: Mapping[str, Any]
    ) -> list[dict[str, Any]]:
        """expandStep/expandTask + processItem: one copy per item, named `name(i:item)`."""
        base = {k: v for k, v in s.items() if k not in ("withItems", "withParam", "withSequence")}
        out = []
        for i, item in enumerate(items):
            if isinstance(item, dict):
                item_scope = {f"item.{k}": as_text(v) for k, v in item.items()}
                item_scope["item"] = json.dumps(item, separators=(",", ":"))
                desc = ",".join(sorted(f"{k}:{as_text(v)}" for k, v in item.items()))
            elif isinstance(item, list):
                item_scope = {"item": json.dumps(item, separators=(",", ":"))}
                desc = "[" + " ".join(as_text(v) for v in item) + "]"
            else:
                item_scope = {"item": as_text(item)}
                desc = as_text(item)
            desc = desc.replace("(", "").replace(")", "")
            copy = deep_substitute(base, {**scope, **item_scope}, lenient=True)
            copy["name"] = f"{s['name']}({i}:{desc})"
            copy["template"] = s["template"]
            out.append(copy)
        return out

    @staticmethod
    def _args(s: Mapping[str, Any], scope: Mapping[str, Any]) -> dict[str, str]:
        params = (s.get("arguments") or {}).get("parameters", [])
        return {p["name"]: substitute(str(p.get("value", "")), scope) for p in params}

    # -- DAG (dag.go) -----------------------------------------------------------------------------
    def execute_dag(
        self, node_name: str, tmpl: Mapping[str, Any], step: Mapping[str, Any], boundary: str
    ) -> Node:
        node = self.nodes.get(node_name) or self._init_node(
            node_name, DAG, tmpl["name"], boundary, RUNNING, step
        )
        dag = tmpl["dag"]
        tasks = {t["name"]: t for t in dag["tasks"]}
        inputs = {
            f"inputs.parameters.{p['name']}": p["value"]
            for p in (tmpl.get("inputs") or {}).get("parameters", [])
        }
        ctx = _DagContext(self, node, tasks, inputs)
        targets = dag["target"].split() if dag.get("target") else ctx.leaves()
        for target in targets:
            self.execute_dag_task(ctx, target)
        phase = self.assess_dag_phase(ctx, targets, dag.get("failFast", True))
        if phase == RUNNING:
            return node
        node.outbound = [o for t in targets if (n := ctx.task_node(t)) for o in self.outbound(n.name)]
        self._mark(node, phase)
        return node

    def execute_dag_task(self, ctx: _DagContext, task_name: str) -> None:
        """executeDAGTask: run a task once its dependencies allow, expanding and skipping per item."""
        if task_name in ctx.visited:
            return
        ctx.visited.add(task_name)
        task = ctx.tasks[task_name]
        node = ctx.task_node(task_name)
        if node is not None and fulfilled(node.phase):
            return
        group_name = ctx.name(task_name)
        group = node if node is not None and node.type == TASK_GROUP else None
        deps = ctx.dependencies(task_name)

        def connect(child: str) -> None:
            """connectDependencies: root tasks hang off the DAG, others off their dependencies' outbound."""
            if not deps or group is not None:
                self._add_child(group.name if group is not None else ctx.node.name, child)
            else:
                for dep in deps:
                    dep_node = ctx.task_node(dep)
                    assert dep_node is not None
                    for out in self.outbound(dep_node.name):
                        self._add_child(out, child)

        if ctx.depends_logic(task_name):
            for dep in deps:
                self.execute_dag_task(ctx, dep)
            if node is None:
                decided = ctx.evaluate_depends(task_name)
                if decided is None:
                    return  # dependencies still running
                if not decided:
                    self._init_node(
                        group_name,
                        SKIPPED_TYPE,
                        task["template"],
                        ctx.node.name,
                        OMITTED,
                        task,
                        "omitted: depends condition not met",
                    )
                    connect(group_name)
                    return
        scope = ctx.scope(task_name)
        resolved = self._resolve_task(task, scope)
        items = self._items(resolved, scope)
        expanded = [resolved] if items is None else self._expand(resolved, items, scope)
        if items is not None:
            if not expanded:
                if node is None:
                    self._init_node(
                        group_name,
                        SKIPPED_TYPE,
                        task["template"],
                        ctx.node.name,
                        SKIPPED,
                        task,
                        "Skipped, empty params",
                    )
                    connect(group_name)
                return
            if group is None:
                connect(group_name)
                group = self._init_node(
                    group_name, TASK_GROUP, task["template"], ctx.node.name, RUNNING, task
                )
        for t in expanded:
            child_name = ctx.name(t["name"])
            child = self.nodes.get(child_name)
            if child is None:
                connect(child_name)
                if t.get("when") and not condition(substitute(t["when"], scope)):
                    self._init_node(
                        child_name,
                        SKIPPED_TYPE,
                        task["template"],
                        ctx.node.name,
                        SKIPPED,
                        t,
                        f"when '{t['when']}' evaluated false",
                    )
                    continue
            result = self.execute_template(child_name, t, self._args(t, scope), ctx.node.name)
            if result is None:
                return  # parallelism reached: the rest waits for a later pass
        if group is not None:
            phase = SUCCEEDED
            for t in expanded:
                child = self.nodes.get(ctx.name(t["name"]))
                if child is None or not fulfilled(child.phase):
                    return
                if failed_or_error(child.phase):
                    phase = child.phase
            self._mark(group, phase)

    def _resolve_task(self, task: Mapping[str, Any], scope: Mapping[str, Any]) -> dict[str, Any]:
        """resolveDependencyReferences: like the steps' resolution, over `tasks.*` references."""
        return self._resolve_step(task, scope)

    def assess_dag_phase(self, ctx: _DagContext, targets: list[str], fail_fast: bool) -> str:
        """assessDAGPhase: BFS from the DAG's children; an omitted target inherits its branch's phase."""
        target_phase: dict[str, str] = {}
        for t in targets:
            target_phase[ctx.name(t)] = ""
        queue = [(c, SUCCEEDED) for c in ctx.node.children]
        seen = {f"{c}-{SUCCEEDED}" for c in ctx.node.children}
        while queue:
            current, branch = queue.pop(0)
            node = self.nodes.get(current)
            if node is None or not fulfilled(node.phase):
                return RUNNING
            if completed(node.phase):
                branch = node.phase
            if current in target_phase and not failed_or_error(target_phase[current]):
                target_phase[current] = branch
            if node.type == RETRY:
                children = [g for a in reversed(node.children) for g in self.nodes[a].children]
            else:
                children = node.children
            for child in children:
                key = f"{child}-{branch}"
                if key not in seen:
                    seen.add(key)
                    queue.append((child, branch))
        result = SUCCEEDED
        for t in targets:
            branch = target_phase[ctx.name(t)]
            if branch == "":
                result = RUNNING
                if not fail_fast:
                    break
            elif failed_or_error(branch):
                if _continues(ctx.tasks[t].get("continueOn"), branch):
                    continue
                result = branch
                if fail_fast:
                    break
        return result

    # -- graph helpers ----------------------------------------------------------------------------
    def outbound(self, name: str) -> list[str]:
        """getOutboundNodes: where a dependant hangs in the graph."""
        node = self.nodes[name]
        if node.type in (SKIPPED_TYPE, POD):
            return [name]
        if node.type == TASK_GROUP:
            if not node.children:
                return [name]
            return [o for c in node.children for o in self.outbound(c)]
        if node.type == RETRY:
            return [node.children[-1]] if node.children else []
        return [o for n in node.outbound for o in self.outbound(n)]

    def _init_node(
        self,
        name: str,
        node_type: str,
        template: str,
        boundary: str,
        phase: str,
        step: Mapping[str, Any],
        message: str = "",
    ) -> Node:
        display = step.get("name") or name
        node = Node(
            name=name,
            display_name=display,
            type=node_type,
            template=template,
            boundary=boundary,
            phase=phase,
            message=message,
            started=time.monotonic(),
        )
        if fulfilled(phase):
            node.finished = node.started
        self.nodes[name] = node
        self.in_boundary.setdefault(boundary, []).append(node)
        return node

    def _add_child(self, parent: str, child: str) -> None:
        children = self.nodes[parent].children
        if child not in children:
            children.append(child)

    def _mark(self, node: Node, phase: str, message: str | None = None) -> None:
        node.phase = phase
        if message is not None:
            node.message = message
        if fulfilled(phase) and not node.finished:
            node.finished = time.monotonic()

    # -- metrics (operator.go computeMetrics, the parts fedtwin uses) ---------------------------
    def _emit_metrics(self, tmpl: Mapping[str, Any], node: Node) -> None:
        if node.metrics or not (tmpl.get("metrics") or {}).get("prometheus"):
            return
        scope = {
            **self.global_params,
            "status": node.phase,
            **{
                f"inputs.parameters.{p['name']}": p["value"]
                for p in (tmpl.get("inputs") or {}).get("parameters", [])
            },
            **{f"outputs.parameters.{k}": v for k, v in node.outputs.items()},
        }
        for metric in tmpl["metrics"]["prometheus"]:
            try:
                if metric.get("when") and not condition(substitute(metric["when"], scope)):
                    continue
            except Unresolved as exc:  # Argo logs the failed `when` and emits nothing
                node.dropped_metrics.append(f"{metric['name']}: {exc}")
                continue
            kind = next(k for k in ("gauge", "counter", "histogram") if k in metric)
            value = substitute(metric[kind]["value"], scope)
            try:
                float(value)
            except ValueError:  # Argo drops (and logs) a metric whose value is not a number
                node.dropped_metrics.append(f"{metric['name']}: {value!r}")
                continue
            labels = {lab["key"]: substitute(lab["value"], scope) for lab in metric.get("labels", [])}
            node.metrics.append({"name": metric["name"], "kind": kind, "value": value, "labels": labels})


class _DagContext:
    """dagContext: one DAG node's tasks, their nodes, dependencies and `depends` logic."""

    def __init__(
        self, ctl: LocalArgo, node: Node, tasks: dict[str, Mapping[str, Any]], inputs: Mapping[str, str]
    ) -> None:
        self.ctl, self.node, self.tasks, self.inputs = ctl, node, tasks, inputs
        self.visited: set[str] = set()

    def name(self, task_name: str) -> str:
        return f"{self.node.name}.{task_name}"

    def task_node(self, task_name: str) -> Node | None:
        return self.ctl.nodes.get(self.name(task_name))

    def depends_logic(self, task_name: str) -> str:
        """GetTaskDependencies: a bare `X` means `(X.Succeeded || X.Skipped || X.Daemoned)`, plus the
        continueOn results of X (common/ancestry.go expandDependency)."""
        depends = self.depends_text(task_name)

        def expand(match: re.Match[str]) -> str:
            if match.group(1):
                return match.group(1)
            dep = match.group(2)
            results = ["Succeeded", "Skipped", "Daemoned"]
            continue_on = self.tasks[dep].get("continueOn") or {}
            if continue_on.get("error"):
                results.append("Errored")
            if continue_on.get("failed"):
                results.append("Failed")
            return "(" + " || ".join(f"{dep}.{r}" for r in results) + ")"

        return TASK_NAME.sub(expand, depends)

    def depends_text(self, task_name: str) -> str:
        """getTaskDependsLogic: `depends`, or the legacy `dependencies` as bare names joined by &&."""
        task = self.tasks[task_name]
        return str(task.get("depends") or " && ".join(task.get("dependencies") or []))

    def dependencies(self, task_name: str) -> list[str]:
        found = [
            m.group(1).split(".")[0] if m.group(1) else m.group(2)
            for m in TASK_NAME.finditer(self.depends_text(task_name))
        ]
        for dep in found:
            if dep not in self.tasks:
                raise Unresolved(f"task {task_name!r} depends on unknown task {dep!r}")
        return sorted(set(found))

    def leaves(self) -> list[str]:
        """findLeafTaskNames: tasks no other task depends on, sorted."""
        needed = {d for t in self.tasks for d in self.dependencies(t)}
        return sorted(t for t in self.tasks if t not in needed)

    def evaluate_depends(self, task_name: str) -> bool | None:
        """evaluateDependsLogic: None while a dependency runs, else whether the task should run."""
        env: dict[str, Any] = {}
        for dep in self.dependencies(task_name):
            node = self.task_node(dep)
            if node is None or not fulfilled(node.phase):
                return None
            phases = [self.ctl.nodes[c].phase for c in node.children] if node.type == TASK_GROUP else []
            env[dep.replace("-", "_")] = {
                "Succeeded": node.phase == SUCCEEDED,
                "Failed": node.phase == FAILED,
                "Errored": node.phase == ERROR,
                "Skipped": node.phase == SKIPPED,
                "Omitted": node.phase == OMITTED,
                "Daemoned": False,
                "AnySucceeded": any(p == SUCCEEDED for p in phases),
                "AllFailed": bool(phases) and all(p == FAILED for p in phases),
            }
        logic = self.depends_logic(task_name).replace("-", "_")
        return bool(Expression(logic, env).value())

    def scope(self, task_name: str) -> dict[str, Any]:
        """buildLocalScopeFromTask: workflow outputs, inputs, and every ancestor's status and outputs."""
        scope: dict[str, Any] = {**self.ctl.global_params, **self.inputs}
        for ancestor in self._ancestry(task_name):
            node = self.task_node(ancestor)
            if node is None:
                continue
            prefix = f"tasks.{ancestor}"
            scope[f"{prefix}.status"] = node.phase
            if node.type == TASK_GROUP:
                children = [self.ctl.nodes[c] for c in node.children]
                scope[f"{prefix}.outputs.parameters"] = json.dumps([c.outputs for c in children])
            for key, value in node.outputs.items():
                scope[f"{prefix}.outputs.parameters.{key}"] = value
        return scope

    def _ancestry(self, task_name: str) -> list[str]:
        seen: list[str] = []

        def walk(name: str) -> None:
            for dep in self.dependencies(name):
                if dep not in seen:
                    walk(dep)
                    seen.append(dep)

        walk(task_name)
        return seen


TASK_NAME = re.compile(r"([a-zA-Z0-9][-a-zA-Z0-9]*?\.[A-Z][a-zA-Z]+)|([a-zA-Z0-9][-a-zA-Z0-9]*)")
"""common/ancestry.go taskNameRegex: `task.Result` or a bare task name."""


def _continues(continue_on: Mapping[str, Any] | None, phase: str) -> bool:
    """continues (workflow_types.go): continueOn.failed / continueOn.error."""
    if not continue_on:
        return False
    return bool(
        (continue_on.get("error") and phase == ERROR) or (continue_on.get("failed") and phase == FAILED)
    )


def _map_paths(text: str, dirs: list[str], root: str) -> str:
    """Prefix container paths under `dirs` with the pod's local directory, in one pass."""
    if not dirs:
        return text
    pattern = re.compile(r"(?<![\w./-])(" + "|".join(re.escape(d) for d in dirs) + r")(?=/|$|[\s'\"])")
    return pattern.sub(lambda m: root + m.group(1), text)
