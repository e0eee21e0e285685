"""Build the local control plane's programs from their Go modules, once per version, into a cache.

    python -m tests.cluster.build            # build what is missing, print where the binaries are
    python -m tests.cluster.build --force    # rebuild even when the cache has them

Two Go modules live next to this file (Argo and Kubernetes need different k8s.io library versions,
so they cannot share one module):

- `go/kube`: `kube-apiserver` from `k8s.io/kubernetes` and `etcd` from `go.etcd.io/etcd/server/v3`,
  both built by one `go build` (one dependency graph, compiled once);
- `go/argo`: `workflow-controller` and `argo` (CLI and `argo server`) from
  `github.com/argoproj/argo-workflows/v4`. The module zip lacks `ui/dist/app`, which `cmd/argo`
  embeds, so the verified module source is copied into a build directory with a placeholder page
  (what upstream's Makefile does without a UI build). Argo's CRDs and RBAC manifests are copied
  from the same verified source, so the cluster gets the CRDs of the controller it runs.

Each component lands in `~/.cache/fedtwin-cluster/<component>-<versions>-<hash>/` (or
`$FEDTWIN_CLUSTER_CACHE`), where the hash covers the module's go.mod, go.sum, tools.go, the link
flags and the Go version: a second `make test` finds them and builds nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
GO_MIN = (1, 25, 7)
"""The newest `go` directive among the modules (Argo v4.0.7's go.mod)."""

KUBERNETES_VERSION = "v1.34.4"
ETCD_VERSION = "v3.6.5"
"""kubeadm's etcd for Kubernetes 1.34 (`cmd/kubeadm/app/constants`: 3.6.5-0)."""
ARGO_VERSION = "v4.0.7"
ARGO_MODULE = "github.com/argoproj/argo-workflows/v4"
ARGO_MODULE_SUM = "h1:O76Plk/nYI+gFax3vvE7elvA3BNAp0r0aJ24VmjsjLE="
"""The checksum database's hash of the v4.0.7 module zip; the copied source must match it."""
ARGO_COMMIT = "9aeb47ce10339f4a14819335c6a00027353ba0df"
ARGO_BUILD_DATE = "2026-07-07T10:40:02Z"


class BuildError(RuntimeError):
    """A build step failed; the message is one line naming what and how to fix it."""


@dataclass(frozen=True)
class Component:
    name: str
    module_dir: Path
    versions: str
    packages: dict[str, str]
    """output binary name -> Go package"""
    ldflags: str
    extra: tuple[str, ...] = field(default=())

    def key(self, go_version: str) -> str:
        digest = hashlib.sha256()
        for part in ("go.mod", "go.sum", "tools.go"):
            digest.update((self.module_dir / part).read_bytes())
        digest.update(self.ldflags.encode())
        if self.name == "argo":
            digest.update(json.dumps(ARGO_MANIFESTS).encode())
        digest.update(json.dumps(self.packages, sort_keys=True).encode())
        digest.update(go_version.encode())
        return f"{self.name}-{self.versions}-{digest.hexdigest()[:12]}"


KUBE = Component(
    name="kube",
    module_dir=HERE / "go" / "kube",
    versions=f"k8s{KUBERNETES_VERSION}-etcd{ETCD_VERSION}",
    packages={"kube-apiserver": "k8s.io/kubernetes/cmd/kube-apiserver", "etcd": "go.etcd.io/etcd/server/v3"},
    # Without the version stamp the API server reports v0.0.0 and Helm's kubeVersion checks fail.
    ldflags=(
        f"-s -w -X k8s.io/component-base/version.gitVersion={KUBERNETES_VERSION}"
        " -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=34"
        " -X k8s.io/component-base/version.gitTreeState=clean"
    ),
)
ARGO = Component(
    name="argo",
    module_dir=HERE / "go" / "argo",
    versions=ARGO_VERSION,
    packages={
        "workflow-controller": f"{ARGO_MODULE}/cmd/workflow-controller",
        "argo": f"{ARGO_MODULE}/cmd/argo",
    },
    ldflags=(
        f"-s -w -X {ARGO_MODULE}.version={ARGO_VERSION} -X {ARGO_MODULE}.gitTag={ARGO_VERSION}"
        f" -X {ARGO_MODULE}.gitCommit={ARGO_COMMIT} -X {ARGO_MODULE}.gitTreeState=clean"
        f" -X {ARGO_MODULE}.buildDate={ARGO_BUILD_DATE}"
    ),
)
COMPONENTS = (KUBE, ARGO)

ARGO_MANIFESTS = (
    "manifests/base/crds/full",
    "manifests/cluster-install-no-crds/workflow-controller-rbac",
    "manifests/cluster-install-no-crds/argo-server-rbac",
    "manifests/base/workflow-controller/workflow-controller-sa.yaml",
    "manifests/base/argo-server/argo-server-sa.yaml",
    "manifests/quick-start/base/executor/emissary/executor-role.yaml",
    "manifests/quick-start/base/executor-default-rolebinding.yaml",
)
"""Copied from the verified module source into `<argo cache>/manifests/` (used as structure only)."""


@dataclass(frozen=True)
class Binaries:
    """Where the built programs and Argo's manifests are."""

    kube_apiserver: Path
    etcd: Path
    workflow_controller: Path
    argo: Path
    argo_manifests: Path

    def all(self) -> list[Path]:
        return [self.kube_apiserver, self.etcd, self.workflow_controller, self.argo]


def cache_root() -> Path:
    configured = os.environ.get("FEDTWIN_CLUSTER_CACHE")
    return Path(configured) if configured else Path.home() / ".cache" / "fedtwin-cluster"


def log(message: str) -> None:
    print(f"cluster-build: {message}", file=sys.stderr, flush=True)


def go_binary() -> str:
    go = shutil.which("go")
    if go is None:
        raise BuildError(
            f"go not found on PATH: tests/cluster builds kube-apiserver, etcd and Argo from source; "
            f"install Go {'.'.join(map(str, GO_MIN))} or newer and put it on PATH"
        )
    return go


def go_version(go: str) -> str:
    try:
        out = subprocess.run(
            [go, "env", "GOVERSION"], capture_output=True, text=True, check=True, env=go_env(), timeout=60
        ).stdout.strip()
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        raise BuildError(f"`{go} env GOVERSION` failed ({exc}); check the Go installation") from exc
    match = re.match(r"go(\d+)\.(\d+)(?:\.(\d+))?", out)
    if match is None:
        raise BuildError(
            f"cannot parse the Go version {out!r} of {go}; install Go {'.'.join(map(str, GO_MIN))} or newer"
        )
    found = tuple(int(x or 0) for x in match.groups())
    if found < GO_MIN:
        raise BuildError(
            f"{go} is {out}; the Argo v4.0.7 module needs Go {'.'.join(map(str, GO_MIN))} or newer"
        )
    return out


def go_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "CGO_ENABLED": "0",
            "GOFLAGS": "-mod=readonly -buildvcs=false",  # go.sum must already hold every hash
            "GOTOOLCHAIN": "local",  # never fetch another toolchain behind our back
            "GOWORK": "off",
        }
    )
    return env


