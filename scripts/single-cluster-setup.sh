#!/usr/bin/env bash
# One local Kubernetes cluster running fedtwin: kind, the fedtwin image, Argo Workflows (pinned
# upstream chart), fedtwin-platform (MinIO, MLflow, bucket) and fedtwin (WorkflowTemplates, RBAC,
# NetworkPolicies). Idempotent: rerun it to rebuild the image and upgrade the releases.
#
# Environment: CLUSTER_NAME (fedtwin), NAMESPACE (fedtwin), ARGO_NAMESPACE (argo),
# IMAGE_REPOSITORY (fedtwin), IMAGE_TAG (the package version, pyproject.toml), ARGO_CHART_VERSION (pinned in scripts/lib.sh),
# DOCKER_BUILD_ARGS (extra `docker build` arguments, e.g. --build-arg TORCH_SPEC=...).
set -euo pipefail
SCRIPT_NAME="single-cluster-setup"
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

require_tools kind docker helm kubectl
docker info >/dev/null 2>&1 || die "docker is installed but its engine does not answer: start Docker, then rerun"
cd "$FEDTWIN_ROOT"
ls charts/fedtwin/files/workflowtemplates/*.yaml >/dev/null 2>&1 \
  || die "charts/fedtwin/files/workflowtemplates/ is empty: run 'make charts' first"

if cluster_exists; then
  log "kind cluster '$CLUSTER_NAME' exists; reusing it"
else
  log "creating kind cluster '$CLUSTER_NAME'"
  kind create cluster --name "$CLUSTER_NAME" --wait 120s
fi
kubectl config use-context "kind-$CLUSTER_NAME" >/dev/null

image="$IMAGE_REPOSITORY:$IMAGE_TAG"
log "building $image"
# shellcheck disable=SC2086  # DOCKER_BUILD_ARGS is a list of arguments on purpose
docker build ${DOCKER_BUILD_ARGS:-} -t "$image" .
kind load docker-image "$image" --name "$CLUSTER_NAME"

kubectl create namespace "$NAMESPACE" --dry-run=client -o yaml | kubectl apply -f - >/dev/null

log "installing Argo Workflows chart $ARGO_CHART_VERSION into namespace $ARGO_NAMESPACE"
helm repo add argo "$ARGO_HELM_REPO_URL" --force-update >/dev/null
helm upgrade --install argo-workflows argo/argo-workflows --version "$ARGO_CHART_VERSION" \
  --namespace "$ARGO_NAMESPACE" --create-namespace \
  --values scripts/argo-workflows-values.yaml \
  --set "controller.workflowNamespaces={$NAMESPACE}" \
  --wait --timeout 10m

log "installing fedtwin-platform into namespace $NAMESPACE"
helm upgrade --install fedtwin-platform charts/fedtwin-platform --namespace "$NAMESPACE" \
  --wait --wait-for-jobs --timeout 15m

# The chart looks up the API server endpoints (for the NetworkPolicies) itself at install.
log "installing fedtwin into namespace $NAMESPACE"
helm upgrade --install fedtwin charts/fedtwin --namespace "$NAMESPACE" \
  --set image.repository="$IMAGE_REPOSITORY" --set image.tag="$IMAGE_TAG" --set image.pullPolicy=IfNotPresent \
  --set platform.releaseName=fedtwin-platform \
  --wait --timeout 5m

kubectl -n "$ARGO_NAMESPACE" wait --for=condition=Available deployment --all --timeout=300s
kubectl -n "$NAMESPACE" wait --for=condition=Available deployment --all --timeout=300s

log "ready"
helm get notes fedtwin --namespace "$NAMESPACE"
