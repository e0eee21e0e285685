"""`fedtwin twins ...`: describe fleets of devices."""

from __future__ import annotations

from typing import Literal

import click

from fedtwin.core.limits import MAX_TRAINING_TWINS


@click.group("twins")
def twins_group() -> None:
    """Generate and inspect fleets of twins."""


@twins_group.command("generate")
@click.option("--count", type=click.IntRange(min=1, max=MAX_TRAINING_TWINS), required=True,
              help="Number of twins.")
@click.option("--seed", type=int, default=0, show_default=True, help="Fleet seed.")
@click.option("--spread", type=click.FloatRange(0, 1, max_open=True), default=None,
              help="Relative spread of each physical parameter [default: 0.15].")
@click.option("--preset", type=click.Choice(["default", "hard"]), default="default", show_default=True,
              help="`hard` also varies friction, sensor/actuator noise and action delay.")
@click.option("--prefix", default="twin", show_default=True, help="Id prefix (ids are PREFIX-NNN).")
@click.option("--kind", default="cartpole", show_default=True,
              help="Twin kind: a built-in, module:Class or a fedtwin.twins entry point (`twins kinds`).")
@click.option("-o", "--output", type=click.Path(dir_okay=False), required=True, help="YAML file to write.")
def generate_cmd(count: int, seed: int, spread: float | None, preset: Literal["default", "hard"], prefix: str,
                 kind: str, output: str) -> None:
    """Generate a fleet deterministically from a seed and write it as YAML.

    Example: fedtwin twins generate --count 16 --seed 3 --preset hard -o fleet.yaml
    (--kind pendulum writes `kind: pendulum` and pendulum twins)
    """
    from fedtwin.core.errors import ConfigError, FedtwinError
    from fedtwin.core.formats import check_dns_label
    from fedtwin.sim.fleet_files import save_twins
    from fedtwin.sim.kind_registry import get_kind
    from fedtwin.sim.twins import generate_kind_twins
    from fedtwin.store import os_error_line

    try:
        check_dns_label(f"{prefix}-0", "twin id prefix")
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    try:
        get_kind(kind)
    except ConfigError as exc:
        raise ConfigError(f"--kind: {exc}") from None
    twins = generate_kind_twins(kind, count, seed, 0.15 if spread is None else spread, preset, prefix)
    try:
        save_twins(twins, output, kind)
    except OSError as exc:
        raise FedtwinError(os_error_line(exc, "write", output, "-o")) from exc
    click.echo(f"wrote {len(twins)} twins to {output}")


@twins_group.command("kinds")
@click.argument("kind", required=False)
def kinds_cmd(kind: str | None) -> None:
    """List the twin kinds this installation knows, or one kind's parameters.

    Example: fedtwin twins kinds pendulum
    """
    import importlib.metadata

    from fedtwin.sim.kind_registry import BUILTIN_KINDS, ENTRY_POINT_GROUP, get_kind
    from fedtwin.sim.kinds import kind_params_table

    if kind is None:
        for name in sorted(BUILTIN_KINDS):
            click.echo(f"{name}  (built in)")
        for ep in sorted(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
            click.echo(f"{ep.name}  ({ep.value})")
        return
    impl = get_kind(kind)
    click.echo(f"{impl.name}: observations {impl.observation_space.shape}, actions {impl.action_space}, "
               f"{impl.max_episode_steps} steps per episode")
    for row in kind_params_table(impl):
        click.echo(f"  {row['name']:<16} default {row['default']:<8g} range {row['range']:<14} "
                   f"vary {row['vary']:<6} {row['doc']}")
