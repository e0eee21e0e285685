"""`python -m tests.cluster`: run the local control plane by hand.

    .venv/bin/python -m tests.cluster build            # build (or find cached) binaries
    .venv/bin/python -m tests.cluster up               # start it; prints KUBECONFIG; Ctrl-C stops it
    .venv/bin/python -m tests.cluster up --charts      # ... with SeaweedFS, MLflow and both charts installed

While it runs: `export KUBECONFIG=...` (printed), then kubectl/helm from .tools/bin and the built
`argo` CLI work against it; pod logs are under the printed node directory.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
import tempfile
import threading
from pathlib import Path

from tests.cluster import build


def up(with_charts: bool, keep: bool) -> int:
    from tests.cluster.harness import Cluster, CommandError

    workdir = Path(tempfile.mkdtemp(prefix="fedtwin-cluster-"))
    try:
        cluster = Cluster.start(workdir)
    except build.BuildError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:
        print(f"Error: the local control plane did not start: {exc}", file=sys.stderr)
        return 1
    servers: list[object] = []
    try:
        if with_charts:
            from tests.cluster.charts import install_charts
            from tests.servers import MlflowProcess, SeaweedS3

            s3 = SeaweedS3(workdir / "seaweedfs")
            (workdir / "seaweedfs").mkdir()
            mlflow = MlflowProcess(workdir / "mlflow")
            (workdir / "mlflow").mkdir()
            servers += [s3, mlflow]
            try:
                release = install_charts(cluster, s3.start(), mlflow.start())
            except CommandError as exc:
                print(f"Error: helm install failed against the local API server: {exc}", file=sys.stderr)
                return 1
            print(f"charts installed: {release.summary()}")
        print(f"export KUBECONFIG={cluster.plane.kubeconfig}")
        tools = build.HERE.parents[1] / ".tools" / "bin"
        print(f"export PATH={cluster.plane.binaries.argo.parent}:{tools}:$PATH")
        print(f"node agent: {cluster.agent.workdir} (pods/*/main.log); logs: {cluster.plane.workdir}")
        print("Ctrl-C stops everything.")
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        while not stop.wait(1.0):
            pass
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):  # a second Ctrl-C must not cut the clean-up short
            signal.signal(sig, signal.SIG_IGN)
        cluster.stop()
        for server in servers:
            server.stop()  # type: ignore[attr-defined]
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.cluster", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("build", help="build (or find cached) kube-apiserver, etcd, workflow-controller, argo")
    start = sub.add_parser("up", help="start the control plane and node agent until Ctrl-C")
    start.add_argument(
        "--charts", action="store_true", help="also start SeaweedFS and MLflow and install both charts"
    )
    start.add_argument("--keep", action="store_true", help="keep the work directory (logs) after stopping")
    args = parser.parse_args(argv)
    if args.command == "build":
        return build.main([])
    return up(args.charts, args.keep)


if __name__ == "__main__":
    raise SystemExit(main())
