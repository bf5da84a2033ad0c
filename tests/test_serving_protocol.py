"""The predictor's request contract, parsed in process: what README's "Contract" table promises.

`tests/test_serving_server.py` holds the same rules over HTTP and gRPC against a real server;
this file runs in about a second, so `make mutation` can hold the request validation to every
rule (each mutant of `serving/protocol.py` runs against it). Requests are built as KServe's REST
and gRPC layers hand them to the model: an `InferRequest` with `InferInput`s, gRPC parameters as
`InferParameter` messages.
"""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest
from kserve.protocol.grpc.grpc_predict_v2_pb2 import InferParameter
from kserve.protocol.infer_type import InferInput, InferRequest

from serving.protocol import (
    Defaults,
    RequestRejected,
    binary_request,
    metadata_tensors,
    parse_v1,
    parse_v2,
)
from visionops.errors import InvalidImage, PayloadTooLarge

DEFAULTS = Defaults(max_images=4, conf=0.25, iou=0.7, max_det=300)
JPEG = b"\xff\xd8\xff\xe0 a jpeg, as far as parsing goes"
PNG = b"\x89PNG\r\n\x1a\n a png"
INSTANCE = 'instances[0]: expected {"image": {"b64": "<base64 image>"}}'
AS_STRING = '(over gRPC: a string such as "0.5"), got'


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def v1(*images: bytes, **parameters: object) -> dict:
    body: dict = {"instances": [{"image": {"b64": b64(i)}} for i in images]}
    return {**body, "parameters": parameters} if parameters else body


def v2(*images: bytes, parameters: dict | None = None, grpc: bool = False) -> InferRequest:
    data = list(images) if grpc else [b64(i) for i in images]
    tensor = InferInput("image", [len(images)], "BYTES", data)
    return InferRequest("m", [tensor], request_id="r-1", from_grpc=grpc, parameters=parameters)


def rejected(call, *args) -> RequestRejected:  # type: ignore[no-untyped-def]
    with pytest.raises(RequestRejected) as caught:
        call(*args)
    return caught.value


# -- v1 -------------------------------------------------------------------------------------------


def test_v1_images_and_default_parameters() -> None:
    parsed = parse_v1(v1(JPEG, PNG), DEFAULTS, "req-7")
    assert (parsed.protocol, parsed.images, parsed.request_id) == ("v1", [JPEG, PNG], "req-7")
    assert (parsed.conf, parsed.iou, parsed.max_det) == (0.25, 0.7, 300)
    assert parsed.request is None


def test_v1_parameters_override_the_defaults() -> None:
    parsed = parse_v1(v1(JPEG, conf=0.5, iou=0.3, max_det=7), DEFAULTS, "r")
    assert (parsed.conf, parsed.iou, parsed.max_det) == (0.5, 0.3, 7)
    assert isinstance(parsed.conf, float) and isinstance(parsed.max_det, int)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ([1, 2], 'a v1 request must be a JSON object {"instances": [{"image": {"b64": "..."}}]}'),
        ({"inputs": []}, '"instances" must be a list of {"image": {"b64": "..."}}'),
        ({"instances": "x"}, '"instances" must be a list of {"image": {"b64": "..."}}'),
        ({"instances": [{"img": "x"}]}, INSTANCE),
        ({"instances": ["x"]}, INSTANCE),
        ({"instances": [{"image": {"b64": 5}}]}, INSTANCE),
        ({"instances": [{"image": {"b64": "%%%"}}]}, "instances[0].image.b64: invalid base64"),
        ({**v1(JPEG), "parameters": [1]}, '"parameters" must be a JSON object'),
        ({"instances": []}, "the request holds no image"),
    ],
)  # fmt: skip
def test_v1_malformed_requests_are_400_naming_the_problem(body: object, message: str) -> None:
    error = rejected(parse_v1, body, DEFAULTS, "r")
    assert error.status == 400 and str(error).startswith(message), str(error)


def test_v1_image_as_a_plain_string_and_a_data_url() -> None:
    body = {
        "instances": [{"image": b64(JPEG)}, {"image": {"b64": "data:image/png;base64," + b64(PNG)}}]
    }
    assert parse_v1(body, DEFAULTS, "r").images == [JPEG, PNG]


