"""BYTES (TYPE_STRING) tensors on every wire: JSON strings, the binary extension's 4-byte length
prefixes, gRPC bytes_contents and raw contents, system shared memory; in and out, against a real node
serving an ONNX model that answers its strings. Bad BYTES are a 400 naming the input, and the node
keeps serving."""

from __future__ import annotations

import json
import os
import struct
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import tritonclient.utils.shared_memory as shm
from conftest import Server
from ensemble_models import echo, labelled, onnx_config, publish_text
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException, serialize_byte_tensor

MODEL = "echo"
TEXTS = np.array([["fraud"], ["naïve café"], [""], ["a" * 300]], dtype=object)


@pytest.fixture(scope="module")
def server(serve_module: Any, tmp_path_factory: pytest.TempPathFactory) -> Server:
    root = tmp_path_factory.mktemp("bytes") / "repo"
    text = onnx_config(
        MODEL, [("text", "TYPE_STRING", 1)], [("same", "TYPE_STRING", 1), ("upper", "TYPE_STRING", 1)]
    )
    publish_text(root, MODEL, echo(), text)
    s = serve_module(root)
    s.wait_for_state(MODEL, 1, "READY")
    return s


def encoded(texts: np.ndarray) -> np.ndarray:
    return np.vectorize(lambda t: t.encode(), otypes=[object])(texts)


def check_answer(same: np.ndarray, upper: np.ndarray, texts: np.ndarray = TEXTS) -> None:
    """The answer as tritonclient gives it: bytes from binary outputs, str from JSON ones."""
    as_bytes = np.vectorize(lambda v: v if isinstance(v, bytes) else v.encode(), otypes=[object])
    assert same.dtype == object and as_bytes(same).tolist() == encoded(texts).tolist()
    assert as_bytes(upper).tolist() == encoded(np.vectorize(labelled, otypes=[object])(texts)).tolist()


@pytest.mark.parametrize(
    ("binary_in", "binary_out"), [(False, False), (True, True), (False, True), (True, False)]
)
def test_http_json_and_binary_both_ways(server: Server, binary_in: bool, binary_out: bool) -> None:
    tensor = httpclient.InferInput("text", list(TEXTS.shape), "BYTES")
    tensor.set_data_from_numpy(TEXTS, binary_data=binary_in)
    outputs = [httpclient.InferRequestedOutput(n, binary_data=binary_out) for n in ("same", "upper")]
    result = server.client.infer(MODEL, [tensor], outputs=outputs)
    check_answer(result.as_numpy("same"), result.as_numpy("upper"))
    datatypes = {o["name"]: o["datatype"] for o in result.get_response()["outputs"]}
    assert datatypes == {"same": "BYTES", "upper": "BYTES"}


def test_json_output_is_a_string_per_element(server: Server) -> None:
    body = {"inputs": [{"name": "text", "shape": [2, 1], "datatype": "BYTES", "data": [["ab"], ["ÿ"]]}]}
    status, _, raw = server.request("POST", f"/v2/models/{MODEL}/infer", json.dumps(body).encode())
    assert status == 200, raw
    answer = {o["name"]: o["data"] for o in json.loads(raw)["outputs"]}
    assert answer == {"same": ["ab", "ÿ"], "upper": ["AB", "Ÿ"]}


def test_grpc_bytes_contents_and_raw_contents(server: Server) -> None:
    client = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        tensor = grpcclient.InferInput("text", list(TEXTS.shape), "BYTES")
        tensor.set_data_from_numpy(TEXTS)  # NOTE: tritonclient sends raw_input_contents
        result = client.infer(MODEL, [tensor])
        check_answer(result.as_numpy("same"), result.as_numpy("upper"))
    finally:
        client.close()
    stub, channel = _stub(server)
    try:
        request = service_pb2.ModelInferRequest(model_name=MODEL)
        request.inputs.add(name="text", datatype="BYTES", shape=[2, 1]).contents.bytes_contents.extend(
            [b"x", b"yz"]
        )
        response = stub.ModelInfer(request)
        assert [o.name for o in response.outputs] == ["same", "upper"]
        assert response.raw_output_contents[1] == prefixed(b"X", b"YZ")
    finally:
        channel.close()


