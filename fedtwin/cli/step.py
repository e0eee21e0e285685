"""`fedtwin step ...`: the units a workflow engine runs (one Argo pod each).

Every step reads and writes only the store, is idempotent, and with --outputs-dir writes its
results as small files that Argo reads as output parameters.
"""

from __future__ import annotations

import json
from typing import Any

import click

from fedtwin.cli.local import report_cmd
from fedtwin.cli.options import (
    END_WITHOUT_TEARDOWN,
    config_options,
    outputs_option,
    resolve_config,
    store_option,
)


def run_option(func: Any) -> Any:
    return click.option("--run", "run_id", required=True, help="Run id.")(func)


def round_option(func: Any) -> Any:
    return click.option("--round", "round_index", type=click.IntRange(min=0), required=True,
                        help="Round index (0-based).")(func)


def split_ids(values: tuple[str, ...]) -> list[str]:
    """`--twin a --twin b` and `--twin a,b` (an Argo shard item) both give [a, b]."""
    return [part for value in values for part in value.split(",") if part]


@click.group("step")
def step_group() -> None:
    """Single workflow steps (what Argo runs in each pod)."""


@step_group.command("init")
@config_options
@outputs_option
@click.option("--shard-size", type=click.IntRange(min=0), default=1, show_default=True,
              help="Twins per training pod in the `shards` output (fleet engine when > 1); "
                   "0 = one per twin up to --parallelism pods, then the fewest equal shards that fit.")
@click.option("--parallelism", type=click.IntRange(min=1),
              help="The most training pods a round may fan out to (a round runs them all at once); "
                   "default: no limit with --shard-size >= 1, 100 with --shard-size 0.")
@click.option("--max-workflow-nodes", type=click.IntRange(min=0), default=0, show_default=True,
              help="Refuse a run whose Argo workflow would make more nodes than this (0 = no check).")
def init_cmd(config_file: str | None, outputs_dir: str | None, shard_size: int, parallelism: int | None,
             max_workflow_nodes: int, **flags: Any) -> None:
    """Create a run (or accept the identical existing one) and output its twin list.

    Outputs (--outputs-dir): run_id; twins and shards (JSON lists; a shard is named by its twin id, or
    FIRST..LAST for several twins); round and first_round (the next round to play); last_round (the
    last round that may start: the final round, or first_round - 1 once training is complete).

    Example: fedtwin step init --run-id demo --twins 4 --outputs-dir /tmp/out
    """
    from fedtwin.run import steps
    from fedtwin.store import open_store

    config = resolve_config(config_file, **flags)
    fan_out = steps.FanOut(shard_size, parallelism, max_workflow_nodes or None)
    result = steps.init(open_store(config.store, config.s3), config, fan_out)
    ids, size = result.twin_ids, result.shard_size
    steps.write_outputs(outputs_dir, {"run_id": result.run_id, "twins": ids, "shards": result.shards,
                                      "round": str(result.next_round), "first_round": str(result.next_round),
                                      "last_round": str(result.last_round)})
    click.echo(json.dumps({"run_id": result.run_id, "twins": len(ids), "twins_per_pod": size,
                           "next_round": result.next_round, "resumed": result.resumed}))


@step_group.command("train")
@run_option
@round_option
@click.option("--twin", "twins", multiple=True, required=True,
              help="Twin id or FIRST..LAST range (fleet order); repeat or comma-separate to train a shard "
                   "together.")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@store_option
@outputs_option
def train_cmd(run_id: str, round_index: int, twins: tuple[str, ...], device: str, store: str,
              outputs_dir: str | None) -> str:
    """Train twins from the round's global model and write their updates (no-op if present).

    Example: fedtwin step train --run demo --round 0 --twin twin-000
    """
    import torch

    from fedtwin.run import steps
    from fedtwin.store import open_store

    torch.set_num_threads(1)
    records = steps.train(open_store(store), run_id, round_index, split_ids(twins), device)
    steps.write_outputs(outputs_dir, {"twins": [r.twin_id for r in records]})
    for record in records:
        click.echo(json.dumps({"twin_id": record.twin_id, "round": record.round,
                               "num_samples": record.num_samples, "metrics": record.metrics}))
    # Every pod of every round runs this: its updates are stored and synced, its outputs written, so the
    # process need not unload torch (Python's teardown of it takes longer than training one twin).
    return END_WITHOUT_TEARDOWN


