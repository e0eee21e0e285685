"""`fedtwin` command line: thin layers that parse, call the library, and print.

Exit codes: 0 success; 1 a run or step failed (e.g. store unreachable); 3 a round lost its quorum; 2 bad input
(config, fleet file, flags, a run id reused with another config): nothing was written.
"""

from __future__ import annotations

import logging
import os
import sys

import click

from fedtwin import __version__
from fedtwin.cli.local import baseline_cmd, config_group, evaluate_cmd, report_cmd, run_cmd
from fedtwin.cli.options import END_WITHOUT_TEARDOWN
from fedtwin.cli.runs import runs_group
from fedtwin.cli.step import step_group
from fedtwin.cli.twins import twins_group
from fedtwin.core.errors import FedtwinError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="fedtwin")
@click.option("-v", "--verbose", is_flag=True, help="Log round details to stderr.")
def cli(verbose: bool) -> None:
    """Federated reinforcement learning for fleets of digital twins.

    Example: fedtwin run --twins 8 --rounds 20
    """
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")


for command in (run_cmd, baseline_cmd, evaluate_cmd, report_cmd, config_group, twins_group, runs_group,
                step_group):
    cli.add_command(command)


TERMINATION_LOG_ENV = "FEDTWIN_TERMINATION_LOG"
"""A file for the one-line error as well (Kubernetes' terminationMessagePath: Argo shows it as the
node's message, so the UI says why a step failed, not only its exit code)."""


def report_error(message: str) -> None:
    """`Error: <message>` on stderr, and in the termination log when one is configured."""
    line = f"Error: {message}"
    click.echo(line, err=True)
    write_termination_log(line)


def write_termination_log(line: str) -> None:
    path = os.environ.get(TERMINATION_LOG_ENV)
    if path:
        try:
            with open(path, "w", encoding="utf-8") as log:
                log.write(line[:4096])  # the kubelet keeps at most 4096 bytes
        except OSError as exc:  # never hide the real error behind this one
            click.echo(f"(could not write the termination log {path}: {exc.strerror})", err=True)


def main(argv: list[str] | None = None) -> None:
    """Run a command: library errors become `Error: <message>` and their documented exit code."""
    run_command(argv)


def run_command(argv: list[str] | None = None) -> object:
    """`main`, returning the command's return value (`entry` looks for END_WITHOUT_TEARDOWN in it)."""
    try:
        return cli.main(args=argv, prog_name="fedtwin", standalone_mode=False)
    except FedtwinError as exc:
        report_error(str(exc))
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(1)
    except click.ClickException as exc:
        exc.show()
        write_termination_log(f"Error: {exc.format_message()}")
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)


def entry() -> None:
    """The process entry point (the `fedtwin` script, `python -m fedtwin`): `main`, and for a command that
    returned END_WITHOUT_TEARDOWN, the end of the process without Python's interpreter teardown.

    With torch loaded that teardown (module finalizers, unloading its libraries) costs ~0.4 s, paid by
    every train pod of every round. Such a command has closed and synced what it wrote; stdout and
    stderr are flushed here. In-process callers of `main` (tests, scripts) never end this way, and `main`
    returns None, as console scripts made before `entry` existed expect.
    """
    if run_command() == END_WITHOUT_TEARDOWN:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
