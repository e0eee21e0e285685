# shellcheck shell=bash
# Settings and helpers of the multi-cluster scripts (karmada/*.sh): sourced, never run.
# Builds on scripts/lib.sh (pinned tools on PATH, Argo chart pin, log/die, require_tools).
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib.sh"

# shellcheck disable=SC2034  # the settings below are read by the scripts that source this file
# Karmada, pinned: karmadactl must be this version; `karmadactl init` installs the same version.
KARMADA_VERSION="${KARMADA_VERSION:-v1.18.2}"
KARMADA_CRDS_URL="${KARMADA_CRDS_URL:-https://github.com/karmada-io/karmada/releases/download/$KARMADA_VERSION/crds.tar.gz}"

MC_PREFIX="${MC_PREFIX:-fedtwin}"                                   # kind clusters <prefix>-host, <prefix>-member1, ...
MC_STATE_DIR="${MC_STATE_DIR:-$FEDTWIN_ROOT/.tools/multicluster}"   # kubeconfigs, Karmada's data and PKI
KARMADA_KUBECONFIG="$MC_STATE_DIR/karmada/karmada-apiserver.config"
S3_NODE_PORT="${S3_NODE_PORT:-30900}"                               # the host's MinIO, as members reach it
MEMBERS=(member1 member2)
# Each member cluster's twins (a generated fleet of 3: twin-000 .. twin-002); each twin in one member.
declare -A MEMBER_TWINS=([member1]="twin-000,twin-001" [member2]="twin-002")

kind_name() { printf '%s-%s' "$MC_PREFIX" "$1"; }
kubeconfig() { printf '%s/%s.kubeconfig' "$MC_STATE_DIR" "$1"; }
# kubectl against one kind cluster (host, member1, ...), or against the Karmada API server.
kctl() { local name="$1"; shift; kubectl --kubeconfig "$(kubeconfig "$name")" "$@"; }
kmd() { kubectl --kubeconfig "$KARMADA_KUBECONFIG" "$@"; }
# The address of a cluster's node on the kind Docker network (other clusters reach it there).
node_ip() { docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "$(kind_name "$1")-control-plane"; }
kind_cluster_exists() { kind get clusters 2>/dev/null | grep -Fxq -- "$(kind_name "$1")"; }

twin_count() {
  local member count=0 twins
  for member in "${MEMBERS[@]}"; do
    IFS=, read -r -a twins <<<"${MEMBER_TWINS[$member]}"
    count=$((count + ${#twins[@]}))
  done
  printf '%d' "$count"
}

# Like require_tools, and names karmadactl with its pinned version; fails before doing anything.
require_mc_tools() {
  local tool karmadactl_missing=0 others=()
  for tool in "$@"; do
    if [[ "$tool" != karmadactl ]]; then
      others+=("$tool")
    elif ! command -v karmadactl >/dev/null 2>&1; then
      printf '%s: karmadactl not found on PATH: install karmadactl %s (https://github.com/karmada-io/karmada/releases/tag/%s, asset karmadactl-linux-amd64.tgz)\n' \
        "$SCRIPT_NAME" "$KARMADA_VERSION" "$KARMADA_VERSION" >&2
      karmadactl_missing=1
    fi
  done
  if ((${#others[@]} > 0)); then
    if ((karmadactl_missing)); then
      (require_tools "${others[@]}") || true  # print what else is missing too
      exit 1
    fi
    require_tools "${others[@]}"
  fi
  ((karmadactl_missing == 0)) || exit 1
}

require_karmadactl_version() {
  local out
  out="$(karmadactl version 2>/dev/null || true)"
  [[ "$out" == *"GitVersion:\"$KARMADA_VERSION\""* ]] \
    || die "karmadactl is not the pinned $KARMADA_VERSION (it says: ${out:-nothing}); install karmadactl $KARMADA_VERSION or set KARMADA_VERSION to yours"
}
