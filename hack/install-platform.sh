#!/usr/bin/env bash
# Install the platform VisionOps runs on, at the versions pinned in hack/versions.env:
# cert-manager, KServe (Standard, formerly RawDeployment, mode: plain Deployments, no Knative or
# Istio), Kubeflow Pipelines standalone, and kube-prometheus-stack (Prometheus operator,
# Prometheus, Grafana with the dashboard sidecar). Idempotent: re-running upgrades in place.
#
#   hack/install-platform.sh            # the kind cluster (context kind-visionops)
#   KUBE_CONTEXT=my-cluster hack/install-platform.sh
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
require helm git

kc cluster-info >/dev/null || die "cannot reach cluster context '${KUBE_CONTEXT}' (run hack/kind-up.sh first)"

step "cert-manager ${CERT_MANAGER_VERSION} (webhook certificates for KServe)"
kc apply -f "https://github.com/cert-manager/cert-manager/releases/download/${CERT_MANAGER_VERSION}/cert-manager.yaml"
kc -n cert-manager rollout status deployment/cert-manager --timeout=5m
kc -n cert-manager rollout status deployment/cert-manager-cainjector --timeout=5m
kc -n cert-manager rollout status deployment/cert-manager-webhook --timeout=5m

step "KServe ${KSERVE_VERSION}: CRDs"
helm upgrade --install kserve-crd oci://ghcr.io/kserve/charts/kserve-crd \
  --kube-context "${KUBE_CONTEXT}" --namespace kserve --create-namespace \
  --version "${KSERVE_VERSION}" --wait

step "KServe ${KSERVE_VERSION}: controller in Standard (raw Deployment) mode"
helm upgrade --install kserve oci://ghcr.io/kserve/charts/kserve-resources \
  --kube-context "${KUBE_CONTEXT}" --namespace kserve \
  --version "${KSERVE_VERSION}" \
  --set kserve.controller.deploymentMode=Standard \
  --wait --timeout 10m

step "Kubeflow Pipelines ${KFP_VERSION} (standalone): cluster-scoped resources"
kc apply -k "github.com/kubeflow/pipelines/manifests/kustomize/cluster-scoped-resources?ref=${KFP_VERSION}"
kc wait --for condition=established --timeout=120s crd/applications.app.k8s.io

step "Kubeflow Pipelines ${KFP_VERSION}: platform-agnostic deployment (MySQL, MinIO, Argo)"
kc apply -k "github.com/kubeflow/pipelines/manifests/kustomize/env/platform-agnostic?ref=${KFP_VERSION}"
info "waiting for every Deployment in 'kubeflow' (first start pulls images: up to 20 minutes)"
kc -n kubeflow wait --for=condition=Available deployment --all --timeout=20m

step "Grafana admin credentials (Secret monitoring/grafana-admin, generated once)"
kc create namespace monitoring --dry-run=client -o yaml | kc apply -f -
if kc -n monitoring get secret grafana-admin >/dev/null 2>&1; then
  info "already present"
else
  kc -n monitoring create secret generic grafana-admin \
    --from-literal=admin-user=admin --from-literal=admin-password="$(random_secret)"
  info "created"
fi

step "kube-prometheus-stack ${KUBE_PROMETHEUS_STACK_VERSION} (Prometheus operator, Prometheus, Grafana)"
helm repo add prometheus-community https://prometheus-community.github.io/helm-charts --force-update >/dev/null
helm upgrade --install kube-prometheus-stack prometheus-community/kube-prometheus-stack \
  --kube-context "${KUBE_CONTEXT}" --namespace monitoring \
  --version "${KUBE_PROMETHEUS_STACK_VERSION}" \
  --values "${HACK_DIR}/values/kube-prometheus-stack.yaml" \
  --wait --timeout 15m

step "Platform ready. Next: hack/build-images.sh, then hack/deploy.sh"
info "Kubeflow Pipelines UI: kubectl --context ${KUBE_CONTEXT} -n kubeflow port-forward svc/ml-pipeline-ui 8080:80"
info "Grafana: http://127.0.0.1:30300 (user admin; password: kubectl --context ${KUBE_CONTEXT} -n monitoring get secret grafana-admin -o jsonpath='{.data.admin-password}' | base64 -d)"
