"""Build the local control plane's programs from their Go modules, once per version, into a cache.

    python -m tests.cluster.build            # build what is missing, print where the binaries are
    python -m tests.cluster.build --force    # rebuild even when the cache has them

Two Go modules live next to this file (Argo and Kubernetes need different k8s.io library versions,
so they cannot share one module):

- `go/kube`: `kube-apiserver` from `k8s.io/kubernetes` and `etcd` from `go.etcd.io/etcd/server/v3`,
  both built by one `go build` (one dependency graph, compiled once);
- `go/argo`: `workflow-controller` and `argo` (CLI and `argo server`) from
  `github.com/argoproj/argo-workflows/v4`. The module zip lacks `ui/dist/app`, which `cmd/argo`
  embeds, so the verified module source is copied into a build directory with the Argo UI built
  from the same source (below), or a placeholder page when that build failed (what upstream's
  Makefile does without a UI build). Argo's CRDs and RBAC manifests are copied from the same
  verified source, so the cluster gets the CRDs of the controller it runs.

The Argo UI: the module's `ui/` (and the `api/` schemas its webpack config copies) with the
package.json in `ui/` next to this file (upstream's, with the substitutions listed in
`UI_DEPENDENCY_CHANGES`), `npm ci` from the committed package-lock.json, then upstream's webpack
config through `ui/webpack.fedtwin.js`; `dist/app` is cached in `argo-ui-<version>-<hash>/`.
A failed UI build is one line (kept for tests/cluster/test_argo_ui.py to repeat) and does not stop
the rest: `argo` is then built with the placeholder page. `--ui-lock` regenerates the lock file.

Chromium (for the UI screenshot test) is looked for last; as root, when it is missing, Debian's
`chromium` package is installed with apt-get (`FEDTWIN_INSTALL_CHROMIUM=0` turns that off); not
as root it is one line saying how.

Each component lands in `~/.cache/fedtwin-cluster/<component>-<versions>-<hash>/` (or
`$FEDTWIN_CLUSTER_CACHE`), where the hash covers the module's go.mod, go.sum, tools.go, the link
flags, the Go version and, for `argo`, the UI's own key: a second `make test` finds them and builds
nothing.
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
import tempfile
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

    def key(self, go_version: str, ui: str = "") -> str:
        """The cache directory's name; `ui` is the key of the Argo UI embedded in `argo` ("": the
        placeholder page, whose key is what it was before the UI was built)."""
        digest = hashlib.sha256()
        for part in ("go.mod", "go.sum", "tools.go"):
            digest.update((self.module_dir / part).read_bytes())
        digest.update(self.ldflags.encode())
        if self.name == "argo":
            digest.update(json.dumps(ARGO_MANIFESTS).encode())
        digest.update(json.dumps(self.packages, sort_keys=True).encode())
        digest.update(go_version.encode())
        if ui:
            digest.update(ui.encode())
            return f"{self.name}-{self.versions}-ui-{digest.hexdigest()[:12]}"
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
    argo_ui: Path | None = None
    """The Argo UI (`dist/app`) embedded in `argo`; None when `argo` serves the placeholder page."""
    ui_error: str | None = None
    """Why the UI was not built, when `ensure()` tried and failed (one line)."""

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


def argo_module_dir(go: str, cwd: Path) -> Path:
    """The verified v4.0.7 module source in the Go module cache (read-only), downloaded if needed."""
    proc = subprocess.run(
        [go, "mod", "download", "-json", f"{ARGO_MODULE}@{ARGO_VERSION}"],
        capture_output=True,
        text=True,
        env=go_env(),
        cwd=cwd,
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
    return Path(info["Dir"])


def writable_copy(source: Path, dest: Path) -> None:
    """Copy a tree from the (read-only) module cache, making the copy writable."""
    shutil.copytree(source, dest, symlinks=True)
    for path in [dest, *dest.rglob("*")]:
        if not path.is_symlink():
            path.chmod(path.stat().st_mode | 0o200)


def argo_source(go: str, build_dir: Path, log_path: Path, ui: Path | None = None) -> Path:
    """The verified v4.0.7 module source, writable, in build_dir, with the built UI (`ui`, a
    `dist/app` directory) or, without one, a placeholder page."""
    src = build_dir / "argo-workflows"
    writable_copy(argo_module_dir(go, build_dir), src)
    app = src / "ui" / "dist" / "app"
    if ui is not None:
        shutil.rmtree(app, ignore_errors=True)
        shutil.copytree(ui, app)
        return src
    app.mkdir(parents=True, exist_ok=True)
    (app / "index.html").write_text(
        "<!doctype html><title>Argo Workflows API</title>"
        "<p>This argo server was built without the UI (tests/cluster/README.md); its API is served.</p>\n"
    )
    return src


# --- the Argo UI ------------------------------------------------------------------------------------

UI_DIR = HERE / "ui"
UI_FILES = ("package.json", "package-lock.json", "webpack.fedtwin.js")
"""Committed next to this file; copied over the module's `ui/` before `npm ci` (all in the UI's key)."""
UI_DEPENDENCY_CHANGES: dict[str, str] = {
    # Upstream pins a git commit of argo-ui (54f36c7, 2024-10-11), which needs GitHub; the npm
    # registry's only argo-ui is 1.0.0, published 2021-06-22 (its src is argo-ui's commit 7489836).
    # It exports every module the UI imports.
    "argo-ui": "1.0.0",
    # ajv-keywords 5 (schema-utils 4, copy-webpack-plugin's) needs ajv 8 as a peer; npm's
    # --legacy-peer-deps installs no peers, so it would find the hoisted ajv 6 (eslint's).
    "ajv": "^8.9.0",
    # argo-ui 1.0.0 requires 'uuid/v1' without declaring uuid; the hoisted uuid 9 has no v1 file.
    # webpack.fedtwin.js points 'uuid/v1' at this one.
    "uuid-v3": "npm:uuid@3.4.0",
}
"""What tests/cluster/ui/package.json changes in upstream's `dependencies`; it also gives upstream's
yarn `resolutions` to npm as `overrides` (the same pins; npm ignores `resolutions`)."""
UI_NPM_CI = ("ci", "--legacy-peer-deps", "--ignore-scripts", "--no-audit", "--no-fund")
"""--legacy-peer-deps: argo-ui 1.0.0 declares react 16 as a peer, the UI uses react 18 (ERESOLVE);
--ignore-scripts: no package needs its install script for the build (esbuild's binary comes as its
platform package; the others print messages), and none runs on the build machine."""
UI_NPM_NETWORK = ("--fetch-timeout=120000", "--fetch-retries=2")
"""Not in the key: how long to wait for the registry."""
UI_WEBPACK = ("node_modules/webpack/bin/webpack.js", "--config", "webpack.fedtwin.js", "--mode", "production")
"""Upstream's `yarn build` (`NODE_ENV=production webpack --mode production`) through our wrapper config."""
NODE_MIN = 20
"""Upstream ui/package.json's `engines` (its ui/.npmrc sets engine-strict)."""
NPM_NETWORK_ERRORS = (
    "ENOTFOUND",
    "EAI_AGAIN",
    "ECONNREFUSED",
    "ECONNRESET",
    "ETIMEDOUT",
    "ENETUNREACH",
    "EHOSTUNREACH",
    "ERR_SOCKET_TIMEOUT",
    "UNABLE_TO_GET_ISSUER_CERT_LOCALLY",
    "SELF_SIGNED_CERT_IN_CHAIN",
    "CERT_HAS_EXPIRED",
)


