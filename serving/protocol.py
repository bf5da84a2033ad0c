"""The predictor's wire contract: requests in (v1, v2 REST JSON/binary, gRPC v2), responses out.

Inputs: v1 `{"instances": [{"image": {"b64": "..."}}], "parameters": {...}}`; v2 one BYTES input
holding N encoded images (base64 strings in JSON, raw bytes over gRPC) or UINT8 inputs holding
one encoded image each (the REST binary extension). Parameters `conf`, `iou`, `max_det` (numbers,
or strings since KServe's gRPC protocol has no floating-point parameter). Outputs: see `OUTPUTS`.
Every client mistake raises `RequestRejected` with a message that names it.
"""

from __future__ import annotations

import base64
import binascii
import struct
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
from kserve.errors import InvalidInput
from kserve.protocol.infer_type import (
    InferInput,
    InferOutput,
    InferRequest,
    InferResponse,
    RequestedOutput,
)

from visionops.detections import Detections
from visionops.errors import PayloadTooLarge, VisionOpsError

INPUT_NAME = "image"
# name, datatype, shape (-1: variable), meaning. N images per request, D detections in all.
OUTPUTS: tuple[tuple[str, str, list[int], str], ...] = (
    ("num_detections", "INT32", [-1], "[N] detections per image"),
    ("boxes", "FP32", [-1, 4], "[D, 4] x1, y1, x2, y2 in original-image pixels"),
    ("scores", "FP32", [-1], "[D] confidence"),
    ("class_ids", "INT32", [-1], "[D] class index"),
    ("class_names", "BYTES", [-1], "[D] class name"),
    ("image_index", "INT32", [-1], "[D] which image of the request the detection belongs to"),
    ("image_sizes", "INT32", [-1, 2], "[N, 2] width, height of each decoded image"),
)


class RequestRejected(InvalidInput):
    """A client error: HTTP `status` (400, or 413 for size limits), gRPC INVALID_ARGUMENT."""

    def __init__(self, reason: str, status: int = 400) -> None:
        super().__init__(reason)
        self.status = status

    @classmethod
    def from_error(cls, error: VisionOpsError, prefix: str = "") -> RequestRejected:
        status = 413 if isinstance(error, PayloadTooLarge) else 400
        return cls(f"{prefix}{error}", status)


@dataclass(frozen=True)
class Defaults:
    """Server-side limits and the detection parameters a request may override."""

    max_images: int
    conf: float
    iou: float
    max_det: int


@dataclass
class ParsedRequest:
    """What the model runs: encoded images and detection parameters, plus the original request."""

    protocol: str
    images: list[bytes]
    conf: float
    iou: float
    max_det: int
    request_id: str
    request: InferRequest | None = field(default=None, repr=False)


def _parameter(value: Any) -> Any:
    """A plain value from a JSON parameter or a gRPC `InferParameter`."""
    if hasattr(value, "WhichOneof"):
        kind = value.WhichOneof("parameter_choice")
        return getattr(value, kind) if kind else None
    return value


def _number(params: Mapping[str, Any], name: str, default: float, *, integer: bool) -> float:
    if name not in params:
        return default
    raw = _parameter(params[name])
    if raw is None and hasattr(params[name], "WhichOneof"):
        raise RequestRejected(
            f'parameter "{name}": KServe\'s gRPC protocol carries no floating-point parameters; '
            'send it as a string such as "0.5"'
        )
    value: float | None = None
    if isinstance(raw, str):
        try:
            value = int(raw) if integer else float(raw)
        except ValueError:
            value = None
    elif isinstance(raw, int | float) and not isinstance(raw, bool):
        value = raw
    if value is None or (integer and value != int(value)):
        kind = "an integer" if integer else "a number"
        raise RequestRejected(
            f'parameter "{name}" must be {kind} (over gRPC: a string such as "0.5"), got {raw!r}'
        )
    return int(value) if integer else float(value)


