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
@click.option("-o", "--output", type=click.Path(dir_okay=False), required=True, help="YAML file to write.")
def generate_cmd(count: int, seed: int, spread: float | None, preset: Literal["default", "hard"], prefix: str,
                 output: str) -> None:
    """Generate a fleet deterministically from a seed and write it as YAML.

    Example: fedtwin twins generate --count 16 --seed 3 --preset hard -o fleet.yaml
    """
    from fedtwin.core.errors import ConfigError, FedtwinError
    from fedtwin.core.formats import check_dns_label
    from fedtwin.sim.twins import generate_twins, save_twins
    from fedtwin.store import os_error_line

    try:
        check_dns_label(f"{prefix}-0", "twin id prefix")
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    twins = generate_twins(count, seed, 0.15 if spread is None else spread, preset, prefix)
    try:
        save_twins(twins, output)
    except OSError as exc:
        raise FedtwinError(os_error_line(exc, "write", output, "-o")) from exc
    click.echo(f"wrote {len(twins)} twins to {output}")
