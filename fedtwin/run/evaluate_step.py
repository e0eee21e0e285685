"""The evaluate step: the final model on the held-out twins (used only here) and the training twins."""

from __future__ import annotations

from typing import Any

import numpy as np

from fedtwin.core.seeding import derive_seed
from fedtwin.learn.evaluate import evaluate_policy
from fedtwin.observe import tracking
from fedtwin.store import ArtifactStore
from fedtwin.store.context import RunContext


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


def evaluate_and_report(store: ArtifactStore, run_id: str) -> str:
    """The run's final model evaluated (if not yet) and its report written; where the report is."""
    from fedtwin.observe.report import write_report  # plotting: loaded only by the steps that report

    evaluate(store, run_id)
    return write_report(store, run_id)
