#!/usr/bin/env bash
# Build a Python base image from Debian's own packages, for machines that cannot pull
# python:3.11-slim-bookworm from Docker Hub but reach Debian's mirrors and PyPI. Idempotent: an
# existing image is kept (--force rebuilds it). hack/images.sh runs this when it needs to.
#
#   hack/python-base.sh            # -> ${LOCAL_PYTHON_IMAGE} (hack/versions.env)
#   hack/python-base.sh --force    # rebuild it
#
# The image: Debian ${DEBIAN_SUITE} minbase with python3, python3-venv and ca-certificates, a
# virtualenv at /usr/local (so `python` and `pip` behave as in the official image; Debian's own
# pip is "externally managed"), and the host's extra CA certificates
# (/usr/local/share/ca-certificates/*.crt, where a proxy re-signs TLS) trusted inside, so that pip
# and apt reach their registries from builds on the default bridge network.
# shellcheck disable=SC2016 # the hooks' "$1" (the chroot) is mmdebstrap's to expand
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

force=false
for arg in "$@"; do
  case "${arg}" in
    --force) force=true ;;
    -h | --help)
      sed -n '2,13p' "$0"
      exit 0
      ;;
    *) die "unknown option '${arg}' (see --help)" ;;
  esac
done
require docker mmdebstrap
docker_engine_reachable "building ${LOCAL_PYTHON_IMAGE}"

step "Python base ${LOCAL_PYTHON_IMAGE} (Debian ${DEBIAN_SUITE})"
if [ "${force}" = false ] && docker image inspect "${LOCAL_PYTHON_IMAGE}" >/dev/null 2>&1; then
  info "already built"
  exit 0
fi

work=$(mktemp -d)
trap 'rm -rf "${work}"' EXIT
hooks=()
shopt -s nullglob
certificates=(/usr/local/share/ca-certificates/*.crt)
shopt -u nullglob
if ((${#certificates[@]})); then
  info "trusting ${#certificates[@]} extra CA certificate(s) of this host"
  hooks+=(--customize-hook='mkdir -p "$1/usr/local/share/ca-certificates"')
  for certificate in "${certificates[@]}"; do
    hooks+=(--customize-hook="copy-in ${certificate} /usr/local/share/ca-certificates/")
  done
  hooks+=(--customize-hook='chroot "$1" update-ca-certificates')
fi

log_file="${IMAGES_LOG_DIR}/python-base.log"
mkdir -p "${IMAGES_LOG_DIR}"
step "Debootstrapping with mmdebstrap (about 30 s; log: ${log_file})"
if ! mmdebstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
  --customize-hook='chroot "$1" python3 -m venv /usr/local' \
  "${hooks[@]}" \
  --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin' \
  "${DEBIAN_SUITE}" "${work}/base.tar" \
  "deb ${DEBIAN_MIRROR} ${DEBIAN_SUITE} main" \
  "deb ${DEBIAN_MIRROR} ${DEBIAN_SUITE}-updates main" \
  "deb ${DEBIAN_SECURITY_MIRROR} ${DEBIAN_SUITE}-security main" \
  >"${log_file}" 2>&1; then
  die "building the Python base ${LOCAL_PYTHON_IMAGE} failed; log: ${log_file}"
fi

step "Importing it into Docker"
docker import \
  -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  -c 'ENV LANG=C.UTF-8' \
  -c 'CMD ["python3"]' \
  "${work}/base.tar" "${LOCAL_PYTHON_IMAGE}" >/dev/null
info "$(docker run --rm "${LOCAL_PYTHON_IMAGE}" python --version) in ${LOCAL_PYTHON_IMAGE}"
