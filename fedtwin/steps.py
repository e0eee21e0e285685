"""The step functions every engine runs: init, train, aggregate, evaluate, finish.

Each reads its inputs from the store and writes its outputs atomically, and is idempotent: a
retried step whose output already exists returns it instead of recomputing or duplicating it. The
local runner, the Argo templates and the multi-cluster members all call exactly these functions.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from fedtwin import tracking
from fedtwin.config import Config, build_config, config_to_yaml, fingerprint, validate_for_fleet
from fedtwin.core.seeding import derive_seed
from fedtwin.errors import ConfigError, IntegrityError, QuorumError, RunConflictError, StoreError
from fedtwin.federation.strategies import Strategy, make_strategy
from fedtwin.federation.updates import (
    AcceptedUpdate,
    UpdateRecord,
    finite_metrics,
    load_and_validate,
    read_record,
    update_twin_ids,
    write_updates,
)
from fedtwin.formats import parse_yaml
from fedtwin.learn import accounting, central_dp
from fedtwin.learn.evaluate import evaluate_policy
from fedtwin.learn.train import policy_spec, train_twins
from fedtwin.policy.layout import PolicySpec, params_from_bytes, params_to_bytes
from fedtwin.policy.network import init_params
from fedtwin.run import dp_state
from fedtwin.runstate import finish, now_iso, require_run, save_state, write_outputs
from fedtwin.sim.twins import Fleet, TwinSpec, fleet_to_json, load_fleet, make_fleet, parse_fleet
from fedtwin.store import ArtifactStore, RunLayout, repair_advice, sha256_hex

log = logging.getLogger("fedtwin.steps")


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
        return cls(store, layout, config, _stored_fleet(store, layout), policy_spec(config.train))

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


# ----------------------------------------------------------------------------------------- init
def build_fleet(config: Config) -> Fleet:
    """The fleet file if given (validation/held-out sets generated when it lacks them), else generated."""
    f = config.fleet
    generated = make_fleet(f.count, f.seed, f.spread, f.preset, f.validation_count, f.heldout_count)
    if f.file is None:
        return generated
    fleet = load_fleet(f.file)
    return Fleet(
        train=fleet.train,
        validation=fleet.validation or generated.validation,
        heldout=fleet.heldout or generated.heldout,
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
        return InitResult(config.run_id, [t.id for t in ctx.fleet.train], state["next_round"], True, size)

    fleet = build_fleet(config)
    size = fan_out.shard_size(len(fleet.train), config.federation.rounds)
    validate_for_fleet(config, len(fleet.train))
    accounting.check_run(config, len(fleet.train))
    kept = _kept_state(store, layout, config)
    # Written in dependency order; config.yaml last, because its presence means "initialized".
    store.put_text(layout.twins, fleet_to_json(fleet))
    store.put_bytes(layout.global_model(0), initial_model(config))
    if kept is None:
        store.put_json(layout.state, new_state(config, 0, False))
    store.put_text(layout.config, config_to_yaml(config))
    return InitResult(config.run_id, [t.id for t in fleet.train], 0, False, size)


def initial_model(config: Config) -> bytes:
    """The global model entering round 0: a pure function of the config."""
    spec = policy_spec(config.train)
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


# ---------------------------------------------------------------------------------------- train
def train_seed(config: Config, twin_id: str, round_index: int) -> int:
    return derive_seed(config.seed, "train", twin_id, round_index)


def choose_engine(engine: str | None, twin_count: int) -> Literal["pool", "fleet"]:
    """A train step's engine: the one named, else the pool engine for one twin and the fleet engine
    (one batched computation) for several."""
    if engine is None:
        return "pool" if twin_count == 1 else "fleet"
    if engine not in ("pool", "fleet"):
        raise ConfigError(f"unknown engine {engine!r}; use pool or fleet")
    return "pool" if engine == "pool" else "fleet"


def train(
    store: ArtifactStore,
    run_id: str,
    round_index: int,
    twin_ids: list[str],
    device: str = "cpu",
    engine: str | None = None,
) -> list[UpdateRecord]:
    """Train the given twins (ids or `FIRST..LAST` ranges) from the round's global model and write one
    update per twin.

    One twin is the pool engine's unit (a process or a pod); several twins are trained together in
    one batched computation (the fleet engine; the default for more than one twin). Twins whose
    update already exists are skipped.
    With local DP, each twin's accountant is restored from its latest record; a twin whose budget
    this round would exceed writes a record saying so instead of training.
    """
    ctx = RunContext.load(store, run_id)
    layout = ctx.layout
    if store.exists(layout.summary(round_index)):
        raise RunConflictError(
            f"round {round_index} of run {run_id!r} is already aggregated; a late update would be ignored"
        )
    twins = ctx.twins(twin_ids)
    engine = choose_engine(engine, len(twins))
    done = [t for t in twins if store.exists(layout.update_meta(round_index, t.id))]
    todo = [t for t in twins if t not in done]
    records = [read_record(store, layout.update_meta(round_index, t.id)) for t in done]
    if not todo:
        return records
    params, base = ctx.global_model(round_index)
    dp_round = dp_state.LocalRound.restore(ctx.config, store, layout, round_index, [t.id for t in todo])
    if dp_round is not None and dp_round.blocked:
        for twin in [t for t in todo if t.id in dp_round.blocked]:
            skip = dp_round.skip_record(twin.id, round_index, sha256_hex(base), engine)
            store.put_json(layout.update_meta(round_index, twin.id), skip.to_json())
            records.append(skip)
        todo = [t for t in todo if t.id not in dp_round.blocked]
        if not todo:
            return records
    # A retried shard keeps its composition: a batch's results differ from a smaller batch's in the
    # last float bits, so the whole shard trains again and only the missing updates are written
    # (with local DP the missing twins train alone: their accountants are restored per twin).
    batch = twins if done and len(twins) > 1 and dp_round is None else todo
    seeds = [train_seed(ctx.config, t.id, round_index) for t in batch]
    dp = dp_round.mechanism(seeds, device) if dp_round else None
    started = time.perf_counter()
    results = train_twins(params, batch, seeds, ctx.config.train, device, dp)
    seconds = (time.perf_counter() - started) / len(batch)
    written: list[tuple[UpdateRecord, bytes]] = []
    for twin, result in zip(batch, results, strict=True):
        if twin not in todo:
            continue
        if dp_round:
            dp_round.spend(twin.id, result.dp_steps)
        record = UpdateRecord(
            twin_id=twin.id,
            round=round_index,
            num_samples=int(result.num_samples),
            sha256="",
            base_sha256=sha256_hex(base),
            metrics=finite_metrics(dp_round.metrics(result.metrics, ctx.config.privacy.release_metrics)
                                   if dp_round else result.metrics),
            epsilon=dp_round.epsilon(twin.id) if dp_round else None,
            seconds=seconds,
            engine=engine,
            extra=dp_round.extra(twin.id, dp_round.plan.steps_per_round) if dp_round else {},
        )
        written.append((record, params_to_bytes(result.params, ctx.spec)))
    return records + write_updates(store, layout, written)


# ------------------------------------------------------------------------------------ aggregate
def validation_seed(config: Config, round_index: int) -> int:
    return derive_seed(config.seed, "validation", round_index)


def aggregate(store: ArtifactStore, run_id: str, round_index: int) -> dict[str, Any]:
    """Join the round's valid updates into the next global model, evaluate it, record the round."""
    ctx = RunContext.load(store, run_id)
    layout, config = ctx.layout, ctx.config
    state = ctx.state()
    if store.exists(layout.summary(round_index)):
        summary = store.get_json(layout.summary(round_index))
        if state.get("next_round", 0) <= round_index:  # killed between the summary and state.json
            state = ctx.write_state(next_round=round_index + 1, training_complete=not summary["continue"])
        tracking.log_round(ctx)  # a retry: logs only what MLflow lacks
        return {**summary, "last_round": last_round(config, state)}
    next_round, complete = int(state.get("next_round", 0)), bool(state.get("training_complete"))
    if complete or round_index != next_round:
        # Defence in depth for workflow engines: a round that is not the next one (or comes after the
        # run stopped) is reported as not played, and the run is left exactly as it is.
        why = "training is complete" if complete else f"round {next_round} is the next round to aggregate"
        log.warning("round %s not aggregated: %s", round_index, why)
        return {"round": round_index, "played": False, "reason": why, "continue": not complete,
                "next_round": next_round, "last_round": last_round(config, state)}
    started = time.perf_counter()
    global_params, base = ctx.global_model(round_index)
    fleet_ids = {t.id for t in ctx.fleet.train}
    train_cfg = config.train
    accepted, rejected = load_and_validate(store, layout, round_index, fleet_ids, ctx.spec, sha256_hex(base),
                                           global_params, config.federation.norm_bound_factor,
                                           train_cfg.updates * train_cfg.num_steps * train_cfg.num_envs)
    rejected, skipped = dp_state.split_skipped(store, layout, round_index, rejected)
    quorum = config.federation.quorum(len(ctx.fleet.train))
    if len(accepted) < quorum:
        reasons = "; ".join(f"{r.twin_id}: {r.reason}" for r in rejected) or "none rejected"
        skips = "".join(f"; skipped {s['twin_id']}: {s['reason']}" for s in skipped)
        message = (
            f"round {round_index}: {len(accepted)} valid updates, below the quorum of {quorum} "
            f"(federation.min_twins); rejected: {reasons}{skips}"
        )
        ctx.write_state(status="failed", reason=message)
        raise QuorumError(message)

    combined = combine(ctx, round_index, global_params, accepted)
    strategy, new_params, weights = combined.strategy, combined.params, combined.weights
    dp_summary, stop_reason = combined.dp_summary, combined.stop_reason
    store.put_bytes(layout.global_model(round_index + 1), params_to_bytes(new_params, ctx.spec))
    if combined.server_state:
        save_server_state(ctx, round_index, combined.server_state)

    validation = evaluate_policy(
        new_params, ctx.spec, ctx.fleet.validation, config.federation.eval_episodes,
        validation_seed(config, round_index),
    )
    target = config.federation.target_return
    reached = target is not None and validation.mean_return >= target
    more_rounds = round_index + 1 < config.federation.rounds
    if more_rounds and not reached and stop_reason is None:
        stop_reason = dp_state.local_budget_stop(config, store, layout, sorted(fleet_ids), round_index + 1,
                                                 quorum)
    summary = {
        "round": round_index,
        "participants": [a.record.twin_id for a in accepted],
        "rejected": [r.to_json() for r in rejected],
        "skipped": skipped,
        "missing": sorted(fleet_ids - {a.record.twin_id for a in accepted} - {r.twin_id for r in rejected}
                          - {s["twin_id"] for s in skipped}),
        "num_samples": int(weights.sum()),
        "twin_metrics": {a.record.twin_id: a.record.metrics for a in accepted},
        "twin_epsilon": {**{a.record.twin_id: a.record.epsilon for a in accepted},
                         **{s["twin_id"]: s["epsilon"] for s in skipped}},
        "validation_return": validation.mean_return,
        "validation_per_twin": validation.per_twin_mean,
        "target_reached": reached,
        "continue": more_rounds and not reached and stop_reason is None,
        "stop_reason": stop_reason,
        "privacy": dp_summary,
        "strategy": strategy.name,
        "strategy_info": strategy.info,
        "seconds": time.perf_counter() - started,
        "train_seconds": float(sum(a.record.seconds for a in accepted)),
    }
    store.put_json(layout.summary(round_index), summary)
    state = ctx.write_state(next_round=round_index + 1, training_complete=not summary["continue"],
                            **({"stop_reason": stop_reason} if stop_reason else {}))
    tracking.log_round(ctx)
    return {**summary, "last_round": last_round(config, state)}


