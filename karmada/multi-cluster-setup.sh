#!/usr/bin/env bash
# A local multi-cluster fedtwin on kind (karmada/README.md): a host cluster with Karmada (pinned),
# Argo Workflows, the S3 store and MLflow (fedtwin-platform) and the coordinator's templates, and two
# member clusters with Argo Workflows and the fedtwin image, joined to Karmada, which sends them
# the member template, the twin identity and each run's member Workflow (twins set per member).
#
# Usage: multi-cluster-setup.sh [PHASE...]   phases, in order (default: all of them):
#   clusters   kind clusters <prefix>-host, <prefix>-member1, <prefix>-member2; the image in each
#   karmada    Karmada control plane on the host (karmadactl init)
#   join       members joined to Karmada (push mode), Ready
#   platform   Argo Workflows everywhere; on the host fedtwin-platform, the members' S3 NodePort, fedtwin
#   policies   in the Karmada API server: Argo's CRDs, the twin Secret, fedtwin with the policies
#   print      how to submit a multi-cluster run
# Idempotent: rerun any phase; existing clusters, Karmada and joins are kept, releases upgraded.
#
# Environment: MC_PREFIX (fedtwin), MC_STATE_DIR (.tools/multicluster), KARMADA_VERSION (pinned in
# karmada/lib.sh), NAMESPACE (fedtwin), ARGO_NAMESPACE (argo), IMAGE_REPOSITORY (fedtwin),
# IMAGE_TAG (the package version), S3_NODE_PORT (30900), DOCKER_BUILD_ARGS (extra `docker build` arguments).
set -euo pipefail
SCRIPT_NAME="multi-cluster-setup"
# shellcheck source=karmada/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

