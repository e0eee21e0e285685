"""`fedtwin runs repair`: rebuild what a run can rebuild from its config and its stored rounds."""

from __future__ import annotations

from fedtwin.config import build_config
from fedtwin.core.errors import IntegrityError, StoreError
from fedtwin.core.formats import parse_yaml
from fedtwin.federation.strategies import make_strategy
from fedtwin.federation.updates import (
    load_and_validate,
    read_record,
    update_twin_ids,
)
from fedtwin.policy.layout import params_to_bytes
from fedtwin.run.aggregate import combine, save_server_state
from fedtwin.run.init_step import build_fleet, initial_model, new_state
from fedtwin.sim.fleet_files import fleet_to_json
from fedtwin.store import ArtifactStore, RunLayout, sha256_hex
from fedtwin.store.context import RunContext
from fedtwin.store.state import require_run, save_state


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