@dataclass(frozen=True)
class UiBuild:
    key: str
    app: Path
    """The built `dist/app` (index.html, bundles, assets)."""


def ui_key() -> str:
    """`argo-ui-<version>-<hash>`: the hash covers the verified module's hash, the committed
    package.json, lock file and webpack wrapper, and the npm and webpack command lines."""
    digest = hashlib.sha256(ARGO_MODULE_SUM.encode())
    for name in UI_FILES:
        digest.update(name.encode() + b"\0" + (UI_DIR / name).read_bytes())
    digest.update(json.dumps([UI_NPM_CI, UI_WEBPACK]).encode())
    return f"argo-ui-{ARGO_VERSION}-{digest.hexdigest()[:12]}"


def ui_package_json(upstream: dict[str, object]) -> dict[str, object]:
    """Upstream's ui/package.json with UI_DEPENDENCY_CHANGES, and its yarn resolutions as overrides."""
    package = json.loads(json.dumps(upstream))
    dependencies = dict(package["dependencies"])
    dependencies.update(UI_DEPENDENCY_CHANGES)
    package["dependencies"] = dict(sorted(dependencies.items()))
    package["overrides"] = dict(package.get("resolutions", {}))
    return package


def ui_error_file() -> Path:
    return cache_root() / "last-ui-build-error.txt"