PHASES=(clusters karmada join platform policies print)
(($# > 0)) || set -- "${PHASES[@]}"
for phase in "$@"; do
  [[ " ${PHASES[*]} " == *" $phase "* ]] || die "unknown phase '$phase'; phases: ${PHASES[*]}"
done

require_mc_tools kind docker helm kubectl karmadactl
docker info >/dev/null 2>&1 || die "docker is installed but its engine does not answer: start Docker, then rerun"
require_karmadactl_version
cd "$FEDTWIN_ROOT"
[[ -f charts/fedtwin/files/workflowtemplates/fedtwin-member.yaml ]] \
  || die "charts/fedtwin/files/workflowtemplates/ lacks fedtwin-member.yaml: run 'make workflows charts' first"
mkdir -p "$MC_STATE_DIR"

phase_clusters() {
  local name image="$IMAGE_REPOSITORY:$IMAGE_TAG"
  for name in host "${MEMBERS[@]}"; do
    if kind_cluster_exists "$name"; then
      log "kind cluster '$(kind_name "$name")' exists; reusing it"
    else
      log "creating kind cluster '$(kind_name "$name")'"
      kind create cluster --name "$(kind_name "$name")" --wait 120s
    fi
    kind get kubeconfig --name "$(kind_name "$name")" >"$(kubeconfig "$name")"
  done
  log "building $image"
  # shellcheck disable=SC2086  # DOCKER_BUILD_ARGS is a list of arguments on purpose
  docker build ${DOCKER_BUILD_ARGS:-} -t "$image" .
  for name in host "${MEMBERS[@]}"; do
    kind load docker-image "$image" --name "$(kind_name "$name")"
  done
}

phase_karmada() {
  if [[ -s "$KARMADA_KUBECONFIG" ]] && kctl host -n karmada-system get deployment karmada-controller-manager >/dev/null 2>&1; then
    log "Karmada runs on the host; keeping it"
    return
  fi
  log "installing Karmada $KARMADA_VERSION on the host (karmadactl init)"
  karmadactl init --kubeconfig "$(kubeconfig host)" --context "kind-$(kind_name host)" \
    --karmada-data "$MC_STATE_DIR/karmada" --karmada-pki "$MC_STATE_DIR/karmada/pki" \
    --crds "$KARMADA_CRDS_URL" --wait-component-ready-timeout 300
}

phase_join() {
  local member internal
  for member in "${MEMBERS[@]}"; do
    if kmd get cluster "$member" >/dev/null 2>&1; then
      log "$member is joined to Karmada"
    else
      # Karmada's controllers run in host pods: they reach the member's API server on the kind network.
      internal="$MC_STATE_DIR/$member.internal.kubeconfig"
      kind get kubeconfig --name "$(kind_name "$member")" >"$internal"
      kubectl --kubeconfig "$internal" config set-cluster "kind-$(kind_name "$member")" \
        --server "https://$(node_ip "$member"):6443" >/dev/null
      log "joining $member to Karmada (push mode)"
      karmadactl join "$member" --kubeconfig "$KARMADA_KUBECONFIG" \
        --cluster-kubeconfig "$internal" --cluster-context "kind-$(kind_name "$member")"
    fi
    kmd wait --for=condition=Ready "cluster/$member" --timeout=300s
  done
}

# The API server endpoints of the given clusters, comma-separated CIDRs: NetworkPolicies see the
# traffic after Service translation, so the Argo executor's egress must allow these (never the
# `kubernetes` Service IP). The chart looks them up itself where it is installed; the release in the
# Karmada API server cannot (its own endpoints are Karmada's), so its policies get every member's.
api_cidrs() {
  local name ip cidrs=""
  for name in "$@"; do
    for ip in $(kctl "$name" get endpointslice kubernetes -n default -o jsonpath='{.endpoints[*].addresses[*]}'); do
      [[ ",$cidrs," == *",$ip/32,"* ]] || cidrs="${cidrs:+$cidrs,}$ip/32"
    done
  done
  printf '%s' "$cidrs"
}

api_ports() {  # the API server endpoint ports of the given clusters (kind: 6443), comma-separated
  local name port ports=""
  for name in "$@"; do
    for port in $(kctl "$name" get endpointslice kubernetes -n default -o jsonpath='{.ports[*].port}'); do
      [[ ",$ports," == *",$port,"* ]] || ports="${ports:+$ports,}$port"
    done
  done
  printf '%s' "${ports:-6443}"
}

phase_platform() {
  local name
  helm repo add argo "$ARGO_HELM_REPO_URL" --force-update >/dev/null
  for name in host "${MEMBERS[@]}"; do
    kctl "$name" create namespace "$NAMESPACE" --dry-run=client -o yaml | kctl "$name" apply -f - >/dev/null
    log "installing Argo Workflows chart $ARGO_CHART_VERSION into $(kind_name "$name")"
    helm --kubeconfig "$(kubeconfig "$name")" upgrade --install argo-workflows argo/argo-workflows \
      --version "$ARGO_CHART_VERSION" --namespace "$ARGO_NAMESPACE" --create-namespace \
      --values scripts/argo-workflows-values.yaml --set "controller.workflowNamespaces={$NAMESPACE}" \
      --wait --timeout 10m
  done
  log "installing fedtwin-platform (MinIO, MLflow) into the host"
  helm --kubeconfig "$(kubeconfig host)" upgrade --install fedtwin-platform charts/fedtwin-platform \
    --namespace "$NAMESPACE" --wait --wait-for-jobs --timeout 15m
  kctl host apply -f karmada/manifests/host-s3-nodeport.yaml
  log "installing fedtwin (the coordinator's templates) into the host"
  helm --kubeconfig "$(kubeconfig host)" upgrade --install fedtwin charts/fedtwin --namespace "$NAMESPACE" \
    --set image.repository="$IMAGE_REPOSITORY" --set image.tag="$IMAGE_TAG" --set image.pullPolicy=IfNotPresent \
    --set platform.releaseName=fedtwin-platform --wait --timeout 5m
}

write_karmada_values() {  # the fedtwin release in the Karmada API server (shape: karmada/example-values.yaml)
  local host_ip member cidrs ports
  host_ip="$(node_ip host)"
  cidrs="$(api_cidrs "${MEMBERS[@]}")"
  ports="$(api_ports "${MEMBERS[@]}")"
  {
    echo "image: {repository: $IMAGE_REPOSITORY, tag: $IMAGE_TAG, pullPolicy: IfNotPresent}"
    echo "s3: {platformMinio: false, endpoint: \"http://$host_ip:$S3_NODE_PORT\"}"
    echo "tracking: {enabled: false}"
    echo "artifactRepository: {archiveLogs: true}  # member twin pods archive logs with the logs identity"
    echo "networkPolicy:"
    echo "  s3: {port: $S3_NODE_PORT, cidrs: [\"$host_ip/32\"]}"
    echo "  kubernetesApi: {cidrs: [${cidrs//,/, }], ports: [${ports//,/, }]}"
    echo "karmada:"
    echo "  enabled: true"
    echo "  clusters: [$(IFS=,; echo "${MEMBERS[*]}")]"
    echo "  members:"
    for member in "${MEMBERS[@]}"; do
      echo "    $member: {twins: [${MEMBER_TWINS[$member]}]}"
    done
  } >"$MC_STATE_DIR/karmada-values.yaml"
}

phase_policies() {
  local crds="$MC_STATE_DIR/charts/argo-workflows/files/crds/minimal" secret key member
  local -a literals=()
  # The Karmada API server stores Workflows and WorkflowTemplates (it runs none): Argo's CRDs.
  if [[ ! -d "$crds" ]]; then
    helm pull argo/argo-workflows --version "$ARGO_CHART_VERSION" --untar --untardir "$MC_STATE_DIR/charts"
  fi
  kmd apply --server-side -f "$crds/argoproj.io_workflows.yaml" -f "$crds/argoproj.io_workflowtemplates.yaml"
  kmd create namespace "$NAMESPACE" --dry-run=client -o yaml | kmd apply -f - >/dev/null
  # Only the twin identity (reads global models, writes updates) and the logs identity (writes and
  # reads logs/ only, for the Argo wait container of member pods) go to member clusters.
  for secret in fedtwin-platform-s3-twin fedtwin-platform-s3-logs; do
    literals=()
    for key in accessKey secretKey; do
      literals+=("--from-literal=$key=$(kctl host -n "$NAMESPACE" get secret "$secret" -o "jsonpath={.data.$key}" | base64 -d)")
    done
    kmd -n "$NAMESPACE" create secret generic "$secret" "${literals[@]}" --dry-run=client -o yaml | kmd apply -f - >/dev/null
  done
  write_karmada_values
  log "installing fedtwin with its Karmada policies into the Karmada API server"
  helm --kubeconfig "$KARMADA_KUBECONFIG" upgrade --install fedtwin charts/fedtwin --namespace "$NAMESPACE" \
    --values "$MC_STATE_DIR/karmada-values.yaml"
  for member in "${MEMBERS[@]}"; do
    log "waiting for Karmada to propagate the member template to $member"
    for _ in $(seq 90); do
      kctl "$member" -n "$NAMESPACE" get workflowtemplate fedtwin-member >/dev/null 2>&1 && continue 2
      sleep 2
    done
    die "WorkflowTemplate fedtwin-member did not reach $member in 180 s: see 'kubectl --kubeconfig $KARMADA_KUBECONFIG -n $NAMESPACE get resourcebindings'"
  done
}

phase_print() {
  local member
  log "ready: host $(kind_name host) (Karmada $KARMADA_VERSION, coordinator), members ${MEMBERS[*]}"
  cat <<EOF

Submit a multi-cluster run ($(twin_count) twins; $(for member in "${MEMBERS[@]}"; do printf '%s trains %s; ' "$member" "${MEMBER_TWINS[$member]}"; done)):

  make multi-cluster-run RUN_ID=demo ROUNDS=10        # = bash karmada/submit-run.sh demo 10

It creates the coordinator Workflow on the host (init, then one aggregation per round) and the
run's member Workflow in the Karmada API server, which sends it to every member with its twins.
Watch the rounds:

  kubectl --kubeconfig $(kubeconfig host) -n $NAMESPACE get workflows -w
  kubectl --kubeconfig $(kubeconfig member1) -n $NAMESPACE get workflows,pods -w
  kubectl --kubeconfig $KARMADA_KUBECONFIG get clusters
  kubectl --kubeconfig $(kubeconfig host) -n $ARGO_NAMESPACE port-forward svc/argo-workflows-server 2746:2746

Remove everything: make multi-cluster-teardown
EOF
}

for phase in "$@"; do
  "phase_$phase"
done