@dataclass
class Combined:
    """A round's aggregation: the next global model and what the summary records about it."""

    strategy: Strategy
    params: np.ndarray
    server_state: dict[str, np.ndarray]
    weights: np.ndarray
    dp_summary: dict[str, Any] | None
    stop_reason: str | None


def combine(ctx: RunContext, round_index: int, global_params: np.ndarray,
            accepted: list[AcceptedUpdate]) -> Combined:
    """The strategy (after central DP's noising, if on) applied to the round's accepted updates. A pure
    function of the stored run, so `repair` rebuilds a lost global model or server state bit for bit."""
    config, store, layout = ctx.config, ctx.store, ctx.layout
    strategy = make_strategy(config.federation.strategy, config.federation.strategy_params())
    server_state = load_server_state(ctx, round_index - 1)
    if strategy.state_keys and round_index > 0 and not server_state:
        raise StoreError(
            f"{strategy.name} needs its server state from round {round_index - 1} "
            f"({store.describe(layout.server_state(round_index - 1))}), which is missing; "
            f"{repair_advice(store.url, layout.server_state(round_index - 1), missing=True)}"
        )
    updates = np.stack([a.params for a in accepted])
    weights = np.array([a.record.num_samples for a in accepted], dtype=np.float64)
    agg_updates, agg_weights, dp_summary, stop_reason = updates, weights, None, None
    if config.privacy.mode == "central":  # DP-FedAvg: the strategy sees only the noised average
        previous = store.get_json(layout.summary(round_index - 1)) if round_index > 0 else None
        average, dp_summary, stop_reason = central_dp.central_round(
            config, previous, round_index, global_params, updates, len(ctx.fleet.train))
        agg_updates, agg_weights = average[None, :], np.ones(1)
    new_params, server_state = strategy.aggregate(global_params, agg_updates, agg_weights, server_state)
    return Combined(strategy, new_params, server_state, weights, dp_summary, stop_reason)


