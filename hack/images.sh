#!/usr/bin/env bash
# Build the VisionOps images on this machine (what `make images` runs; hack/build-images.sh runs
# it before pushing). Idempotent: Docker's layer cache makes a re-run cheap, and a rebuilt image's
# previous build is removed so re-runs do not pile up gigabytes.
#
#   hack/images.sh                         # all three images
#   hack/images.sh predictor mlflow        # some of them (pipeline, predictor, mlflow)
#   hack/images.sh --gpu                   # also the CUDA pipeline image (:<tag>-cuda)
#   hack/images.sh --no-cache predictor    # rebuild every layer (measuring, or a stale layer)
#
# Settings (environment variables, or `make images VAR=value`):
#   PYTHON_IMAGE      the base; default python:3.11-slim-bookworm, or, where that cannot be
#                     pulled, a base built from Debian's packages (hack/python-base.sh)
#   TORCH_INDEX_URL   PyPI-style index for torch; default PyTorch's CPU index when it answers;
#                     empty: PyPI only (its CUDA build, a far larger image)
#   HOST_PIP_CONFIG   1 (default): the builds use this machine's pip indexes (index-url,
#                     extra-index-url, find-links; local ones served read-only on 127.0.0.1 for
#                     the build, hack/pip_mirror.py); 0: PyPI only
#   PIP_MIRROR_PORT   the loopback port for them (default from hack/versions.env)
#   VISIONOPS_IMAGE_REGISTRY, VISIONOPS_IMAGE_TAG   default from hack/versions.env
#   IMAGES_LOG_DIR    build logs, default .visionops/images/
set -euo pipefail
# What the caller asked for, read before hack/versions.env sets the defaults.
requested_base=${PYTHON_IMAGE-}
requested_torch_set=${TORCH_INDEX_URL+set}
requested_torch=${TORCH_INDEX_URL-}
requested_registry=${VISIONOPS_IMAGE_REGISTRY-}
requested_tag=${VISIONOPS_IMAGE_TAG-}
requested_port=${PIP_MIRROR_PORT-}
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

registry=${requested_registry:-${VISIONOPS_IMAGE_REGISTRY}}
tag=${requested_tag:-${VISIONOPS_IMAGE_TAG}}
mirror_port=${requested_port:-${PIP_MIRROR_PORT}}
gpu=false
no_cache=()
wanted=()
for arg in "$@"; do
  case "${arg}" in
    pipeline | predictor | mlflow) wanted+=("${arg}") ;;
    --gpu) gpu=true ;;
    --no-cache) no_cache=(--no-cache) ;;
    -h | --help)
      sed -n '2,22p' "$0"
      exit 0
      ;;
    *) die "unknown argument '${arg}' (see --help)" ;;
  esac
