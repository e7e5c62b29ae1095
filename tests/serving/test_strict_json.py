"""JSON tensor values are taken as sent or refused with a 400 that names the value: never coerced.

A real node serves the forest and, per datatype, an ONNX Identity model ("echo-int8", ...) that
answers its input back, so what the node decoded comes back bit for bit (binary output). Each
refused request is followed by a good one: the node keeps serving.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.http as httpclient
from conftest import N_FEATURES, PROBA_ATOL, Server, Trained, data, forest, publish

from tritonflow.serving.datatypes import NUMPY
from tritonflow.serving.model_config import ConfigSpec, TensorSpec, build_config

MODEL = "fraud-classifier"
ECHOED = ("BOOL", "INT8", "INT32", "INT64", "UINT64", "FP16", "FP32", "FP64")
X = data()[0][:2]
MANY = 72  # rows of 4 values: past strict_json._SCAN, the few values checked one by one
LAST = MANY - 1


def echo_model(datatype: str) -> Trained:
    """An ONNX graph of one Identity node: output y is input x, of any [N, M] shape."""
    from onnx import helper

    element = helper.np_dtype_to_tensor_dtype(NUMPY[datatype])
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "echo",
        [helper.make_tensor_value_info("x", element, ["N", "M"])],
        [helper.make_tensor_value_info("y", element, ["N", "M"])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    return Trained(forest().estimator, {"model.onnx": model.SerializeToString()}, "onnxruntime")


def echo_name(datatype: str) -> str:
    return f"echo-{datatype.lower()}"


@pytest.fixture(scope="module")
def server(serve_module, tmp_path_factory: pytest.TempPathFactory) -> Server:
    root: Path = tmp_path_factory.mktemp("strict-json") / "repo"
    root.mkdir()
    publish(root, MODEL, forest())
    for datatype in ECHOED:
        tensors = (TensorSpec("x", datatype, (-1,)),), (TensorSpec("y", datatype, (-1,)),)
        spec = ConfigSpec(echo_name(datatype), "onnxruntime", *tensors, max_batch_size=MANY)
        publish(root, echo_name(datatype), echo_model(datatype), build_config(spec))
    return serve_module(root)


def infer_body(datatype: str, shape: list[int], data: Any, name: str = "x", binary: bool = True) -> bytes:
    tensor = {"name": name, "datatype": datatype, "shape": shape, "data": data}
    return json.dumps({"inputs": [tensor], "parameters": {"binary_data_output": binary}}).encode()


def echo(server: Server, datatype: str, shape: list[int], data: Any) -> np.ndarray:
    """What the node decoded from `data`, as the echo model's binary output gives it back."""
    status, headers, raw = server.request(
        "POST", f"/v2/models/{echo_name(datatype)}/infer", infer_body(datatype, shape, data)
    )
    assert status == 200, raw
    length = int(headers["inference-header-content-length"])
    [output] = json.loads(raw[:length])["outputs"]
    assert (output["datatype"], output["shape"]) == (datatype, shape)
    return np.frombuffer(raw[length:], NUMPY[datatype]).reshape(shape)


def assert_serving(server: Server) -> None:
    """The forest still answers a JSON (not binary) request as sklearn does."""
    tensor = httpclient.InferInput("input__0", list(X.shape), "FP32")
    tensor.set_data_from_numpy(X, binary_data=False)
    result = server.client.infer(MODEL, [tensor])
    np.testing.assert_allclose(result.as_numpy("output__0"), forest().proba(X), atol=PROBA_ATOL)


def case(name: str, datatype: str, data: Any, *words: str) -> Any:
    """One refused `data` (rows of 4 values): the words its error must hold beside the input's name
    and datatype."""
    rows = len(data) if isinstance(data, list) and isinstance(data[0], list) else 1
    return pytest.param(datatype, data, [rows, 4], words, id=name)


def many(value: Any, last: list[Any]) -> list[list[Any]]:
    """MANY rows: all `value` but the last."""
    return [[value] * 4] * (MANY - 1) + [last]


