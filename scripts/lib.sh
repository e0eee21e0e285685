# shellcheck shell=bash
# Shared helpers of the cluster scripts: sourced, never run.

# Pinned tools from scripts/install-tools.sh come first on PATH when they are there
# (FEDTWIN_USE_TOOLS_BIN=0 turns that off).
FEDTWIN_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export FEDTWIN_ROOT
if [[ "${FEDTWIN_USE_TOOLS_BIN:-1}" != 0 && -d "$FEDTWIN_ROOT/.tools/bin" ]]; then
  PATH="$FEDTWIN_ROOT/.tools/bin:$PATH"
fi

# The `version = "..."` of pyproject.toml (bash only: the scripts check for tools after sourcing this).
package_version() {
  local line
  while IFS= read -r line; do
    if [[ "$line" =~ ^version\ =\ \"([^\"]+)\" ]]; then
      printf '%s' "${BASH_REMATCH[1]}"
      return 0
    fi
  done <"$FEDTWIN_ROOT/pyproject.toml"
}

# shellcheck disable=SC2034  # the settings below are read by the scripts that source this file
# The upstream Argo Workflows chart, installed beside fedtwin-platform (see charts/fedtwin-platform/README.md).
ARGO_HELM_REPO_URL="https://argoproj.github.io/argo-helm"
ARGO_CHART_VERSION="${ARGO_CHART_VERSION:-1.0.18}"  # Argo Workflows v4.0.6

CLUSTER_NAME="${CLUSTER_NAME:-fedtwin}"
NAMESPACE="${NAMESPACE:-fedtwin}"
ARGO_NAMESPACE="${ARGO_NAMESPACE:-argo}"
IMAGE_REPOSITORY="${IMAGE_REPOSITORY:-fedtwin}"
# The image tag is the package version (pyproject.toml), as `make image` and the chart's appVersion.
IMAGE_TAG="${IMAGE_TAG:-$(package_version)}"

log() { printf '%s: %s\n' "$SCRIPT_NAME" "$*"; }
die() { printf '%s: %s\n' "$SCRIPT_NAME" "$*" >&2; exit 1; }

# Fail before doing anything when a tool is missing, naming it and how to get it.
require_tools() {
  local tool missing=()
  for tool in "$@"; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
  done
  ((${#missing[@]} == 0)) && return 0
  for tool in "${missing[@]}"; do
    case "$tool" in
      helm | kubectl) printf '%s: %s not found on PATH: run "make tools" (pinned %s in .tools/bin) or install it\n' "$SCRIPT_NAME" "$tool" "$tool" >&2 ;;
      kind) printf '%s: kind not found on PATH: install kind (Kubernetes in Docker) v0.24 or newer\n' "$SCRIPT_NAME" >&2 ;;
      docker) printf '%s: docker not found on PATH: install Docker (engine and CLI)\n' "$SCRIPT_NAME" >&2 ;;
      *) printf '%s: %s not found on PATH: install it\n' "$SCRIPT_NAME" "$tool" >&2 ;;
    esac
  done
  exit 1
}

cluster_exists() {
  kind get clusters 2>/dev/null | grep -Fxq -- "$CLUSTER_NAME"
}