def run_go(go: str, args: list[str], cwd: Path, what: str, log_path: Path) -> None:
    with log_path.open("ab") as out:
        out.write(f"\n$ go {' '.join(args)}  (in {cwd})\n".encode())
        out.flush()
        proc = subprocess.run([go, *args], cwd=cwd, env=go_env(), stdout=out, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        tail = log_path.read_text(errors="replace").strip().splitlines()[-1:] or [""]
        raise BuildError(f"{what} failed (exit {proc.returncode}): {tail[0][:300]}; full log: {log_path}")


def argo_source(go: str, build_dir: Path, log_path: Path) -> Path:
    """The verified v4.0.7 module source, writable, with a placeholder UI page, in build_dir."""
    proc = subprocess.run(
        [go, "mod", "download", "-json", f"{ARGO_MODULE}@{ARGO_VERSION}"],
        capture_output=True,
        text=True,
        env=go_env(),
        cwd=build_dir,
    )
    try:
        info = json.loads(proc.stdout)
    except json.JSONDecodeError:
        info = {"Error": (proc.stderr or proc.stdout).strip()}
    if proc.returncode != 0 or info.get("Error"):
        raise BuildError(
            f"cannot download {ARGO_MODULE}@{ARGO_VERSION}: {info.get('Error', proc.stderr.strip())}; "
            "check GOPROXY and the network"
        )
    if info.get("Sum") != ARGO_MODULE_SUM:
        raise BuildError(
            f"{ARGO_MODULE}@{ARGO_VERSION} has hash {info.get('Sum')}, expected {ARGO_MODULE_SUM}; "
            "the module cache may be corrupt (`go clean -modcache`)"
        )
    src = build_dir / "argo-workflows"
    shutil.copytree(info["Dir"], src, symlinks=True)
    for path in [src, *src.rglob("*")]:
        if not path.is_symlink():
            path.chmod(path.stat().st_mode | 0o200)
    app = src / "ui" / "dist" / "app"
    app.mkdir(parents=True, exist_ok=True)
    (app / "index.html").write_text(
        "<!doctype html><title>Argo Workflows API</title>"
        "<p>This argo server was built without the UI (tests/cluster/README.md); its API is served.</p>\n"
    )
    return src


def go_output_name(package: str) -> str:
    """The file name `go build -o DIR/` gives a main package: its last path element, or the one
    before a major-version suffix (go.etcd.io/etcd/server/v3 -> server)."""
    parts = package.rstrip("/").split("/")
    return parts[-2] if re.fullmatch(r"v[0-9]+", parts[-1]) and len(parts) > 1 else parts[-1]


def build_component(component: Component, go: str, version: str, force: bool = False) -> Path:
    """Build one component into its cache directory (atomically) and return that directory."""
    target = cache_root() / component.key(version)
    if (target / "manifest.json").is_file() and not force:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    work = target.parent / f".{target.name}.tmp-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    bin_dir = work / "bin"
    bin_dir.mkdir(parents=True)
    log_path = target.parent / f"{target.name}.log"
    log_path.write_text("")
    build_dir = work / "module"
    shutil.copytree(component.module_dir, build_dir)
    started = time.monotonic()
    log(f"building {component.name} ({component.versions}) into {target} (log: {log_path}) ...")
    try:
        if component is ARGO:
            src = argo_source(go, build_dir, log_path)
            for rel in ARGO_MANIFESTS:
                source, dest = src / rel, work / "manifests" / rel
                if source.is_dir():
                    shutil.copytree(source, dest)
                else:
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(source, dest)
        run_go(
            go,
            [
                "build",
                "-trimpath",
                "-ldflags",
                component.ldflags,
                "-o",
                str(bin_dir) + "/",
                *component.packages.values(),
            ],
            build_dir,
            f"go build of {component.name}",
            log_path,
        )
        for name, package in component.packages.items():
            built = bin_dir / go_output_name(package)
            if built.name != name and built.is_file():
                built.rename(bin_dir / name)
            if not (bin_dir / name).is_file():
                raise BuildError(f"go build of {component.name} did not produce {name}; full log: {log_path}")
        seconds = time.monotonic() - started
        (work / "manifest.json").write_text(
            json.dumps(
                {
                    "component": component.name,
                    "versions": component.versions,
                    "go": version,
                    "packages": component.packages,
                    "build_seconds": round(seconds, 1),
                    "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                },
                indent=2,
            )
            + "\n"
        )
        shutil.rmtree(build_dir)
        if target.exists():
            shutil.rmtree(target)
        work.rename(target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    log(f"built {component.name} in {seconds:.0f} s")
    return target


def last_error_file() -> Path:
    return cache_root() / "last-build-error.txt"


def ensure(force: bool = False) -> Binaries:
    """The built programs, building what the cache lacks. Raises BuildError with one clear line
    (also kept in the cache directory, for the test fixtures to repeat)."""
    try:
        go = go_binary()
        version = go_version(go)
        kube = build_component(KUBE, go, version, force)
        argo = build_component(ARGO, go, version, force)
    except BuildError as exc:
        with contextlib.suppress(OSError):
            last_error_file().parent.mkdir(parents=True, exist_ok=True)
            last_error_file().write_text(str(exc) + "\n")
        raise
    last_error_file().unlink(missing_ok=True)
    return Binaries(
        kube_apiserver=kube / "bin" / "kube-apiserver",
        etcd=kube / "bin" / "etcd",
        workflow_controller=argo / "bin" / "workflow-controller",
        argo=argo / "bin" / "argo",
        argo_manifests=argo / "manifests",
    )


def cached() -> Binaries | None:
    """The built programs if the cache has them (no build, no Go needed beyond `go env`)."""
    with contextlib.suppress(BuildError):
        go = go_binary()
        version = go_version(go)
        kube, argo = (cache_root() / c.key(version) for c in COMPONENTS)
        if (kube / "manifest.json").is_file() and (argo / "manifest.json").is_file():
            return Binaries(
                kube / "bin" / "kube-apiserver",
                kube / "bin" / "etcd",
                argo / "bin" / "workflow-controller",
                argo / "bin" / "argo",
                argo / "manifests",
            )
    return None


def require_built() -> Binaries:
    """The cached programs, never building (a cold build takes ~10 min, longer than a test's
    timeout): BuildError naming what to run, with the last build's error when there was one."""
    go_version(go_binary())  # a missing or too old Go is the first thing to say
    found = cached()
    if found is not None:
        return found
    last = last_error_file().read_text().strip() if last_error_file().is_file() else ""
    raise BuildError(
        "the control-plane binaries are not built: run `make cluster-tools` (a cold build takes "
        "about 10 minutes and downloads 2.7 GB of Go modules)" + (f"; it last failed: {last}" if last else "")
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.cluster.build", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--force", action="store_true", help="rebuild even when the cache has the binaries")
    args = parser.parse_args(argv)
    started = time.monotonic()
    try:
        binaries = ensure(force=args.force)
    except BuildError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    for path in binaries.all():
        print(path)
    log(f"ready in {time.monotonic() - started:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
