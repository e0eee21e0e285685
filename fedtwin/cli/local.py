"""User commands that run on this machine: run, evaluate, report, config."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from fedtwin.cli.options import config_options, json_option, resolve_config, store_option
from fedtwin.config import config_to_yaml
from fedtwin.core.errors import ConfigError


@click.command("run")
@config_options
@click.option("--no-progress", is_flag=True, help="No progress bar (e.g. in CI logs).")
@json_option
def run_cmd(config_file: str | None, no_progress: bool, as_json: bool, **flags: Any) -> None:
    """Run a whole federated training locally, or resume an interrupted run id.

    Trains the fleet round by round, stops early at the target return, evaluates the final model
    on held-out twins and writes the report.

    Example: fedtwin run --twins 8 --rounds 20 --seed 0
    """
    from fedtwin.run.runner import run

    config = resolve_config(config_file, **flags)
    result = run(config, progress=not no_progress and not as_json)
    if as_json:
        click.echo(json.dumps({
            "run_id": result.run_id, "store": result.store, "rounds": result.rounds_played,
            "validation_return": result.validation_return, "heldout_return": result.heldout_return,
            "env_steps": result.env_steps, "seconds": round(result.seconds, 2),
        }))
        return
    ev = result.evaluation
    click.echo(f"run {result.run_id}: {result.rounds_played} rounds, {result.env_steps:,} env steps, "
               f"{result.seconds:.1f} s")
    click.echo(f"  held-out return {ev['heldout']['mean_return']:.1f}, training twins "
               f"{ev['train']['mean_return']:.1f}, generalization gap {ev['generalization_gap']:.1f}")
    click.echo(f"  report: {result.store.rstrip('/')}/runs/{result.run_id}/report/report.html")


@click.command("baseline")
@config_options
@click.option("--mode", type=click.Choice(["pooled", "single"]), default="pooled", show_default=True,
              help="pooled: one agent cycling over every training twin; single: one agent on one twin.")
@click.option("--twin", "twin_id", help="The twin of a `single` baseline (default: the fleet's first).")
@click.option("--no-progress", is_flag=True, help="No progress bar (e.g. in CI logs).")
@json_option
def baseline_cmd(config_file: str | None, mode: str, twin_id: str | None, no_progress: bool, as_json: bool,
                 **flags: Any) -> None:
    """Train the single-agent baseline of a run with the same env-step budget, for the report.

    Takes the same flags as `fedtwin run` and needs --run-id: the run is created if it does not
    exist yet (or must have the same config), and its initial model is the baseline's start. Each
    round-equivalent, one agent trains as many local chunks as the fleet has training twins (each
    chunk is one twin's local training of a federated round), so round r of the baseline has used
    the env steps of round r of the federated run; it is validated like the global model.

    \b
    Modes:
      pooled  (default) the chunks cycle over all training twins: all data on one machine.
      single  every chunk on one twin (--twin): one device learning alone.

    Stored under runs/<run_id>/baseline/<pooled|single-TWIN>/ and resumed if interrupted;
    `fedtwin report` plots it next to the federated model.

    Example: fedtwin baseline --run-id demo --twins 8 --rounds 20 --mode pooled
    """
    import torch

    from fedtwin.run import steps
    from fedtwin.run.baseline import run_baseline
    from fedtwin.store import open_store

    config = resolve_config(config_file, **flags)
    if config.run_id is None:
        raise ConfigError("fedtwin baseline needs --run-id: the federated run whose budget it matches")
    torch.set_num_threads(1)  # bit-for-bit repeatable, like the training steps
    store = open_store(config.store, config.s3)
    steps.init(store, config)
    result = run_baseline(store, config.run_id, mode, twin_id, config.execution.device,
                          progress=not no_progress and not as_json)
    ev = result.evaluation
    if as_json:
        click.echo(json.dumps({
            "run_id": result.run_id, "baseline": result.name, "rounds": result.rounds_played,
            "env_steps": result.env_steps, "validation_return": result.validation_return,
            "heldout_return": ev["heldout"]["mean_return"], "seconds": round(result.seconds, 2),
        }))
        return
    click.echo(f"baseline {result.name} of run {result.run_id}: {result.rounds_played} rounds, "
               f"{result.env_steps:,} env steps, {result.seconds:.1f} s")
    click.echo(f"  validation return {result.validation_return:.1f}, held-out return "
               f"{ev['heldout']['mean_return']:.1f}, generalization gap {ev['generalization_gap']:.1f}")


@click.command("evaluate")
@click.option("--model", required=True, type=click.Path(exists=True, dir_okay=False),
              help="Model weights (.safetensors), e.g. a run's report/final.safetensors.")
@click.option("--twins", "twins_file", required=True, type=click.Path(dir_okay=False),
              help="Fleet YAML with a `twins:` list (and `kind:` for twins other than cart-poles).")
@click.option("--episodes", type=click.IntRange(min=1), default=4, show_default=True,
              help="Greedy episodes per twin.")
@click.option("--seed", type=int, default=0, show_default=True)
@json_option
def evaluate_cmd(model: str, twins_file: str, episodes: int, seed: int, as_json: bool) -> None:
    """Evaluate a model greedily on a set of twins; per-twin and mean return.

    Example: fedtwin evaluate --model fedtwin-runs/runs/demo/report/final.safetensors --twins fleet.yaml
    """
    from fedtwin.learn.evaluate import evaluate_policy, load_model
    from fedtwin.sim.fleet_files import load_fleet
    from fedtwin.sim.kind_registry import get_kind

    fleet = load_fleet(twins_file)  # its kind: line says which kind of twins (and model) these are
    twins = fleet.train
    if not twins:
        raise ConfigError(f"{twins_file} lists no twins; add entries under `twins:`")
    params, spec = load_model(Path(model).read_bytes(), model, get_kind(fleet.kind))
    result = evaluate_policy(params, spec, twins, episodes, seed)
    if as_json:
        click.echo(json.dumps({"mean_return": result.mean_return, "per_twin": result.per_twin_mean}))
        return
    width = max(len(t) for t in result.per_twin_mean)
    for twin_id, mean in result.per_twin_mean.items():
        click.echo(f"{twin_id:<{width}}  {mean:7.1f} ± {result.per_twin_std[twin_id]:.1f}")
    click.echo(f"{'mean':<{width}}  {result.mean_return:7.1f}")


@click.command("report")
@click.argument("run_id", required=False)
@click.option("--run", "run_flag", metavar="RUN_ID", help="The run id, as a workflow step passes it.")
@store_option
def report_cmd(run_id: str | None, run_flag: str | None, store: str) -> None:
    """Write the report of a run (evaluating its final model first if needed).

    Example: fedtwin report run-20261126-120000 (in a workflow: fedtwin step report --run demo)
    """
    from fedtwin.run.evaluate_step import evaluate_and_report
    from fedtwin.store import open_store

    if run_id and run_flag and run_id != run_flag:
        raise ConfigError(f"two run ids ({run_id!r} and --run {run_flag!r}); give one")
    if not (run_id or run_flag):
        raise ConfigError("report needs a run id: fedtwin report RUN_ID")
    click.echo(evaluate_and_report(open_store(store), run_id or run_flag or ""))


@click.group("config")
def config_group() -> None:
    """Inspect configuration."""


@config_group.command("show")
@config_options
def config_show_cmd(config_file: str | None, **flags: Any) -> None:
    """Print the resolved config (file < FEDTWIN_* environment < flags) as YAML.

    Example: fedtwin config show --config fedtwin.yaml --rounds 30
    """
    click.echo(config_to_yaml(resolve_config(config_file, **flags)), nl=False)