def last_round(config: Config, state: dict[str, Any]) -> int:
    """The last round that may still start: the final round, or the last one played once training
    stopped (a workflow loop plays a round only up to this; see workflows/federated.py)."""
    if state.get("training_complete"):
        return int(state["next_round"]) - 1
    return config.federation.rounds - 1


def load_server_state(ctx: RunContext, round_index: int) -> dict[str, np.ndarray]:
    from safetensors.numpy import load

    key = ctx.layout.server_state(round_index)
    if round_index < 0 or not ctx.store.exists(key):
        return {}
    return dict(load(ctx.store.get_bytes(key)))


def save_server_state(ctx: RunContext, round_index: int, state: dict[str, np.ndarray]) -> None:
    from safetensors.numpy import save

    ctx.store.put_bytes(ctx.layout.server_state(round_index), save(state))


# --------------------------------------------------------------------------------------- repair
def repair(store: ArtifactStore, run_id: str) -> list[str]:
    """Rebuild what a run can rebuild from its config and stored rounds, and say what was done.

    The fleet (from the config), the round-0 model (from the seed), every later global model and
    server state of an aggregated round (the round's participants aggregated again: deterministic,
    and checked against the base model the next round's updates name) and state.json (from the
    summaries: the next round is the first without one). What is intact is left alone; what cannot be
    rebuilt (config.yaml, a participant's lost update) is one StoreError naming it.
    """
    layout = require_run(store, run_id)
    text = store.get_text(layout.config)
    config = build_config(parse_yaml(text, "run config", store.describe(layout.config)), layout.config)
    done: list[str] = []
    if not _intact(store, layout.twins):
        store.put_text(layout.twins, fleet_to_json(build_fleet(config)))
        done.append("twins.yaml: rebuilt from the run's config")
    ctx = RunContext.load(store, run_id)
    if not _intact(store, layout.global_model(0)):
        data = initial_model(config)
        store.put_bytes(layout.global_model(0), data)
        done.append(f"{_short(layout, layout.global_model(0))}: rebuilt from the seed "
                    f"{_pinned(ctx, 0, data)}")
    round_index = 0
    while _intact(store, layout.summary(round_index)):
        done += _repair_round(ctx, round_index)
        round_index += 1
    done += _repair_state(ctx, round_index)
    return done


