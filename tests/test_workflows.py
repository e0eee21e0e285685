"""The Argo WorkflowTemplates: golden YAML, Hera models, the vendored Argo v4 schema, and the
semantic checks a schema cannot do (references, fan-out inputs, names, the CLI they call).

`FEDTWIN_REGENERATE=1 pytest tests/test_workflows.py` rewrites the rendered YAML and the README's
parameter tables (as `make workflows` does); otherwise a stale file fails the test.
"""

from __future__ import annotations

import functools
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import jsonschema
import pytest
import yaml
from hera.workflows import models as m

from tests.argo_local import Unresolved, evaluate
from workflows import common, render

REPO = Path(__file__).resolve().parents[1]
SCHEMA = REPO / "schemas" / "argo-workflows" / "schema.json"
MODULES = {module.NAME: module for module in render.MODULES}
TAG = re.compile(r"\{\{\s*(=)?\s*(.*?)\s*\}\}")
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
QUALIFIED = re.compile(r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
                       r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
METRIC_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
HELM = re.compile(r"\{\{-|-\}\}|\{\{\s*\.|\.Values\b|\.Release\b"
                  r"|\{\{\s*(include|template|tpl|toYaml|if|range|with|end)\b")
GENERATED_SUFFIX = 6
"""`argo submit --from workflowtemplate/NAME` names the workflow NAME-xxxxx."""
POD_HASH = 1 + 10
"""Argo's pod names: <workflow>-<template>-<10-digit hash>."""

# Workflow-level parameters other charts and users rely on: renaming one is a breaking change.
FEDERATED_PARAMETERS = [
    "run-id", "seed", "rounds", "twins", "fleet-configmap", "kind", "algo", "min-twins", "strategy",
    "target-return", "privacy", "privacy-epsilon", "privacy-delta", "twin-dp-noise-secret",
    "aggregator-dp-noise-secret",
    "twins-per-pod", "parallelism", "max-workflow-nodes", "store", "s3-endpoint", "s3-region",
    "aggregator-s3-secret", "twin-s3-secret", "per-twin-secrets",
    "mlflow-uri", "mlflow-experiment", "image", "aggregator-service-account", "aggregator-cpu-request",
    "aggregator-memory-request", "aggregator-cpu-limit", "aggregator-memory-limit", "twin-service-account",
    "subnet", "twin-cpu-request", "twin-memory-request", "twin-cpu-limit", "twin-memory-limit",
    "twin-gpu-limit", "twin-retries", "twin-deadline",
]
JSON_LIST_OUTPUTS = {("init", "twins"), ("init", "shards")}
"""Step outputs the CLI writes as JSON lists (checked against the real CLI below)."""


@functools.cache
def manifest(name: str) -> dict[str, Any]:
    return yaml.safe_load((render.RENDERED / f"{name}.yaml").read_text())


def manifests() -> list[Any]:
    return [pytest.param(name, id=name) for name in MODULES]


def templates(obj: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {t["name"]: t for t in obj["spec"]["templates"]}


def strings(obj: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """Every string (dict keys included: Argo substitutes those too) with its location."""
    if isinstance(obj, str):
        yield path, obj
    elif isinstance(obj, list):
        for i, value in enumerate(obj):
            yield from strings(value, f"{path}[{i}]")
    elif isinstance(obj, dict):
        for key, value in obj.items():
            yield f"{path}.{key}<key>", key
            yield from strings(value, f"{path}.{key}")


def calls(tmpl: dict[str, Any]) -> list[dict[str, Any]]:
    """The tasks or steps of a DAG/Steps template."""
    if "dag" in tmpl:
        return tmpl["dag"]["tasks"]
    if "steps" in tmpl:
        return [step for group in tmpl["steps"] for step in group]
    return []


def depends_on(task: dict[str, Any]) -> set[str]:
    return set(re.findall(r"([A-Za-z0-9][-A-Za-z0-9]*)(?:\.\w+)?", task.get("depends", "")))


def ancestors(tasks: list[dict[str, Any]], name: str) -> set[str]:
    by_name = {t["name"]: t for t in tasks}
    seen: set[str] = set()
    todo = list(depends_on(by_name[name]))
    while todo:
        current = todo.pop()
        if current not in seen:
            seen.add(current)
            todo.extend(depends_on(by_name[current]))
    return seen


def reachable(obj: dict[str, Any], start: str) -> set[str]:
    tmpls, seen, todo = templates(obj), set(), [start]
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(c["template"] for c in calls(tmpls[name]))
    return seen


def param_defaults(obj: dict[str, Any]) -> dict[str, str]:
    return {p["name"]: str(p.get("value", "")) for p in obj["spec"]["arguments"]["parameters"]}


# ------------------------------------------------------------------------ golden YAML / models
def test_rendered_yaml_and_readme_tables_are_current() -> None:
    """Hera is the only source: the committed YAML (and README tables) must equal a fresh render."""
    if os.environ.get("FEDTWIN_REGENERATE") == "1":
        render.main([])
    stale = render.stale_files()
    names = [str(p.relative_to(REPO)) for p in stale]
    assert not stale, f"stale generated files {names}; run `make workflows`"


def test_every_rendered_file_has_a_source() -> None:
    assert {p.stem for p in render.RENDERED.glob("*.yaml")} == set(MODULES)


@pytest.mark.parametrize("name", manifests())
def test_hera_model_round_trip(name: str) -> None:
    """The YAML parses into Hera's WorkflowTemplate model without losing a field, and equals the source."""
    obj = manifest(name)
    model = m.WorkflowTemplate.model_validate(obj)
    assert model.model_dump(by_alias=True, exclude_none=True, mode="json") == obj
    assert MODULES[name].w.to_dict() == obj


@functools.cache
def argo_validator() -> jsonschema.Draft7Validator:
    assert SCHEMA.exists(), f"vendored Argo schema missing: {SCHEMA} (see schemas/README.md)"
    schema = json.loads(SCHEMA.read_text())
    return jsonschema.Draft7Validator(
        {"$ref": "#/definitions/io.argoproj.workflow.v1alpha1.WorkflowTemplate",
         "definitions": schema["definitions"]}
    )


@pytest.mark.parametrize("name", manifests())
def test_argo_v4_schema(name: str) -> None:
    errors = sorted(argo_validator().iter_errors(manifest(name)), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message}" for e in errors)


def test_schema_check_catches_a_wrong_type() -> None:
    bad = json.loads(json.dumps(manifest("fedtwin-federated")))
    bad["spec"]["templates"][0]["dag"]["tasks"] = "not a list"
    assert list(argo_validator().iter_errors(bad))


# --------------------------------------------------------------------------------- semantics
@pytest.mark.parametrize("name", manifests())
def test_referenced_templates_exist(name: str) -> None:
    obj = manifest(name)
    tmpls = templates(obj)
    assert obj["spec"]["entrypoint"] in tmpls
    if "onExit" in obj["spec"]:
        assert obj["spec"]["onExit"] in tmpls
    for tmpl in tmpls.values():
        for call in calls(tmpl):
            assert call["template"] in tmpls, f"{tmpl['name']}/{call['name']}: no {call['template']!r}"
            assert "templateRef" not in call
    used = reachable(obj, obj["spec"]["entrypoint"])
    if "onExit" in obj["spec"]:
        used |= reachable(obj, obj["spec"]["onExit"])
    unused = set(tmpls) - used
    assert not unused, f"unreachable templates {unused}"


def references_in(text: str) -> Iterator[tuple[bool, str]]:
    for match in TAG.finditer(text):
        yield bool(match.group(1)), match.group(2)


EXPRESSION_REFS = [
    (re.compile(r"workflow\.parameters\['([^']+)'\]|workflow\.parameters\.(\w+)"), "workflow.parameters."),
    (re.compile(r"inputs\.parameters\['([^']+)'\]|inputs\.parameters\.(\w+)"), "inputs.parameters."),
    (re.compile(r"workflow\.outputs\.parameters\['([^']+)'\]|workflow\.outputs\.parameters\.(\w+)"),
     "workflow.outputs.parameters."),
]


class Checker:
    """Resolves every `{{...}}` of one WorkflowTemplate in the context Argo would evaluate it in."""

    WORKFLOW_VARS = frozenset({"workflow.name", "workflow.namespace", "workflow.uid", "workflow.duration",
                               "workflow.serviceAccountName", "workflow.creationTimestamp"})

    def __init__(self, obj: dict[str, Any]) -> None:
        self.obj = obj
        self.tmpls = templates(obj)
        self.params = set(param_defaults(obj))
        self.globals = {p["globalName"] for t in self.tmpls.values()
                        for p in (t.get("outputs") or {}).get("parameters", []) if "globalName" in p}
        self.exit = reachable(obj, obj["spec"]["onExit"]) if "onExit" in obj["spec"] else set()
        self.problems: list[str] = []

    def outputs_of(self, template: str) -> set[str]:
        return {p["name"] for p in (self.tmpls[template].get("outputs") or {}).get("parameters", [])}

    def check_ref(self, body: str, where: str, *, tmpl: dict[str, Any] | None,
                  call: dict[str, Any] | None = None, earlier: frozenset[str] | set[str] = frozenset(),
                  metric: bool = False) -> None:
        inputs = {p["name"] for p in ((tmpl or {}).get("inputs") or {}).get("parameters", [])}
        parts = body.split(".")
        ok: bool
        if body in self.WORKFLOW_VARS:
            ok = True
        elif body == "workflow.status":
            ok = tmpl is None or tmpl["name"] in self.exit
        elif body.startswith("workflow.parameters."):
            ok = body.removeprefix("workflow.parameters.") in self.params
        elif body.startswith("workflow.outputs.parameters."):
            ok = body.removeprefix("workflow.outputs.parameters.") in self.globals
        elif body.startswith("inputs.parameters."):
            ok = body.removeprefix("inputs.parameters.") in inputs
        elif body == "item":
            ok = call is not None and any(k in call for k in ("withParam", "withItems", "withSequence"))
        elif body == "status" or body.startswith("outputs.parameters."):
            ok = metric and (body == "status" or parts[-1] in self.outputs_of(tmpl["name"]))
        elif parts[0] in ("tasks", "steps") and len(parts) == 5 and parts[2:4] == ["outputs", "parameters"]:
            siblings = {c["name"]: c for c in calls(tmpl or {})}
            ok = (parts[1] in earlier and parts[1] in siblings
                  and parts[4] in self.outputs_of(siblings[parts[1]]["template"]))
        else:
            ok = False
        if not ok:
            self.problems.append(f"{where}: {{{{{body}}}}} does not resolve")

    def check_text(self, text: str, where: str, **context: Any) -> None:
        for is_expr, body in references_in(text):
            if not is_expr:
                self.check_ref(body, where, **context)
                continue
            for pattern, prefix in EXPRESSION_REFS:
                for match in pattern.finditer(body):
                    self.check_ref(prefix + (match.group(1) or match.group(2)), where, **context)
            try:  # the expression must also parse and evaluate with the defaults
                evaluate(body, self.sample_scope(context.get("tmpl")))
            except (Unresolved, SyntaxError, ValueError, KeyError) as exc:
                self.problems.append(f"{where}: expression {body!r} fails with defaults: {exc}")

    def sample_scope(self, tmpl: dict[str, Any] | None) -> dict[str, str]:
        scope = {f"workflow.parameters.{k}": v for k, v in param_defaults(self.obj).items()}
        scope["workflow.name"] = "fedtwin-federated-abcde"
        scope.update({f"workflow.outputs.parameters.{g}": "" for g in self.globals})  # "" as after a failure
        for p in ((tmpl or {}).get("inputs") or {}).get("parameters", []):
            scope[f"inputs.parameters.{p['name']}"] = "twin-000,twin-001"
        return scope

    def run(self) -> list[str]:
        for name, tmpl in self.tmpls.items():
            body = {k: v for k, v in tmpl.items() if k not in ("dag", "steps", "metrics")}
            for where, text in strings(body, name):
                self.check_text(text, where, tmpl=tmpl)
            for where, text in strings(tmpl.get("metrics") or {}, f"{name}.metrics"):
                self.check_text(text, where, tmpl=tmpl, metric=True)
            self.check_calls(tmpl)
        spec = {k: v for k, v in self.obj["spec"].items() if k != "templates"}
        for where, text in strings(spec, "spec"):
            self.check_text(text, where, tmpl=None)
        return self.problems

    def check_calls(self, tmpl: dict[str, Any]) -> None:
        if "dag" in tmpl:
            tasks = tmpl["dag"]["tasks"]
            names = {t["name"] for t in tasks}
            for task in tasks:
                unknown = depends_on(task) - names
                if unknown:
                    self.problems.append(f"{tmpl['name']}/{task['name']}: depends on unknown {unknown}")
                    continue
                self.check_call(tmpl, task, ancestors(tasks, task["name"]))
        elif "steps" in tmpl:
            earlier: set[str] = set()
            for group in tmpl["steps"]:
                for step in group:
                    self.check_call(tmpl, step, set(earlier))
                earlier |= {s["name"] for s in group}

    def check_call(self, tmpl: dict[str, Any], call: dict[str, Any], earlier: set[str]) -> None:
        where = f"{tmpl['name']}/{call['name']}"
        fields = {k: v for k, v in call.items() if k in ("arguments", "when", "withParam", "withSequence")}
        for path, text in strings(fields, where):
            self.check_text(text, path, tmpl=tmpl, call=call, earlier=earlier)
        target = self.tmpls[call["template"]]
        declared = {p["name"]: p for p in (target.get("inputs") or {}).get("parameters", [])}
        given = {p["name"] for p in (call.get("arguments") or {}).get("parameters", [])}
        for extra in sorted(given - set(declared)):
            self.problems.append(f"{where}: passes {extra!r}, which {target['name']!r} does not declare")
        for pname, p in declared.items():
            if pname not in given and "value" not in p and "default" not in p:
                self.problems.append(f"{where}: does not pass required input {pname!r} of {target['name']!r}")


@pytest.mark.parametrize("name", manifests())
def test_every_reference_resolves(name: str) -> None:
    problems = Checker(manifest(name)).run()
    assert not problems, "\n".join(problems)


def test_checker_catches_broken_references() -> None:
    """The checker is only worth something if it fails on the mistakes it claims to catch."""
    obj = json.loads(json.dumps(manifest("fedtwin-federated")))
    tmpls = templates(obj)
    tmpls["train"]["container"]["args"].append("{{inputs.parameters.nope}}")
    tmpls["aggregate"]["container"]["args"].append("{{workflow.parameters.nope}}")
    late = {"name": "x", "value": "{{tasks.report.outputs.parameters.a}}"}  # not an ancestor of init
    tmpls["main"]["dag"]["tasks"][0]["arguments"] = {"parameters": [late]}
    tmpls["init"]["container"]["args"].append("{{=workflow.parameters['missing'] != ''}}")
    problems = "\n".join(Checker(obj).run())
    for needle in ("inputs.parameters.nope", "workflow.parameters.nope", "tasks.report", "missing",
                   "passes 'x'"):
        assert needle in problems


def with_param_sources(obj: dict[str, Any]) -> set[tuple[str, str]]:
    """(template, output) pairs every withParam ultimately reads, traced through input parameters."""
    tmpls = templates(obj)

    def trace(value: str, holder: dict[str, Any]) -> set[tuple[str, str]]:
        match = re.fullmatch(r"\{\{(tasks|steps)\.([^.]+)\.outputs\.parameters\.([^}]+)\}\}", value)
        if match:
            producer = next(c for c in calls(holder) if c["name"] == match.group(2))["template"]
            return {(producer, match.group(3))}
        match = re.fullmatch(r"\{\{inputs\.parameters\.([^}]+)\}\}", value)
        if match:
            sources: set[tuple[str, str]] = set()
            for caller in tmpls.values():
                for call in calls(caller):
                    if call["template"] == holder["name"]:
                        args = call["arguments"]["parameters"]
                        arg = next(p["value"] for p in args if p["name"] == match.group(1))
                        sources |= trace(arg, caller)
            return sources
        assert isinstance(json.loads(value), list), f"withParam {value!r} is not a JSON list"
        return set()

    return {src for t in tmpls.values() for c in calls(t) if "withParam" in c
            for src in trace(c["withParam"], t)}


@pytest.mark.parametrize("name", manifests())
def test_with_param_consumes_json_lists(name: str) -> None:
    obj = manifest(name)
    sources = with_param_sources(obj)
    assert sources <= JSON_LIST_OUTPUTS, f"withParam reads {sources - JSON_LIST_OUTPUTS}: not JSON lists"
    for template, output in sources:
        tmpl = templates(obj)[template]
        assert "--outputs-dir" in tmpl["container"]["args"]
        path = next(p["valueFrom"]["path"] for p in tmpl["outputs"]["parameters"] if p["name"] == output)
        assert path == f"{common.OUTPUTS_DIR}/{output}"


def test_federated_fans_out_over_shards_and_loops_over_rounds() -> None:
    sources = with_param_sources(manifest("fedtwin-federated"))
    assert sources == {("init", "shards")}
    (loop,) = calls(templates(manifest("fedtwin-federated"))["rounds"])
    assert loop["withSequence"] == {"count": common.param("rounds")}  # the node index is the round


def test_init_writes_the_fan_out_lists_as_json(tmp_path: Path) -> None:
    """What withParam consumes, from the real CLI: JSON lists (shards of `--shard-size` twins)."""
    from tests.helpers import clean_env, fedtwin, write_tiny_config

    config = write_tiny_config(tmp_path)
    out = tmp_path / "out"
    fedtwin("step", "init", "--config", str(config), "--store", str(tmp_path / "store"), "--run-id", "lists",
            "--shard-size", "2", "--outputs-dir", str(out), env=clean_env(), check=True)
    values = {name: json.loads((out / name).read_text()) for _, name in JSON_LIST_OUTPUTS}
    assert all(isinstance(v, list) for v in values.values())
    assert values["shards"] == ["twin-000..twin-001", "twin-002"]  # short names: FIRST..LAST
    assert [(out / name).read_text() for name in ("first_round", "last_round")] == ["0", "1"]


@pytest.mark.parametrize("name", manifests())
def test_names_are_dns_labels_and_short(name: str) -> None:
    obj = manifest(name)
    wf = obj["metadata"]["name"]
    assert DNS_LABEL.match(wf) and len(wf) + GENERATED_SUFFIX <= 63
    for tmpl in obj["spec"]["templates"]:
        assert DNS_LABEL.match(tmpl["name"]), tmpl["name"]
        # <workflow>-<template>-<hash> stays a valid, untruncated hostname
        assert len(wf) + GENERATED_SUFFIX + 1 + len(tmpl["name"]) + POD_HASH <= 63, tmpl["name"]
        for call in calls(tmpl):
            assert DNS_LABEL.match(call["name"]), call["name"]
        for p in [*(tmpl.get("inputs") or {}).get("parameters", []),
                  *(tmpl.get("outputs") or {}).get("parameters", [])]:
            assert re.fullmatch(r"[-a-zA-Z0-9_]+", p["name"])
        metadata = tmpl.get("metadata") or {}
        for key in {**metadata.get("labels", {}), **metadata.get("annotations", {})}:
            if "{{" not in key:
                assert QUALIFIED.match(key), key
        for value in metadata.get("labels", {}).values():
            if "{{" not in value:
                assert LABEL_VALUE.match(value) and len(value) <= 63, value
        for metric in (tmpl.get("metrics") or {}).get("prometheus", []):
            assert METRIC_NAME.match(metric["name"])
            assert all(METRIC_NAME.match(label["key"]) for label in metric.get("labels", []))
    for p in obj["spec"]["arguments"]["parameters"]:
        assert DNS_LABEL.match(p["name"]), p["name"]


@pytest.mark.parametrize("name", manifests())
def test_no_helm_syntax_leaks(name: str) -> None:
    text = (render.RENDERED / f"{name}.yaml").read_text()
    assert not HELM.search(text), HELM.search(text)


def test_helm_leak_check_catches_values() -> None:
    assert HELM.search("image: {{ .Values.image }}") and HELM.search("{{- include \"x\" . }}")
    assert not HELM.search("{{workflow.parameters.image}} {{=asInt(inputs.parameters.x) > 1}}")


# ------------------------------------------------------------------------- the CLI they call
def click_command(args: list[str]) -> tuple[click.Command, list[str]]:
    from fedtwin.cli import cli

    command: click.Command = cli
    rest = list(args)
    while isinstance(command, click.Group):
        sub = command.get_command(click.Context(command), rest[0])
        assert sub is not None, f"`fedtwin {' '.join(args[:2])}` does not exist"
        command, rest = sub, rest[1:]
    return command, rest


def sample_values(value: str, obj: dict[str, Any]) -> list[str]:
    """Values a templated argument takes: defaults substituted; Argo's three workflow statuses."""
    if value == common.WORKFLOW_STATUS:
        return ["Succeeded", "Failed", "Error"]
    if "{{" not in value:
        return [value]
    scope: dict[str, Any] = {f"workflow.parameters.{k}": v for k, v in param_defaults(obj).items()}
    scope["workflow.name"] = "fedtwin-federated-abcde"
    if TAG.fullmatch(value) and TAG.fullmatch(value).group(1):
        return [str(evaluate(TAG.fullmatch(value).group(2), scope))]
    body = TAG.fullmatch(value).group(2) if TAG.fullmatch(value) else ""
    return [scope[body]] if scope.get(body) else []


@pytest.mark.parametrize("name", manifests())
def test_containers_call_existing_cli_options(name: str) -> None:
    """Every container runs `fedtwin <command>` with options that command has, and valid values."""
    obj = manifest(name)
    for tmpl in obj["spec"]["templates"]:
        if "container" not in tmpl:
            continue
        container = tmpl["container"]
        assert container["command"] == [common.ENTRYPOINT]
        command, rest = click_command(container["args"])
        options = {opt: p for p in command.params if isinstance(p, click.Option) for opt in p.opts}
        seen = set()
        i = 0
        while i < len(rest):
            token = rest[i]
            assert token in options, f"{tmpl['name']}: `{command.name}` has no option {token}"
            option = options[token]
            seen.add(option.name)
            if option.is_flag:
                i += 1
                continue
            if not isinstance(option.type, click.Path):  # paths exist only in the pod
                for value in sample_values(rest[i + 1], obj):
                    option.type.convert(value, option, None)
            i += 2
        missing = [p.name for p in command.params if p.required and p.name not in seen]
        assert not missing, f"{tmpl['name']}: required options {missing} not passed"


# --------------------------------------------------------------------- the federated template
def federated() -> dict[str, Any]:
    return manifest("fedtwin-federated")


def test_federated_parameters_are_stable() -> None:
    assert list(param_defaults(federated())) == FEDERATED_PARAMETERS


def test_images_come_from_one_parameter_with_a_plain_default() -> None:
    for name in MODULES:
        obj = manifest(name)
        images = {t["container"]["image"] for t in obj["spec"]["templates"] if "container" in t}
        assert images == {"{{workflow.parameters.image}}"}
        default = param_defaults(obj)["image"]
        assert re.fullmatch(r"[a-z0-9][a-z0-9._-]*:[A-Za-z0-9._-]+", default), default  # no registry host


def test_federated_flow_is_a_sequential_loop_not_recursion() -> None:
    obj = federated()
    tmpls = templates(obj)
    for name in tmpls:  # no template reaches itself: no recursion depth limit on long runs
        assert all(name not in reachable(obj, c["template"]) for c in calls(tmpls[name])), name
    rounds = tmpls["rounds"]
    assert rounds["parallelism"] == 1 and rounds["failFast"] is True
    (step,) = [s for group in rounds["steps"] for s in group]
    assert step["name"] == "round" and step["withSequence"] == {"count": "{{workflow.parameters.rounds}}"}
    # which rounds play is decided by two workflow outputs of init (and every aggregate): see
    # tests/test_workflow_contract.py and the conformance cases for how Argo evaluates it
    assert step["when"] == ("{{item}} >= {{=sprig.default('0', "
                            "workflow.outputs.parameters['first-round'])}} && "
                            "{{item}} <= {{=sprig.default('2147483647', "
                            "workflow.outputs.parameters['last-round'])}}")
    exported = {t: {p["globalName"] for p in tmpls[t]["outputs"]["parameters"] if "globalName" in p}
                for t in ("init", "aggregate")}
    assert exported == {"init": {"run-id", "first-round", "last-round"}, "aggregate": {"last-round"}}
    evaluate_globals = {p.get("globalName") for p in tmpls["evaluate"]["outputs"]["parameters"]}
    assert evaluate_globals == {"heldout-return", "generalization-gap"}  # the run's result on the workflow
    main = {t["name"]: t for t in tmpls["main"]["dag"]["tasks"]}
    order = ["init", "rounds", "evaluate", "report"]
    assert [main[n].get("depends") for n in order] == [None, *order[:-1]]
    assert obj["spec"]["onExit"] == "exit-handler"


def test_round_aggregates_after_the_fan_out_whatever_happened_to_twins() -> None:
    tasks = {t["name"]: t for t in templates(federated())["round"]["dag"]["tasks"]}
    assert set(tasks) == {"train", "aggregate"}  # no gate pod: the loop's `when` decides
    assert tasks["train"]["withParam"] == "{{inputs.parameters.shards}}" and "when" not in tasks["train"]
    depends = tasks["aggregate"]["depends"]
    assert all(f"train.{phase}" in depends for phase in ("Succeeded", "Failed", "Errored"))


def test_twin_pods_are_isolated_labelled_and_bounded() -> None:
    train = templates(federated())["train"]
    labels = train["metadata"]["labels"]
    assert labels[common.LABEL_ROLE] == "twin" and labels[common.LABEL_ROUND] == "{{inputs.parameters.round}}"
    assert "inputs.parameters.twins" in labels[common.LABEL_TWIN]
    assert federated()["spec"]["podMetadata"]["labels"][common.LABEL_APP] == "fedtwin"
    assert common.LABEL_RUN in federated()["spec"]["podMetadata"]["labels"]
    assert train["metadata"]["annotations"] == {common.SUBNET_ANNOTATION_KEY: common.param("subnet")}
    assert train["serviceAccountName"] == "{{workflow.parameters.twin-service-account}}"
    assert "resources" not in train["container"]  # the full CRDs refuse `{{...}}` there: a patch
    (main,) = json.loads(train["podSpecPatch"])["containers"]
    resources = main["resources"]
    assert main["name"] == "main"
    assert resources["limits"]["nvidia.com/gpu"] == "{{workflow.parameters.twin-gpu-limit}}"
    assert set(resources["requests"]) == {"cpu", "memory"}
    assert train["activeDeadlineSeconds"] == "{{workflow.parameters.twin-deadline}}"
    retry = train["retryStrategy"]
    assert retry["limit"] == "{{workflow.parameters.twin-retries}}" and retry["backoff"]["factor"] == "2"
    env = {e["name"] for e in train["container"]["env"]}
    assert "MLFLOW_TRACKING_URI" not in env  # twins never talk to MLflow


def test_aggregator_outputs_model_and_metrics() -> None:
    aggregate = templates(federated())["aggregate"]
    assert aggregate["serviceAccountName"] == "{{workflow.parameters.aggregator-service-account}}"
    outputs = {p["name"] for p in aggregate["outputs"]["parameters"]}
    assert {"round", "participants", "rejected", "mean_return", "continue"} <= outputs
    assert [a["name"] for a in aggregate["outputs"]["artifacts"]] == ["global-model"]
    metrics = {mt["name"]: mt for mt in aggregate["metrics"]["prometheus"]}
    assert metrics["fedtwin_validation_return"]["gauge"]["value"] == "{{outputs.parameters.mean_return}}"
    assert metrics["fedtwin_rejected_updates"]["counter"]["value"] == "{{outputs.parameters.rejected}}"


def test_workflow_level_housekeeping_and_run_mutex() -> None:
    spec = federated()["spec"]
    assert spec["podGC"]["strategy"] and spec["ttlStrategy"] and spec["artifactRepositoryRef"]["configMap"]
    (mutex,) = spec["synchronization"]["mutexes"]
    assert mutex["name"] == f"fedtwin-run-{common.RUN_ID}"
    assert templates(federated())["init"]["outputs"]["parameters"][0]["globalName"] == "run-id"


# ------------------------------------------------------------------------------- expressions
def scope(**params: str) -> dict[str, str]:
    values = {f"workflow.parameters.{k}": v for k, v in param_defaults(federated()).items()}
    values.update({f"workflow.parameters.{k}": v for k, v in params.items()})
    values["workflow.name"] = "fedtwin-federated-x7k2p"
    return values


def expression(tag: str) -> str:
    match = TAG.fullmatch(tag)
    assert match and match.group(1)
    return match.group(2)


def test_run_id_defaults_to_the_workflow_name() -> None:
    assert evaluate(expression(common.RUN_ID), scope()) == "fedtwin-federated-x7k2p"
    assert evaluate(expression(common.RUN_ID), scope(**{"run-id": "demo"})) == "demo"


def test_subnet_annotation_only_with_a_subnet() -> None:
    assert evaluate(expression(common.SUBNET_ANNOTATION_KEY), scope()) == common.UNUSED_SWITCH
    with_subnet = scope(subnet="fedtwin-twins")
    assert evaluate(expression(common.SUBNET_ANNOTATION_KEY), with_subnet) == common.KUBEOVN_SWITCH


def test_fleet_configmap_switches_the_fleet_file() -> None:
    assert evaluate(expression(common.FLEET_FILE), scope()) == ""
    assert evaluate(expression(common.FLEET_CONFIGMAP), scope()) == common.NO_CONFIGMAP
    devices = scope(**{"fleet-configmap": "devices"})
    assert evaluate(expression(common.FLEET_FILE), devices) == f"{common.FLEET_DIR}/{common.FLEET_KEY}"
    assert evaluate(expression(common.FLEET_CONFIGMAP), devices) == "devices"


def test_gpu_selects_the_device() -> None:
    assert evaluate(expression(common.TRAIN_DEVICE), scope()) == "cpu"
    assert evaluate(expression(common.TRAIN_DEVICE), scope(**{"twin-gpu-limit": "1"})) == "cuda"


@pytest.mark.parametrize("twins", ["twin-007", "twin-000,twin-001", "twin-000..twin-049",
                                   ",".join(f"twin-{i:03d}" for i in range(40)),
                                   ",".join(f"device-{i}" for i in range(20))])
def test_twin_label_is_a_valid_label_value(twins: str) -> None:
    value = evaluate(expression(common.TWIN_LABEL), {"inputs.parameters.twins": twins})
    assert LABEL_VALUE.match(value) and 0 < len(value) <= 63, value
    assert value.startswith(twins.split(",")[0])


def test_twin_secret_is_shared_or_per_twin() -> None:
    twin = {"inputs.parameters.twins": "twin-004"}
    assert evaluate(expression(common.TWIN_SECRET), {**scope(), **twin}) == "fedtwin-platform-s3-twin"
    per_twin = {**scope(**{"per-twin-secrets": "true"}), **twin}
    assert evaluate(expression(common.TWIN_SECRET), per_twin) == "fedtwin-platform-s3-twin-twin-004"


def test_evaluate_template_reads_the_runs_final_model_by_default() -> None:
    from workflows import evaluate as evaluate_module

    values = {f"workflow.parameters.{k}": v for k, v in param_defaults(manifest("fedtwin-evaluate")).items()}
    values["workflow.parameters.run-id"] = "demo"
    assert evaluate(expression(evaluate_module.MODEL_KEY), values) == "runs/demo/report/final.safetensors"
    key = values["workflow.parameters.model-key"] = "runs/demo/rounds/0003/global.safetensors"
    assert evaluate(expression(evaluate_module.MODEL_KEY), values) == key


def secret_env(container: dict[str, Any]) -> dict[str, str]:
    """Env var -> the Secret name (an expression) it is read from."""
    return {e["name"]: e["valueFrom"]["secretKeyRef"]["name"] for e in container.get("env", [])
            if "valueFrom" in e}


@pytest.mark.parametrize(("name", "twin_steps", "aggregator_steps"), [
    ("fedtwin-federated", ["train"], ["aggregate"]),
    ("fedtwin-coordinator", [], ["coordinate"]),
    ("fedtwin-member", ["member"], []),
])
def test_dp_noise_keys_reach_only_the_steps_that_draw_noise(name: str, twin_steps: list[str],
                                                           aggregator_steps: list[str]) -> None:
    from fedtwin.learn.accounting import NOISE_KEY_ENV

    assert common.DP_NOISE_KEY_ENV == NOISE_KEY_ENV
    wanted = {**{s: "{{workflow.parameters.twin-dp-noise-secret}}" for s in twin_steps},
              **{s: "{{workflow.parameters.aggregator-dp-noise-secret}}" for s in aggregator_steps}}
    for step, tmpl in templates(manifest(name)).items():
        if "container" not in tmpl:
            continue
        got = secret_env(tmpl["container"]).get(NOISE_KEY_ENV)
        # The twins' key never reaches an aggregator-side pod: with it, the aggregator could
        # regenerate and subtract a twin's local-DP noise.
        assert got == wanted.get(step), (step, got)
    declared = param_defaults(manifest(name))
    for step, secret in wanted.items():
        assert secret.removeprefix("{{workflow.parameters.").removesuffix("}}") in declared, step


def pods_as_argo_creates_them(obj: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(template, pod spec) for every container template: the workflow's securityContext as the pod's,
    the template's container as `main`, and Argo's `init`/`wait` containers with the executor
    securityContext our Argo install gives them (scripts/argo-workflows-values.yaml)."""
    values = yaml.safe_load((REPO / "scripts" / "argo-workflows-values.yaml").read_text())
    executor = values["executor"]["securityContext"]
    pods = []
    for tmpl in obj["spec"]["templates"]:
        if "container" not in tmpl:
            continue
        pod_sc = {**(obj["spec"].get("securityContext") or {}), **(tmpl.get("securityContext") or {})}
        containers = [{**tmpl["container"], "name": "main"}, {"name": "wait", "securityContext": executor}]
        pods.append((tmpl["name"], {"securityContext": pod_sc, "initContainers": [
            {"name": "init", "securityContext": executor}], "containers": containers}))
    return pods


@pytest.mark.parametrize("name", manifests())
def test_every_pod_meets_the_restricted_pod_security_standard(name: str) -> None:
    from tests.chart_helpers import restricted_violations

    pods = pods_as_argo_creates_them(manifest(name))
    assert pods
    for template, pod in pods:
        assert restricted_violations(pod) == [], template
        assert pod["securityContext"]["runAsUser"] == common.IMAGE_UID


def test_the_restricted_check_fails_on_a_pod_that_breaks_it() -> None:
    from tests.chart_helpers import restricted_violations

    _, pod = pods_as_argo_creates_them(manifest("fedtwin-federated"))[0]
    pod["containers"][0] = {**pod["containers"][0], "securityContext": {"allowPrivilegeEscalation": True}}
    assert restricted_violations(pod)


def test_the_image_user_is_the_templates_user() -> None:
    users = re.findall(r"^USER\s+(\d+):(\d+)\s*$", (REPO / "Dockerfile").read_text(), re.M)
    assert users == [(str(common.IMAGE_UID), str(common.IMAGE_UID))]


def test_a_failed_step_shows_its_one_line_error_as_the_node_message() -> None:
    """The kubelet copies terminationMessagePath into the container status; Argo's node message
    (operator.go inferFailedReason) then reads `main: Error (exit code N): <that line>`."""
    for name in MODULES:
        for tmpl in templates(manifest(name)).values():
            if "container" in tmpl:
                container = tmpl["container"]
                env = {e["name"]: e.get("value") for e in container["env"]}
                assert env["FEDTWIN_TERMINATION_LOG"] == container["terminationMessagePath"]
                assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"


def test_retries_back_off_with_a_cap_and_no_max_duration() -> None:
    """backoff.maxDuration counts from the first attempt and also cuts every retried pod's deadline
    (operator.go processNodeRetries): a step longer than it would never be retried."""
    for name in MODULES:
        for tmpl in templates(manifest(name)).values():
            backoff = (tmpl.get("retryStrategy") or {}).get("backoff")
            if backoff:
                assert "maxDuration" not in backoff and backoff["cap"], tmpl["name"]
