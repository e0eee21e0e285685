"""Session-scoped real servers for integration tests (see tests/servers.py).

A server starts the first time an integration test asks for it and stops when the session ends,
so unit-test runs (`-m "not integration"`) never pay for it.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest

from tests.servers import MlflowProcess, MlflowServer, S3Server, SeaweedS3


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A real S3 server (SeaweedFS) with bucket `fedtwin`, admin keys and one scoped twin identity."""
    workdir = tmp_path_factory.mktemp("seaweedfs")
    server = SeaweedS3(workdir)
    try:
        info = server.start()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    try:
        yield info
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    """A real `mlflow server` (sqlite backend, proxied artifacts) on 127.0.0.1."""
    workdir = tmp_path_factory.mktemp("mlflow")
    server = MlflowProcess(workdir)
    try:
        info = server.start()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    try:
        yield info
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