done
((${#wanted[@]})) || wanted=(pipeline predictor mlflow)
require docker
names=$(printf 'visionops-%s, ' "${wanted[@]}")
docker_engine_reachable "building ${names%, }"
mkdir -p "${IMAGES_LOG_DIR}"

step "Python base"
if [ -n "${requested_base}" ]; then
  base=${requested_base}
  info "${base} (PYTHON_IMAGE)"
elif docker image inspect "${PYTHON_IMAGE}" >/dev/null 2>&1; then
  base=${PYTHON_IMAGE}
  info "${base} (present)"
elif docker pull --quiet "${PYTHON_IMAGE}" >"${IMAGES_LOG_DIR}/pull.log" 2>&1; then
  base=${PYTHON_IMAGE}
  info "${base} (pulled)"
else
  info "cannot pull ${PYTHON_IMAGE}: $(tail -n 1 "${IMAGES_LOG_DIR}/pull.log")"
  info "using ${LOCAL_PYTHON_IMAGE}, built from Debian's packages"
  "${HACK_DIR}/python-base.sh"
  base=${LOCAL_PYTHON_IMAGE}
fi

step "torch index"
if [ -n "${requested_torch_set}" ]; then
  torch_index=${requested_torch}
  info "${torch_index:-PyPI only} (TORCH_INDEX_URL)"
elif curl --silent --fail --max-time 10 --output /dev/null "${TORCH_INDEX_URL}/torch/"; then
  torch_index=${TORCH_INDEX_URL}
  info "${torch_index}"
else
  torch_index=""
  info "${TORCH_INDEX_URL} does not answer: torch from PyPI only (its CUDA build, a larger image)"
fi

step "pip indexes"
# This machine's pip configuration, local locations served over loopback while the builds run:
# the builds use the host's network (`--network host`) to reach them, and the registries as the
# host does.
pip_args=()
mirror_pid=""
stop_mirror() {
  if [ -n "${mirror_pid}" ] && kill "${mirror_pid}" 2>/dev/null; then
    wait "${mirror_pid}" 2>/dev/null || true
  fi
}
trap stop_mirror EXIT
if [ "${HOST_PIP_CONFIG:-1}" = 0 ]; then
  info "PyPI only (HOST_PIP_CONFIG=0)"
elif ! command -v python3 >/dev/null 2>&1; then
  info "PyPI only (no python3 here to read pip's configuration)"
else
  pip_python=python3
  [ -x "${VENV_BIN}/python" ] && pip_python="${VENV_BIN}/python"
  args_file="${IMAGES_LOG_DIR}/pip-args"
  rm -f "${args_file}"
  python3 "${HACK_DIR}/pip_mirror.py" --args-file "${args_file}" --port "${mirror_port}" \
    --pip "${pip_python}" --parent "$$" 2>"${IMAGES_LOG_DIR}/pip-mirror.log" &
  mirror_pid=$!
  for _ in $(seq 600); do
    [ -e "${args_file}" ] && break
    kill -0 "${mirror_pid}" 2>/dev/null || break
    sleep 0.1
  done
  [ -e "${args_file}" ] ||
    die "reading pip's configuration failed; log: ${IMAGES_LOG_DIR}/pip-mirror.log (HOST_PIP_CONFIG=0 skips it)"
  while IFS= read -r line; do
    case "${line}" in
      '# '*) info "${line#\# }" ;;
      ?*) pip_args+=(--build-arg "${line}") ;;
    esac
  done <"${args_file}"
fi

# build DOCKERFILE REF [BUILD_ARG...]: build one image, its output in a log, its steps shown.
# A named earlier stage (`FROM ... AS deps`) is tagged REF-deps: the cache of its layers stays
# findable, and its previous build is removed like the image's.
build() {
  local dockerfile=$1 ref=$2
  shift 2
  local log_file="${IMAGES_LOG_DIR}/${ref##*/}.log" started seconds status size cached steps
  log_file=${log_file//:/-}
  step "Building ${ref} (${dockerfile}; log: ${log_file})"
  started=${SECONDS}
  : >"${log_file}"
  local stage targets=()
  while read -r stage; do
    targets+=("${stage}:${ref}-${stage}")
  done < <(sed -n -E 's/^FROM .* AS ([a-z]+)$/\1/p' "${ROOT_DIR}/${dockerfile}")
  targets+=(":${ref}")
  local target tagged previous current first=1
  # --no-cache rebuilds the first target only; the later ones reuse its fresh layers.
  local nocache=(${no_cache[@]+"${no_cache[@]}"})
  for target in "${targets[@]}"; do
    stage=${target%%:*}
    tagged=${target#*:}
    previous=$(docker image inspect --format '{{.Id}}' "${tagged}" 2>/dev/null || true)
    ((first)) || nocache=()
    first=0
    set +e
    # --force-rm: a failed step's container is removed too, not left behind.
    docker build --force-rm ${nocache[@]+"${nocache[@]}"} --network host \
      --file "${ROOT_DIR}/${dockerfile}" --tag "${tagged}" \
      ${stage:+--target "${stage}"} --build-arg "PYTHON_IMAGE=${base}" \
      ${pip_args[@]+"${pip_args[@]}"} "$@" "${ROOT_DIR}" 2>&1 |
      tee -a "${log_file}" | grep --line-buffered -E '^Step [0-9]+/[0-9]+ : ' |
      sed -u -E 's/^(.{0,106}).*/    \1/'
    status=${PIPESTATUS[0]}
    set -e
    [ "${status}" = 0 ] || die "building ${ref} failed (exit ${status}); log: ${log_file}"
    current=$(docker image inspect --format '{{.Id}}' "${tagged}")
    if [ -n "${previous}" ] && [ "${previous}" != "${current}" ] &&
      docker image rm "${previous}" >/dev/null 2>&1; then
      info "removed the previous build of ${tagged##*/} (${previous:7:12})"
    fi
  done
  seconds=$((SECONDS - started))
  size=$(docker image inspect --format '{{.Size}}' "${ref}" | awk '{printf "%.0f MB", $1 / 1e6}')
  steps=$(grep -cE '^Step [0-9]+/' "${log_file}" || true)
  cached=$(grep -c 'Using cache' "${log_file}" || true)
  info "size: ${size}, ${seconds} s, ${cached} of ${steps} steps from the cache"
  summary+=("$(printf '%-48s %9s %6s s' "${ref}" "${size}" "${seconds}")")
}

summary=()
for name in "${wanted[@]}"; do
  ref="${registry}/visionops-${name}:${tag}"
  case "${name}" in
    pipeline) build images/Dockerfile.pipeline "${ref}" --build-arg "TORCH_INDEX_URL=${torch_index}" ;;
    *) build "images/Dockerfile.${name}" "${ref}" ;;
  esac
done
if [ "${gpu}" = true ]; then
  build images/Dockerfile.pipeline "${registry}/visionops-pipeline:${tag}-cuda" \
    --build-arg "TORCH_INDEX_URL=${TORCH_CUDA_INDEX_URL}"
fi

step "Images (base ${base})"
printf '    %s\n' "${summary[@]}"
