"""Bad requests get a clear 4xx that says what was expected, never a 500, and the server keeps serving.

Each case is followed by a good request; the server fixture fails the module if the server logged
a traceback. Errors raised once the model version is resolved carry its stamp.
"""

from __future__ import annotations

import gzip
import http.client
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.http as httpclient
from conftest import N_FEATURES, PROBA_ATOL, Server, config_for, data, forest, publish
from tritonclient.utils import InferenceServerException

from tritonflow.lineage.records import DeploymentRecord

MODEL = "fraud-classifier"
MAX_ROWS = 64
MAX_BYTES = 65536
INFER = f"/v2/models/{MODEL}/infer"
X = data()[0][:1]


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, DeploymentRecord]:
    root = tmp_path_factory.mktemp("bad-input") / "repo"
    root.mkdir()
    return root, publish(root, MODEL, forest(), config_for(MODEL, forest(), max_batch_size=MAX_ROWS))


@pytest.fixture(scope="module")
def server(serve_module, deployed) -> Server:
    return serve_module(deployed[0], "--max-request-bytes", str(MAX_BYTES))


@pytest.fixture(scope="module")
def record(deployed) -> DeploymentRecord:
    return deployed[1]


def tensor(**overrides: Any) -> dict[str, Any]:
    spec = {"name": "input__0", "shape": [1, N_FEATURES], "datatype": "FP32", "data": X.ravel().tolist()}
    return {k: v for k, v in {**spec, **overrides}.items() if v is not None}


def body(*inputs: dict[str, Any], **fields: Any) -> bytes:
    return json.dumps({"inputs": list(inputs), **fields}).encode()


def binary(header: dict[str, Any], payload: bytes, length: int | None = None) -> tuple[bytes, dict[str, str]]:
    raw = json.dumps(header).encode()
    return raw + payload, {"Inference-Header-Content-Length": str(len(raw) if length is None else length)}


def binary_input(size: int) -> dict[str, Any]:
    return tensor(data=None, parameters={"binary_data_size": size})


GOOD_BINARY = binary({"inputs": [binary_input(X.nbytes)]}, X.tobytes())


def case(
    name: str,
    payload: bytes,
    status: int,
    words: str,
    stamped: bool = False,
    *,
    method: str = "POST",
    path: str = INFER,
    headers: dict[str, str] | None = None,
) -> Any:
    """One bad request: the status and the words its error must hold; stamped: after resolution."""
    return pytest.param(method, path, payload, headers or {}, status, words, stamped, id=name)


def framed(header: dict[str, Any], payload: bytes) -> dict[str, Any]:
    """A binary request's body and header, as keyword arguments of `case`."""
    raw, headers = binary(header, payload)
    return {"payload": raw, "headers": headers}


