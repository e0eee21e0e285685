#!/usr/bin/env bash
# Remove what multi-cluster-setup.sh made: the host and member kind clusters (with Karmada, every
# release and volume) and the state directory (kubeconfigs, Karmada's PKI). Idempotent.
set -euo pipefail
SCRIPT_NAME="multi-cluster-teardown"
# shellcheck source=karmada/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

require_mc_tools kind docker
for name in "${MEMBERS[@]}" host; do
  if kind_cluster_exists "$name"; then
    log "deleting kind cluster '$(kind_name "$name")'"
    kind delete cluster --name "$(kind_name "$name")"
  else
    log "no kind cluster '$(kind_name "$name")'; nothing to do"
  fi
done
rm -rf "$MC_STATE_DIR"
