"""Where a run's single-agent baselines live (runs/<run_id>/baseline/<name>/), read without torch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fedtwin.store.base import ArtifactStore


@dataclass(frozen=True)
class BaselineLayout:
    """Keys of one baseline of a run."""

    run_id: str
    name: str

    @property
    def root(self) -> str:
        return f"runs/{self.run_id}/baseline/"

    @property
    def prefix(self) -> str:
        return f"{self.root}{self.name}/"

    @property
    def state(self) -> str:
        return self.prefix + "state.json"

    def model(self, round_index: int) -> str:
        return f"{self.prefix}rounds/{round_index:04d}/model.safetensors"

    def summary(self, round_index: int) -> str:
        return f"{self.prefix}rounds/{round_index:04d}/summary.json"

    @property
    def evaluation(self) -> str:
        return self.prefix + "evaluation.json"

    @property
    def final(self) -> str:
        return self.prefix + "final.safetensors"


def baseline_name(mode: str, twin_id: str | None) -> str:
    return "pooled" if mode == "pooled" else f"single-{twin_id}"


def list_baselines(store: ArtifactStore, run_id: str) -> list[str]:
    """Names of the run's baselines that have started (have a state)."""
    root = BaselineLayout(run_id, "").root
    return sorted({key[len(root) :].split("/")[0] for key in store.list(root) if key.endswith("/state.json")})


def load_baseline(store: ArtifactStore, run_id: str, name: str) -> dict[str, Any]:
    """State, round summaries and (when done) evaluation of one baseline, for the report."""
    layout = BaselineLayout(run_id, name)
    state = store.get_json(layout.state)
    rounds = [store.get_json(layout.summary(r)) for r in range(int(state["next_round"]))
              if store.exists(layout.summary(r))]
    evaluation = store.get_json(layout.evaluation) if store.exists(layout.evaluation) else {}
    return {"name": name, "state": state, "rounds": rounds, "evaluation": evaluation}