ROWS_65 = tensor(shape=[MAX_ROWS + 1, N_FEATURES], data=[0.5] * N_FEATURES * (MAX_ROWS + 1))
LENGTH = "Inference-Header-Content-Length"
VERSIONS = f"/v2/models/{MODEL}/versions"
CASES = [
    # framing and JSON
    case("malformed-json", b'{"inputs": [', 400, "not valid JSON"),
    case("not-an-object", b"[1, 2]", 400, "must be a JSON object"),
    case("id-not-string", body(tensor(), id=7), 400, "id must be a string"),
    case("flag-not-bool", body(tensor(), parameters={"binary_data_output": 1}), 400, "must be true or false"),
    # missing or malformed fields
    case("no-inputs", b"{}", 400, "missing inputs: expected a non-empty list"),
    case("empty-inputs", body(), 400, "missing inputs"),
    case("input-not-object", b'{"inputs": [1]}', 400, "inputs[0] must be an object"),
    case("no-name", body(tensor(name=None)), 400, "missing inputs[0].name"),
    case("no-datatype", body(tensor(datatype=None)), 400, "expected one of BOOL"),
    case("bad-datatype", body(tensor(datatype="FLOAT32")), 400, "'FLOAT32' is not served"),
    case("bytes-datatype", body(tensor(datatype="BYTES")), 400, "data is not BYTES: value 0 is"),
    case("no-shape", body(tensor(shape=None)), 400, "shape: expected a list"),
    case("negative-shape", body(tensor(shape=[-1, 8])), 400, "non-negative integers"),
    case("no-data", body(tensor(data=None)), 400, "'data' (flat or nested)"),
    case("data-count", body(tensor(data=[1.0] * 7)), 400, "has 7 values, shape [1, 8]"),
    case("data-strings", body(tensor(data=["a"] * 8)), 400, "data is not FP32"),
    case("ragged-data", body(tensor(data=[[1.0] * 8, [1.0]])), 400, "data is not FP32"),
    case(
        "classification-negative",
        body(tensor(), outputs=[{"name": "output__0", "parameters": {"classification": -1}}]),
        400,
        "classification is -1: expected the number of top classes",
    ),
    case(
        "output-twice",
        body(tensor(), outputs=[{"name": "output__0"}, {"name": "output__0"}]),
        400,
        "output 'output__0' is asked for twice",
    ),
    # model and version
    case(
        "unknown-model",
        body(tensor()),
        404,
        "Request for unknown model: 'nope' is not found",  # Triton's words, which its examples match
        path="/v2/models/nope/infer",
    ),
    case(
        "unknown-version",
        body(tensor()),
        404,
        f"Request for unknown model: '{MODEL}' version 9 is not found",
        path=f"{VERSIONS}/9/infer",
    ),
    case("bad-version", body(tensor()), 400, "expected a positive integer", path=f"{VERSIONS}/one/infer"),
    # checked against the resolved version's config: stamped
    case(
        "wrong-input-name",
        body(tensor(name="features")),
        400,
        "unknown input 'features' for model fraud-classifier:1: expected inputs input__0",
        True,
    ),
    case("fp64-to-fp32", body(tensor(datatype="FP64")), 400, "has datatype FP64: expected FP32", True),
    case(
        "int-to-fp32",
        body(tensor(datatype="INT32", data=[1] * 8)),
        400,
        "datatype INT32: expected FP32",
        True,
    ),
    case(
        "feature-count",
        body(tensor(shape=[1, 7], data=[1.0] * 7)),
        400,
        "shape [1, 7]: expected [-1, 8]",
        True,
    ),
    case("no-batch-dim", body(tensor(shape=[8])), 400, "has shape [8]: expected [-1, 8]", True),
    case("too-many-rows", body(ROWS_65), 400, "has 65 rows: expected 1 to 64 (max_batch_size)", True),
    case("zero-rows", body(tensor(shape=[0, 8], data=[])), 400, "has 0 rows: expected 1 to 64", True),
    case(
        "unknown-output",
        body(tensor(), outputs=[{"name": "proba"}]),
        400,
        "unknown output 'proba' for model fraud-classifier:1: expected outputs output__0",
        True,
    ),
    # binary framing
    case(
        "header-length-too-big", GOOD_BINARY[0], 400, "is 99999, but the body has", headers={LENGTH: "99999"}
    ),
    case("header-length-not-a-number", GOOD_BINARY[0], 400, "is not a number", headers={LENGTH: "ten"}),
    case("header-length-cuts-json", GOOD_BINARY[0], 400, "not valid JSON", headers={LENGTH: "10"}),
    case(
        "binary-size-mismatch",
        status=400,
        words="binary_data_size is 16, but shape [1, 8] of FP32 takes 32",
        **framed({"inputs": [binary_input(16)]}, X.tobytes()[:16]),
    ),
    case(
        "binary-truncated",
        status=400,
        words="needs 32 bytes of binary data at offset 0, but only 16 are left",
        **framed({"inputs": [binary_input(32)]}, X.tobytes()[:16]),
    ),
    case(
        "binary-left-over",
        status=400,
        words="8 bytes of binary data follow",
        **framed({"inputs": [binary_input(32)]}, X.tobytes() + b"\0" * 8),
    ),
    case(
        "binary-and-data",
        status=400,
        words="has both data and binary_data_size",
        **framed({"inputs": [tensor(parameters={"binary_data_size": 32})]}, X.tobytes()),
    ),
    # size and encoding
    case(
        "over-the-limit",
        b"x" * (MAX_BYTES + 1),
        413,
        f"of {MAX_BYTES + 1} bytes is over the limit of {MAX_BYTES}",
    ),
    case(
        "bad-encoding",
        body(tensor()),
        415,
        "'br' is not supported: use one of gzip, deflate",
        headers={"Content-Encoding": "br"},
    ),
    case(
        "truncated-gzip",
        gzip.compress(body(tensor()))[:-12],
        400,
        "ends before its gzip data does",
        headers={"Content-Encoding": "gzip"},
    ),
    case("corrupt-gzip", b"not gzip", 400, "not valid gzip data", headers={"Content-Encoding": "gzip"}),
    case(
        "gzip-bomb",
        gzip.compress(b" " * (MAX_BYTES + 1)),
        400,
        f"over the limit of {MAX_BYTES} bytes",
        headers={"Content-Encoding": "gzip"},
    ),
    # other endpoints
    case("wrong-method", b"", 405, "GET is not allowed", method="GET"),
    case("unknown-path", b"", 404, "no endpoint GET /v2/modelz", method="GET", path="/v2/modelz"),
    case(
        "load-override",
        b'{"parameters": {"config": "{}"}}',
        400,
        "override is not supported",
        path=f"/v2/repository/models/{MODEL}/load",
    ),
    case(
        "load-parameters-not-object",
        b'{"parameters": [1]}',
        400,
        "parameters must be a JSON object",
        path=f"/v2/repository/models/{MODEL}/load",
    ),
    case("unload-in-poll-mode", b"", 400, "mode 'poll'", path="/v2/repository/models/nope/unload"),
    case("index-bad-body", b"{", 400, "not valid JSON", path="/v2/repository/index"),
    case(
        "metadata-unknown",
        b"",
        404,
        "Request for unknown model: 'nope' is not found",
        method="GET",
        path="/v2/models/nope",
    ),
    case("stats-unknown-version", b"", 404, "version 3", method="GET", path=f"{VERSIONS}/3/stats"),
    case("lineage-bad-version", b"", 400, "positive integer", method="GET", path=f"{VERSIONS}/x/lineage"),
]


