"""A run's `state.json`, read and updated without importing torch.

The light workflow steps (`step status`, the gate of every Argo round, and `step finish`, the exit
handler) only read or update this file. Keeping them off `fedtwin.steps`, which imports torch and
the trainers, saves each of those pods the ~1.5-2.5 s torch import.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fedtwin.errors import ConfigError, FedtwinError, StoreError
from fedtwin.store import ArtifactStore, RunLayout, os_error_line


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def require_run(store: ArtifactStore, run_id: str) -> RunLayout:
    """The run's layout; a run that was never initialized is one clear error, not a missing file."""
    layout = RunLayout(run_id)
    if not store.exists(layout.config):
        raise StoreError(
            f"run {run_id!r} not found in {store.url}; start it with `fedtwin run` or `fedtwin step init`"
        )
    return layout


def load_state(store: ArtifactStore, run_id: str) -> dict[str, Any]:
    return store.get_json(require_run(store, run_id).state)


def save_state(store: ArtifactStore, run_id: str, state: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """Write `state` with `changes` applied and a fresh `updated_at`, for a caller that read it."""
    state.update(changes, updated_at=now_iso())
    store.put_json(RunLayout(run_id).state, state)
    return state


def finish(store: ArtifactStore, run_id: str, status: str, reason: str | None = None) -> dict[str, Any]:
    """Record the run's end (the Argo exit handler and the local runner call this)."""
    if status not in ("done", "failed"):
        raise ConfigError(f"status must be 'done' or 'failed', got {status!r}")
    state = load_state(store, run_id)
    if status == "failed" and state.get("status") == "failed" and state.get("reason"):
        return state  # keep the first, most specific reason
    return save_state(store, run_id, state, status=status, reason=reason)


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