ROW = [0.5, 0.25, 0.125, 1.0]
FP32_MAX = float(np.finfo(np.float32).max)
REFUSED = [
    # numbers only, and booleans only for BOOL
    case("fp32-string", "FP32", ["1.5", 0.0, 0.0, 0.0], 'data[0] is "1.5"', "send JSON numbers"),
    case("fp32-nested-string", "FP32", [[0.0, 0.0, 0.0, "1.5"]], 'data[0][3] is "1.5"'),
    case("fp32-true", "FP32", [0.0, True, 0.0, 0.0], "data[1] is true", "no strings, booleans or null"),
    case("fp32-false-in-many", "FP32", many(0.5, [0.5, 0.5, False, 0.5]), f"data[{LAST}][2] is false"),
    case("fp32-true-among-ones", "FP32", many(1.0, [1, 0, True, 1.0]), f"data[{LAST}][2] is true"),
    case("fp32-null", "FP32", [0.0, 0.0, None, 0.0], "data[2] is null"),
    case("fp32-object", "FP32", [0.0, {"v": 1}, 0.0, 0.0], "data[1] is an object"),
    case("int-true", "INT32", [1, 2, 3, True], "data[3] is true", "send integers"),
    case("int-true-in-many", "INT32", many(7, [7, 7, True, 7]), f"data[{LAST}][2] is true"),
    case("bool-one", "BOOL", [True, False, 1, True], "data[2] is 1", "send true or false"),
    case("bool-string", "BOOL", [[True, "true", False, True]], 'data[0][1] is "true"'),
    # integers take integers, in range
    case("int32-fraction", "INT32", [1, 2, 1.5, 4], "data[2] is 1.5", "without a fraction or exponent"),
    case("int32-float-two", "INT32", [1, 2.0, 3, 4], "data[1] is 2.0"),
    case("int64-string", "INT64", ["1", 2, 3, 4], 'data[0] is "1"'),
    case("int8-300", "INT8", [1, 2, 3, 300], "data[3] is 300", "from -128 to 127"),
    case("int8-minus-129", "INT8", [[-129, 0, 0, 0]], "data[0][0] is -129"),
    case("int64-past-max", "INT64", [0, 0, 2**63, 0], "data[2] is 9223372036854775808"),
    case("uint64-negative", "UINT64", [0, -1, 0, 0], "data[1] is -1", "from 0 to 18446744073709551615"),
    case("uint64-past-64-bits", "UINT64", [2**64, 0, 0, 0], "data[0] is 1.8446744073709552e+19"),
    case("int32-many-one-out", "INT32", many(7, [7, 7, 7, 2**31]), f"data[{LAST}][3] is 2147483648"),
    # floats stay finite
    case("fp32-1e39", "FP32", [0.0, 1e39, 0.0, 0.0], "data[1] is 1e+39", "within ±3.4028234663852886e+38"),
    case("fp32-minus-1e39", "FP32", many(0.0, [0.0, 0.0, 0.0, -1e39]), f"data[{LAST}][3] is -1e+39"),
    case("fp16-70000", "FP16", [70000, 0, 0, 0], "data[0] is 70000", "within ±65504.0"),
    # the nesting
    case("ragged", "FP32", [ROW, [0.5]], "data[1] has length 1 where data[0] has length 4", "nest the lists"),
    case("list-beside-numbers", "FP32", [ROW, 0.5], "data[1] is 0.5 where data[0] is a list"),
    case("number-beside-list", "FP32", [0.5, [0.5, 0.5, 0.5]], "data[1] is a list"),
    case("scalar", "FP32", 0.5, "data is 0.5", "send a list"),
]


@pytest.mark.parametrize(("datatype", "data", "shape", "words"), REFUSED)
def test_refused_value_is_a_400_that_names_it(server, datatype, data, shape, words):
    status, headers, raw = server.request(
        "POST", f"/v2/models/{echo_name(datatype)}/infer", infer_body(datatype, shape, data)
    )
    error = json.loads(raw)["error"]
    assert status == 400, error
    assert f"input 'x': data is not {datatype}: " in error
    for word in words:
        assert word in error, error
    assert headers["content-type"] == "application/json"
    assert_serving(server)


@pytest.mark.parametrize(
    ("literal", "words"),
    [
        ("1e400", "number is infinity"),
        ("-1e400", "number is infinity"),
        ("NaN", "not valid JSON"),
        ("Infinity", "not valid JSON"),
        ("-Infinity", "not valid JSON"),
        ("1" + "0" * 400, "number is infinity"),
    ],
)
def test_json_without_a_finite_number_is_refused_as_json(server, literal, words):
    """orjson refuses what a double cannot hold, and JSON has no NaN or Infinity: a 400 as well."""
    body = infer_body("FP64", [1, 4], [0.0, 0.0, 0.0, "@"]).replace(b'"@"', literal.encode())
    status, _, raw = server.request("POST", "/v2/models/echo-fp64/infer", body)
    error = json.loads(raw)["error"]
    assert status == 400 and "the inference header is not valid JSON" in error and words in error, error
    assert_serving(server)


