#!/usr/bin/env bash
# Start or stop a Docker engine on this machine (Debian's docker.io, as root), for CI and for the
# container tests on a machine where none runs yet. Never touches an engine it did not start.
#
#   hack/docker-engine.sh start    # dockerd in the background unless an engine answers already
#   hack/docker-engine.sh stop     # stop the dockerd that `start` started (and nothing else)
#   hack/docker-engine.sh status   # exit 0 if an engine answers
#
# State (the pid of the dockerd it started) and dockerd's log: DOCKERD_STATE_DIR (default
# /run/visionops-dockerd). Legacy builder only: leave DOCKER_BUILDKIT unset.
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

state_dir=${DOCKERD_STATE_DIR:-/run/visionops-dockerd}
pid_file="${state_dir}/dockerd.pid"
log_file="${state_dir}/dockerd.log"

answers() { docker version --format '{{.Server.Version}}' >/dev/null 2>&1; }

case "${1:-}" in
  start)
    require docker
    step "Docker engine"
    if answers; then
      info "already answering (engine $(docker version --format '{{.Server.Version}}')): left as it is"
      exit 0
    fi
    [ "$(id -u)" = 0 ] || die "no Docker engine answers, and only root can start one (sudo $0 start)"
    require dockerd
    mkdir -p "${state_dir}"
    step "Starting dockerd (log: ${log_file})"
    dockerd >"${log_file}" 2>&1 &
    echo "$!" >"${pid_file}"
    for _ in $(seq 60); do
      answers && break
      kill -0 "$(cat "${pid_file}")" 2>/dev/null || die "dockerd exited at start; log: ${log_file}"
      sleep 1
    done
    answers || die "dockerd did not answer within 60 s; log: ${log_file}"
    info "engine $(docker version --format '{{.Server.Version}}') answering (pid $(cat "${pid_file}"))"
    ;;
  stop)
    step "Docker engine"
    if [ ! -f "${pid_file}" ]; then
      info "not started by this script: left as it is"
      exit 0
    fi
    pid=$(cat "${pid_file}")
    step "Stopping the dockerd this script started (pid ${pid})"
    if kill -TERM "${pid}" 2>/dev/null; then
      for _ in $(seq 30); do
        kill -0 "${pid}" 2>/dev/null || break
        sleep 1
      done
      if kill -0 "${pid}" 2>/dev/null; then
        info "still running after 30 s: SIGKILL"
        kill -KILL "${pid}" 2>/dev/null || true
      fi
    fi
    rm -f "${pid_file}"
    info "stopped"
    ;;
  status)
    answers
    ;;
  -h | --help)
    sed -n '2,10p' "$0"
    ;;
  *) die "usage: $0 start|stop|status (see --help)" ;;
esac