@step_group.command("aggregate")
@run_option
@round_option
@store_option
@outputs_option
def aggregate_cmd(run_id: str, round_index: int, store: str, outputs_dir: str | None) -> None:
    """Aggregate the round's valid updates into the next global model; fails below quorum.

    A round that is not the next one to aggregate, or comes after training stopped, is not played:
    the step succeeds, leaves the run as it is and outputs played=false.

    Outputs (--outputs-dir): round, played (true/false), next_round, last_round (the last round that
    may still start), participants, rejected (counts), mean_return, continue (true/false) and
    model.safetensors (the newest global model).

    Example: fedtwin step aggregate --run demo --round 0 --outputs-dir /tmp/out
    """
    from fedtwin.run import aggregate, runstate  # not the steps facade: the aggregator needs no torch
    from fedtwin.store import RunLayout, open_store

    artifact_store = open_store(store)
    summary = aggregate.aggregate(artifact_store, run_id, round_index)
    played, next_round = summary.get("played", True), summary["next_round"]
    if outputs_dir is not None:  # the newest global model, for an Argo output artifact
        model = artifact_store.get_bytes(RunLayout(run_id).global_model(next_round))
        runstate.write_outputs(outputs_dir, {"model.safetensors": model})
    runstate.write_outputs(outputs_dir, {
        "round": str(round_index),
        "played": played,
        "next_round": str(next_round),
        "last_round": str(summary["last_round"]),
        "participants": str(len(summary["participants"])) if played else "0",
        "rejected": str(len(summary["rejected"])) if played else "0",
        "mean_return": f"{summary['validation_return']:.2f}" if played else "",
        "continue": bool(summary["continue"]),
    })
    shown = ("round", "participants", "rejected", "validation_return", "continue") if played else \
        ("round", "played", "reason", "continue", "next_round")
    click.echo(json.dumps({k: summary[k] for k in shown}))


@step_group.command("evaluate")
@run_option
@click.option("--episodes", type=click.IntRange(min=1), help="Greedy episodes per twin.")
@store_option
@outputs_option
def evaluate_cmd(run_id: str, episodes: int | None, store: str, outputs_dir: str | None) -> None:
    """Evaluate the run's final model on the held-out and training twins.

    Example: fedtwin step evaluate --run demo
    """
    from fedtwin.run import steps
    from fedtwin.store import open_store

    result = steps.evaluate(open_store(store), run_id, episodes)
    steps.write_outputs(outputs_dir, {"heldout_return": f"{result['heldout']['mean_return']:.2f}",
                                      "generalization_gap": f"{result['generalization_gap']:.2f}"})
    click.echo(json.dumps({"model_round": result["model_round"],
                           "heldout_return": result["heldout"]["mean_return"],
                           "generalization_gap": result["generalization_gap"]}))


# One report command: `fedtwin report RUN_ID` is also `fedtwin step report --run RUN_ID`, the spelling of
# the workflows' report step.
step_group.add_command(report_cmd)


# Argo's {{workflow.status}} values, so an exit handler can pass it through unchanged.
ARGO_STATUS = {"Succeeded": "done", "Failed": "failed", "Error": "failed"}


@step_group.command("status")
@run_option
@click.option("--round", "round_index", type=click.IntRange(min=0),
              help="Also output `play`: whether this round is the next one to play.")
@store_option
@outputs_option
def status_cmd(run_id: str, round_index: int | None, store: str, outputs_dir: str | None) -> None:
    """Output a run's progress; with --round, whether that round should be played now.

    Outputs (--outputs-dir): status, next_round, complete (true/false) and, with --round, play
    (true when the round is the next one and training is not complete; false when it was already
    played or the run stopped early). A round further ahead is an error: rounds run in order.

    Example: fedtwin step status --run demo --round 3
    """
    from fedtwin.run.runstate import round_status, write_outputs
    from fedtwin.store import open_store
    from fedtwin.store.state import load_state

    values = round_status(load_state(open_store(store), run_id), run_id, round_index)
    write_outputs(outputs_dir, values)
    click.echo(json.dumps({"run_id": run_id, **values}))


@step_group.command("finish")
@run_option
@click.option("--status", type=click.Choice(["done", "failed", *ARGO_STATUS]), required=True,
              help="done or failed; Argo's Succeeded (= done) and Failed/Error (= failed) are accepted.")
@click.option("--reason", help="Why the run failed (shown by `fedtwin runs list`; dropped for Succeeded).")
@store_option
def finish_cmd(run_id: str, status: str, reason: str | None, store: str) -> None:
    """Record how the run ended (the workflow's exit handler calls this).

    Example: fedtwin step finish --run demo --status done
    """
    from fedtwin.run.runstate import finish
    from fedtwin.store import open_store

    if status in ARGO_STATUS:
        status = ARGO_STATUS[status]
        reason = None if status == "done" else reason
    state = finish(open_store(store), run_id, status, reason)
    click.echo(json.dumps({"run_id": run_id, "status": state["status"]}))


