"""The final weights of small seeded runs, pinned: a restructuring must not change one bit of them.

Each case is `fedtwin run` of the tiny config (3 twins, 2 rounds) in a fresh process, as a user runs it,
and its `report/final.safetensors` hashed. The hashes were taken before issue 18's restructuring and
hold on the development machine's torch and NumPy builds (a run is bit for bit the same on the same
machine, README, whatever its number of cores: the initial model is built on one thread, and
training runs on one); on another CPU or library build a mismatch says that, not a regression:
compare with the base commit there.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from tests.helpers import clean_env, fedtwin, write_tiny_config

PINNED = {
    "pool-ppo": "62fe1dca5ecbc6b8b51972d35a70de0b4f90cd82b2e8d26a2c261379f3a1ff02",
    "fleet-ppo": "ce72f870c677336a223799e15edc464ed4cc93d6e633206515caa2ae324fcbce",
    "pool-reinforce": "f04d4d5dbf4c8f63ec8a46b191d4eba78427daebe6c5632a9b4ee1f3ed10c8ea",
    "fleet-reinforce": "f04d4d5dbf4c8f63ec8a46b191d4eba78427daebe6c5632a9b4ee1f3ed10c8ea",
    "pool-ppo-local-dp": "1084eda78fe16ac055369be9bc4522e12844dcfbb8d385727e223841994d11e0",
    "fleet-ppo-local-dp": "e8425780dc800be9942da6ac2c3aa08e2473754dc7b3895ff5901691337742cc",
    "pool-ppo-central-dp": "2edd60415f99099368e0b74c06fe3aaa084dd49e9e305661640edee0616eb07a",
    "pool-ppo-fedadam": "c3c0dc55f778cdf5f2824d79fd085f63be05fc6b2d28a696f682576b379421af",
}

EXTRA = {
    "local-dp": {"privacy.mode": "local", "privacy.noise_multiplier": 1.0},
    "central-dp": {"privacy.mode": "central", "privacy.noise_multiplier": 1.0, "privacy.clip_norm": 1.0},
    "fedadam": {"federation.strategy": "fedadam"},
}


@pytest.mark.parametrize("case", sorted(PINNED))
def test_final_weights_are_pinned(case: str, tmp_path: Path) -> None:
    engine, algo, *extra = case.split("-", 2)
    config = write_tiny_config(tmp_path, **{"train.algo": algo, **(EXTRA[extra[0]] if extra else {})})
    store = tmp_path / "store"

    fedtwin("run", "--config", str(config), "--store", str(store), "--run-id", "pinned", "--engine", engine,
            "--no-progress", "--json", env=clean_env(FEDTWIN_DP_NOISE_KEY="pinned-weights"), check=True)

    final = store / "runs" / "pinned" / "report" / "final.safetensors"
    assert hashlib.sha256(final.read_bytes()).hexdigest() == PINNED[case]
