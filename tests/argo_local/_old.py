"""A small local executor for rendered Argo WorkflowTemplates (test code, not a product feature).

It runs the templates the way the Argo controller would for the features fedtwin's templates use:
DAG `depends` expressions (plain `X` = Succeeded, Skipped or Daemoned), `when`, `withParam` over
JSON lists (items run concurrently), Steps with `parallelism: 1` + `failFast`, container templates
as subprocesses, output parameters read from `valueFrom.path` files (with `default`), `globalName`
exports, `retryStrategy` (limit and expression, no backoff sleep), output artifacts (must exist),
template metrics (values must be numbers) and the `onExit` handler with `{{workflow.status}}`.
Simple tags and `{{=...}}` expressions are substituted; an unresolvable reference is an error, so
a broken template fails here instead of on a cluster. Container paths under an output parameter's
directory are mapped into a per-node temp directory. Anything outside this subset raises
`Unsupported`, so a template change that needs more support is noticed.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TAG = re.compile(r"\{\{\s*(=)?\s*(.*?)\s*\}\}")
SUCCEEDED, FAILED, ERROR, SKIPPED, OMITTED = "Succeeded", "Failed", "Error", "Skipped", "Omitted"


class Unsupported(Exception):
    """The template uses an Argo feature this executor does not implement."""


class Unresolved(Exception):
    """A `{{...}}` reference has no value in scope (Argo would refuse or fail the node)."""


# ------------------------------------------------------------------------ expression evaluation
TOKEN = re.compile(
    r"\s*(?:(?P<num>\d+(?:\.\d+)?)|(?P<str>'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\")|(?P<name>[A-Za-z_]\w*)"
    r"|(?P<op>==|!=|<=|>=|&&|\|\||\?\?|[-+*/<>!?:.\[\](),]))"
)


def _tokens(source: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    source = source.strip()
    while pos < len(source):
        match = TOKEN.match(source, pos)
        if not match or match.end() == pos:
            raise SyntaxError(f"cannot tokenize {source[pos:]!r} in {source!r}")
        kind = match.lastgroup or ""
        out.append((kind, match.group(kind)))
        pos = match.end()
    return out


def _sprig_trunc(n: int, s: str) -> str:
    return s[:n] if n >= 0 else s[n:]


SPRIG: dict[str, Callable[..., Any]] = {
    "trimAll": lambda cutset, s: s.strip(cutset),
    "trunc": _sprig_trunc,
    "replace": lambda old, new, s: s.replace(old, new),
    "default": lambda default, value: value or default,
    "trim": lambda s: s.strip(),
}
FUNCTIONS: dict[str, Callable[..., Any]] = {
    "asInt": lambda v: int(v),
    "asFloat": lambda v: float(v),
    "string": lambda v: v if isinstance(v, str) else json.dumps(v),
    "toJson": lambda v: json.dumps(v, separators=(",", ":")),
}


class Expression:
    """Recursive-descent evaluator for the expr-lang subset the templates use (and govaluate `when`).

    With `bare_strings` (govaluate mode), an unknown bare identifier is its own name as a string,
    the way Argo turns govaluate variables into strings.
    """

    def __init__(self, source: str, env: Mapping[str, Any], bare_strings: bool = False) -> None:
        self.source, self.env, self.bare = source, env, bare_strings
        self.toks = _tokens(source)
        self.i = 0

    def value(self) -> Any:
        result = self._ternary()
        if self.i != len(self.toks):
            raise SyntaxError(f"unexpected {self.toks[self.i][1]!r} in {self.source!r}")
        return result

    def _peek(self) -> str | None:
        return self.toks[self.i][1] if self.i < len(self.toks) else None

    def _take(self, expected: str | None = None) -> tuple[str, str]:
        if self.i >= len(self.toks):
            raise SyntaxError(f"unexpected end of {self.source!r}")
        tok = self.toks[self.i]
        if expected is not None and tok[1] != expected:
            raise SyntaxError(f"expected {expected!r}, got {tok[1]!r} in {self.source!r}")
        self.i += 1
        return tok

    def _ternary(self) -> Any:
        cond = self._or()
        if self._peek() == "?":
            self._take("?")
            then = self._ternary()
            self._take(":")
            otherwise = self._ternary()
            return then if cond else otherwise
        return cond

    def _or(self) -> Any:
        left = self._and()
        while self._peek() in ("||", "??"):
            op = self._take()[1]
            right = self._and()
            left = (left or right) if op == "||" else (right if left is None else left)
        return left

    def _and(self) -> Any:
        left = self._cmp()
        while self._peek() == "&&":
            self._take()
            right = self._cmp()
            left = left and right
        return left

    def _cmp(self) -> Any:
        left = self._add()
        op = self._peek()
        if op in ("==", "!=", "<", ">", "<=", ">="):
            self._take()
            right = self._add()
            compare = {"==": lambda a, b: a == b, "!=": lambda a, b: a != b, "<": lambda a, b: a < b,
                       ">": lambda a, b: a > b, "<=": lambda a, b: a <= b, ">=": lambda a, b: a >= b}
            return compare[op](left, right)
        return left

    def _add(self) -> Any:
        left = self._unary()
        while self._peek() in ("+", "-"):
            op = self._take()[1]
            right = self._unary()
            if op == "-" and (isinstance(left, str) or isinstance(right, str)):
                raise SyntaxError(f"'-' between strings in {self.source!r} (hyphenated bare word?)")
            left = left + right if op == "+" else left - right
        return left

    def _unary(self) -> Any:
        if self._peek() == "!":
            self._take()
            return not self._unary()
        if self._peek() == "-":
            self._take()
            return -self._unary()
        return self._postfix()

    def _postfix(self) -> Any:
        value, name = self._primary()
        while self._peek() in (".", "[", "("):
            op = self._take()[1]
            if op == ".":
                key = self._take()[1]
                value, name = self._member(value, key, f"{name}.{key}")
            elif op == "[":
                key = self._ternary()
                self._take("]")
                value, name = self._member(value, key, f"{name}[{key!r}]")
            else:
                args = []
                while self._peek() != ")":
                    args.append(self._ternary())
                    if self._peek() == ",":
                        self._take(",")
                self._take(")")
                if not callable(value):
                    raise Unresolved(f"{name} is not a function in {self.source!r}")
                value, name = value(*args), f"{name}(...)"
        return value

    def _member(self, value: Any, key: Any, name: str) -> tuple[Any, str]:
        if isinstance(value, Mapping) and key in value:
            return value[key], name
        if isinstance(value, list) and isinstance(key, int):
            return value[key], name
        raise Unresolved(f"{name} is not defined (in {self.source!r})")

    def _primary(self) -> tuple[Any, str]:
        kind, text = self._take()
        if kind == "num":
            return (float(text) if "." in text else int(text)), text
        if kind == "str":
            return bytes(text[1:-1], "utf-8").decode("unicode_escape"), text
        if text == "(":
            value = self._ternary()
            self._take(")")
            return value, "(...)"
        if kind == "name":
            if text in ("true", "false"):
                return text == "true", text
            if text == "nil":
                return None, text
            if text in FUNCTIONS:
                return FUNCTIONS[text], text
            if text == "sprig":
                return SPRIG, text
            if text in self.env:
                return self.env[text], text
            if self.bare:
                return text, text
            raise Unresolved(f"{text} is not defined (in {self.source!r})")
        raise SyntaxError(f"unexpected {text!r} in {self.source!r}")


def nested(flat: Mapping[str, Any]) -> dict[str, Any]:
    """{"a.b.c": v} -> {"a": {"b": {"c": v}}} (the environment of an expression)."""
    out: dict[str, Any] = {}
    for key, value in flat.items():
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                break
            node = child
        else:
            node.setdefault(leaf, value)
    return out


def evaluate(source: str, scope: Mapping[str, Any]) -> Any:
    return Expression(source, nested(scope)).value()


def as_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return value if isinstance(value, str) else json.dumps(value)


def substitute(text: str, scope: Mapping[str, Any]) -> str:
    """Replace every `{{tag}}` and `{{=expression}}`; a missing reference raises Unresolved."""

    def one(match: re.Match[str]) -> str:
        is_expr, body = match.group(1), match.group(2)
        if is_expr:
            return as_text(evaluate(body, scope))
        if body not in scope:
            raise Unresolved(f"{{{{{body}}}}} has no value here")
        return as_text(scope[body])

    return TAG.sub(one, text)


def deep_substitute(obj: Any, scope: Mapping[str, Any]) -> Any:
    """Substitute in keys and values of nested data, like Argo does on the template's JSON."""
    if isinstance(obj, str):
        return substitute(obj, scope)
    if isinstance(obj, list):
        return [deep_substitute(v, scope) for v in obj]
    if isinstance(obj, dict):
        return {deep_substitute(k, scope): deep_substitute(v, scope) for k, v in obj.items()}
    return obj