def test_a_forest_request_with_a_boolean_is_refused(server):
    """The product's own path: a boolean among a forest request's features is not taken as 1.0."""
    row = X[0].tolist()
    row[3] = True
    status, _, raw = server.request(
        "POST", f"/v2/models/{MODEL}/infer", infer_body("FP32", [1, 8], row, "input__0")
    )
    assert status == 400 and "input 'input__0': data is not FP32: data[3] is true" in json.loads(raw)["error"]
    assert_serving(server)


EDGES = [
    pytest.param("FP32", [FP32_MAX, -FP32_MAX, float(np.finfo(np.float32).tiny), -0.0], id="fp32-extremes"),
    pytest.param("FP32", [0, 1, -7, 16777216], id="ints-as-fp32"),
    pytest.param("FP32", [1e-50, -1e-50, 0.1, 3.4028235e38], id="fp32-rounding-stays-finite"),
    pytest.param("FP16", [65504, -65504, 6.1e-05, -0.0], id="fp16-extremes"),
    pytest.param(
        "FP64", [1.7976931348623157e308, -2.2250738585072014e-308, 5e-324, -0.0], id="fp64-extremes"
    ),
    pytest.param("INT64", [-(2**63), 2**63 - 1, 0, -1], id="int64-extremes"),
    pytest.param("UINT64", [2**64 - 1, 2**63, 0, 1], id="uint64-extremes"),
    pytest.param("INT8", [-128, 127, 0, -1], id="int8-extremes"),
    pytest.param("INT32", [-(2**31), 2**31 - 1, 0, 1], id="int32-extremes"),
    pytest.param("BOOL", [True, False, False, True], id="bools"),
]


@pytest.mark.parametrize(("datatype", "values"), EDGES)
def test_valid_edge_values_decode_exactly(server, datatype, values):
    """Flat, nested, and many rows (the other conversion path) all give the values bit for bit."""
    expected = np.array(values, NUMPY[datatype])
    flat = echo(server, datatype, [1, 4], values)
    nested = echo(server, datatype, [2, 2], [values[:2], values[2:]])
    rows = echo(server, datatype, [MANY, 4], [values] * MANY)
    assert flat.tobytes() == expected.tobytes()  # NOTE: bytes, so -0.0 is told from 0.0
    assert nested.tobytes() == expected.tobytes()
    assert rows.tobytes() == np.tile(expected, MANY).tobytes()


def test_binary_tensors_take_any_bit_pattern(server):
    """The binary extension is raw data: inf, nan and the largest float are served as sent."""
    x = np.array([[np.inf, -np.inf, np.nan, FP32_MAX]], np.float32)
    header = {
        "inputs": [
            {"name": "x", "datatype": "FP32", "shape": [1, 4], "parameters": {"binary_data_size": 16}}
        ],
        "parameters": {"binary_data_output": True},
    }
    raw_header = json.dumps(header).encode()
    status, headers, raw = server.request(
        "POST",
        "/v2/models/echo-fp32/infer",
        raw_header + x.tobytes(),
        {"Inference-Header-Content-Length": str(len(raw_header))},
    )
    assert status == 200, raw
    assert raw[int(headers["inference-header-content-length"]) :] == x.tobytes()


def test_tritonclient_json_and_nested_json_agree_with_sklearn(server):
    """Flat JSON (as tritonclient sends it) and shape-nested JSON give the same probabilities."""
    rows = data()[0][:5]
    expected = forest().proba(rows)
    for payload in (rows.ravel().tolist(), rows.tolist()):
        body = infer_body("FP32", [5, N_FEATURES], payload, "input__0", binary=False)
        status, _, raw = server.request("POST", f"/v2/models/{MODEL}/infer", body)
        assert status == 200, raw
        [output] = json.loads(raw)["outputs"]
        np.testing.assert_allclose(np.array(output["data"]).reshape(5, 2), expected, atol=PROBA_ATOL)