def assert_serving(server: Server) -> None:
    result = server.client.infer(MODEL, [_input(X)])
    np.testing.assert_allclose(result.as_numpy("output__0"), forest().proba(X), atol=PROBA_ATOL)


def _input(x: np.ndarray, datatype: str = "FP32") -> httpclient.InferInput:
    tensor = httpclient.InferInput("input__0", list(x.shape), datatype)
    tensor.set_data_from_numpy(x)
    return tensor


@pytest.mark.parametrize(("method", "path", "payload", "headers", "status", "words", "stamped"), CASES)
def test_bad_request_is_a_clear_4xx(server, record, method, path, payload, headers, status, words, stamped):
    got, response_headers, raw = server.request(method, path, payload or None, headers)
    error = json.loads(raw)
    assert (got, words in error["error"]) == (status, True), error
    assert response_headers["content-type"] == "application/json"
    if stamped:
        assert response_headers["x-deployment-id"] == record.deployment_id
        assert error["deployment_id"] == record.deployment_id
        assert (error["model_name"], error["model_version"]) == (MODEL, "1")
    else:
        assert "x-deployment-id" not in response_headers and "deployment_id" not in error
    assert_serving(server)


def test_chunked_body_over_the_limit_is_413(server):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    chunks = (b"x" * 16384 for _ in range(MAX_BYTES // 16384 + 1))
    conn.request("POST", INFER, body=chunks, encode_chunked=True)
    response = conn.getresponse()
    assert response.status == 413 and "over the limit" in json.loads(response.read())["error"]
    conn.close()
    assert_serving(server)


def test_keep_alive_connection_survives_errors(server):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    for payload, status in (
        (b"{", 400),
        (body(tensor()), 200),
        (b"x" * (MAX_BYTES + 1), 413),
        (body(tensor()), 200),
    ):
        conn.request("POST", INFER, body=payload)
        response = conn.getresponse()
        response.read()
        assert response.status == status
    conn.close()


def test_tritonclient_sees_the_error_message(server, record):
    with pytest.raises(InferenceServerException, match="has datatype FP64: expected FP32") as caught:
        server.client.infer(MODEL, [_input(X.astype(np.float64), "FP64")])
    assert caught.value.status() == "400"
    with pytest.raises(InferenceServerException, match=r"has 65 rows: expected 1 to 64"):
        server.client.infer(MODEL, [_input(np.zeros((MAX_ROWS + 1, N_FEATURES), np.float32))])
    assert_serving(server)


def test_rejected_requests_are_no_failures_and_nothing_failed_inside(server):
    # NOTE: as Triton: a request rejected before the model runs is no nv_inference_request_failure
    failures = server.sample("nv_inference_request_failure", model=MODEL, reason="OTHER", version="1")
    assert server.request("POST", INFER, body(tensor(datatype="FP64")))[0] == 400
    assert server.sample("nv_inference_request_failure", model=MODEL, reason="OTHER", version="1") == failures
    assert "Traceback" not in server.log_text()
    assert_serving(server)