def _intact(store: ArtifactStore, key: str) -> bool:
    if not store.exists(key):
        return False
    try:
        store.get_json(key) if key.endswith(".json") else store.get_bytes(key)
    except IntegrityError:
        return False
    return True


def _short(layout: RunLayout, key: str) -> str:
    return key[len(layout.prefix):]


def _pinned(ctx: RunContext, round_index: int, data: bytes) -> str:
    """Checks a rebuilt global model against the base model the round's stored updates trained from."""
    bases = set()
    for twin_id in update_twin_ids(ctx.store, ctx.layout, round_index):
        try:
            bases.add(read_record(ctx.store, ctx.layout.update_meta(round_index, twin_id)).base_sha256)
        except StoreError:
            continue
    if not bases:
        return f"(not verified: no update of round {round_index} names its base model yet)"
    if sha256_hex(data) not in bases:
        key = ctx.layout.global_model(round_index)
        raise StoreError(
            f"the rebuilt {ctx.store.describe(key)} is not the model round {round_index}'s updates were "
            f"trained from (sha256 {sha256_hex(data)[:12]}…, they name {sorted(bases)[0][:12]}…); restore "
            "the stored files from a backup"
        )
    return f"(verified against the base model of round {round_index}'s updates)"


def _repair_round(ctx: RunContext, round_index: int) -> list[str]:
    """The next global model and the server state of an aggregated round, if lost or damaged."""
    store, layout, config = ctx.store, ctx.layout, ctx.config
    strategy = make_strategy(config.federation.strategy, config.federation.strategy_params())
    lost_model = not _intact(store, layout.global_model(round_index + 1))
    lost_state = bool(strategy.state_keys) and not _intact(store, layout.server_state(round_index))
    if not (lost_model or lost_state):
        return []
    summary = store.get_json(layout.summary(round_index))
    participants = set(summary["participants"])
    global_params, base = ctx.global_model(round_index)
    train_cfg = config.train
    max_samples = train_cfg.updates * train_cfg.num_steps * train_cfg.num_envs
    accepted, _ = load_and_validate(store, layout, round_index, participants, ctx.spec, sha256_hex(base),
                                    None, None, max_samples)
    lost = sorted(participants - {a.record.twin_id for a in accepted})
    if lost:
        raise StoreError(
            f"cannot rebuild round {round_index}'s aggregation: the updates of {', '.join(lost)} "
            f"({store.describe(layout.updates_dir(round_index))}) are missing or damaged; restore them "
            "from a backup"
        )
    combined = combine(ctx, round_index, global_params, accepted)
    done = []
    if lost_model:
        data = params_to_bytes(combined.params, ctx.spec)
        note = _pinned(ctx, round_index + 1, data)
        store.put_bytes(layout.global_model(round_index + 1), data)
        done.append(f"{_short(layout, layout.global_model(round_index + 1))}: rebuilt from round "
                    f"{round_index}'s updates {note}")
    if lost_state:
        save_server_state(ctx, round_index, combined.server_state)
        done.append(f"{_short(layout, layout.server_state(round_index))}: rebuilt from round {round_index}'s "
                    "updates")
    return done