def condition(text: str) -> bool:
    """A substituted `when` (govaluate: bare words are strings)."""
    result = Expression(text, {}, bare_strings=True).value()
    if not isinstance(result, bool):
        raise SyntaxError(f"`when` {text!r} is not a boolean expression")
    return result


DEPENDS_TERM = re.compile(r"([A-Za-z0-9][-A-Za-z0-9]*)(?:\.(\w+))?")


def depends_holds(expression: str, tasks: Mapping[str, Node]) -> bool:
    """Evaluate a DAG `depends` expression against the phases of finished tasks."""

    def term(match: re.Match[str]) -> str:
        name, attr = match.group(1), match.group(2)
        if name not in tasks:
            raise Unresolved(f"depends names unknown task {name!r}")
        node = tasks[name]
        phase = node.phase
        children = [c.phase for c in node.children] or [phase]
        checks = {
            None: phase in (SUCCEEDED, SKIPPED, "Daemoned"),
            "Succeeded": phase == SUCCEEDED, "Failed": phase == FAILED, "Errored": phase == ERROR,
            "Skipped": phase == SKIPPED, "Omitted": phase == OMITTED, "Daemoned": False,
            "AnySucceeded": any(p == SUCCEEDED for p in children),
            "AllFailed": all(p in (FAILED, ERROR) for p in children),
        }
        if attr not in checks:
            raise Unsupported(f"depends result {attr!r}")
        return "true" if checks[attr] else "false"

    replaced = DEPENDS_TERM.sub(term, expression).replace("&&", " && ").replace("||", " || ")
    return bool(Expression(replaced, {}).value())


