"""The run's life cycle in `state.json`: finish, reopen a failed run, the round-order gate, and the
small output files a workflow engine reads. Torch-free, like fedtwin.store.state."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fedtwin.config import Config
from fedtwin.core.errors import ConfigError, FedtwinError, RunConflictError
from fedtwin.store import ArtifactStore, os_error_line
from fedtwin.store.state import load_state, save_state


def finish(store: ArtifactStore, run_id: str, status: str, reason: str | None = None) -> dict[str, Any]:
    """Record the run's end (the Argo exit handler and the local runner call this)."""
    if status not in ("done", "failed"):
        raise ConfigError(f"status must be 'done' or 'failed', got {status!r}")
    state = load_state(store, run_id)
    if status == "failed" and state.get("status") == "failed" and state.get("reason"):
        return state  # keep the first, most specific reason
    return save_state(store, run_id, state, status=status, reason=reason)


def last_round(config: Config, state: dict[str, Any]) -> int:
    """The last round that may still start: the final round, or the last one played once training
    stopped (a workflow loop plays a round only up to this; see workflows/federated.py)."""
    if state.get("training_complete"):
        return int(state["next_round"]) - 1
    return config.federation.rounds - 1


def round_status(state: dict[str, Any], run_id: str, round_index: int | None = None) -> dict[str, Any]:
    """A run's progress (status, next_round, complete) and, for `round_index`, whether to play it now
    (`play`): the next round, while training is not complete. Rounds run in order, so a round further
    ahead is a RunConflictError."""
    next_round, complete = int(state["next_round"]), bool(state.get("training_complete"))
    values: dict[str, Any] = {"status": state["status"], "next_round": str(next_round), "complete": complete}
    if round_index is not None:
        if round_index > next_round and not complete:
            raise RunConflictError(
                f"round {round_index} of run {run_id!r} cannot start: round {next_round} is not "
                "aggregated yet; rounds run in order"
            )
        values["play"] = round_index == next_round and not complete
    return values


def reopen(store: ArtifactStore, run_id: str, state: dict[str, Any] | None = None) -> dict[str, Any]:
    """A failed run made `running` again: a resume is a fresh attempt at the failed round (its stored
    rounds are intact). Any other state is returned as it is."""
    state = load_state(store, run_id) if state is None else state
    if state.get("status") != "failed":
        return state
    return save_state(store, run_id, state, status="running", reason=None)


def write_outputs(directory: str | Path | None, values: dict[str, Any]) -> None:
    """One small file per value, for workflow engines (Argo output parameters read files); bytes are
    written as they are (an output artifact)."""
    if directory is None:
        return
    out = Path(directory)
    target = out
    try:
        out.mkdir(parents=True, exist_ok=True)
        for name, value in values.items():
            target = out / name
            if isinstance(value, bytes):
                target.write_bytes(value)
                continue
            if isinstance(value, bool):
                text = "true" if value else "false"
            elif isinstance(value, str):
                text = value
            else:
                text = json.dumps(value)
            target.write_text(text)
    except OSError as exc:
        raise FedtwinError(os_error_line(exc, "write", str(target), "--outputs-dir")) from exc
