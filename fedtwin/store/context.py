"""A run as the steps see it: its store, layout, config, fleet and policy layout, read once.

Torch-free, so the report, tracking and `fedtwin runs show` can use it without loading the trainers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from fedtwin.config import Config, build_config
from fedtwin.core.errors import ConfigError
from fedtwin.core.formats import parse_yaml
from fedtwin.policy.layout import PolicyKind, PolicySpec, params_from_bytes
from fedtwin.sim.fleet_files import parse_fleet
from fedtwin.sim.kind_registry import DEFAULT_KIND, get_kind
from fedtwin.sim.kinds import policy_sizes
from fedtwin.sim.twins import Fleet, TwinSpec
from fedtwin.store.base import ArtifactStore, sha256_hex
from fedtwin.store.layout import RunLayout
from fedtwin.store.state import require_run, save_state


@dataclass
class RunContext:
    """Everything a step needs about a run, read once from the store."""

    store: ArtifactStore
    layout: RunLayout
    config: Config
    fleet: Fleet
    spec: PolicySpec

    @classmethod
    def load(cls, store: ArtifactStore, run_id: str) -> RunContext:
        layout = require_run(store, run_id)
        text = store.get_text(layout.config)
        config = build_config(parse_yaml(text, "run config", store.describe(layout.config)), layout.config)
        return cls(store, layout, config, _stored_fleet(store, layout), run_policy_spec(config))

    def twins(self, selection: list[str]) -> list[TwinSpec]:
        """Training twins by id or `FIRST..LAST` range (an Argo shard's name)."""
        run_id = self.layout.run_id
        try:
            return self.fleet.select(selection, f"the training fleet of run {run_id!r}")
        except ConfigError as exc:
            fix = f"`fedtwin runs show {run_id}` lists the run, its twins.yaml the fleet"
            raise ConfigError(f"{exc}; {fix}") from exc

    def state(self) -> dict[str, Any]:
        return self.store.get_json(self.layout.state)

    def write_state(self, **changes: Any) -> dict[str, Any]:
        # The run is known to exist (load checked it): no second look at config.yaml per write.
        return save_state(self.store, self.layout.run_id, self.state(), **changes)

    def global_model(self, round_index: int) -> tuple[np.ndarray, bytes]:
        """The global model entering `round_index`, as a vector and as its stored bytes."""
        data = self.store.get_bytes(self.layout.global_model(round_index))
        params, _ = params_from_bytes(data, self.spec)
        return params, data


_FLEET_CACHE: dict[str, Fleet] = {}
"""The last fleet this process parsed, by the sha256 of its text: a pool worker runs many jobs of one
run, and the largest fleet's copy takes about a second to parse."""


def _stored_fleet(store: ArtifactStore, layout: RunLayout) -> Fleet:
    text = store.get_text(layout.twins)
    key = sha256_hex(text.encode())
    if key not in _FLEET_CACHE:
        _FLEET_CACHE.clear()
        _FLEET_CACHE[key] = parse_fleet(text, store.describe(layout.twins))
    return _FLEET_CACHE[key]


def run_policy_spec(config: Config) -> PolicySpec:
    """The layout of the policy a run's config trains, without importing the trainers (torch): its
    sizes are the twin kind's (`fedtwin.learn.train.policy_spec` gives the same)."""
    kind: PolicyKind = "actor_critic" if config.train.algo == "ppo" else "reinforce"
    if config.fleet.kind == DEFAULT_KIND:
        return PolicySpec(kind, config.train.hidden_sizes)
    obs_dim, action, act_dim = policy_sizes(get_kind(config.fleet.kind))
    return PolicySpec(kind, config.train.hidden_sizes, obs_dim, act_dim, action)


def round_summaries(ctx: RunContext) -> list[dict[str, Any]]:
    rounds = int(ctx.state()["next_round"])
    return [ctx.store.get_json(ctx.layout.summary(r)) for r in range(rounds)
            if ctx.store.exists(ctx.layout.summary(r))]
