"""The aggregate step: a round's valid updates joined into the next global model, evaluated, recorded."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedtwin.config import Config
from fedtwin.core.errors import QuorumError, StoreError
from fedtwin.core.seeding import derive_seed
from fedtwin.federation.strategies import Strategy, make_strategy
from fedtwin.federation.updates import (
    AcceptedUpdate,
    load_and_validate,
)
from fedtwin.learn import central_dp
from fedtwin.learn.evaluate import evaluate_policy
from fedtwin.observe import tracking
from fedtwin.policy.layout import params_to_bytes
from fedtwin.run import dp_state
from fedtwin.run.runstate import last_round
from fedtwin.store import ArtifactStore, repair_advice, sha256_hex
from fedtwin.store.context import RunContext

log = logging.getLogger("fedtwin.run.steps")


def validation_seed(config: Config, round_index: int) -> int:
    return derive_seed(config.seed, "validation", round_index)


def aggregate(store: ArtifactStore, run_id: str, round_index: int) -> dict[str, Any]:
    """Join the round's valid updates into the next global model, evaluate it, record the round.

    Returns the round's summary with `next_round` (the round to play next) and `last_round` (the last
    that may still start); a round that is not the next one is not played (`played` false)."""
    ctx = RunContext.load(store, run_id)
    layout, config = ctx.layout, ctx.config
    state = ctx.state()
    if store.exists(layout.summary(round_index)):
        summary = store.get_json(layout.summary(round_index))
        if state.get("next_round", 0) <= round_index:  # killed between the summary and state.json
            state = ctx.write_state(next_round=round_index + 1, training_complete=not summary["continue"])
        tracking.log_round(ctx)  # a retry: logs only what MLflow lacks
        return {**summary, "next_round": round_index + 1, "last_round": last_round(config, state)}
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
    return {**summary, "next_round": round_index + 1, "last_round": last_round(config, state)}


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


def load_server_state(ctx: RunContext, round_index: int) -> dict[str, np.ndarray]:
    from safetensors.numpy import load

    key = ctx.layout.server_state(round_index)
    if round_index < 0 or not ctx.store.exists(key):
        return {}
    return dict(load(ctx.store.get_bytes(key)))


def save_server_state(ctx: RunContext, round_index: int, state: dict[str, np.ndarray]) -> None:
    from safetensors.numpy import save

    ctx.store.put_bytes(ctx.layout.server_state(round_index), save(state))
