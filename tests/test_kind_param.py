"""The Argo templates' `kind` parameter reaches the run config: an empty value leaves the kind unset
(the fleet ConfigMap's `kind:` line, else cartpole), a name sets it."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from fedtwin.config.load import load_config
from tests.helpers import clean_env, fedtwin

RENDERED = Path(__file__).resolve().parents[1] / "workflows" / "rendered"


@pytest.mark.parametrize("name", ["fedtwin-federated", "fedtwin-single", "fedtwin-coordinator"])
def test_every_template_that_builds_a_config_passes_the_kind(name: str) -> None:
    spec = yaml.safe_load((RENDERED / f"{name}.yaml").read_text())["spec"]
    assert {"name": "kind", "value": ""} in [
        {k: p.get(k) for k in ("name", "value")} for p in spec["arguments"]["parameters"]
    ]
    envs = [e for t in spec["templates"] for e in (t.get("container") or {}).get("env", [])]
    kinds = [e["value"] for e in envs if e["name"] == "FEDTWIN_FLEET__KIND"]
    assert kinds and set(kinds) == {"{{workflow.parameters.kind}}"}


def test_an_empty_kind_is_unset(tmp_path: Path) -> None:
    absent = {"FEDTWIN_FLEET__KIND": "", "FEDTWIN_FLEET__FILE": str(tmp_path / "absent.yaml")}  # no ConfigMap
    assert load_config(environ=absent).fleet.kind == "cartpole"

    fleet_file = tmp_path / "fleet.yaml"
    made = fedtwin("twins", "generate", "--kind", "pendulum", "--count", "2", "-o", str(fleet_file),
                   env=clean_env())
    assert made.returncode == 0, made.stderr
    from_file = {"FEDTWIN_FLEET__KIND": "", "FEDTWIN_FLEET__FILE": str(fleet_file)}
    assert load_config(environ=from_file).fleet.kind == "pendulum"
    assert load_config(environ={"FEDTWIN_FLEET__KIND": "acrobot"}).fleet.kind == "acrobot"
