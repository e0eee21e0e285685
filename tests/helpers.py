"""Shared test helpers: a tiny-budget config so end-to-end runs take seconds, the final model's hash, the CLI
in a subprocess."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    from fedtwin.config import Config
    from fedtwin.store import ArtifactStore

TINY: dict[str, Any] = {
    "seed": 0,
    "fleet": {"count": 3, "validation_count": 1, "heldout_count": 2},
    "train": {"num_envs": 2, "num_steps": 16, "updates": 1, "epochs": 1, "minibatches": 2},
    "federation": {"rounds": 2, "target_return": None, "eval_episodes": 1, "heldout_episodes": 1,
                   "min_twins": 2},
    "execution": {"workers": 1},
}


def write_tiny_config(directory: Path, **overrides: Any) -> Path:
    data = yaml.safe_load(yaml.safe_dump(TINY))
    for dotted, value in overrides.items():
        node = data
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    path = directory / "tiny.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def tiny_config(directory: Path, run_id: str = "demo", **overrides: Any) -> Config:
    """The tiny config (with dotted `overrides`) for run `run_id`, stored under `directory`/store."""
    from fedtwin.config import load_config

    path = write_tiny_config(directory, **overrides)
    return load_config(path, {"run_id": run_id, "store": str(directory / "store")}, environ={})


def final_model_hash(store: ArtifactStore | Path, run_id: str) -> str:
    """The sha256 of a run's `report/final.safetensors`: in a store, or under a local store's directory."""
    from fedtwin.store import LocalStore, RunLayout

    if isinstance(store, Path):
        store = LocalStore(store)
    return hashlib.sha256(store.get_bytes(RunLayout(run_id).report("final.safetensors"))).hexdigest()


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without FEDTWIN_* config overrides from the developer's shell."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FEDTWIN_", "MLFLOW_"))}
    env.update(extra)
    return env


def fedtwin(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None,
            check: bool = False) -> subprocess.CompletedProcess[str]:
    """Run the CLI as a user would, in a subprocess."""
    result = subprocess.run([sys.executable, "-m", "fedtwin", *args], capture_output=True, text=True,
                            env=env or clean_env(), cwd=cwd, timeout=600)
    if check and result.returncode != 0:
        raise AssertionError(f"fedtwin {' '.join(args)} failed ({result.returncode}):\n{result.stderr}")
    return result