@pytest.mark.parametrize("text", [b64(JPEG) + "," + b64(PNG), "data:image/png;base64,QUJD,QUJD"])
def test_a_comma_outside_a_data_url_prefix_is_not_base64(text: str) -> None:
    error = rejected(parse_v1, {"instances": [{"image": {"b64": text}}]}, DEFAULTS, "r")
    assert str(error).startswith("instances[0].image.b64: invalid base64")


def test_line_wrapped_base64_is_still_base64() -> None:
    text = b64(JPEG * 4)
    wrapped = "\n".join(text[i : i + 20] for i in range(0, len(text), 20))
    assert parse_v1({"instances": [{"image": {"b64": wrapped}}]}, DEFAULTS, "r").images == [
        JPEG * 4
    ]


# -- counts and parameters ------------------------------------------------------------------------


def test_image_count_limit() -> None:
    assert len(parse_v1(v1(*[JPEG] * 4), DEFAULTS, "r").images) == 4  # at the limit: accepted
    for parse, request in ((parse_v1, v1(*[JPEG] * 5)), (parse_v2, v2(*[JPEG] * 5))):
        args = (request, DEFAULTS, "r") if parse is parse_v1 else (request, DEFAULTS, "v2")
        error = rejected(parse, *args)
        assert error.status == 413
        assert str(error) == "5 images in one request, over the limit of 4"


@pytest.mark.parametrize(
    ("parameters", "expected"),
    [
        ({"conf": 0, "iou": 0, "max_det": 1}, (0.0, 0.0, 1)),
        ({"conf": 1, "iou": 1, "max_det": 10_000}, (1.0, 1.0, 10_000)),
        ({"conf": "0.5", "iou": "0.25", "max_det": "12"}, (0.5, 0.25, 12)),
        ({"max_det": 5.0}, (0.25, 0.7, 5)),
    ],
)
def test_parameters_at_the_ends_of_their_ranges_are_accepted(parameters, expected) -> None:  # type: ignore[no-untyped-def]
    parsed = parse_v1(v1(JPEG, **parameters), DEFAULTS, "r")
    assert (parsed.conf, parsed.iou, parsed.max_det) == expected


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        ({"conf": 1.01}, 'parameter "conf" must be between 0 and 1, got 1.01'),
        ({"conf": -0.01}, 'parameter "conf" must be between 0 and 1, got -0.01'),
        ({"iou": 1.5}, 'parameter "iou" must be between 0 and 1, got 1.5'),
        ({"iou": -1}, 'parameter "iou" must be between 0 and 1, got -1.0'),
        ({"max_det": 0}, 'parameter "max_det" must be 1..10000, got 0'),
        ({"max_det": 10_001}, 'parameter "max_det" must be 1..10000, got 10001'),
        ({"max_det": -3}, 'parameter "max_det" must be 1..10000, got -3'),
        ({"max_det": "100000000000000000001"},  # read as an integer, not through a float
         'parameter "max_det" must be 1..10000, got 100000000000000000001'),
        ({"max_det": 2.5}, f'parameter "max_det" must be an integer {AS_STRING} 2.5'),
        ({"max_det": "2.5"}, f'parameter "max_det" must be an integer {AS_STRING} \'2.5\''),
        ({"conf": "high"}, f'parameter "conf" must be a number {AS_STRING} \'high\''),
        ({"conf": True}, f'parameter "conf" must be a number {AS_STRING} True'),
        ({"conf": [0.5]}, f'parameter "conf" must be a number {AS_STRING} [0.5]'),
        ({"conf": None}, f'parameter "conf" must be a number {AS_STRING} None'),
    ],
)  # fmt: skip
def test_bad_parameters_are_400_naming_the_parameter(parameters: dict, message: str) -> None:
    error = rejected(parse_v1, v1(JPEG, **parameters), DEFAULTS, "r")
    assert (error.status, str(error)) == (400, message)


# -- v2 -------------------------------------------------------------------------------------------


def test_v2_json_bytes_of_base64_strings() -> None:
    request = v2(JPEG, PNG, parameters={"conf": 0.4, "max_det": 9})
    parsed = parse_v2(request, DEFAULTS, "v2")
    assert (parsed.protocol, parsed.images, parsed.request_id) == ("v2", [JPEG, PNG], "r-1")
    assert (parsed.conf, parsed.iou, parsed.max_det) == (0.4, 0.7, 9)
    assert parsed.request is request