def _detection_parameters(params: Mapping[str, Any] | None, defaults: Defaults) -> dict[str, Any]:
    params = params or {}
    values = {
        "conf": _number(params, "conf", defaults.conf, integer=False),
        "iou": _number(params, "iou", defaults.iou, integer=False),
        "max_det": int(_number(params, "max_det", defaults.max_det, integer=True)),
    }
    for name in ("conf", "iou"):
        if not 0.0 <= values[name] <= 1.0:
            raise RequestRejected(f'parameter "{name}" must be between 0 and 1, got {values[name]}')
    if not 1 <= values["max_det"] <= 10_000:
        raise RequestRejected(f'parameter "max_det" must be 1..10000, got {values["max_det"]}')
    return values


def _check_count(count: int, defaults: Defaults) -> None:
    if count == 0:
        raise RequestRejected("the request holds no image")
    if count > defaults.max_images:
        raise RequestRejected(
            f"{count} images in one request, over the limit of {defaults.max_images}", 413
        )


def b64_image(text: str, where: str) -> bytes:
    """Decode a base64 image (standard alphabet, optional `data:...;base64,` prefix)."""
    if text.startswith("data:") and "," in text:
        text = text.split(",", 1)[1]
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        try:  # line-wrapped base64 (`base64` without -w0) is still base64
            return base64.b64decode("".join(text.split()), validate=True)
        except (binascii.Error, ValueError) as error:
            raise RequestRejected(f"{where}: invalid base64 ({error})") from error


def parse_v1(body: object, defaults: Defaults, request_id: str) -> ParsedRequest:
    """`{"instances": [{"image": {"b64": "..."}}, ...], "parameters": {...}}`."""
    if not isinstance(body, dict):
        raise RequestRejected(
            'a v1 request must be a JSON object {"instances": [{"image": {"b64": "..."}}]}'
        )
    instances = body.get("instances")
    if not isinstance(instances, list):
        raise RequestRejected('"instances" must be a list of {"image": {"b64": "..."}}')
    _check_count(len(instances), defaults)
    images = []
    for index, instance in enumerate(instances):
        image = instance.get("image") if isinstance(instance, dict) else None
        if isinstance(image, dict):
            image = image.get("b64")
        if not isinstance(image, str):
            raise RequestRejected(
                f'instances[{index}]: expected {{"image": {{"b64": "<base64 image>"}}}}'
            )
        images.append(b64_image(image, f"instances[{index}].image.b64"))
    params = body.get("parameters")
    if params is not None and not isinstance(params, dict):
        raise RequestRejected('"parameters" must be a JSON object')
    return ParsedRequest(
        "v1", images, request_id=request_id, **_detection_parameters(params, defaults)
    )


def _input_images(tensor: Any) -> list[bytes]:
    name, datatype, shape = tensor.name, tensor.datatype, list(tensor.shape)
    if datatype not in ("BYTES", "UINT8"):
        raise RequestRejected(
            f'input "{name}": datatype {datatype} is not accepted; send encoded images as BYTES '
            "(base64 strings in JSON, raw bytes over gRPC) or one UINT8 tensor per image"
        )
    if datatype == "UINT8" and not (len(shape) == 1 or (len(shape) == 2 and shape[0] == 1)):
        raise RequestRejected(
            f'input "{name}": a UINT8 input holds one encoded image, shape [bytes] or [1, bytes]; '
            f"got shape {shape}"
        )
    try:
        array = tensor.as_numpy()
    except (ValueError, TypeError, OverflowError, struct.error) as error:
        raise RequestRejected(
            f'input "{name}": {datatype} data does not match shape {shape} ({error})'
        ) from error
    if datatype == "UINT8":
        return [array.tobytes()]
    images = []
    for index, element in enumerate(array.reshape(-1)):
        if isinstance(element, bytes):
            images.append(element)
        elif isinstance(element, str):
            images.append(b64_image(element, f'input "{name}" element {index}'))
        else:
            raise RequestRejected(
                f'input "{name}" element {index}: expected an encoded image, '
                f"got {type(element).__name__}"
            )
    return images


def parse_v2(request: InferRequest, defaults: Defaults, protocol: str) -> ParsedRequest:
    """A v2 request (REST or gRPC): every input holds encoded images, see the module docstring."""
    if not request.inputs:
        raise RequestRejected(f'no inputs: send "{INPUT_NAME}" as BYTES with shape [N]')
    count = sum(int(np.prod(t.shape)) if t.datatype == "BYTES" else 1 for t in request.inputs)
    _check_count(count, defaults)
    images = [image for tensor in request.inputs for image in _input_images(tensor)]
    _check_count(len(images), defaults)
    return ParsedRequest(
        protocol,
        images,
        request_id=request.id or uuid.uuid4().hex,
        request=request,
        **_detection_parameters(request.parameters, defaults),
    )