def depends_names(expression: str) -> set[str]:
    return {m.group(1) for m in DEPENDS_TERM.finditer(expression) if m.group(1) not in ("true", "false")}


# ----------------------------------------------------------------------------------- execution
@dataclass
class Node:
    """One node of the run: a pod (container), a DAG/Steps, a task group or a skipped/omitted task."""

    path: str
    display: str
    template: str
    phase: str = ""
    message: str = ""
    outputs: dict[str, str] = field(default_factory=dict)
    artifacts: dict[str, Path] = field(default_factory=dict)
    children: list[Node] = field(default_factory=list)
    argv: list[str] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    attempts: int = 0
    seconds: float = 0.0
    exit_code: int | None = None
    log: str = ""
    metrics: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Run:
    phase: str
    nodes: list[Node]
    global_outputs: dict[str, str]
    parameters: dict[str, str]
    mutexes: list[str]

    def find(self, pattern: str) -> list[Node]:
        """Nodes whose path matches a regular expression (searched, not anchored)."""
        return [n for n in self.nodes if re.search(pattern, n.path)]

    def one(self, pattern: str) -> Node:
        found = self.find(pattern)
        assert len(found) == 1, f"{pattern!r} matches {[n.path for n in found]}"
        return found[0]

    def pods(self) -> list[Node]:
        return [n for n in self.nodes if n.argv]


Wrapper = Callable[[list[str], Node], list[str]]