def node_tools() -> tuple[str, str, str, str]:
    """node and npm, and their versions; BuildError (one line) when missing or too old."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        raise BuildError(
            f"{'node' if node is None else 'npm'} not found on PATH: the Argo UI (for "
            f"tests/cluster/test_argo_ui.py) is built with Node.js {NODE_MIN} or newer and npm; install "
            "them (Debian: apt-get install nodejs npm)"
        )
    versions = []
    for tool in (node, npm):
        try:
            versions.append(
                subprocess.run(
                    [tool, "--version"], capture_output=True, text=True, check=True, timeout=60
                ).stdout.strip()
            )
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as exc:
            raise BuildError(f"`{tool} --version` failed ({exc}); check the Node.js installation") from exc
    match = re.match(r"v(\d+)\.", versions[0])
    if match is None or int(match.group(1)) < NODE_MIN:
        raise BuildError(
            f"{node} is Node.js {versions[0]}; Argo {ARGO_VERSION}'s UI needs Node.js {NODE_MIN} or newer "
            "(its package.json engines)"
        )
    return node, npm, versions[0], versions[1]


def ui_env(production: bool = False) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "NODE_ENV"}  # npm ci would omit devDependencies
    env.update(
        {"npm_config_update_notifier": "false", "npm_config_fund": "false", "npm_config_audit": "false"}
    )
    if production:
        env["NODE_ENV"] = "production"
    return env


def npm_failure(text: str) -> str:
    """The line that says why npm failed: the registry's unreachability first, else npm's error."""
    errors = [
        line.removeprefix("npm error").strip() for line in text.splitlines() if line.startswith("npm error")
    ]
    code = next(
        (line.split()[1] for line in errors if line.startswith("code ") and len(line.split()) > 1), ""
    )
    informative = [
        line for line in errors if line and not re.match(r"(code|syscall|errno|path|dest|at) ", line)
    ]
    detail = next(
        (line for line in informative if "request to" in line or "reason:" in line),
        informative[0] if informative else "",
    )
    if code in NPM_NETWORK_ERRORS or any(name in detail for name in NPM_NETWORK_ERRORS):
        return (
            f"the npm registry did not answer ({code or 'network'}: {detail[:200]}); check "
            "`npm config get registry`, a proxy, and the network"
        )
    if code.startswith("E") and code[1:].isdigit():
        return f"the npm registry answered {code[1:]} ({detail[:200]}); check `npm config get registry`"
    return f"{code + ': ' if code else ''}{detail[:300]}" if (code or detail) else ""


def webpack_failure(text: str) -> str:
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("ERROR in"):
            following = next((x.strip() for x in lines[i + 1 : i + 4] if x.strip()), "")
            return f"{line.strip()[:200]}: {following[:300]}"
    return ""


def run_logged(argv: list[str], cwd: Path, env: dict[str, str], what: str, log_path: Path) -> None:
    """Run a build step, its output appended to log_path; BuildError (one line) on failure."""
    start = log_path.stat().st_size if log_path.exists() else 0
    with log_path.open("ab") as out:
        out.write(f"\n$ {' '.join(argv)}  (in {cwd})\n".encode())
        out.flush()
        try:
            proc = subprocess.run(argv, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
        except OSError as exc:
            raise BuildError(f"{what} could not start ({exc}); full log: {log_path}") from exc
    if proc.returncode == 0:
        return
    with log_path.open("rb") as handle:
        handle.seek(start)
        text = handle.read().decode(errors="replace")
    reason = npm_failure(text) if "npm" in what else webpack_failure(text)
    if not reason:
        tail = text.strip().splitlines()[-1:] or [""]
        reason = tail[0][:300]
    raise BuildError(f"{what} failed (exit {proc.returncode}): {reason}; full log: {log_path}")


def check_ui_package_json(upstream: dict[str, object]) -> None:
    committed = json.loads((UI_DIR / "package.json").read_text())
    if committed != ui_package_json(upstream):
        raise BuildError(
            f"tests/cluster/ui/package.json is not Argo {ARGO_VERSION}'s ui/package.json with the "
            "changes in build.py's UI_DEPENDENCY_CHANGES; regenerate it and the lock file with "
            "`python -m tests.cluster.build --ui-lock`"
        )


def build_ui(go: str, force: bool = False) -> UiBuild:
    """Build the Argo UI into its cache directory (atomically): the module's ui/ and api/ schemas,
    our package.json, lock file and webpack wrapper, `npm ci`, webpack; keep only `dist/app`."""
    key = ui_key()
    target = cache_root() / key
    if (target / "manifest.json").is_file() and not force:
        return UiBuild(key, target / "dist" / "app")
    node, npm, node_version, npm_version = node_tools()
    target.parent.mkdir(parents=True, exist_ok=True)
    work = target.parent / f".{key}.tmp-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    log_path = target.parent / f"{key}.log"
    log_path.write_text("")
    log(f"building the Argo UI ({ARGO_VERSION}) into {target} (log: {log_path}) ...")
    started = time.monotonic()
    try:
        module = argo_module_dir(go, work)
        src = work / "src"
        writable_copy(module / "ui", src / "ui")
        for part in ("jsonschema", "openapi-spec"):  # copy-webpack-plugin reads ../api/...
            writable_copy(module / "api" / part, src / "api" / part)
        ui = src / "ui"
        check_ui_package_json(json.loads((ui / "package.json").read_text()))
        (ui / "yarn.lock").unlink(missing_ok=True)  # npm reads package-lock.json; it would rewrite yarn.lock
        for name in UI_FILES:
            shutil.copy2(UI_DIR / name, ui / name)
        run_logged(
            [npm, *UI_NPM_CI, *UI_NPM_NETWORK], ui, ui_env(), "npm ci of the Argo UI's packages", log_path
        )
        installed = time.monotonic()
        run_logged([node, *UI_WEBPACK], ui, ui_env(production=True), "webpack build of the Argo UI", log_path)
        built = ui / "dist" / "app"
        index = built / "index.html"
        if not index.is_file() or 'src="main.' not in index.read_text():
            raise BuildError(
                f"webpack build of the Argo UI produced no dist/app/index.html; full log: {log_path}"
            )
        (work / "dist").mkdir()
        built.rename(work / "dist" / "app")
        finished = time.monotonic()
        (work / "manifest.json").write_text(
            json.dumps(
                {
                    "component": "argo-ui",
                    "argo": ARGO_VERSION,
                    "node": node_version,
                    "npm": npm_version,
                    "npm_ci_seconds": round(installed - started, 1),
                    "webpack_seconds": round(finished - installed, 1),
                    "dist_bytes": sum(p.stat().st_size for p in (work / "dist").rglob("*") if p.is_file()),
                    "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                },
                indent=2,
            )
            + "\n"
        )
        shutil.rmtree(src)  # node_modules is ~550 MB; npm's own cache makes the next install quick
        if target.exists():
            shutil.rmtree(target)
        work.rename(target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    log(f"built the Argo UI in {finished - started:.0f} s (npm ci {installed - started:.0f} s)")
    return UiBuild(key, target / "dist" / "app")


def regenerate_ui_lock() -> None:
    """Rewrite tests/cluster/ui/package.json and package-lock.json from the module's ui/.

    npm takes the version upstream's yarn.lock records for every package it lists (all but
    argo-ui 1.0.0's own dependencies and uuid-v3); `--omit-lockfile-registry-resolved` keeps the
    registry's address out of the lock file (npm ci fetches from whatever registry is configured,
    checking each package's integrity hash)."""
    go = go_binary()
    go_version(go)
    _, npm, _, _ = node_tools()
    with tempfile.TemporaryDirectory(prefix="fedtwin-ui-lock-") as tmp:
        ui = Path(tmp) / "ui"
        writable_copy(argo_module_dir(go, Path(tmp)) / "ui", ui)
        text = json.dumps(ui_package_json(json.loads((ui / "package.json").read_text())), indent=4) + "\n"
        (ui / "package.json").write_text(text)
        log_path = Path(tmp) / "npm.log"
        try:
            run_logged(
                [
                    npm,
                    "install",
                    "--package-lock-only",
                    "--omit-lockfile-registry-resolved",
                    *UI_NPM_CI[1:],
                    *UI_NPM_NETWORK,
                ],
                ui,
                ui_env(),
                "npm install --package-lock-only",
                log_path,
            )
        except BuildError:
            print(log_path.read_text()[-4000:], file=sys.stderr)
            raise
        lock = (ui / "package-lock.json").read_text()
        if '"resolved"' in lock:
            raise BuildError("npm wrote registry addresses into package-lock.json; npm 9 or newer is needed")
        (UI_DIR / "package.json").write_text(text)
        (UI_DIR / "package-lock.json").write_text(lock)
    log(f"wrote {UI_DIR / 'package.json'} and {UI_DIR / 'package-lock.json'}")


