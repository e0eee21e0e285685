"""A run's `state.json`, read and written without importing torch.

The light workflow steps (`step status`, the gate of every Argo round, and `step finish`, the exit
handler) only read or update this file. Keeping them off the step functions, which import torch and
the trainers, saves each of those pods the ~1.5-2.5 s torch import.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fedtwin.core.errors import StoreError
from fedtwin.store.base import ArtifactStore
from fedtwin.store.layout import RunLayout


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


def list_runs(store: ArtifactStore) -> list[str]:
    """Runs by their config.yaml (what makes a run initialized), so a lost state.json hides none."""
    return sorted({key.split("/")[1] for key in store.list("runs/")
                   if key.count("/") == 2 and key.endswith("/config.yaml")})
