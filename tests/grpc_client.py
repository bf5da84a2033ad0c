"""A gRPC v2 client (tritonclient.grpc) run as its own process.

`tritonclient.grpc` and `kserve` register the same protobuf symbols and cannot share a process, so
tests and the benchmark run this script. It reads a JSON list of calls on stdin and prints one JSON
result per call:

    {"call": "infer", "images": ["<base64 of the encoded bytes>", ...], "datatype": "BYTES",
     "parameters": {"conf": "0.5"}}                     -> {"ok": true, "outputs": {...}, ...}
    {"call": "infer", "datatype": "FP32", "values": [1.0]}   (a wrong datatype, for error tests)
    {"call": "live" | "ready" | "metadata"}
    errors                                              -> {"ok": false, "code": "...", "message"}

Usage: python tests/grpc_client.py HOST:PORT MODEL < calls.json
"""

from __future__ import annotations

import base64
import json
import sys
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

OUTPUTS = ("num_detections", "boxes", "scores", "class_ids", "class_names", "image_index")


def infer(client: grpcclient.InferenceServerClient, model: str, call: dict[str, Any]) -> dict:
    datatype = call.get("datatype", "BYTES")
    if datatype == "BYTES":
        images = [base64.b64decode(b) for b in call["images"]]
        data = np.array(images, dtype=object)
    elif datatype == "UINT8":
        data = np.frombuffer(base64.b64decode(call["images"][0]), np.uint8)
    else:
        data = np.asarray(call["values"], dtype=np.float32)
    tensor = grpcclient.InferInput("image", list(data.shape), datatype)
    tensor.set_data_from_numpy(data)
    if "shape" in call:  # a shape that disagrees with the data, for error tests
        tensor.set_shape(call["shape"])
    result = client.infer(model, [tensor], parameters=call.get("parameters"))
    outputs = {}
    for name in OUTPUTS:
        array = result.as_numpy(name)
        if name == "class_names":
            outputs[name] = [v.decode() for v in array.reshape(-1)]
        else:
            outputs[name] = array.tolist()
    response = result.get_response()
    return {"ok": True, "outputs": outputs, "model_version": response.model_version}


def run(address: str, model: str, calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    client = grpcclient.InferenceServerClient(address)
    results = []
    for call in calls:
        try:
            if call["call"] == "infer":
                results.append(infer(client, model, call))
            elif call["call"] == "live":
                results.append({"ok": True, "value": client.is_server_live()})
            elif call["call"] == "ready":
                results.append({"ok": True, "value": client.is_model_ready(model)})
            elif call["call"] == "metadata":
                meta = client.get_model_metadata(model, as_json=True)
                results.append({"ok": True, "value": meta})
            else:
                raise ValueError(f"unknown call {call['call']!r}")
        except InferenceServerException as error:
            code = str(error.status()).removeprefix("StatusCode.")
            results.append({"ok": False, "code": code, "message": error.message()})
    return results


if __name__ == "__main__":
    print(json.dumps(run(sys.argv[1], sys.argv[2], json.load(sys.stdin))))