# --- Chromium (the UI screenshot test's browser) ----------------------------------------------------

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
CHROMIUM_HINT = (
    "as root: apt-get install -y --no-install-recommends chromium (Debian's package; `make cluster-tools` "
    "does it when run as root), or set FEDTWIN_CHROMIUM to a Chromium or Chrome binary"
)


def chromium_error_file() -> Path:
    return cache_root() / "last-chromium-error.txt"


def find_chromium() -> str | None:
    configured = os.environ.get("FEDTWIN_CHROMIUM")
    if configured:
        return shutil.which(configured)
    return next(filter(None, (shutil.which(name) for name in CHROMIUM_NAMES)), None)


def ensure_chromium() -> str:
    """A Chromium binary; as root, Debian's chromium is installed with apt-get when none is found."""
    found = find_chromium()
    if found:
        return found
    if os.environ.get("FEDTWIN_CHROMIUM"):
        raise BuildError(f"FEDTWIN_CHROMIUM={os.environ['FEDTWIN_CHROMIUM']} is not an executable")
    what = "chromium not found (tests/cluster/test_argo_ui.py screenshots the Argo UI with it)"
    if os.environ.get("FEDTWIN_INSTALL_CHROMIUM", "1") == "0":
        raise BuildError(f"{what}; FEDTWIN_INSTALL_CHROMIUM=0, so not installing it; {CHROMIUM_HINT}")
    if os.geteuid() != 0:
        raise BuildError(f"{what}; not root, so not installing it; {CHROMIUM_HINT}")
    apt = shutil.which("apt-get")
    if apt is None:
        raise BuildError(f"{what}; apt-get not found, so not installing it; {CHROMIUM_HINT}")
    cache_root().mkdir(parents=True, exist_ok=True)
    log_path = cache_root() / "chromium-install.log"
    log_path.write_text("")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = [apt, "install", "-y", "--no-install-recommends", "chromium"]
    log(f"installing Debian's chromium with apt-get (log: {log_path}) ...")
    try:
        run_logged(install, HERE, env, "apt-get install chromium", log_path)
    except BuildError:
        # A fresh machine may have no package lists yet.
        run_logged([apt, "update"], HERE, env, "apt-get update", log_path)
        run_logged(install, HERE, env, "apt-get install chromium", log_path)
    found = find_chromium()
    if found is None:
        raise BuildError(
            f"apt-get installed chromium but no {'/'.join(CHROMIUM_NAMES)} is on PATH; full log: {log_path}"
        )
    return found


