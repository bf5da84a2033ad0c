#!/usr/bin/env bash
# Create the VisionOps kind cluster with a local image registry (localhost:5001) and the kind
# overlay's NodePorts mapped to 127.0.0.1. Idempotent: re-running reuses what exists.
#
#   hack/kind-up.sh
#
# Host ports afterwards: predictor HTTP 30080 and gRPC 30081, MLflow 30500, Grafana 30300,
# Prometheus 30090 (all on 127.0.0.1).
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
require docker kind

step "Checking kind (pinned ${KIND_VERSION})"
kind_version=$(kind version | awk '{print $2}')
if [ "${kind_version}" != "${KIND_VERSION}" ]; then
  info "warning: kind ${kind_version} found, tested with ${KIND_VERSION}"
fi

step "Local registry '${REGISTRY_NAME}' on 127.0.0.1:${REGISTRY_PORT} (${REGISTRY_IMAGE})"
if [ "$(docker inspect -f '{{.State.Running}}' "${REGISTRY_NAME}" 2>/dev/null || true)" = "true" ]; then
  info "already running"
elif docker inspect "${REGISTRY_NAME}" >/dev/null 2>&1; then
  info "starting the existing container"
  docker start "${REGISTRY_NAME}" >/dev/null
else
  docker run -d --restart=always --name "${REGISTRY_NAME}" \
    -p "127.0.0.1:${REGISTRY_PORT}:5000" "${REGISTRY_IMAGE}" >/dev/null
  info "started"
fi

step "kind cluster '${KIND_CLUSTER_NAME}' (${KIND_NODE_IMAGE})"
if kind get clusters 2>/dev/null | grep -qx "${KIND_CLUSTER_NAME}"; then
  info "already exists"
else
  kind create cluster --name "${KIND_CLUSTER_NAME}" --image "${KIND_NODE_IMAGE}" --wait 120s --config - <<KIND
kind: Cluster
apiVersion: kind.x-k8s.io/v1alpha4
containerdConfigPatches:
  - |-
    [plugins."io.containerd.grpc.v1.cri".registry]
      config_path = "/etc/containerd/certs.d"
nodes:
  - role: control-plane
    extraPortMappings:
      - {containerPort: 30080, hostPort: 30080, listenAddress: "127.0.0.1"}
      - {containerPort: 30081, hostPort: 30081, listenAddress: "127.0.0.1"}
      - {containerPort: 30500, hostPort: 30500, listenAddress: "127.0.0.1"}
      - {containerPort: 30300, hostPort: 30300, listenAddress: "127.0.0.1"}
      - {containerPort: 30090, hostPort: 30090, listenAddress: "127.0.0.1"}
KIND
fi

step "Pointing every node's containerd at the registry for localhost:${REGISTRY_PORT}"
registry_dir="/etc/containerd/certs.d/localhost:${REGISTRY_PORT}"
for node in $(kind get nodes --name "${KIND_CLUSTER_NAME}"); do
  docker exec "${node}" mkdir -p "${registry_dir}"
  printf '[host."http://%s:5000"]\n' "${REGISTRY_NAME}" |
    docker exec -i "${node}" cp /dev/stdin "${registry_dir}/hosts.toml"
  info "${node}"
done

step "Connecting the registry to the 'kind' network"
if [ "$(docker inspect -f '{{json .NetworkSettings.Networks.kind}}' "${REGISTRY_NAME}")" = "null" ]; then
  docker network connect kind "${REGISTRY_NAME}"
  info "connected"
else
  info "already connected"
fi

step "Advertising the registry to cluster tools (ConfigMap kube-public/local-registry-hosting)"
kc apply -f - <<CONFIGMAP
apiVersion: v1
kind: ConfigMap
metadata:
  name: local-registry-hosting
  namespace: kube-public
data:
  localRegistryHosting.v1: |
    host: "localhost:${REGISTRY_PORT}"
    help: "https://kind.sigs.k8s.io/docs/user/local-registry/"
CONFIGMAP

step "Cluster ready: context ${KUBE_CONTEXT}. Next: hack/install-platform.sh"
