#!/usr/bin/env bash
# End to end on the kind cluster: compile and upload both pipelines to Kubeflow Pipelines, run
# the training pipeline and wait for it, then call the InferenceService it deployed over HTTP
# (KServe v1 and v2) and gRPC (v2). Re-runnable: each run uploads a new pipeline version.
#
#   hack/run-e2e.sh [key=value ...]     # optional training pipeline parameters, e.g. epochs=2
#
# Needs: hack/kind-up.sh, install-platform.sh, build-images.sh and deploy.sh done, and
# `make install` (the .venv provides visionops, kfp, and tritonclient for the gRPC call).
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
require curl
for tool in visionops kfp python; do
  [ -x "${VENV_BIN}/${tool}" ] || die "${VENV_BIN}/${tool} missing: run 'make install' first"
done

model=${VISIONOPS_MODEL_NAME:-visionops-yolov8n}
kfp_port=${KFP_LOCAL_PORT:-18888}
run_timeout=${E2E_RUN_TIMEOUT:-5400}
endpoint="http://127.0.0.1:${kfp_port}"
http="http://127.0.0.1:30080"
grpc="127.0.0.1:30081"
out_dir="${ROOT_DIR}/build/pipelines"
work=$(mktemp -d)
port_forward=""
cleanup() {
  [ -z "${port_forward}" ] || kill "${port_forward}" 2>/dev/null || true
  rm -rf "${work}"
}
trap cleanup EXIT

# kfp_cli ARGS...: the kfp CLI against the forwarded API, JSON output.
kfp_cli() { "${VENV_BIN}/kfp" --endpoint "${endpoint}" --output json "$@"; }
# json_get KEY...: print each KEY of the JSON object on stdin, one per line.
json_get() {
  "${VENV_BIN}/python" -c 'import json, sys; d = json.load(sys.stdin); print("\n".join(str(d[k]) for k in sys.argv[1:]))' "$@"
}

step "Compiling the pipelines into ${out_dir} (visionops pipeline compile)"
rm -rf "${out_dir}"
"${VENV_BIN}/visionops" pipeline compile --out "${out_dir}"
shopt -s nullglob
packages=("${out_dir}"/*.yaml)
((${#packages[@]})) || die "visionops pipeline compile wrote no YAML into ${out_dir}"

step "Forwarding the Kubeflow Pipelines API to ${endpoint}"
kc -n kubeflow port-forward svc/ml-pipeline "${kfp_port}:8888" >"${work}/port-forward.log" 2>&1 &
port_forward=$!
for _ in $(seq 60); do
  curl -fsS "${endpoint}/apis/v2beta1/healthz" >/dev/null 2>&1 && break
  sleep 1
done
curl -fsS "${endpoint}/apis/v2beta1/healthz" >/dev/null || die "KFP API not reachable ($(cat "${work}/port-forward.log"))"

version="e2e-$(date -u +%Y%m%d-%H%M%S)"
training_pipeline=""
training_version=""
step "Uploading ${#packages[@]} pipeline(s) as version ${version}"
for package in "${packages[@]}"; do
  name=$("${VENV_BIN}/python" -c 'import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))["pipelineInfo"]["name"])' "${package}")
  if kfp_cli pipeline create --pipeline-name "${name}" "${package}" >/dev/null 2>&1; then
    info "${name}: created"
  fi
  ids=$(kfp_cli pipeline create-version --pipeline-name "${name}" --pipeline-version "${version}" "${package}" |
    json_get pipeline_id pipeline_version_id)
  info "${name}: version ${version} uploaded"
  if [[ "${name}" == *training* ]]; then
    training_pipeline=$(sed -n 1p <<<"${ids}")
    training_version=$(sed -n 2p <<<"${ids}")
  fi
done
[ -n "${training_version}" ] || die "no compiled pipeline is named *training*"

step "Running the training pipeline and waiting (at most ${run_timeout}s; follow it in the KFP UI)"
state=$(kfp_cli run create --experiment-name visionops-e2e --run-name "training-${version}" \
  --pipeline-id "${training_pipeline}" --version "${training_version}" --timeout "${run_timeout}" "$@" |
  json_get state)
[ "${state}" = SUCCEEDED ] || die "the training run ended in state ${state}"
info "training run succeeded"

step "Waiting for InferenceService visionops-predictor to serve the deployed model"
kc -n "${NAMESPACE}" wait --for=condition=Ready inferenceservice/visionops-predictor --timeout=15m

step "HTTP ${http}: v2 model readiness, then a KServe v1 prediction"
curl -fsS "${http}/v2/models/${model}/ready" >/dev/null
"${VENV_BIN}/python" - "${work}" <<'PY'
import base64, json, sys
from pathlib import Path
from PIL import Image, ImageDraw

work = Path(sys.argv[1])
image = Image.new("RGB", (640, 480), (128, 128, 128))
ImageDraw.Draw(image).rectangle((200, 150, 420, 330), outline=(20, 20, 20), width=6)
image.save(work / "probe.jpg", quality=90)
body = {"instances": [{"image": {"b64": base64.b64encode((work / "probe.jpg").read_bytes()).decode()}}]}
(work / "v1.json").write_text(json.dumps(body))
PY
curl -fsS -H 'Content-Type: application/json' --data-binary @"${work}/v1.json" \
  "${http}/v1/models/${model}:predict" >"${work}/v1.out"
"${VENV_BIN}/python" -c 'import json, sys; p = json.load(open(sys.argv[1]))["predictions"]; print(f"    v1: {len(p)} image(s) answered")' "${work}/v1.out"

step "gRPC ${grpc}: v2 ModelInfer with the raw JPEG bytes"
"${VENV_BIN}/python" - "${grpc}" "${model}" "${work}/probe.jpg" <<'PY'
import sys
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient

url, model, path = sys.argv[1:]
client = grpcclient.InferenceServerClient(url)
image = grpcclient.InferInput("image", [1], "BYTES")
image.set_data_from_numpy(np.array([Path(path).read_bytes()], dtype=object))
result = client.infer(model, [image])
print(f"    gRPC: {int(result.as_numpy('num_detections')[0])} detection(s)")
PY

step "End to end OK: pipelines uploaded (version ${version}), trained, deployed, served over HTTP and gRPC"