class LocalArgo:
    """Execute a rendered WorkflowTemplate with local subprocesses."""

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
    ) -> None:
        if manifest.get("kind") not in ("WorkflowTemplate", "Workflow"):
            raise Unsupported(f"kind {manifest.get('kind')!r}")
        self.spec = manifest["spec"]
        self.templates = {t["name"]: t for t in self.spec["templates"]}
        self.workdir = workdir
        self.env = dict(os.environ if env is None else env)
        self.wrap = wrap
        self.max_parallel = max_parallel
        self.binaries = dict(entrypoint_binary or {"fedtwin": [sys.executable, "-m", "fedtwin"]})
        arguments = self.spec.get("arguments", {}).get("parameters", [])
        declared = {p["name"]: str(p.get("value", "")) for p in arguments}
        unknown = set(parameters or {}) - set(declared)
        if unknown:
            raise Unresolved(f"unknown workflow parameters {sorted(unknown)}")
        missing = [p["name"] for p in arguments if "value" not in p and p["name"] not in (parameters or {})]
        if missing:
            raise Unresolved(f"workflow parameters without a value: {missing}")
        self.params = {**declared, **(parameters or {})}
        self.globals: dict[str, Any] = {"workflow.name": workflow_name}
        self.globals.update({f"workflow.parameters.{k}": v for k, v in self.params.items()})
        self.global_outputs: dict[str, str] = {}
        self.nodes: list[Node] = []
        self.lock = threading.Lock()
        self.counter = 0

    # -- public ------------------------------------------------------------------------------
    def run(self) -> Run:
        mutexes = [substitute(m["name"], self.globals)
                   for m in (self.spec.get("synchronization") or {}).get("mutexes", [])]
        main = self._execute(self.spec["entrypoint"], {}, "", self.spec["entrypoint"], {})
        phase = main.phase
        if self.spec.get("onExit"):
            self.globals["workflow.status"] = phase
            exit_node = self._execute(self.spec["onExit"], {}, "", "onExit", {})
            if exit_node.phase in (FAILED, ERROR) and phase == SUCCEEDED:
                phase = FAILED
        return Run(phase, self.nodes, dict(self.global_outputs), dict(self.params), mutexes)

    # -- dispatch ----------------------------------------------------------------------------
    def _scope(self, local: Mapping[str, Any]) -> dict[str, Any]:
        scope = dict(self.globals)
        scope.update({f"workflow.outputs.parameters.{k}": v for k, v in self.global_outputs.items()})
        scope.update(local)
        return scope

    def _new_node(self, parent: str, display: str, template: str) -> Node:
        node = Node(path=f"{parent}/{display}" if parent else display, display=display, template=template)
        with self.lock:
            self.nodes.append(node)
        return node

    def _execute(self, name: str, arguments: Mapping[str, str], parent: str, display: str,
                 caller: Mapping[str, Any]) -> Node:
        if name not in self.templates:
            raise Unresolved(f"template {name!r} does not exist")
        tmpl = self.templates[name]
        inputs = self._inputs(tmpl, arguments)
        node = self._new_node(parent, display, name)
        kinds = [k for k in ("container", "dag", "steps", "script", "resource", "suspend") if k in tmpl]
        if kinds == ["container"]:
            self._container(tmpl, inputs, node)
        elif kinds == ["dag"]:
            self._dag(tmpl, inputs, node)
        elif kinds == ["steps"]:
            self._steps(tmpl, inputs, node)
        else:
            raise Unsupported(f"template {name!r} of kind {kinds}")
        return node

    def _inputs(self, tmpl: Mapping[str, Any], arguments: Mapping[str, str]) -> dict[str, str]:
        declared = {p["name"]: p for p in (tmpl.get("inputs") or {}).get("parameters", [])}
        extra = set(arguments) - set(declared)
        if extra:
            raise Unresolved(f"template {tmpl['name']!r} got arguments {sorted(extra)} it does not declare")
        values = {}
        for pname, p in declared.items():
            if pname in arguments:
                values[pname] = arguments[pname]
            elif "value" in p or "default" in p:
                values[pname] = str(p.get("value", p.get("default")))
            else:
                raise Unresolved(f"template {tmpl['name']!r} needs input {pname!r}")
        if (tmpl.get("inputs") or {}).get("artifacts"):
            raise Unsupported(f"input artifacts of {tmpl['name']!r}")
        return values

    @staticmethod
    def _args(step: Mapping[str, Any], scope: Mapping[str, Any]) -> dict[str, str]:
        params = (step.get("arguments") or {}).get("parameters", [])
        return {p["name"]: substitute(str(p.get("value", "")), scope) for p in params}

    @staticmethod
    def _items(step: Mapping[str, Any], scope: Mapping[str, Any]) -> list[Any] | None:
        if "withItems" in step or "withSequence" in step:
            raise Unsupported("withItems/withSequence")
        if "withParam" not in step:
            return None
        text = substitute(step["withParam"], scope)
        try:
            items = json.loads(text)
        except json.JSONDecodeError as exc:
            raise Unresolved(f"withParam {step['withParam']!r} is not JSON: {text[:200]!r}") from exc
        if not isinstance(items, list):
            raise Unresolved(f"withParam {step['withParam']!r} is not a JSON list: {text[:200]!r}")
        return items

    def _run_children(self, step: Mapping[str, Any], scope: dict[str, Any], parent: Node,
                      parallel: bool) -> Node | list[Node]:
        """Run a task or step, expanded over withParam; returns the node or the group's children."""
        items = self._items(step, scope)
        if items is None:
            child = self._execute(step["template"], self._args(step, scope), parent.path, step["name"], scope)
            parent.children.append(child)
            return child

        def one(index: int, item: Any) -> Node:
            item_scope = {**scope, "item": as_text(item)}
            display = f"{step['name']}({index}:{as_text(item)})"
            args = self._args(step, item_scope)
            return self._execute(step["template"], args, parent.path, display, item_scope)

        if parallel and len(items) > 1:
            with ThreadPoolExecutor(max_workers=self.max_parallel) as pool:
                children = list(pool.map(lambda pair: one(*pair), enumerate(items)))
        else:
            children = []
            for index, item in enumerate(items):
                children.append(one(index, item))
                if children[-1].phase in (FAILED, ERROR) and not parallel:
                    break  # failFast with parallelism 1: no new item starts after a failure
        parent.children.extend(children)
        return children

    # -- DAG ---------------------------------------------------------------------------------
    def _dag(self, tmpl: Mapping[str, Any], inputs: Mapping[str, str], node: Node) -> None:
        tasks = {t["name"]: t for t in tmpl["dag"]["tasks"]}
        done: dict[str, Node] = {}
        local = {f"inputs.parameters.{k}": v for k, v in inputs.items()}
        for t in tasks.values():
            if "dependencies" in t:
                raise Unsupported("dependencies (use depends)")
        while len(done) < len(tasks):
            ready = [t for name, t in tasks.items() if name not in done
                     and depends_names(t.get("depends", "")) <= set(done)]
            if not ready:
                raise Unresolved(f"DAG {tmpl['name']!r} has a dependency cycle or unknown task")
            for task in ready:
                done[task["name"]] = self._dag_task(task, local, done, node)
        needed = {d for t in tasks.values() for d in depends_names(t.get("depends", ""))}
        leaves = [n for n in tasks if n not in needed]
        node.phase = SUCCEEDED
        for leaf in leaves:
            if self._branch_phase(leaf, tasks, done) in (FAILED, ERROR):
                node.phase = FAILED
                node.message = f"task {leaf!r} failed"

    def _branch_phase(self, name: str, tasks: Mapping[str, Any], done: Mapping[str, Node]) -> str:
        """A task's phase; an omitted task inherits the worst phase of its dependencies."""
        phase = done[name].phase
        if phase != OMITTED:
            return phase
        parents = [self._branch_phase(p, tasks, done) for p in depends_names(tasks[name].get("depends", ""))]
        return next((p for p in parents if p in (FAILED, ERROR)), SUCCEEDED)

    def _dag_task(self, task: Mapping[str, Any], local: Mapping[str, Any], done: Mapping[str, Node],
                  parent: Node) -> Node:
        scope = self._scope(local)
        for name, finished in done.items():
            scope[f"tasks.{name}.status"] = finished.phase
            for key, value in finished.outputs.items():
                scope[f"tasks.{name}.outputs.parameters.{key}"] = value
        if task.get("depends") and not depends_holds(task["depends"], done):
            return self._mark(parent, task, OMITTED, f"depends {task['depends']!r} not satisfied")
        if task.get("when") and not condition(substitute(task["when"], scope)):
            return self._mark(parent, task, SKIPPED, f"when {task['when']!r} evaluated false")
        result = self._run_children(task, scope, parent, parallel=True)
        if isinstance(result, Node):
            return result
        group = Node(path=f"{parent.path}/{task['name']}", display=task["name"], template=task["template"],
                     children=result)
        bad = [c for c in result if c.phase in (FAILED, ERROR)]
        group.phase = (bad[0].phase if bad else SUCCEEDED) if result else SKIPPED
        return group

    def _mark(self, parent: Node, step: Mapping[str, Any], phase: str, message: str) -> Node:
        node = self._new_node(parent.path, step["name"], step["template"])
        node.phase, node.message = phase, message
        parent.children.append(node)
        return node

    # -- Steps -------------------------------------------------------------------------------
    def _steps(self, tmpl: Mapping[str, Any], inputs: Mapping[str, str], node: Node) -> None:
        parallelism, fail_fast = tmpl.get("parallelism"), tmpl.get("failFast", False)
        if parallelism not in (None, 1) or (parallelism == 1 and not fail_fast):
            raise Unsupported("steps parallelism other than a sequential failFast loop")
        local: dict[str, Any] = {f"inputs.parameters.{k}": v for k, v in inputs.items()}
        node.phase = SUCCEEDED
        for group in tmpl["steps"]:
            results: list[Node] = []
            for step in group:
                scope = self._scope(local)
                if step.get("when") and not condition(substitute(step["when"], scope)):
                    results.append(self._mark(node, step, SKIPPED, f"when {step['when']!r} evaluated false"))
                    continue
                result = self._run_children(step, scope, node, parallel=parallelism is None)
                children = [result] if isinstance(result, Node) else result
                results.extend(children)
                if isinstance(result, Node):
                    for key, value in result.outputs.items():
                        local[f"steps.{step['name']}.outputs.parameters.{key}"] = value
            failed = [r for r in results if r.phase in (FAILED, ERROR)]
            if failed:
                node.phase, node.message = FAILED, f"child {failed[0].display!r} failed"
                return

    # -- containers --------------------------------------------------------------------------
    def _container(self, tmpl: Mapping[str, Any], inputs: Mapping[str, str], node: Node) -> None:
        scope = self._scope({f"inputs.parameters.{k}": v for k, v in inputs.items()})
        container = deep_substitute(tmpl["container"], scope)
        metadata = deep_substitute(tmpl.get("metadata") or {}, scope)
        pod_metadata = deep_substitute(self.spec.get("podMetadata") or {}, self.globals)
        node.labels = {**pod_metadata.get("labels", {}), **metadata.get("labels", {})}
        node.annotations = {**pod_metadata.get("annotations", {}), **metadata.get("annotations", {})}
        outputs = tmpl.get("outputs") or {}
        with self.lock:
            self.counter += 1
            pod_dir = self.workdir / f"pod-{self.counter:03d}-{tmpl['name']}"
        output_dirs = sorted({str(Path(p["valueFrom"]["path"]).parent) for p in outputs.get("parameters", [])}
                             | {str(Path(a["path"]).parent) for a in outputs.get("artifacts", [])})

        def local_path(text: str) -> str:
            for d in output_dirs:
                if text == d or text.startswith(d + "/"):
                    return str(pod_dir) + text
            return text

        command = container.get("command") or []
        if not command or command[0] not in self.binaries:
            raise Unsupported(f"command {command!r} (known entrypoints: {sorted(self.binaries)})")
        argv = [*self.binaries[command[0]], *command[1:], *[local_path(a) for a in container.get("args", [])]]
        env = dict(self.env)
        for var in container.get("env", []):
            if "value" in var:
                env[var["name"]] = var["value"]
            elif not var.get("valueFrom", {}).get("secretKeyRef", {}).get("optional"):
                raise Unsupported(f"env {var['name']!r} from a required Secret")
        node.argv = argv
        retry = tmpl.get("retryStrategy") or {}
        limit = int(substitute(str(retry.get("limit", 0)), scope))
        deadline = tmpl.get("activeDeadlineSeconds")
        timeout = float(substitute(str(deadline), scope)) if deadline is not None else None
        for attempt in range(limit + 1):
            for d in output_dirs:
                Path(str(pod_dir) + d).mkdir(parents=True, exist_ok=True)
            node.attempts = attempt + 1
            run_argv = self.wrap(argv, node) if self.wrap else argv
            started = time.perf_counter()
            try:
                proc = subprocess.run(run_argv, env=env, capture_output=True, text=True, timeout=timeout,
                                      cwd=self.workdir)
                node.exit_code, log = proc.returncode, proc.stdout + proc.stderr
            except subprocess.TimeoutExpired as exc:
                node.exit_code, log = -1, f"activeDeadlineSeconds {deadline} exceeded: {exc}"
            node.seconds += time.perf_counter() - started
            node.log += f"--- attempt {attempt}\n{log}"
            if node.exit_code == 0:
                break
            last = {"lastRetry.exitCode": str(node.exit_code), "lastRetry.status": FAILED,
                    "retries": str(attempt)}
            if retry.get("expression") and not evaluate(retry["expression"], last):
                break
        node.phase = SUCCEEDED if node.exit_code == 0 else FAILED
        if node.phase == FAILED:
            node.message = (node.log.strip().splitlines() or ["no output"])[-1]
        self._collect_outputs(tmpl, outputs, pod_dir, node, scope)

    def _collect_outputs(self, tmpl: Mapping[str, Any], outputs: Mapping[str, Any], pod_dir: Path,
                         node: Node, scope: Mapping[str, Any]) -> None:
        for p in outputs.get("parameters", []):
            path = Path(str(pod_dir) + p["valueFrom"]["path"])
            if path.exists():
                node.outputs[p["name"]] = path.read_text()
            elif "default" in p["valueFrom"]:
                node.outputs[p["name"]] = str(p["valueFrom"]["default"])
            elif node.phase == SUCCEEDED:
                node.phase = ERROR
                node.message = f"output parameter {p['name']!r}: {p['valueFrom']['path']} missing"
            if p.get("globalName") and p["name"] in node.outputs:
                with self.lock:
                    self.global_outputs[p["globalName"]] = node.outputs[p["name"]]
        for a in outputs.get("artifacts", []):
            path = Path(str(pod_dir) + a["path"])
            if path.exists():
                node.artifacts[a["name"]] = path
            elif node.phase == SUCCEEDED and not a.get("optional"):
                node.phase, node.message = ERROR, f"output artifact {a['name']!r}: {a['path']} missing"
        own = {**scope, "status": node.phase,
               **{f"outputs.parameters.{k}": v for k, v in node.outputs.items()}}
        for metric in (tmpl.get("metrics") or {}).get("prometheus", []):
            if metric.get("when") and not condition(substitute(metric["when"], own)):
                continue
            kind = next(k for k in ("gauge", "counter", "histogram") if k in metric)
            value = substitute(metric[kind]["value"], own)
            float(value)  # Argo drops (and logs) a metric whose value is not a number
            labels = {lab["key"]: substitute(lab["value"], own) for lab in metric.get("labels", [])}
            node.metrics.append({"name": metric["name"], "kind": kind, "value": value, "labels": labels})
