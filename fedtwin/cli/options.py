"""Options shared by several commands, as decorators (one definition, same help everywhere)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from fedtwin.config import Config, load_config, set_path

# flag name -> dotted config key
CONFIG_FLAGS: dict[str, str] = {
    "store": "store",
    "run_id": "run_id",
    "seed": "seed",
    "rounds": "federation.rounds",
    "twins": "fleet.count",
    "kind": "fleet.kind",
    "fleet_file": "fleet.file",
    "algo": "train.algo",
    "strategy": "federation.strategy",
    "target_return": "federation.target_return",
    "workers": "execution.workers",
    "engine": "execution.engine",
    "device": "execution.device",
}


END_WITHOUT_TEARDOWN = "end-without-teardown"
"""What a command returns when its process may end without Python's interpreter teardown (`entry`)."""


def config_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """--config FILE plus the flags that override single config keys (file < env < flags)."""
    options = [
        click.option("--config", "config_file", type=click.Path(dir_okay=False),
                     help="YAML config file (see `fedtwin config show`)."),
        click.option("--store", help="Artifact store: a directory or s3://BUCKET/PREFIX."),
        click.option("--run-id", help="Run id (DNS label); an existing id resumes that run."),
        click.option("--seed", type=int, help="Run seed; the same seed reproduces the run."),
        click.option("--rounds", type=int, help="Federated rounds (maximum, with early stop)."),
        click.option("--twins", type=int, help="Number of generated training twins."),
        click.option("--kind", help="Twin kind: cartpole (default), pendulum, acrobot, module:Class or an "
                                    "installed fedtwin.twins entry point (see `fedtwin twins kinds`)."),
        click.option("--fleet-file", type=click.Path(dir_okay=False),
                     help="Fleet YAML instead of generated twins."),
        click.option("--algo", type=click.Choice(["ppo", "reinforce"]), help="Local trainer."),
        click.option("--strategy", help="Aggregation strategy (e.g. fedavg)."),
        click.option("--target-return", type=float, help="Stop when validation return reaches this."),
        click.option("--workers", type=int, help="Training processes (default 1: in this process)."),
        click.option("--engine", type=click.Choice(["pool", "fleet"]),
                     help="fleet (default): twins batched in one computation; pool: one job per twin."),
        click.option("--device", type=click.Choice(["cpu", "cuda"]), help="Torch device for training."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def resolve_config(config_file: str | None, **flags: Any) -> Config:
    overrides: dict[str, Any] = {}
    for name, dotted in CONFIG_FLAGS.items():
        value = flags.get(name)
        if value is not None:
            set_path(overrides, dotted, value)
    return load_config(config_file, overrides)


def store_option(func: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--store", envvar="FEDTWIN_STORE", default="./fedtwin-runs", show_default=True,
                        help="Artifact store: a directory or s3://BUCKET/PREFIX (env FEDTWIN_STORE).")(func)


def outputs_option(func: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--outputs-dir", type=click.Path(file_okay=False),
                        help="Write output values as small files here (for Argo output parameters).")(func)


def json_option(func: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")(func)