def binary_request(body: bytes, json_length: int, model_name: str) -> InferRequest:
    """A REST v2 binary-extension request, with binary inputs kept as raw bytes.

    KServe's own decoder turns every binary byte into a Python int (slow for images) and fails on
    BYTES tensors that are not UTF-8 (every JPEG).
    """
    header = orjson.loads(body[:json_length])
    if not isinstance(header, dict) or not isinstance(header.get("inputs"), list):
        raise RequestRejected('the JSON part of a binary request must be an object with "inputs"')
    inputs, raw_inputs, offset = [], [], json_length
    for spec in header["inputs"]:
        parameters = dict(spec.get("parameters") or {})
        tensor = InferInput(spec["name"], list(spec["shape"]), spec["datatype"], None, parameters)
        size = parameters.pop("binary_data_size", None)
        if size is None:
            if "data" not in spec:
                raise RequestRejected(f'input "{tensor.name}": neither data nor binary_data_size')
            tensor.data = spec["data"]
            raw_inputs.append(None)
        else:
            if not isinstance(size, int) or size < 0 or offset + size > len(body):
                raise RequestRejected(
                    f'input "{tensor.name}": binary_data_size {size} does not fit the body '
                    f"({len(body) - offset} bytes left)"
                )
            raw_inputs.append(body[offset : offset + size])
            offset += size
        inputs.append(tensor)
    outputs = [RequestedOutput(o["name"], o.get("parameters")) for o in header.get("outputs") or []]
    return InferRequest(
        model_name,
        inputs,
        request_id=header.get("id"),
        raw_inputs=raw_inputs,
        parameters=header.get("parameters"),
        request_outputs=outputs or None,
    )


def v1_response(
    results: Sequence[Detections],
    sizes: Sequence[tuple[int, int]],
    names: Sequence[str],
    model_name: str,
    version: str,
) -> dict[str, Any]:
    return {
        "model_name": model_name,
        "model_version": version,
        "predictions": [
            {"width": width, "height": height, "detections": detections.to_records(names)}
            for detections, (width, height) in zip(results, sizes, strict=True)
        ],
    }


def v2_response(
    parsed: ParsedRequest,
    results: Sequence[Detections],
    sizes: Sequence[tuple[int, int]],
    names: Sequence[str],
    model_name: str,
    version: str,
) -> InferResponse:
    class_ids = np.concatenate([d.class_ids for d in results]).astype(np.int32)
    label = np.asarray(names, dtype=object)
    values = {
        "num_detections": np.asarray([len(d) for d in results], dtype=np.int32),
        "boxes": np.concatenate([d.boxes for d in results]).astype(np.float32).reshape(-1, 4),
        "scores": np.concatenate([d.scores for d in results]).astype(np.float32),
        "class_ids": class_ids,
        "class_names": label[class_ids] if len(class_ids) else np.zeros(0, dtype=object),
        "image_index": np.repeat(
            np.arange(len(results), dtype=np.int32), [len(d) for d in results]
        ),
        "image_sizes": np.asarray(sizes, dtype=np.int32).reshape(-1, 2),
    }
    outputs = []
    for name, datatype, _, _ in OUTPUTS:
        output = InferOutput(name, list(values[name].shape), datatype, data=values[name])
        if parsed.protocol == "grpc":  # KServe's to_grpc() cannot take numpy data; raw it is
            output.set_data_from_numpy(values[name], binary_data=True)
        outputs.append(output)
    request = parsed.request
    return InferResponse(
        response_id=parsed.request_id,
        model_name=model_name,
        model_version=version,
        infer_outputs=outputs,
        use_binary_outputs=bool(request and request.use_binary_outputs),
        requested_outputs=request.request_outputs if request else None,
    )


def metadata_tensors() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The v2 model metadata `inputs` and `outputs`."""
    inputs = [{"name": INPUT_NAME, "datatype": "BYTES", "shape": [-1]}]
    outputs = [{"name": n, "datatype": t, "shape": s} for n, t, s, _ in OUTPUTS]
    return inputs, outputs
