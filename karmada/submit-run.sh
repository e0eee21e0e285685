#!/usr/bin/env bash
# Submit a multi-cluster run to what multi-cluster-setup.sh made: the coordinator Workflow on the
# host cluster (init, then aggregate each round as updates arrive; it stays there) and the run's
# member Workflow in the Karmada API server, which propagates it to every member cluster, where the
# OverridePolicies set that cluster's twins and S3 endpoint (karmada/README.md).
#
# Usage: submit-run.sh RUN_ID [ROUNDS]      RUN_ID a DNS-1123 label (at most 40 characters), ROUNDS 10
# Environment: ROUND_DEADLINE (600 s), WAIT_TIMEOUT (1800 s), plus those of karmada/lib.sh.
set -euo pipefail
SCRIPT_NAME="submit-run"
# shellcheck source=karmada/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

run_id="${1:-}"
rounds="${2:-10}"
[[ "$run_id" =~ ^[a-z0-9]([-a-z0-9]*[a-z0-9])?$ && ${#run_id} -le 40 ]] \
  || die "usage: submit-run.sh RUN_ID [ROUNDS]: RUN_ID must be a DNS-1123 label of at most 40 characters"
[[ "$rounds" =~ ^[1-9][0-9]*$ ]] || die "ROUNDS must be a positive integer, got '$rounds'"
require_mc_tools helm kubectl
values="$MC_STATE_DIR/karmada-values.yaml"
[[ -s "$KARMADA_KUBECONFIG" && -s "$values" ]] || die "no multi-cluster setup in $MC_STATE_DIR: run 'make multi-cluster-setup' first"
cd "$FEDTWIN_ROOT"

log "coordinator of run $run_id on the host ($(twin_count) twins, $rounds rounds)"
kctl host create -f - <<YAML
apiVersion: argoproj.io/v1alpha1
kind: Workflow
metadata:
  generateName: fedtwin-coordinator-
  namespace: $NAMESPACE
  labels:
    fedtwin.io/multicluster-role: coordinator
    fedtwin.io/run-id: $run_id
spec:
  workflowTemplateRef:
    name: fedtwin-coordinator
  arguments:
    parameters:
      - {name: run-id, value: "$run_id"}
      - {name: twins, value: "$(twin_count)"}
      - {name: rounds, value: "$rounds"}
      - {name: round-deadline, value: "${ROUND_DEADLINE:-600}"}
      - {name: wait-timeout, value: "${WAIT_TIMEOUT:-1800}"}
YAML

log "member Workflow of run $run_id in the Karmada API server (propagated to ${MEMBERS[*]})"
helm template fedtwin charts/fedtwin --namespace "$NAMESPACE" --values "$values" \
  --set karmada.runId="$run_id" --show-only templates/karmada/karmada-member-workflow.yaml \
  | kmd apply -f -
log "submitted; watch: kubectl --kubeconfig $(kubeconfig host) -n $NAMESPACE get workflows -w"
log "after the run, delete its Workflows through Karmada: bash karmada/delete-run.sh $run_id (never in a member cluster: Karmada would recreate it)"
