"""Shared test helpers: a tiny-budget config so end-to-end runs take seconds."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

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