def test_v2_without_an_id_gets_one() -> None:
    request = InferRequest("m", [InferInput("image", [1], "BYTES", [b64(JPEG)])])
    first, second = (parse_v2(request, DEFAULTS, "v2").request_id for _ in range(2))
    assert len(first) == 32 and first != second


def test_grpc_raw_bytes_and_string_parameters() -> None:
    parameters = {
        "conf": InferParameter(string_param="0.5"),
        "max_det": InferParameter(int64_param=3),
    }
    parsed = parse_v2(v2(JPEG, PNG, parameters=parameters, grpc=True), DEFAULTS, "grpc")
    assert (parsed.protocol, parsed.images) == ("grpc", [JPEG, PNG])
    assert (parsed.conf, parsed.max_det) == (0.5, 3)


def test_grpc_parameter_without_a_value_explains_the_string_form() -> None:
    error = rejected(
        parse_v2, v2(JPEG, parameters={"conf": InferParameter()}, grpc=True), DEFAULTS, "grpc"
    )
    assert str(error) == (
        'parameter "conf": KServe\'s gRPC protocol carries no floating-point parameters; '
        'send it as a string such as "0.5"'
    )


def test_v2_uint8_inputs_hold_one_image_each() -> None:
    inputs = [
        InferInput("image", [len(JPEG)], "UINT8", list(JPEG)),
        InferInput("image_1", [1, len(PNG)], "UINT8", [list(PNG)]),
    ]
    assert parse_v2(InferRequest("m", inputs), DEFAULTS, "v2").images == [JPEG, PNG]


@pytest.mark.parametrize(
    ("tensor", "message"),
    [
        (InferInput("image", [1], "FP32", [0.5]),
         'input "image": datatype FP32 is not accepted; send encoded images as BYTES '
         "(base64 strings in JSON, raw bytes over gRPC) or one UINT8 tensor per image"),
        (InferInput("image", [2, 2], "UINT8", [[1, 2], [3, 4]]),
         'input "image": a UINT8 input holds one encoded image, shape [bytes] or [1, bytes]; '
         "got shape [2, 2]"),
        (InferInput("image", [1, 2, 2], "UINT8", [[[1, 2], [3, 4]]]),
         'input "image": a UINT8 input holds one encoded image'),
        (InferInput("image", [3], "BYTES", [b64(JPEG), b64(PNG)]),
         'input "image": BYTES data does not match shape [3]'),
        (InferInput("image", [1], "BYTES", [7]),
         'input "image" element 0: expected an encoded image, got int'),
        (InferInput("image", [1], "BYTES", ["%%%"]), 'input "image" element 0: invalid base64'),
        (InferInput("image", [0], "BYTES", []), "the request holds no image"),
    ],
)  # fmt: skip
def test_v2_malformed_inputs_are_400_naming_the_input(tensor: InferInput, message: str) -> None:
    error = rejected(parse_v2, InferRequest("m", [tensor]), DEFAULTS, "v2")
    assert error.status == 400 and str(error).startswith(message), str(error)


def test_v2_bytes_of_any_shape_hold_one_image_per_element() -> None:
    tensor = InferInput("image", [2, 1], "BYTES", [[b64(JPEG)], [b64(PNG)]])
    assert parse_v2(InferRequest("m", [tensor]), DEFAULTS, "v2").images == [JPEG, PNG]


def test_each_uint8_input_counts_as_one_image() -> None:
    four = [InferInput(f"i{n}", [len(JPEG)], "UINT8", list(JPEG)) for n in range(4)]
    assert len(parse_v2(InferRequest("m", four), DEFAULTS, "v2").images) == 4
    five = [*four, InferInput("i4", [len(PNG)], "UINT8", list(PNG))]
    error = rejected(parse_v2, InferRequest("m", five), DEFAULTS, "v2")
    assert (error.status, str(error)) == (413, "5 images in one request, over the limit of 4")


def test_v2_without_inputs() -> None:
    error = rejected(parse_v2, InferRequest("m", []), DEFAULTS, "v2")
    assert str(error) == 'no inputs: send "image" as BYTES with shape [N]'


def test_v2_counts_images_before_decoding_them() -> None:
    """Five images over two inputs are refused as too many before any base64 is decoded."""
    inputs = [InferInput("a", [3], "BYTES", ["%"] * 3), InferInput("b", [2], "BYTES", ["%"] * 2)]
    error = rejected(parse_v2, InferRequest("m", inputs), DEFAULTS, "v2")
    assert (error.status, str(error)) == (413, "5 images in one request, over the limit of 4")


