"""The example user kind (examples/thermal-twin): installed as its own package, found through the
`fedtwin.twins` entry point and as module:Class, its fleet file read, its twins simulated."""

from __future__ import annotations

import importlib
import importlib.util
import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedtwin.core.errors import ConfigError
from fedtwin.core.formats import read_yaml
from fedtwin.sim.kind_env import make_vector_env
from fedtwin.sim.kind_registry import get_kind
from fedtwin.sim.kinds import generate_twins, twin_from_dict
from tests.helpers import clean_env, fedtwin, write_tiny_config

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "thermal-twin"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`pip install --target` of a copy of the example (a build writes into its source tree), offline:
    no index, no build isolation, so the venv's setuptools builds it."""
    if importlib.util.find_spec("setuptools") is None:
        pytest.fail("building the example needs setuptools in this environment: pip install setuptools")
    tmp = tmp_path_factory.mktemp("thermal")
    source = tmp / "src"
    shutil.copytree(EXAMPLE, source)
    target = tmp / "site"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--target",
            str(target),
            str(source),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if done.returncode != 0:
        pytest.fail(
            f"pip could not install examples/thermal-twin: {(done.stderr.strip().splitlines() or ['?'])[-1]}"
        )
    return target


@pytest.fixture
def installed(site: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The installed package on sys.path for one test; its module forgotten afterwards."""
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    yield site
    sys.modules.pop("fedtwin_thermal", None)


def test_the_kind_is_found_by_its_entry_point_name_from_the_installed_package(installed: Path) -> None:
    kind = get_kind("thermal")
    assert kind.name == "thermal"
    # the installed copy, not the source tree, answered
    assert Path(sys.modules[type(kind).__module__].__file__ or "").is_relative_to(installed)
    assert [p.name for p in kind.params][:4] == ["capacity", "resistance", "outside_temp", "heater_power"]


def test_the_kind_is_found_as_module_class(installed: Path) -> None:
    assert get_kind("fedtwin_thermal:ThermalKind").name == "thermal"


def test_without_the_package_the_name_is_unknown() -> None:
    with pytest.raises(ConfigError, match="unknown twin kind 'thermal'"):
        get_kind("thermal")


def test_the_fleet_file_loads_and_its_twins_heat_towards_their_setpoints(installed: Path) -> None:
    # Prepare: the example's fleet file
    data = read_yaml(EXAMPLE / "fleet.yaml", "fleet file")
    kind = get_kind(data["kind"])
    twins = [twin_from_dict(kind, entry) for entry in data["twins"] + data["validation"] + data["heldout"]]
    env = make_vector_env(kind, twins)

    def run(policy: Any) -> np.ndarray:
        obs, _ = env.reset(seed=0)
        errors = []
        for _ in range(kind.max_episode_steps):
            obs, _, _, truncated, info = env.step(policy(obs))
            errors.append(np.abs(env.state[0] - 21.0))
        assert truncated.all() and info["episode_length"].tolist() == [96] * len(twins)
        return np.mean(errors[48:], axis=0)  # the second half of the day

    # Execute: a thermostat (full power below the setpoint) against a heater left off
    thermostat = run(lambda o: (o[:, :1] < 0).astype(np.float32))
    off = run(lambda o: np.zeros((len(o), 1), dtype=np.float32))
    # Assert: every zone holds its setpoint within 1.5 K with the thermostat (15-minute steps), none without
    assert (thermostat < 1.5).all(), thermostat
    assert (off > 5.0).all(), off
    assert len(set(np.round(off, 6))) == len(twins)  # each zone its own physics


def test_range_errors_and_fleet_generation_work_for_a_user_kind(installed: Path) -> None:
    kind = get_kind("thermal")
    with pytest.raises(
        ConfigError, match=r"twin 'office-9': resistance = 0 is outside the valid range \(0, inf\)"
    ):
        twin_from_dict(kind, {"id": "office-9", "resistance": 0})
    twins = generate_twins(kind, 6, seed=4, preset="hard")
    assert len({t["capacity"] for t in twins}) == 6 and all(t["setpoint"] == 21.0 for t in twins)
    assert any(t["sensor_noise"] > 0 for t in twins)


def test_the_example_trains_federatedly_through_fedtwin_run(site: Path, tmp_path: Path) -> None:
    # Prepare: the installed package on the CLI's PYTHONPATH, the tiny training budget, the example's fleet
    env = clean_env(PYTHONPATH=str(site))
    config, store = write_tiny_config(tmp_path), tmp_path / "store"
    # Execute
    result = fedtwin("run", "--config", str(config), "--store", str(store), "--run-id", "offices",
                     "--kind", "thermal", "--fleet-file", str(EXAMPLE / "fleet.yaml"), "--json", env=env,
                     check=True)
    # Assert: two federated rounds over the file's five zones, evaluated on its held-out zones
    out = json.loads(result.stdout)
    assert out["rounds"] == 2 and out["env_steps"] == 2 * 5 * 2 * 16
    evaluation = json.loads((store / "runs" / "offices" / "report" / "evaluation.json").read_text())
    heldout_ids = {t["id"] for t in read_yaml(EXAMPLE / "fleet.yaml", "fleet file")["heldout"]}
    assert set(evaluation["heldout"]["per_twin"]) == heldout_ids
    shown = fedtwin("runs", "show", "offices", "--store", str(store), env=env, check=True).stdout
    assert "kind: thermal, 5 training twins" in shown
    # without the package the stored run's kind cannot be found: one line naming it
    missing = fedtwin("runs", "show", "offices", "--store", str(store))
    assert missing.returncode == 2 and "unknown twin kind 'thermal'" in missing.stderr


@pytest.mark.slow
def test_the_example_trains_through_the_local_argo_executor(site: Path, tmp_path: Path) -> None:
    # Prepare: the rendered federated workflow, its pods' environment as an image with the package
    # installed would have it (PYTHONPATH), the kind as the workflow's `kind` parameter (a fleet file
    # would come from the workflow's fleet-configmap; here the init step generates three zones)
    import yaml

    from tests.argo_local import SUCCEEDED, LocalArgo
    from tests.test_workflow_contract import BACKOFF_SCALE, FEDERATED, tiny_env

    env = {**tiny_env(), "PYTHONPATH": str(site)}
    store = tmp_path / "store"
    values = {"rounds": "2", "twins": "3", "target-return": "", "twin-retries": "0", "min-twins": "2",
              "run-id": "offices", "store": str(store), "kind": "thermal"}
    argo = LocalArgo(yaml.safe_load(FEDERATED.read_text()), tmp_path / "wf", parameters=values, env=env,
                     workflow_name="fedtwin-federated-thermal", backoff_scale=BACKOFF_SCALE)
    # Execute
    run = argo.run(timeout=600)
    # Assert: every round played over three thermal zones, the run done
    assert run.phase == SUCCEEDED, run.explain()
    state = json.loads((store / "runs" / "offices" / "state.json").read_text())
    assert (state["status"], state["next_round"]) == ("done", 2)
    summary = json.loads((store / "runs" / "offices" / "rounds" / "0001" / "summary.json").read_text())
    assert sorted(summary["participants"]) == ["twin-000", "twin-001", "twin-002"]
    fleet = json.loads((store / "runs" / "offices" / "twins.yaml").read_text())
    assert fleet["kind"] == "thermal" and "capacity" in fleet["twins"][0]
