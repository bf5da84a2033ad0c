#!/usr/bin/env bash
# Remove what hack/kind-up.sh created: the kind cluster and (unless --keep-registry) the local
# registry container with its images. Idempotent: absent things are skipped.
#
#   hack/teardown.sh [--keep-registry]
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

keep_registry=false
for arg in "$@"; do
  case "${arg}" in
    --keep-registry) keep_registry=true ;;
    *) die "unknown option '${arg}' (usage: hack/teardown.sh [--keep-registry])" ;;
  esac
done
require docker kind

step "Deleting kind cluster '${KIND_CLUSTER_NAME}'"
if kind get clusters 2>/dev/null | grep -qx "${KIND_CLUSTER_NAME}"; then
  kind delete cluster --name "${KIND_CLUSTER_NAME}"
else
  info "not present"
fi

step "Local registry '${REGISTRY_NAME}'"
if [ "${keep_registry}" = true ]; then
  info "kept (--keep-registry): its images stay for the next hack/kind-up.sh"
elif docker inspect "${REGISTRY_NAME}" >/dev/null 2>&1; then
  docker rm --force "${REGISTRY_NAME}" >/dev/null
  info "removed"
else
  info "not present"
fi

step "Done. Generated secrets stay in kustomize/overlays/*/secrets/*.env (delete them to rotate)"
