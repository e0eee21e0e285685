"""Every repair instruction works: damage one stored object, run the step that reads it, do exactly what
its one-line error says (delete what it names, run the commands it quotes), and the run finishes with
the clean run's final model. Plus `fedtwin runs repair`, which rebuilds state.json, the fleet, global
models and server state from the stored rounds (issue 17, item 5).

FedAdam is used so that the server state (m, v) is among the objects that must come back exactly.
"""

from __future__ import annotations

import re
import shlex
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from fedtwin.cli import cli
from fedtwin.config import load_config
from fedtwin.core.errors import FedtwinError
from fedtwin.run import steps
from fedtwin.run.round import train_round
from fedtwin.store import LocalStore, RunLayout
from tests.helpers import final_model_hash, write_tiny_config

torch.set_num_threads(1)
ROUNDS = 3
RUN = "hurt"
LAYOUT = RunLayout(RUN)
TWINS = ["twin-000", "twin-001", "twin-002"]


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, Path, str]:
    """(config file, a store where RUN has played rounds 0-1 and trained round 2, the clean final hash)."""
    root = tmp_path_factory.mktemp("repair")
    config_path = write_tiny_config(root, **{"federation.strategy": "fedadam", "federation.server_lr": 0.01,
                                             "federation.rounds": ROUNDS})
    store = LocalStore(root / "store")
    for run_id in ("clean", RUN):
        steps.init(store, load_config(config_path, {"run_id": run_id, "store": str(store.root)}, environ={}))
    play(store, "clean", 0)
    steps.evaluate(store, "clean")
    clean = final_model_hash(store, "clean")
    for round_index in (0, 1, 2):  # as `play` does: one twin per call (the pool engine's float bits)
        train_round(store, RUN, round_index, TWINS, "pool", 1)
        if round_index < 2:
            steps.aggregate(store, RUN, round_index)
    return config_path, root / "store", clean


@pytest.fixture
def run(built, tmp_path):
    config_path, store_root, clean = built
    shutil.copytree(store_root, tmp_path / "store")
    return config_path, LocalStore(tmp_path / "store"), clean


def play(store: LocalStore, run_id: str, start: int) -> None:
    """Rounds `start`.. as the runner plays them: `train_round` (the pool engine), then aggregate."""
    for round_index in range(start, ROUNDS):
        train_round(store, run_id, round_index, TWINS, "pool", 1)
        if not steps.aggregate(store, run_id, round_index)["continue"]:
            break


def resume_to_final_hash(store: LocalStore) -> str:
    """What a rerun does: continue from the round state.json names, then evaluate."""
    play(store, RUN, steps.RunContext.load(store, RUN).state()["next_round"])
    steps.evaluate(store, RUN)
    return final_model_hash(store, RUN)


def main(argv: list[str]) -> None:
    """The CLI in this process, its errors raised (as `fedtwin.cli.main` would print them)."""
    cli.main(args=argv, prog_name="fedtwin", standalone_mode=False)


def damage(store: LocalStore, key: str) -> None:
    path = store.root / key
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def error_of(action: Callable[[], object]) -> str:
    with pytest.raises(FedtwinError) as err:
        action()
    message = str(err.value)
    assert "\n" not in message
    return message


def follow(message: str, config_path: Path) -> None:
    """Do what the message says: delete the file it names, then run each `fedtwin ...` it quotes."""
    advice = message.split("; ", 1)[1] if "; " in message else message
    target = re.search(r"delete (\S+?)(?: and|,)", advice)
    assert target, f"no delete instruction in: {message}"
    path = Path(message.split(" is corrupt")[0].split(" does not exist")[0]) if target[1] == "it" \
        else Path(target[1])
    path.unlink()
    commands = re.findall(r"`(fedtwin [^`]+)`", advice)
    assert commands, f"no command in: {message}"
    for command in commands:
        argv = shlex.split(command)[1:]
        if "with the run's original config" in advice:
            argv += ["--config", str(config_path)]
        main(argv)


CASES = {
    # key damaged -> the step that reads it next
    "global model": (LAYOUT.global_model(2), lambda s: steps.aggregate(s, RUN, 2)),
    "server state": (LAYOUT.server_state(1), lambda s: steps.aggregate(s, RUN, 2)),
    "round summary": (LAYOUT.summary(1), lambda s: main(["runs", "show", RUN, "--store", str(s.root)])),
    "state.json": (LAYOUT.state, lambda s: steps.aggregate(s, RUN, 2)),
    "fleet": (LAYOUT.twins, lambda s: steps.train(s, RUN, 2, ["twin-000"])),
    "config": (LAYOUT.config, lambda s: steps.train(s, RUN, 2, ["twin-000"])),
    "update record": (LAYOUT.update_meta(2, "twin-001"), lambda s: steps.train(s, RUN, 2, ["twin-001"])),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_advice_of_a_corrupt_object_leads_back_to_the_clean_model(run, case):
    config_path, store, clean = run
    key, reader = CASES[case]
    damage(store, key)

    message = error_of(lambda: reader(store))
    assert " is corrupt: " in message
    follow(message, config_path)

    assert resume_to_final_hash(store) == clean


def test_a_corrupt_evaluation_is_redone_as_its_advice_says(run):
    config_path, store, clean = run
    assert resume_to_final_hash(store) == clean
    damage(store, LAYOUT.report("evaluation.json"))

    message = error_of(lambda: main(["report", RUN, "--store", str(store.root)]))
    follow(message, config_path)

    assert final_model_hash(store, RUN) == clean
    assert store.get_json(LAYOUT.report("evaluation.json"))["model_round"] == ROUNDS


@pytest.mark.parametrize("key", [LAYOUT.global_model(2), LAYOUT.server_state(1)], ids=["global", "server"])
def test_a_deleted_model_or_server_state_is_rebuilt_as_the_error_says(run, key):
    _, store, clean = run
    (store.root / key).unlink()

    message = error_of(lambda: steps.aggregate(store, RUN, 2))
    assert "fedtwin runs repair hurt" in message
    main(["runs", "repair", RUN, "--store", str(store.root)])

    assert resume_to_final_hash(store) == clean


def test_a_run_without_state_json_is_listed_and_repaired(run, capsys):
    _, store, clean = run
    (store.root / LAYOUT.state).unlink()

    main(["runs", "list", "--store", str(store.root)])
    listed = capsys.readouterr().out
    assert re.search(rf"{RUN}\s+state\.json missing or corrupt: run `fedtwin runs repair {RUN} --store ",
                     listed)
    main(["runs", "repair", RUN, "--store", str(store.root)])

    state = store.get_json(LAYOUT.state)
    assert (state["next_round"], state["status"], state["training_complete"]) == (2, "running", False)
    assert resume_to_final_hash(store) == clean


def test_repair_names_what_it_rebuilt_and_verifies_it_against_the_next_rounds_updates(run, capsys):
    _, store, _ = run
    before = store.get_bytes(LAYOUT.global_model(2))
    for key in (LAYOUT.global_model(2), LAYOUT.server_state(1), LAYOUT.global_model(0), LAYOUT.state):
        (store.root / key).unlink()

    main(["runs", "repair", RUN, "--store", str(store.root)])

    out = capsys.readouterr().out
    assert "rounds/0002/global.safetensors: rebuilt from round 1's updates (verified" in out
    assert "state.json: rebuilt (next round 2, running)" in out
    assert store.get_bytes(LAYOUT.global_model(2)) == before
    main(["runs", "repair", RUN, "--store", str(store.root)])
    assert "nothing to repair" in capsys.readouterr().out