# -- the REST binary extension --------------------------------------------------------------------


def _binary(header: dict, *parts: bytes) -> tuple[bytes, int]:
    head = json.dumps(header).encode()
    return head + b"".join(parts), len(head)


def test_binary_inputs_follow_each_other_in_the_body() -> None:
    body, length = _binary(
        {"inputs": [{"name": n, "shape": [len(d)], "datatype": "UINT8",
                     "parameters": {"binary_data_size": len(d)}}
                    for n, d in (("a", JPEG), ("b", PNG), ("c", b""))]},
        JPEG, PNG,
    )  # fmt: skip
    request = binary_request(body, length, "m")
    assert request.model_name == "m"
    # An empty one is no image: decoding refuses it later ("empty image (0 bytes)").
    assert parse_v2(request, DEFAULTS, "v2").images == [JPEG, PNG, b""]


def test_binary_request_keeps_raw_bytes_and_parameters() -> None:
    body, length = _binary(
        {"id": "b-1", "parameters": {"conf": 0.6},
         "inputs": [{"name": "image", "shape": [len(JPEG)], "datatype": "UINT8",
                     "parameters": {"binary_data_size": len(JPEG)}},
                    {"name": "image_1", "shape": [1], "datatype": "BYTES", "data": [b64(PNG)]}],
         "outputs": [{"name": "boxes", "parameters": {"binary_data": True}}]},
        JPEG,
    )  # fmt: skip
    request = binary_request(body, length, "m")
    parsed = parse_v2(request, DEFAULTS, "v2")
    assert parsed.images == [JPEG, PNG] and parsed.request_id == "b-1" and parsed.conf == 0.6
    assert [o.name for o in request.request_outputs] == ["boxes"]
    assert request.request_outputs[0].parameters == {"binary_data": True}
    assert request.model_name == "m"


@pytest.mark.parametrize(
    ("header", "extra", "message"),
    [
        ({"inputs": [{"name": "image", "shape": [10], "datatype": "UINT8",
                      "parameters": {"binary_data_size": 10_000}}]}, b"\0" * 10,
         'input "image": binary_data_size 10000 does not fit the body (10 bytes left)'),
        ({"inputs": [{"name": "image", "shape": [2], "datatype": "UINT8",
                      "parameters": {"binary_data_size": -1}}]}, b"\0" * 2,
         'input "image": binary_data_size -1 does not fit the body'),
        ({"inputs": [{"name": "image", "shape": [2], "datatype": "UINT8",
                      "parameters": {"binary_data_size": "2"}}]}, b"\0" * 2,
         "input \"image\": binary_data_size 2 does not fit the body"),
        ({"inputs": [{"name": "image", "shape": [2], "datatype": "UINT8"}]}, b"",
         'input "image": neither data nor binary_data_size'),
        ({"outputs": []}, b"", 'the JSON part of a binary request must be an object with "inputs"'),
    ],
)  # fmt: skip
def test_binary_requests_that_do_not_add_up_are_400(
    header: dict, extra: bytes, message: str
) -> None:
    body, length = _binary(header, extra)
    error = rejected(binary_request, body, length, "m")
    assert error.status == 400 and str(error).startswith(message), str(error)


def test_an_image_error_keeps_its_status() -> None:
    assert RequestRejected.from_error(PayloadTooLarge("bomb"), "image 2: ").status == 413
    error = RequestRejected.from_error(InvalidImage("truncated JPEG"), "image 0: ")
    assert (error.status, str(error)) == (400, "image 0: truncated JPEG")
    bare = RequestRejected.from_error(InvalidImage("not an image"))
    assert (bare.status, str(bare)) == (400, "not an image")


def test_metadata_lists_the_contracts_tensors() -> None:
    inputs, outputs = metadata_tensors()
    assert inputs == [{"name": "image", "datatype": "BYTES", "shape": [-1]}]
    assert [(o["name"], o["datatype"]) for o in outputs] == [
        ("num_detections", "INT32"), ("boxes", "FP32"), ("scores", "FP32"), ("class_ids", "INT32"),
        ("class_names", "BYTES"), ("image_index", "INT32"), ("image_sizes", "INT32"),
    ]  # fmt: skip
    assert np.asarray(outputs[1]["shape"]).tolist() == [-1, 4]
