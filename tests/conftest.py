"""Session-scoped real servers for integration tests (see tests/servers.py).

A server starts the first time an integration test asks for it and stops when the session ends,
so unit-test runs (`-m "not integration"`) never pay for it, nor need its binary.
"""

from __future__ import annotations

import os
import shutil
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import tiny_config as make_tiny_config
from tests.servers import MlflowProcess, MlflowServer, S3Server, SeaweedS3

PYTEST_PID = os.getpid()


def stop_on_sigterm(signum: int, frame: Any) -> None:
    """SIGTERM to the pytest process (a CI timeout, `kill`) ends the session as Ctrl-C does, so the
    session fixtures' finalizers still stop the servers and the control plane; a forked child keeps
    the default (it dies)."""
    if os.getpid() != PYTEST_PID:
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return
    raise KeyboardInterrupt(f"signal {signum}")


def pytest_configure(config: pytest.Config) -> None:
    signal.signal(signal.SIGTERM, stop_on_sigterm)


@pytest.fixture
def tiny_config(tmp_path: Path) -> Callable[..., Any]:
    """`tiny_config(run_id="demo", **{"dotted.key": value})`: the tiny config of a run stored in tmp_path."""

    def make(run_id: str = "demo", **overrides: Any) -> Any:
        return make_tiny_config(tmp_path, run_id, **overrides)

    return make


def serve(name: str, server: SeaweedS3 | MlflowProcess, workdir: Path) -> Iterator[Any]:
    """Start `server` for the session, stop it and remove its files at the end.

    A missing server binary fails the tests that need it (a skip would read as a pass); the dev
    extras install both, and `-m "not integration"` runs everything else without them.
    """
    try:
        info = server.start()
    except FileNotFoundError as exc:
        pytest.fail(f"{name}: {exc}", pytrace=False)
    try:
        yield info
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A real S3 server (SeaweedFS) with bucket `fedtwin`, admin keys and one scoped twin identity."""
    workdir = tmp_path_factory.mktemp("seaweedfs")
    yield from serve("SeaweedFS", SeaweedS3(workdir), workdir)


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    """A real `mlflow server` (sqlite backend, proxied artifacts) on 127.0.0.1."""
    workdir = tmp_path_factory.mktemp("mlflow")
    yield from serve("MLflow", MlflowProcess(workdir), workdir)
