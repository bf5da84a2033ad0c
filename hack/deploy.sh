#!/usr/bin/env bash
# Deploy VisionOps with one overlay and wait until it is ready. Idempotent: re-running re-applies
# and waits again; existing secrets are kept.
#
#   hack/deploy.sh                 # kustomize/overlays/kind on the kind cluster
#   hack/deploy.sh production      # kustomize/overlays/production on KUBE_CONTEXT (required)
#
# Before applying, every missing secrets/<name>.env of the overlay and of the optional components
# is created from its <name>.env.example with fresh random values (they are never committed: *.env
# is in .gitignore).
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

overlay=${1:-kind}
overlay_dir="${ROOT_DIR}/kustomize/overlays/${overlay}"
[ -f "${overlay_dir}/kustomization.yaml" ] || die "no overlay '${overlay}' (expected ${overlay_dir})"
if [ "${overlay}" = production ] && [ "${KUBE_CONTEXT}" = "kind-${KIND_CLUSTER_NAME}" ]; then
  die "set KUBE_CONTEXT to the production cluster's kubectl context"
fi

step "Secrets for '${overlay}' (kept if present, generated from the examples if not)"
# The optional components' secrets too (kustomize/components/*/secrets), for an overlay that uses one.
for example in "${overlay_dir}"/secrets/*.env.example "${ROOT_DIR}"/kustomize/components/*/secrets/*.env.example; do
  target=${example%.example}
  if [ -f "${target}" ]; then
    info "$(basename "${target}"): present"
  else
    # One fresh value per file replaces every `change-me` in it (a password and a URI embedding
    # it stay in step).
    value=$(random_secret)
    (umask 077 && sed "s/change-me/${value}/g" "${example}" >"${target}")
    info "$(basename "${target}"): generated"
  fi
  if grep -q 'change-me' "${target}"; then
    die "$(basename "${target}") still contains the placeholder 'change-me'"
  fi
done

step "Checking that the platform is installed on '${KUBE_CONTEXT}'"
for crd in inferenceservices.serving.kserve.io servicemonitors.monitoring.coreos.com \
  prometheusrules.monitoring.coreos.com; do
  kc get crd "${crd}" >/dev/null 2>&1 || die "CRD ${crd} missing: run hack/install-platform.sh"
done
kc get namespace kubeflow >/dev/null 2>&1 || die "namespace kubeflow missing: run hack/install-platform.sh"
info "KServe, Prometheus operator and Kubeflow Pipelines found"

step "Re-running the bucket job (a finished Job cannot be updated in place)"
kc -n "${NAMESPACE}" delete job minio-buckets --ignore-not-found --wait=true

step "Applying kustomize/overlays/${overlay}"
kc apply -k "${overlay_dir}"

step "Waiting for MinIO, its buckets and users, and MLflow"
kc -n "${NAMESPACE}" rollout status statefulset/minio --timeout=5m
kc -n "${NAMESPACE}" wait --for=condition=complete job/minio-buckets --timeout=5m
if [ "${overlay}" = production ]; then
  kc -n "${NAMESPACE}" rollout status statefulset/postgres --timeout=5m
fi
kc -n "${NAMESPACE}" rollout status deployment/mlflow --timeout=10m

step "InferenceService visionops-predictor"
model=$(kc -n "${NAMESPACE}" get inferenceservice visionops-predictor \
  -o jsonpath='{.spec.predictor.containers[0].env[?(@.name=="STORAGE_URI")].value}')
info "model: ${model}"
if kc -n "${NAMESPACE}" wait --for=condition=Ready inferenceservice/visionops-predictor --timeout=3m; then
  info "Ready"
else
  info "not Ready yet: it serves once a training run has deployed a champion model to ${model}"
  info "(hack/run-e2e.sh trains, deploys and calls it)"
fi

step "Deployed. MLflow: http://127.0.0.1:30500 on kind (or: kubectl -n ${NAMESPACE} port-forward svc/mlflow 5000)"