def go_output_name(package: str) -> str:
    """The file name `go build -o DIR/` gives a main package: its last path element, or the one
    before a major-version suffix (go.etcd.io/etcd/server/v3 -> server)."""
    parts = package.rstrip("/").split("/")
    return parts[-2] if re.fullmatch(r"v[0-9]+", parts[-1]) and len(parts) > 1 else parts[-1]


def build_component(
    component: Component, go: str, version: str, force: bool = False, ui: UiBuild | None = None
) -> Path:
    """Build one component into its cache directory (atomically) and return that directory.
    `ui`: for `argo`, the built Argo UI to embed (None: the placeholder page)."""
    target = cache_root() / component.key(version, ui.key if ui else "")
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
            src = argo_source(go, build_dir, log_path, ui.app if ui else None)
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
                    **({"ui": ui.key if ui else None} if component is ARGO else {}),
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
    (also kept in the cache directory, for the test fixtures to repeat). A failed UI build does not
    raise: `argo` is built with the placeholder page and `ui_error` says why (kept for
    tests/cluster/test_argo_ui.py)."""
    ui: UiBuild | None = None
    ui_error: str | None = None
    try:
        go = go_binary()
        version = go_version(go)
        kube = build_component(KUBE, go, version, force)
        try:
            ui = build_ui(go, force)
        except BuildError as exc:
            ui_error = str(exc)
        argo = build_component(ARGO, go, version, force, ui)
    except BuildError as exc:
        with contextlib.suppress(OSError):
            last_error_file().parent.mkdir(parents=True, exist_ok=True)
            last_error_file().write_text(str(exc) + "\n")
        raise
    last_error_file().unlink(missing_ok=True)
    if ui_error is None:
        ui_error_file().unlink(missing_ok=True)
    else:
        ui_error_file().write_text(ui_error + "\n")
    return Binaries(
        kube_apiserver=kube / "bin" / "kube-apiserver",
        etcd=kube / "bin" / "etcd",
        workflow_controller=argo / "bin" / "workflow-controller",
        argo=argo / "bin" / "argo",
        argo_manifests=argo / "manifests",
        argo_ui=ui.app if ui else None,
        ui_error=ui_error,
    )


def cached() -> Binaries | None:
    """The built programs if the cache has them (no build, no Go needed beyond `go env`): `argo`
    with the current UI when that was built, else `argo` with the placeholder page."""
    with contextlib.suppress(BuildError):
        go = go_binary()
        version = go_version(go)
        kube = cache_root() / KUBE.key(version)
        if not (kube / "manifest.json").is_file():
            return None
        try:
            ui_name = ui_key()
        except OSError:  # tests/cluster/ui incomplete: no UI
            ui_name = ""
        ui_dir = cache_root() / ui_name if ui_name else None
        argo, app = cache_root() / ARGO.key(version), None
        if ui_dir is not None and (ui_dir / "manifest.json").is_file():
            with_ui = cache_root() / ARGO.key(version, ui_name)
            if (with_ui / "manifest.json").is_file():
                argo, app = with_ui, ui_dir / "dist" / "app"
        if not (argo / "manifest.json").is_file():
            return None
        last_ui_error = ui_error_file().read_text().strip() if ui_error_file().is_file() else None
        return Binaries(
            kube / "bin" / "kube-apiserver",
            kube / "bin" / "etcd",
            argo / "bin" / "workflow-controller",
            argo / "bin" / "argo",
            argo / "manifests",
            argo_ui=app,
            ui_error=None if app else last_ui_error,
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


def require_ui(binaries: Binaries) -> Path:
    """The Argo UI embedded in `binaries.argo`, or BuildError saying why there is none (the UI
    build's own error when it failed)."""
    if binaries.argo_ui is not None:
        return binaries.argo_ui
    if binaries.ui_error:
        raise BuildError(f"argo was built without the Argo UI (a placeholder page): {binaries.ui_error}")
    raise BuildError(
        "argo was built without the Argo UI (a placeholder page): run `make cluster-tools` to build it "
        f"(needs Node.js {NODE_MIN}+ and npm; about 3 minutes cold)"
    )


def require_chromium() -> str:
    """A Chromium binary, or BuildError (one line) saying how to get one (and why the last
    `make cluster-tools` did not)."""
    found = find_chromium()
    if found:
        return found
    last = chromium_error_file().read_text().strip() if chromium_error_file().is_file() else ""
    if last:
        raise BuildError(last)
    raise BuildError(f"chromium not found; {CHROMIUM_HINT}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.cluster.build", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--force", action="store_true", help="rebuild even when the cache has the binaries")
    parser.add_argument(
        "--ui-lock",
        action="store_true",
        help="regenerate tests/cluster/ui/package.json and package-lock.json (needs the registry), then exit",
    )
    args = parser.parse_args(argv)
    started = time.monotonic()
    try:
        if args.ui_lock:
            regenerate_ui_lock()
            return 0
        binaries = ensure(force=args.force)
    except BuildError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    for path in binaries.all():
        print(path)
    if binaries.ui_error:
        # Everything else runs; only the UI screenshot test fails, repeating this line.
        print(f"Error: {binaries.ui_error}", file=sys.stderr)
        log(
            "argo was built with a placeholder page instead of the Argo UI: "
            "only tests/cluster/test_argo_ui.py fails"
        )
    else:
        print(binaries.argo_ui)
    try:
        chromium = ensure_chromium()
    except BuildError as exc:
        with contextlib.suppress(OSError):
            chromium_error_file().write_text(str(exc) + "\n")
        print(f"Error: {exc}", file=sys.stderr)
    else:
        chromium_error_file().unlink(missing_ok=True)
        print(chromium)
    log(f"ready in {time.monotonic() - started:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