def _repair_state(ctx: RunContext, next_round: int) -> list[str]:
    """state.json from the summaries: its next round is the first round without one."""
    store, layout, config = ctx.store, ctx.layout, ctx.config
    last = store.get_json(layout.summary(next_round - 1)) if next_round > 0 else None
    complete = next_round >= config.federation.rounds or (last is not None and not last["continue"])
    extra = {"stop_reason": last["stop_reason"]} if last and last.get("stop_reason") else {}
    if _intact(store, layout.state):
        state = ctx.state()
        if state.get("next_round") == next_round and bool(state.get("training_complete")) == complete:
            return []
        before = state.get("next_round")
        save_state(store, layout.run_id, state, next_round=next_round, training_complete=complete, **extra)
        return [f"state.json: next round {before} -> {next_round} (the rounds with a summary)"]
    key = layout.report("evaluation.json")
    evaluated = _intact(store, key) and store.get_json(key).get("model_round") == next_round
    status = "done" if complete and evaluated else "running"
    store.put_json(layout.state, {**new_state(config, next_round, complete, status), **extra})
    return [f"state.json: rebuilt (next round {next_round}, {status})"]


# ------------------------------------------------------------------------------------- evaluate
def final_round(ctx: RunContext) -> int:
    """Index of the newest global model (the model entering the next, unplayed round)."""
    return int(ctx.state()["next_round"])


def evaluate(store: ArtifactStore, run_id: str, episodes: int | None = None) -> dict[str, Any]:
    """Final model on held-out twins (only here) and on training twins: the generalization gap."""
    ctx = RunContext.load(store, run_id)
    model_round = final_round(ctx)
    key, final = ctx.layout.report("evaluation.json"), ctx.layout.report("final.safetensors")
    if store.exists(key):
        existing = store.get_json(key)
        if existing.get("model_round") == model_round:
            if not store.exists(final):  # lost, or a run evaluated before the model came first
                store.put_bytes(final, ctx.global_model(model_round)[1])
            tracking.log_evaluation(ctx, existing)
            return existing
    params, data = ctx.global_model(model_round)
    result = evaluate_final(ctx, params, model_round, episodes)
    store.put_bytes(final, data)  # the model first: evaluation.json is what marks the step done
    store.put_json(key, result)
    tracking.log_evaluation(ctx, result)
    return result


def evaluate_final(ctx: RunContext, params: np.ndarray, model_round: int,
                   episodes: int | None = None) -> dict[str, Any]:
    """A final model on the held-out twins (used only here) and the training twins, with fixed seeds,
    so the federated model and the baseline are judged on the very same episodes."""
    n = episodes or ctx.config.federation.heldout_episodes
    seed = derive_seed(ctx.config.seed, "heldout")
    heldout = evaluate_policy(params, ctx.spec, ctx.fleet.heldout, n, seed)
    train_set = evaluate_policy(params, ctx.spec, ctx.fleet.train, n, seed)
    return {
        "model_round": model_round,
        "episodes": n,
        "heldout": heldout.to_json(),
        "train": train_set.to_json(),
        "generalization_gap": train_set.mean_return - heldout.mean_return,
    }


__all__ = [
    "InitResult",
    "RunContext",
    "aggregate",
    "evaluate",
    "finish",
    "init",
    "repair",
    "train",
    "write_outputs",
]
