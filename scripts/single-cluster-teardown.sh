#!/usr/bin/env bash
# Remove what single-cluster-setup.sh made: the kind cluster (and with it every release and volume).
# Idempotent: a missing cluster is not an error.
set -euo pipefail
SCRIPT_NAME="single-cluster-teardown"
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

require_tools kind docker
if cluster_exists; then
  log "deleting kind cluster '$CLUSTER_NAME'"
  kind delete cluster --name "$CLUSTER_NAME"
else
  log "no kind cluster '$CLUSTER_NAME'; nothing to do"
fi