# --- multi-cluster: one member per cluster, one coordinator on the host (fedtwin/run/multicluster.py) ---
def wait_options(func: Any) -> Any:
    """Polling flags of `step member` and `step coordinate` (default: the run's `multicluster:` section)."""
    options = [
        click.option("--poll-interval", type=click.FloatRange(min=0, min_open=True),
                     help="Seconds between the first looks at the store while waiting."),
        click.option("--max-poll-interval", type=click.FloatRange(min=0, min_open=True),
                     help="Cap of the poll interval as it backs off."),
        click.option("--backoff", type=click.FloatRange(min=1),
                     help="Factor the poll interval grows by after a look that saw nothing new."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


@step_group.command("member")
@run_option
@click.option("--twins", "twins", multiple=True, required=True,
              help="This cluster's twins: ID,ID,... (or repeat the option).")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--workers", type=click.IntRange(min=1),
              help="Training processes (default: the run's execution.workers, else one per core).")
@wait_options
@click.option("--wait-timeout", "wait_timeout_seconds", type=click.FloatRange(min=0, min_open=True),
              help="Seconds one wait (for the run, a global model, an aggregation) may last.")
@store_option
@outputs_option
def member_cmd(run_id: str, twins: tuple[str, ...], device: str, workers: int | None, store: str,
               outputs_dir: str | None, **flags: Any) -> None:
    """Train this cluster's twins in every round of a multi-cluster run, until it ends.

    Each round waits for the round's global model, trains the twins without an update and waits
    for the aggregation; it stops when the last round is aggregated and fails when the run fails.
    Resumable: a restarted member joins the first open round and skips stored updates. Prints one
    JSON line per round. Outputs (--outputs-dir): rounds (JSON list of rounds played), trained and
    left_out (JSON objects: round -> twins), status.

    Example: fedtwin step member --run demo --twins twin-000,twin-001 --store s3://fedtwin
    """
    from fedtwin.run import multicluster, steps
    from fedtwin.store import open_store

    def show(report: multicluster.MemberRound) -> None:
        click.echo(json.dumps(report.to_json()))

    result = multicluster.member(open_store(store), run_id, split_ids(twins), flags, device, workers,
                                 on_round=show)
    steps.write_outputs(outputs_dir, {
        "rounds": [r.round for r in result.rounds],
        "trained": {str(r.round): r.trained for r in result.rounds},
        "left_out": {str(r.round): r.left_out for r in result.rounds if r.left_out},
        "status": result.status,
    })
    click.echo(json.dumps({"run_id": run_id, "twins": result.twins, "status": result.status,
                           "rounds": [r.round for r in result.rounds]}))


@step_group.command("coordinate")
@run_option
@wait_options
@click.option("--round-deadline", "round_deadline_seconds", type=click.FloatRange(min=0, min_open=True),
              help="Seconds a round waits for every update before aggregating the quorum.")
@click.option("--retry-failed", is_flag=True,
              help="Play a failed run's failed round again (otherwise a failed run is refused).")
@store_option
@outputs_option
def coordinate_cmd(run_id: str, retry_failed: bool, store: str, outputs_dir: str | None,
                   **flags: Any) -> None:
    """Aggregate every round of a multi-cluster run as the members' updates arrive, then evaluate.

    A round aggregates once every twin's update is stored, or at the round deadline with at least
    `min_twins` of them; below that the run fails (stored rounds stay intact). Updates written
    after their round was aggregated are recorded in rounds/NNNN/late.json. Run `step init` first.
    Prints one JSON line per round. Outputs (--outputs-dir): status, rounds_played,
    heldout_return, late (JSON object: round -> twins).

    Example: fedtwin step coordinate --run demo --store s3://fedtwin --round-deadline 600
    """
    from fedtwin.run import multicluster, steps
    from fedtwin.store import open_store

    def show(decision: multicluster.RoundDecision) -> None:
        click.echo(json.dumps(decision.to_json()))

    result = multicluster.coordinate(open_store(store), run_id, flags, retry_failed, on_round=show)
    heldout = result.evaluation["heldout"]["mean_return"]
    steps.write_outputs(outputs_dir, {
        "status": result.state["status"],
        "rounds_played": str(result.state["next_round"]),
        "heldout_return": f"{heldout:.2f}",
        "late": {str(r): ids for r, ids in result.late.items()},
    })
    click.echo(json.dumps({"run_id": run_id, "status": result.state["status"],
                           "rounds_played": result.state["next_round"], "heldout_return": heldout,
                           "late": {str(r): ids for r, ids in result.late.items()}}))
