"""The init step: create a run (config, fleet, the global model of round 0) or accept the identical
existing one; and how a workflow engine fans a round out over pods (FanOut)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fedtwin.config import Config, config_to_yaml, fingerprint, validate_for_fleet
from fedtwin.core.errors import ConfigError, IntegrityError, RunConflictError
from fedtwin.core.seeding import derive_seed
from fedtwin.learn import accounting
from fedtwin.policy.layout import params_to_bytes
from fedtwin.run.runstate import last_round
from fedtwin.sim.fleet_files import fleet_to_json, load_fleet
from fedtwin.sim.kind_registry import get_kind, try_kind
from fedtwin.sim.twins import Fleet, make_fleet, shard_names
from fedtwin.store import ArtifactStore, RunLayout
from fedtwin.store.context import RunContext, run_policy_spec
from fedtwin.store.state import now_iso


def build_fleet(config: Config) -> Fleet:
    """The fleet file if given (validation/held-out sets generated when it lacks them), else generated.

    The kind (`fleet.kind`) is found and tried on one twin first: an unknown or broken kind is refused
    in one line before anything is written."""
    f = config.fleet
    try:
        kind = get_kind(f.kind)
    except ConfigError as exc:
        raise ConfigError(f"fleet.kind: {exc}") from None
    generated = make_fleet(f.count, f.seed, f.spread, f.preset, f.validation_count, f.heldout_count, f.kind)
    fleet = generated if f.file is None else load_fleet(f.file, f.kind)
    try_kind(kind, fleet.train[0])
    if f.file is None:
        return generated
    return Fleet(
        train=fleet.train,
        validation=fleet.validation or generated.validation,
        heldout=fleet.heldout or generated.heldout,
        kind=f.kind,
    )


def config_differences(a: Config, b: Config) -> list[str]:
    """Dotted keys whose values differ (used to explain a refused resume)."""

    def flat(tree: Any, prefix: str = "") -> dict[str, Any]:
        if not isinstance(tree, dict):
            return {prefix: tree}
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out.update(flat(value, f"{prefix}{key}." if isinstance(value, dict) else f"{prefix}{key}"))
        return out

    fa, fb = flat(a.model_dump(mode="json")), flat(b.model_dump(mode="json"))
    return sorted(k for k in fa.keys() | fb.keys() if fa.get(k) != fb.get(k))


@dataclass
class InitResult:
    run_id: str
    twin_ids: list[str]
    next_round: int
    resumed: bool
    shard_size: int = 1
    """Twins per training pod (a workflow engine's fan-out; see shard_size)."""
    last_round: int = 0
    """The last round that may still start (see run.runstate.last_round)."""

    @property
    def shards(self) -> list[str]:
        """The training pods' twins, each named by its twin id, or FIRST..LAST for several."""
        return shard_names(self.twin_ids, self.shard_size)


def init(store: ArtifactStore, config: Config, fan_out: FanOut | None = None) -> InitResult:
    """Create the run (config, fleet, global model of round 0), or accept an identical existing one.

    `fan_out` sizes a workflow engine's rounds (InitResult.shard_size); one that cannot keep its limits
    is refused before anything is written.
    """
    fan_out = fan_out or FanOut()
    if config.run_id is None:
        raise ConfigError("init needs a run id; pass --run-id")
    layout = RunLayout(config.run_id)
    if store.exists(layout.config):
        ctx = RunContext.load(store, config.run_id)
        if fingerprint(ctx.config) != fingerprint(config):
            diff = [k for k in config_differences(ctx.config, config) if k.split(".")[0] not in
                    ("run_id", "store", "execution", "tracking")]
            raise RunConflictError(
                f"run {config.run_id!r} already exists with a different config (differs in: "
                f"{', '.join(diff)}); use a new --run-id, or the stored config to resume"
            )
        state = ctx.state()
        size = fan_out.shard_size(len(ctx.fleet.train), ctx.config.federation.rounds)
        return InitResult(config.run_id, [t.id for t in ctx.fleet.train], state["next_round"], True, size,
                          last_round(ctx.config, state))

    fleet = build_fleet(config)
    size = fan_out.shard_size(len(fleet.train), config.federation.rounds)
    validate_for_fleet(config, len(fleet.train))
    accounting.check_run(config)
    kept = _kept_state(store, layout, config)
    # Written in dependency order; config.yaml last, because its presence means "initialized".
    store.put_text(layout.twins, fleet_to_json(fleet))
    store.put_bytes(layout.global_model(0), initial_model(config))
    if kept is None:
        store.put_json(layout.state, new_state(config, 0, False))
    store.put_text(layout.config, config_to_yaml(config))
    return InitResult(config.run_id, [t.id for t in fleet.train], 0, False, size,
                      last_round(config, kept or {}))


def initial_model(config: Config) -> bytes:
    """The global model entering round 0: a pure function of the config. torch is imported here, not
    at the top: every step command imports this module, and only `init` builds a network."""
    from fedtwin.policy.network import init_params

    spec = run_policy_spec(config)
    return params_to_bytes(init_params(spec, derive_seed(config.seed, "init")), spec)


def new_state(config: Config, next_round: int, complete: bool, status: str = "running") -> dict[str, Any]:
    return {"run_id": config.run_id, "status": status, "next_round": next_round,
            "training_complete": complete, "reason": None, "fingerprint": fingerprint(config),
            "created_at": now_iso(), "updated_at": now_iso()}


def _kept_state(store: ArtifactStore, layout: RunLayout, config: Config) -> dict[str, Any] | None:
    """The state.json of a run whose config.yaml was deleted to be written again (its repair advice):
    kept, so the run goes on where it was, if it belongs to this config."""
    if not store.exists(layout.state):
        return None
    try:
        state = store.get_json(layout.state)
    except IntegrityError:
        return None  # damaged as well: a fresh one, and the rounds are walked again from the summaries
    if state.get("fingerprint") != fingerprint(config):
        raise RunConflictError(
            f"run {config.run_id!r} has a state.json from another config (its fingerprint differs); pass the "
            "run's original config, or use a new --run-id"
        )
    return state


DEFAULT_PARALLELISM = 100
"""Training pods per round when the shard size is chosen (twins-per-pod 0)."""


@dataclass(frozen=True)
class FanOut:
    """How a workflow engine spreads each round over pods, and the limits the spread must keep.

    The node count is the Argo workflow fedtwin-federated makes: 13 nodes around the rounds, and per
    round its DAG, the fan-out group, a retry node and a pod per training pod, and the aggregation's
    two (tests/test_workflow_size.py holds the formula to a simulated run). Without a database for
    node-status offload, Argo keeps every node in one Workflow object of at most 1 MiB
    (workflows/README.md, "Limits on a real cluster").
    """

    twins_per_pod: int = 1
    """Twins per training pod; 0 = the fewest that keep a round within `parallelism` pods."""
    parallelism: int | None = None
    """The most training pods in a round (they start together)."""
    max_nodes: int | None = None
    """The most workflow nodes the whole run may make; None = no limit."""

    FIXED_NODES = 13
    NODES_PER_ROUND_BESIDES_PODS = 4

    @staticmethod
    def nodes(rounds: int, pods: int) -> int:
        return FanOut.FIXED_NODES + rounds * (2 * pods + FanOut.NODES_PER_ROUND_BESIDES_PODS)

    def shard_size(self, fleet_size: int, rounds: int) -> int:
        """Twins per pod for a fleet and a number of rounds; ConfigError when a limit cannot be kept."""
        if self.twins_per_pod == 0:
            size = -(-fleet_size // (self.parallelism or DEFAULT_PARALLELISM))
        else:
            size = self.twins_per_pod
            pods = -(-fleet_size // size)
            if self.parallelism is not None and pods > self.parallelism:
                raise ConfigError(
                    f"{size} twin(s) per pod makes {pods} training pods per round for {fleet_size} twins, "
                    f"more than the parallelism of {self.parallelism}; raise the parallelism, or let the "
                    "shard size be chosen (twins-per-pod 0)"
                )
        pods = -(-fleet_size // size)
        nodes = self.nodes(rounds, pods)
        if self.max_nodes is not None and nodes > self.max_nodes:
            per_round = (self.max_nodes - self.FIXED_NODES) // rounds
            fits = (per_round - self.NODES_PER_ROUND_BESIDES_PODS) // 2
            advice = (f"lower the parallelism to {fits} (twins-per-pod 0 packs the twins into fewer pods)"
                      if fits >= 1 else "play fewer rounds per workflow")
            raise ConfigError(
                f"{rounds} rounds of {pods} training pods make {nodes} Argo workflow nodes, more than "
                f"max-workflow-nodes ({self.max_nodes}, what one Workflow object holds without node-status "
                f"offload); {advice}, or set max-workflow-nodes 0 if the controller offloads node status"
            )
        return size
