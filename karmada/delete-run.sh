#!/usr/bin/env bash
# Delete a finished multi-cluster run's Workflows: the member Workflow through the Karmada API
# server (Karmada then removes it from every member cluster; deleting it in a member cluster instead
# would make Karmada create it again and run it again) and the coordinator Workflow on the host.
# The run's data in the store is kept. See karmada/README.md ("Delete a run").
#
# Usage: delete-run.sh RUN_ID      Environment: those of karmada/lib.sh.
set -euo pipefail
SCRIPT_NAME="delete-run"
# shellcheck source=karmada/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

run_id="${1:-}"
[[ "$run_id" =~ ^[a-z0-9]([-a-z0-9]*[a-z0-9])?$ && ${#run_id} -le 40 ]] \
  || die "usage: delete-run.sh RUN_ID: RUN_ID must be a DNS-1123 label of at most 40 characters"
require_mc_tools kubectl
[[ -s "$KARMADA_KUBECONFIG" ]] || die "no multi-cluster setup in $MC_STATE_DIR: run 'make multi-cluster-setup' first"

log "deleting the member Workflow of run $run_id through Karmada (from ${MEMBERS[*]})"
kmd -n "$NAMESPACE" delete workflows -l "fedtwin.io/run-id=$run_id,fedtwin.io/multicluster-role=member" \
  --ignore-not-found --wait=true
log "deleting the coordinator Workflow of run $run_id on the host"
kctl host -n "$NAMESPACE" delete workflows -l "fedtwin.io/run-id=$run_id,fedtwin.io/multicluster-role=coordinator" \
  --ignore-not-found --wait=true
log "run $run_id: Workflows deleted through Karmada and on the host; its data stays in the store (runs/$run_id/)"
