#!/usr/bin/env bash
# Build the VisionOps images and make them available to the cluster. Idempotent (docker's layer
# cache makes a re-run cheap).
#
#   hack/build-images.sh                 # build, push to the kind registry localhost:5001
#   hack/build-images.sh --kind-load     # build, `kind load` into the cluster (no registry)
#   hack/build-images.sh --release       # build, push to VISIONOPS_RELEASE_REGISTRY (production)
#   hack/build-images.sh --gpu           # also the CUDA variant of the pipeline image (:<tag>-cuda)
#
# Images: <registry>/visionops-pipeline, visionops-predictor, visionops-mlflow, all :<tag> from
# hack/versions.env; the kustomize overlays and the compiled pipelines name the same references.
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

registry=${VISIONOPS_IMAGE_REGISTRY}
mode=push
gpu=false
for arg in "$@"; do
  case "${arg}" in
    --kind-load) mode=kind-load ;;
    --release) registry=${VISIONOPS_RELEASE_REGISTRY} ;;
    --gpu) gpu=true ;;
    -h | --help)
      sed -n '2,13p' "$0"
      exit 0
      ;;
    *) die "unknown option '${arg}' (see --help)" ;;
  esac
done
require docker
[ "${mode}" = kind-load ] && require kind

tag=${VISIONOPS_IMAGE_TAG}
images=(
  "visionops-pipeline:images/Dockerfile.pipeline"
  "visionops-predictor:images/Dockerfile.predictor"
  "visionops-mlflow:images/Dockerfile.mlflow"
)

# publish REF: make REF available to the cluster, per the chosen mode.
publish() {
  if [ "${mode}" = kind-load ]; then
    kind load docker-image --name "${KIND_CLUSTER_NAME}" "$1"
  else
    docker push "$1"
  fi
}

for entry in "${images[@]}"; do
  name=${entry%%:*}
  dockerfile=${entry#*:}
  ref="${registry}/${name}:${tag}"
  step "Building ${ref} from ${dockerfile}"
  docker build --file "${ROOT_DIR}/${dockerfile}" --tag "${ref}" "${ROOT_DIR}"
  info "size: $(docker image inspect --format '{{.Size}}' "${ref}" | awk '{printf "%.0f MB", $1 / 1e6}')"
  step "Publishing ${ref} (${mode})"
  publish "${ref}"
done

if [ "${gpu}" = true ]; then
  ref="${registry}/visionops-pipeline:${tag}-cuda"
  step "Building ${ref} (CUDA torch)"
  docker build --file "${ROOT_DIR}/images/Dockerfile.pipeline" --build-arg TORCH_VARIANT=cu130 \
    --tag "${ref}" "${ROOT_DIR}"
  step "Publishing ${ref} (${mode})"
  publish "${ref}"
  info "compile the pipelines with VISIONOPS_PIPELINE_IMAGE=${ref} to run the steps on it"
fi

step "Images ready in ${registry}. Next: hack/deploy.sh"
