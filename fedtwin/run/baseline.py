"""Single-agent baseline: what one agent learns with the federated run's environment-step budget.

Each "round-equivalent" the agent trains as many local chunks as the fleet has training twins,
each chunk exactly one twin's local training of a federated round (`train.updates` rollouts of
`num_envs x num_steps` steps, `fedtwin.learn.train.train_twin`), starting from the agent's own weights:
so round r of the baseline has used as many env steps as round r of a federated run in which
every twin took part. After each round-equivalent the agent is validated on the run's validation
twins with the same seeds as the global model, and stops early at the same target return.

Modes:
- `pooled` (default): the chunks cycle over the whole training fleet (a shuffled order per round),
  as if all twins' experience were pooled on one machine: the centralized upper reference.
- `single`: every chunk runs on one twin (default: the fleet's first): one device learning alone.

Layout (inside the run's prefix, so the report finds it; one directory per baseline):

    runs/<run_id>/baseline/<name>/state.json                     mode, twin, next_round, done
    runs/<run_id>/baseline/<name>/rounds/0003/model.safetensors  the agent after round-equivalent 3
    runs/<run_id>/baseline/<name>/rounds/0003/summary.json       env steps, validation return
    runs/<run_id>/baseline/<name>/evaluation.json                final model: held-out vs training
    runs/<run_id>/baseline/<name>/final.safetensors

`<name>` is `pooled` or `single-<twin>`. Every round-equivalent is written before the next
starts, so an interrupted baseline resumes where it stopped, and yields the same weights.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from tqdm import tqdm

from fedtwin.core.errors import ConfigError
from fedtwin.core.seeding import derive_seed
from fedtwin.learn.evaluate import evaluate_policy
from fedtwin.learn.train import train_twin
from fedtwin.policy.layout import params_from_bytes, params_to_bytes
from fedtwin.run.steps import evaluate_final, validation_seed
from fedtwin.sim.twins import TwinSpec
from fedtwin.store import ArtifactStore
from fedtwin.store.baselines import BaselineLayout, baseline_name
from fedtwin.store.context import RunContext
from fedtwin.store.state import now_iso

Mode = Literal["pooled", "single"]
MODES: tuple[Mode, ...] = ("pooled", "single")


def chunk_twins(ctx: RunContext, mode: str, twin: TwinSpec | None, round_index: int) -> list[TwinSpec]:
    """The twins of one round-equivalent's chunks: one chunk per training twin of the fleet."""
    fleet = ctx.fleet.train
    if mode == "single":
        assert twin is not None
        return [twin] * len(fleet)
    order = np.random.default_rng(derive_seed(ctx.config.seed, "baseline-order", round_index)).permutation(
        len(fleet))
    return [fleet[i] for i in order]


@dataclass
class BaselineResult:
    run_id: str
    name: str
    rounds_played: int
    env_steps: int
    validation_return: float
    evaluation: dict[str, Any]
    seconds: float


def run_baseline(
    store: ArtifactStore,
    run_id: str,
    mode: str = "pooled",
    twin_id: str | None = None,
    device: str = "cpu",
    progress: bool = False,
) -> BaselineResult:
    """Train (or resume) the run's single-agent baseline, then evaluate it like the federated model."""
    if mode not in MODES:
        raise ConfigError(f"baseline mode must be one of {', '.join(MODES)}, got {mode!r}")
    started = time.perf_counter()
    ctx = RunContext.load(store, run_id)
    config = ctx.config
    twin: TwinSpec | None = None
    if mode == "single":
        twin = ctx.twins([twin_id])[0] if twin_id else ctx.fleet.train[0]
    elif twin_id:
        raise ConfigError("--twin selects the twin of a `single` baseline; add --mode single or drop --twin")
    layout = BaselineLayout(run_id, baseline_name(mode, twin.id if twin else None))
    if not store.exists(layout.state):
        store.put_json(layout.state, {"run_id": run_id, "name": layout.name, "mode": mode,
                                      "twin_id": twin.id if twin else None, "next_round": 0, "done": False,
                                      "chunks_per_round": len(ctx.fleet.train), "created_at": now_iso()})
    state = store.get_json(layout.state)
    round_index = int(state["next_round"])
    if round_index == 0:
        params, _ = ctx.global_model(0)  # the federated run's initial model: the same start
    else:
        params, _ = params_from_bytes(store.get_bytes(layout.model(round_index - 1)), ctx.spec)
    env_steps = sum(int(store.get_json(layout.summary(r))["env_steps"]) for r in range(round_index))
    rounds = config.federation.rounds
    validation = float("nan")
    bar = tqdm(total=rounds, initial=round_index, desc=f"baseline {layout.name}", unit="round",
               disable=not progress, dynamic_ncols=True)
    try:
        while not state.get("done") and round_index < rounds:
            returns: list[float] = []
            steps_this_round = 0
            for chunk, chunk_twin in enumerate(chunk_twins(ctx, mode, twin, round_index)):
                seed = derive_seed(config.seed, "baseline", layout.name, round_index, chunk)
                result = train_twin(params, chunk_twin, seed, config.train, device)
                params = result.params
                steps_this_round += int(result.num_samples)
                if "charts/episodic_return" in result.metrics:
                    returns.append(result.metrics["charts/episodic_return"])
            env_steps += steps_this_round
            evaluation = evaluate_policy(params, ctx.spec, ctx.fleet.validation,
                                         config.federation.eval_episodes,
                                         validation_seed(config, round_index))
            validation = evaluation.mean_return
            target = config.federation.target_return
            reached = target is not None and validation >= target
            store.put_bytes(layout.model(round_index), params_to_bytes(params, ctx.spec))
            store.put_json(layout.summary(round_index), {
                "round": round_index,
                "env_steps": steps_this_round,
                "cumulative_env_steps": env_steps,
                "validation_return": validation,
                "validation_per_twin": evaluation.per_twin_mean,
                "train_episodic_return": float(np.mean(returns)) if returns else None,
                "target_reached": reached,
            })
            round_index += 1
            state.update(next_round=round_index, done=reached or round_index >= rounds, updated_at=now_iso())
            store.put_json(layout.state, state)
            bar.update(1)
            bar.set_postfix(val_return=f"{validation:.1f}")
    finally:
        bar.close()
    if round_index == 0:
        raise ConfigError(f"baseline {layout.name} of run {run_id!r} has no rounds to play")
    last = store.get_json(layout.summary(round_index - 1))
    evaluation_json = evaluate_baseline(store, ctx, layout, round_index - 1)
    return BaselineResult(run_id, layout.name, round_index, env_steps, float(last["validation_return"]),
                          evaluation_json, time.perf_counter() - started)


def evaluate_baseline(store: ArtifactStore, ctx: RunContext, layout: BaselineLayout,
                      model_round: int) -> dict[str, Any]:
    """The baseline's final model on held-out and training twins, with `steps.evaluate`'s seeds."""
    if store.exists(layout.evaluation):
        existing = store.get_json(layout.evaluation)
        if existing.get("model_round") == model_round:
            return existing
    data = store.get_bytes(layout.model(model_round))
    params, _ = params_from_bytes(data, ctx.spec)
    result = evaluate_final(ctx, params, model_round)
    store.put_bytes(layout.final, data)
    store.put_json(layout.evaluation, result)
    return result
