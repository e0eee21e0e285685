"""Twin kinds through the CLI (issue 19): `fedtwin run --kind` trains a fleet of every built-in kind on
both engines, and bad kinds, fleet files and user classes are refused in one line with exit code 2."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import yaml

from fedtwin.config.kind_defaults import KIND_DEFAULTS
from tests.helpers import clean_env, fedtwin, write_tiny_config


def one_error_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), stderr
    return lines[0]


@pytest.mark.parametrize(("kind", "engine", "algo"), [
    ("pendulum", "fleet", "ppo"), ("pendulum", "pool", "reinforce"),
    ("acrobot", "pool", "ppo"), ("acrobot", "fleet", "reinforce")])
def test_run_trains_a_fleet_of_the_kind(tmp_path: Path, kind: str, engine: str, algo: str) -> None:
    config = write_tiny_config(tmp_path)
    store = tmp_path / "store"
    result = fedtwin("run", "--config", str(config), "--store", str(store), "--run-id", "k", "--kind", kind,
                     "--engine", engine, "--algo", algo, "--json", check=True)

    out = json.loads(result.stdout)
    assert out["rounds"] == 2 and out["env_steps"] == 2 * 3 * 2 * 16
    limit = {"pendulum": 200, "acrobot": 500}[kind]
    assert -17 * limit < out["heldout_return"] <= 0  # per-step rewards in [-16.3, 0] / [-1, 0]
    run_dir = store / "runs" / "k"
    assert json.loads((run_dir / "twins.yaml").read_text())["kind"] == kind
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["fleet"]["kind"] == kind
    shown = fedtwin("runs", "show", "k", "--store", str(store), check=True).stdout
    assert f"kind: {kind}, 3 training twins" in shown
    assert (run_dir / "report" / "physics_spread.png").is_file()
    if engine == "pool":
        return  # once per kind: its model evaluated on a fleet file of its kind
    fleet = tmp_path / "fleet.yaml"
    fedtwin("twins", "generate", "--kind", kind, "--count", "2", "-o", str(fleet), check=True)
    evaluated = json.loads(fedtwin("evaluate", "--model", str(run_dir / "report" / "final.safetensors"),
                                   "--twins", str(fleet), "--episodes", "1", "--json", check=True).stdout)
    assert set(evaluated["per_twin"]) == {"twin-000", "twin-001"}


def test_twins_generate_writes_the_kind_and_run_takes_the_file(tmp_path: Path) -> None:
    listed = fedtwin("twins", "kinds", check=True).stdout.split()
    assert {"cartpole", "pendulum", "acrobot"} <= set(listed)
    described = fedtwin("twins", "kinds", "pendulum", check=True).stdout
    assert "max_torque" in described and "range (0, inf)" in described
    fleet = tmp_path / "fleet.yaml"
    fedtwin("twins", "generate", "--kind", "acrobot", "--count", "2", "--seed", "1", "--preset", "hard",
            "-o", str(fleet), check=True)
    data = yaml.safe_load(fleet.read_text())
    assert data["kind"] == "acrobot" and len(data["twins"]) == 2 and "torque_noise" in data["twins"][0]

    shown = yaml.safe_load(fedtwin("config", "show", "--fleet-file", str(fleet), check=True).stdout)
    assert shown["fleet"]["kind"] == "acrobot"  # taken from the file: no second mention needed
    # and with it the kind's defaults
    assert shown["federation"]["target_return"] == KIND_DEFAULTS["acrobot"]["federation"]["target_return"]
    mismatch = fedtwin("run", "--config", str(write_tiny_config(tmp_path)), "--store", str(tmp_path / "s"),
                       "--fleet-file", str(fleet), "--kind", "pendulum")
    assert mismatch.returncode == 2
    assert one_error_line(mismatch.stderr) == (
        f"Error: fleet file {fleet} holds acrobot twins but fleet.kind is pendulum; set fleet.kind: acrobot "
        "(--kind acrobot) or use a pendulum fleet")


def test_bad_kinds_and_parameters_are_refused_in_one_line(tmp_path: Path) -> None:
    config = str(write_tiny_config(tmp_path))
    store = str(tmp_path / "s")
    unknown = fedtwin("run", "--config", config, "--store", store, "--kind", "pendulm")
    assert unknown.returncode == 2
    assert one_error_line(unknown.stderr).startswith(
        "Error: fleet.kind: unknown twin kind 'pendulm'; choose one of acrobot, cartpole, pendulum")

    fleet = tmp_path / "fleet.yaml"
    fleet.write_text("kind: pendulum\ntwins:\n  - id: rod-1\n  - id: rod-2\n    mass: -1\n")
    bad = fedtwin("run", "--config", config, "--store", store, "--kind", "pendulum",
                  "--fleet-file", str(fleet))
    assert bad.returncode == 2
    assert one_error_line(bad.stderr) == (
        f"Error: fleet file {fleet}: twins[1]: twin 'rod-2': mass = -1 is outside the valid range (0, inf) "
        "for kind pendulum; set a value in (0, inf) in the fleet file")

    (tmp_path / "broken_kind.py").write_text(
        "from fedtwin.sim.pendulum import PendulumKind\n\n"
        "class Broken(PendulumKind):\n"
        "    name = 'broken'\n\n"
        "    def step(self, state, actions, p, noise):\n"
        "        raise RuntimeError('motor model not calibrated')\n")
    broken = fedtwin("run", "--config", config, "--store", store, "--kind", "broken_kind:Broken",
                     env=clean_env(PYTHONPATH=str(tmp_path)))
    assert broken.returncode == 2
    assert one_error_line(broken.stderr) == (
        "Error: twin kind broken: a twin's first reset and step failed (RuntimeError: motor model not "
        "calibrated); fix the kind's reset()/step() (see fedtwin.sim.kinds.TwinKind)")
    assert not (tmp_path / "s" / "runs").exists() or not any((tmp_path / "s" / "runs").iterdir())


def test_a_kinds_defaults_fill_only_the_keys_a_config_leaves_unset() -> None:
    from fedtwin.config import EXECUTION_ONLY, Config, fingerprint, load_config
    from fedtwin.config.kind_defaults import KIND_DEFAULTS

    cfg = load_config(None, {"fleet": {"kind": "pendulum"}, "train": {"gamma": 0.95}}, environ={})
    assert cfg.train.gamma == 0.95  # the user's value wins
    assert cfg.train.reward_scale == KIND_DEFAULTS["pendulum"]["train"]["reward_scale"] != 1.0
    assert cfg.federation.target_return == KIND_DEFAULTS["pendulum"]["federation"]["target_return"]
    env = load_config(None, None, environ={"FEDTWIN_FLEET__KIND": "acrobot", "FEDTWIN_TRAIN__EPOCHS": "3"})
    assert env.fleet.kind == "acrobot" and env.train.epochs == 3 and env.train.gamma == 0.99
    assert load_config(None, None, environ={}) == Config()  # cartpole: TrainConfig's own defaults
    # Runs stored before fleet.kind and train.reward_scale existed keep their fingerprint (they resume):
    # the hash of the config without those keys, as it was computed then.
    old = {k: v for k, v in Config().model_dump(mode="json").items() if k not in EXECUTION_ONLY}
    del old["fleet"]["kind"], old["train"]["reward_scale"]
    assert fingerprint(Config()) == hashlib.sha256(json.dumps(old, sort_keys=True).encode()).hexdigest()
    assert fingerprint(cfg) != fingerprint(cfg.model_copy(update={"fleet": Config().fleet}))


def test_the_reports_physics_plot_takes_the_kinds_parameters() -> None:
    from fedtwin.observe.report import PHYSICAL, physical_params
    from fedtwin.sim.twins import make_fleet

    reference, defaults, extra = physical_params(make_fleet(3, seed=1, preset="hard", kind="acrobot"))
    assert reference == "the acrobot defaults" and "link_mass_1" in defaults and "torque_noise" in extra
    assert "gravity" in defaults and all(v != 0 for v in defaults.values())
    reference, defaults, extra = physical_params(make_fleet(3, seed=1))
    assert (reference, tuple(defaults), extra) == ("CartPole-v1", PHYSICAL, [])  # cartpole's plot as before