def test_system_shared_memory_input_and_output(server: Server) -> None:
    raw = prefixed(*encoded(TEXTS).ravel())
    key = f"/tritonflow-bytes-{os.getpid()}"
    region_in = shm.create_shared_memory_region("bytes-in", f"{key}-in", len(raw))
    region_out = shm.create_shared_memory_region("bytes-out", f"{key}-out", 4096)
    try:
        shm.set_shared_memory_region(region_in, [serialize_byte_tensor(encoded(TEXTS))])
        server.client.register_system_shared_memory("bytes-in", f"{key}-in", len(raw))
        server.client.register_system_shared_memory("bytes-out", f"{key}-out", 4096)
        tensor = httpclient.InferInput("text", list(TEXTS.shape), "BYTES")
        tensor.set_shared_memory("bytes-in", len(raw))
        upper = httpclient.InferRequestedOutput("upper")
        upper.set_shared_memory("bytes-out", 4096)
        result = server.client.infer(MODEL, [tensor], outputs=[upper])
        out = result.get_output("upper")
        answered = shm.get_contents_as_numpy(region_out, np.object_, out["shape"])
        assert answered.tolist() == encoded(np.vectorize(labelled, otypes=[object])(TEXTS)).tolist()
    finally:
        server.client.unregister_system_shared_memory()
        shm.destroy_shared_memory_region(region_in)
        shm.destroy_shared_memory_region(region_out)


# -- bad BYTES ------------------------------------------------------------------------------------
def prefixed(*items: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(i)) + i for i in items)


BAD_BINARY = {
    "a truncated length prefix": (prefixed(b"ok") + b"\x05\x00", "needs a 4-byte length"),
    "a length past the buffer": (prefixed(b"ok") + struct.pack("<I", 99) + b"abc", "is 99 bytes long"),
    "bytes after the last element": (prefixed(b"ok", b"no") + b"!", "1 bytes follow the last of its 2"),
    "text that is not UTF-8": (prefixed(b"ok", b"\xff\xfe"), "element 1 is not UTF-8 text"),
}


@pytest.mark.parametrize("case", list(BAD_BINARY))
def test_bad_binary_bytes_are_400_naming_the_input(server: Server, case: str) -> None:
    payload, message = BAD_BINARY[case]
    spec = {
        "name": "text",
        "shape": [2, 1],
        "datatype": "BYTES",
        "parameters": {"binary_data_size": len(payload)},
    }
    header = json.dumps({"inputs": [spec]}).encode()
    headers = {"Inference-Header-Content-Length": str(len(header))}
    status, _, body = server.request("POST", f"/v2/models/{MODEL}/infer", header + payload, headers)
    assert status == 400 and message in body.decode() and "'text'" in body.decode(), body
    stub, channel = _stub(server)
    try:
        request = service_pb2.ModelInferRequest(model_name=MODEL)
        request.inputs.add(name="text", datatype="BYTES", shape=[2, 1])
        request.raw_input_contents.append(payload)
        with pytest.raises(Exception, match=message):
            stub.ModelInfer(request)
    finally:
        channel.close()
    _still_serving(server)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([["ok"], [3]], "value 1 is 3"),
        ([["ok"], [None]], "value 1 is null"),
        ([["ok"], ["a", "b"]], "data has 3 values"),
        ("ok", "send a list of strings"),
    ],
)
def test_bad_json_bytes_are_400_naming_the_input(server: Server, data: Any, message: str) -> None:
    body = {"inputs": [{"name": "text", "shape": [2, 1], "datatype": "BYTES", "data": data}]}
    status, _, raw = server.request("POST", f"/v2/models/{MODEL}/infer", json.dumps(body).encode())
    assert status == 400 and message in raw.decode() and "'text'" in raw.decode(), raw
    _still_serving(server)


def test_non_utf8_grpc_bytes_contents_is_invalid_argument(server: Server) -> None:
    client = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        tensor = grpcclient.InferInput("text", [1, 1], "BYTES")
        tensor.set_data_from_numpy(np.array([[b"\xc3"]], dtype=object))
        with pytest.raises(InferenceServerException, match="not UTF-8") as caught:
            client.infer(MODEL, [tensor])
        assert "INVALID_ARGUMENT" in str(caught.value.status())
    finally:
        client.close()
    _still_serving(server)


def _stub(server: Server) -> tuple[Any, Any]:
    import grpc

    channel = grpc.insecure_channel(server.grpc_url)
    return service_pb2_grpc.GRPCInferenceServiceStub(channel), channel


def _still_serving(server: Server) -> None:
    tensor = httpclient.InferInput("text", [1, 1], "BYTES")
    tensor.set_data_from_numpy(np.array([["still"]], dtype=object))
    assert server.client.infer(MODEL, [tensor]).as_numpy("upper").tolist() == [[b"STILL"]]
