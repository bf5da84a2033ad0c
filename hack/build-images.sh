#!/usr/bin/env bash
# Build the VisionOps images and make them available to the cluster. The build is hack/images.sh
# (what `make images` runs: base, torch index, logs, sizes); this script then publishes them.
# Idempotent (docker's layer cache makes a re-run cheap).
#
#   hack/build-images.sh                 # build, push to the kind registry localhost:5001
#   hack/build-images.sh --kind-load     # build, `kind load` into the cluster (no registry)
#   hack/build-images.sh --release       # build, push to VISIONOPS_RELEASE_REGISTRY (production)
#   hack/build-images.sh --gpu           # also the CUDA variant of the pipeline image (:<tag>-cuda)
#
# Images: <registry>/visionops-pipeline, visionops-predictor, visionops-mlflow, all :<tag> from
# hack/versions.env; the kustomize overlays and the compiled pipelines name the same references.
set -euo pipefail
# The caller's choices for hack/images.sh, read before hack/versions.env sets the defaults.
passed=()
[ -n "${PYTHON_IMAGE+set}" ] && passed+=("PYTHON_IMAGE=${PYTHON_IMAGE}")
[ -n "${TORCH_INDEX_URL+set}" ] && passed+=("TORCH_INDEX_URL=${TORCH_INDEX_URL}")
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

registry=${VISIONOPS_IMAGE_REGISTRY}
mode=push
build_args=()
for arg in "$@"; do
  case "${arg}" in
    --kind-load) mode=kind-load ;;
    --release) registry=${VISIONOPS_RELEASE_REGISTRY} ;;
    --gpu) build_args+=(--gpu) ;;
    -h | --help)
      sed -n '2,14p' "$0"
      exit 0
      ;;
    *) die "unknown option '${arg}' (see --help)" ;;
  esac
done
require docker
[ "${mode}" = kind-load ] && require kind

tag=${VISIONOPS_IMAGE_TAG}
refs=()
for name in pipeline predictor mlflow; do
  refs+=("${registry}/visionops-${name}:${tag}")
done
((${#build_args[@]})) && refs+=("${registry}/visionops-pipeline:${tag}-cuda")

step "Building the images for ${registry} (hack/images.sh)"
env -u PYTHON_IMAGE -u TORCH_INDEX_URL ${passed[@]+"${passed[@]}"} \
  VISIONOPS_IMAGE_REGISTRY="${registry}" VISIONOPS_IMAGE_TAG="${tag}" \
  "${HACK_DIR}/images.sh" ${build_args[@]+"${build_args[@]}"}

# publish REF: make REF available to the cluster, per the chosen mode.
publish() {
  if [ "${mode}" = kind-load ]; then
    kind load docker-image --name "${KIND_CLUSTER_NAME}" "$1"
  else
    docker push "$1"
  fi
}

for ref in "${refs[@]}"; do
  step "Publishing ${ref} (${mode})"
  publish "${ref}"
done
if ((${#build_args[@]})); then
  info "compile the pipelines with VISIONOPS_PIPELINE_IMAGE=${registry}/visionops-pipeline:${tag}-cuda to run the steps on it"
fi

step "Images ready in ${registry}. Next: hack/deploy.sh"
