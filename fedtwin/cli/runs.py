"""`fedtwin runs ...`: what is in a store."""

from __future__ import annotations

import json

import click

from fedtwin.cli.options import json_option, store_option


@click.group("runs")
def runs_group() -> None:
    """List and inspect runs in a store."""


@runs_group.command("list")
@store_option
@json_option
def list_cmd(store: str, as_json: bool) -> None:
    """List the runs in a store with their status and progress.

    Example: fedtwin runs list --store ./fedtwin-runs
    """
    from fedtwin.core.errors import StoreError
    from fedtwin.store import RunLayout, list_runs, open_store

    artifact_store = open_store(store)
    rows = []
    for run_id in list_runs(artifact_store):
        try:
            rows.append(artifact_store.get_json(RunLayout(run_id).state))
        except StoreError:  # one damaged run must not hide the others
            fix = f"`fedtwin runs repair {run_id} --store {artifact_store.url}`"
            rows.append({"run_id": run_id, "status": "unknown", "next_round": None,
                         "reason": f"state.json missing or corrupt: run {fix}"})
    if as_json:
        click.echo(json.dumps(rows))
        return
    if not rows:
        click.echo(f"no runs in {artifact_store.url}")
        return
    for state in rows:
        if state["next_round"] is None:
            click.echo(f"{state['run_id']:<32} {state['reason']}")
            continue
        click.echo(f"{state['run_id']:<32} {state['status']:<8} rounds done: {state['next_round']}"
                   + (f"  ({state['reason']})" if state.get("reason") else ""))


@runs_group.command("show")
@click.argument("run_id")
@store_option
@json_option
def show_cmd(run_id: str, store: str, as_json: bool) -> None:
    """Show a run's state, rounds and final evaluation.

    Example: fedtwin runs show run-20261126-120000
    """
    from fedtwin.store import open_store
    from fedtwin.store.context import RunContext, round_summaries

    ctx = RunContext.load(open_store(store), run_id)
    state = ctx.state()
    summaries = round_summaries(ctx)
    key = ctx.layout.report("evaluation.json")
    evaluation = ctx.store.get_json(key) if ctx.store.exists(key) else None
    kind = ctx.config.fleet.kind
    if as_json:
        click.echo(json.dumps({"state": state, "kind": kind, "rounds": summaries, "evaluation": evaluation}))
        return
    click.echo(f"run {run_id}: {state['status']}, {state['next_round']} rounds done"
               + (f" ({state['reason']})" if state.get("reason") else ""))
    click.echo(f"  kind: {kind}, {len(ctx.fleet.train)} training twins")
    for s in summaries:
        click.echo(f"  round {s['round']:>3}: {len(s['participants'])} participants, "
                   f"{len(s['rejected'])} rejected, validation return {s['validation_return']:.1f}")
    if evaluation:
        click.echo(f"  held-out return {evaluation['heldout']['mean_return']:.1f} "
                   f"(gap {evaluation['generalization_gap']:.1f})")


@runs_group.command("repair")
@click.argument("run_id")
@store_option
@json_option
def repair_cmd(run_id: str, store: str, as_json: bool) -> None:
    """Rebuild a run's lost or damaged state.json, fleet, global models and server state.

    Everything is rebuilt from the run's config and its stored rounds (aggregating a round's
    participants again gives the same model bit for bit; it is checked against the base model the
    next round's updates name). Intact objects are left alone. Then resume the run as before.

    Example: fedtwin runs repair run-20261126-120000
    """
    from fedtwin.run.steps import repair
    from fedtwin.store import open_store

    done = repair(open_store(store), run_id)
    if as_json:
        click.echo(json.dumps({"run_id": run_id, "repaired": done}))
        return
    for line in done or [f"run {run_id}: nothing to repair"]:
        click.echo(line)
