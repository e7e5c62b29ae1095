"""Triton's gRPC protocol on the node: every RPC tritonclient.grpc calls (sync, asyncio, streaming),
against a real `tritonflow serve` subprocess, compared with the node's HTTP answers and the native model."""

from __future__ import annotations

import asyncio
import json
import queue
import socket
import ssl
import time
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient
import tritonclient.http as httpclient
from conftest import PROBA_ATOL, Server, data, forest, onnx_forest, publish
from google.protobuf.json_format import ParseDict
from tritonclient.grpc import model_config_pb2, service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

MODEL = "fraud-classifier"
ADMIN = ("x-admin-key", "s3cret")
MAX_REQUEST_BYTES = 4096  # NOTE: 100 rows of 8 FP32 features (3,200 bytes) fit; 200 do not


@pytest.fixture(scope="module")
def server(serve_module: Any, tmp_path_factory: pytest.TempPathFactory) -> Server:
    root = tmp_path_factory.mktemp("grpc") / "repo"
    publish(root, MODEL, forest())
    publish(root, "onnx-classifier", onnx_forest())
    return serve_module(
        root,
        *("--model-control-mode", "explicit", "--load-model", "*"),
        *("--restrict", f"model-repository:{ADMIN[0]}={ADMIN[1]}"),
        *("--max-request-bytes", str(MAX_REQUEST_BYTES)),
        *("--max-inflight-bytes", str(MAX_REQUEST_BYTES)),  # NOTE: one request of the largest size
    )


@pytest.fixture(scope="module")
def client(server: Server) -> Any:
    c = grpcclient.InferenceServerClient(server.grpc_url)
    yield c
    c.close()


@pytest.fixture(scope="module")
def stub(server: Server) -> Any:
    """The generated stub on a plain channel, for what tritonclient hides (metadata, typed contents)."""
    channel = grpc.insecure_channel(server.grpc_url)
    yield service_pb2_grpc.GRPCInferenceServiceStub(channel)
    channel.close()


def rows(n: int) -> np.ndarray:
    return data()[0][:n]


def fp32(x: np.ndarray, name: str = "input__0", datatype: str = "FP32") -> grpcclient.InferInput:
    tensor = grpcclient.InferInput(name, list(x.shape), datatype)
    tensor.set_data_from_numpy(x)
    return tensor


def raw_request(x: np.ndarray, model: str = MODEL) -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name=model, id="r-1")
    request.inputs.add(name="input__0", datatype="FP32", shape=x.shape)
    request.raw_input_contents.append(x.tobytes())
    return request


def failure(call: Any) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as caught:
        call()
    return caught.value


# -- health and metadata --------------------------------------------------------------------------
def test_health_and_metadata_answer_as_http(server: Server, client: Any) -> None:
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready(MODEL) and client.is_model_ready(MODEL, "1")
    assert not client.is_model_ready(MODEL, "2") and not client.is_model_ready("no-such-model")
    metadata = client.get_server_metadata()
    assert (metadata.name, metadata.version, list(metadata.extensions)) == tuple(
        server.client.get_server_metadata()[k] for k in ("name", "version", "extensions")
    )
    for model in (MODEL, "onnx-classifier"):
        theirs = server.client.get_model_metadata(model)
        assert client.get_model_metadata(model) == ParseDict(
            theirs, service_pb2.ModelMetadataResponse(), ignore_unknown_fields=True
        )
    assert client.get_model_metadata(MODEL).inputs[0].shape == [-1, 8]


def test_model_config_is_the_http_config(server: Server, client: Any) -> None:
    for model in (MODEL, "onnx-classifier"):
        config = client.get_model_config(model).config
        assert config == ParseDict(server.client.get_model_config(model), model_config_pb2.ModelConfig())
        assert config.name == model and config.instance_group  # completed as Triton serves it
    assert client.get_model_config("onnx-classifier").config.platform == "onnxruntime_onnx"


# -- inference ------------------------------------------------------------------------------------
def test_infer_matches_the_native_model_and_http_and_is_stamped(
    server: Server, client: Any, stub: Any
) -> None:
    x = rows(5)
    result = client.infer(MODEL, [fp32(x)], request_id="req-7")
    np.testing.assert_allclose(result.as_numpy("output__0"), forest().proba(x), atol=PROBA_ATOL)
    http_input = httpclient.InferInput("input__0", list(x.shape), "FP32")
    http_input.set_data_from_numpy(x)
    http = server.client.infer(MODEL, [http_input])
    np.testing.assert_array_equal(result.as_numpy("output__0"), http.as_numpy("output__0"))
    response = result.get_response()
    deployment_id = http.get_response()["parameters"]["deployment_id"]
    assert (response.model_name, response.model_version, response.id) == (MODEL, "1", "req-7")
    assert (
        response.parameters["deployment_id"].string_param
        == deployment_id
        == f"{MODEL}:1@TestFlow/1795314379884117"
    )
    _, call = stub.ModelInfer.with_call(raw_request(x))
    assert dict(call.trailing_metadata())["x-deployment-id"] == deployment_id


def test_two_outputs_and_a_requested_one(client: Any) -> None:
    x = rows(4)
    both = client.infer("onnx-classifier", [fp32(x)])
    assert both.as_numpy("label").dtype == np.int64
    np.testing.assert_array_equal(both.as_numpy("label").ravel(), onnx_forest().estimator.predict(x))
    asked = client.infer(
        "onnx-classifier", [fp32(x)], outputs=[grpcclient.InferRequestedOutput("probabilities")]
    )
    assert [o.name for o in asked.get_response().outputs] == ["probabilities"]
    np.testing.assert_allclose(asked.as_numpy("probabilities"), onnx_forest().proba(x), atol=PROBA_ATOL)


def test_typed_contents_answer_as_raw_contents(stub: Any) -> None:
    x = rows(3)
    typed = service_pb2.ModelInferRequest(model_name=MODEL)
    tensor = typed.inputs.add(name="input__0", datatype="FP32", shape=x.shape)
    tensor.contents.fp32_contents.extend(x.ravel().tolist())
    assert stub.ModelInfer(typed).raw_output_contents == stub.ModelInfer(raw_request(x)).raw_output_contents


def with_raw(x: np.ndarray, raw: bytes) -> grpcclient.InferInput:
    tensor = fp32(x)
    tensor._raw_content = raw  # NOTE: tritonclient sends what set_data_from_numpy left here
    return tensor


def with_typed(x: np.ndarray, field: str, keep_raw: bool) -> grpcclient.InferInput:
    tensor = fp32(x) if keep_raw else grpcclient.InferInput("input__0", list(x.shape), "FP32")
    getattr(tensor._input.contents, field).extend(x.ravel().astype(np.float32).tolist())
    return tensor


BAD = {
    "unknown model": (
        lambda x: ("no-such-model", [fp32(x)], None),
        "NOT_FOUND",
        "Request for unknown model: 'no-such-model' is not found",
    ),
    "unknown version": (
        lambda x: (MODEL, [fp32(x)], "7"),
        "NOT_FOUND",
        "Request for unknown model: 'fraud-classifier' version 7 is not found",
    ),
    "version not a number": (
        lambda x: (MODEL, [fp32(x)], "x"),
        "INVALID_ARGUMENT",
        "is not a version number",
    ),
    "unknown input": (lambda x: (MODEL, [fp32(x, "nope")], None), "INVALID_ARGUMENT", "unknown input 'nope'"),
    "wrong datatype": (
        lambda x: (MODEL, [fp32(x.astype(np.float64), datatype="FP64")], None),
        "INVALID_ARGUMENT",
        "has datatype FP64: expected FP32",
    ),
    "wrong shape": (lambda x: (MODEL, [fp32(x[:, :5])], None), "INVALID_ARGUMENT", "has shape [2, 5]"),
    "raw contents of the wrong size": (
        lambda x: (MODEL, [with_raw(x, b"\0" * 20)], None),
        "INVALID_ARGUMENT",
        "input byte size mismatch for input 'input__0': expected 64",
    ),
    "both raw and typed": (
        lambda x: (MODEL, [with_typed(x, "fp32_contents", keep_raw=True)], None),
        "INVALID_ARGUMENT",
        "contents field must not be specified when using raw_input_contents",
    ),
    "typed in the wrong field": (
        lambda x: (MODEL, [with_typed(x, "fp64_contents", keep_raw=False)], None),
        "INVALID_ARGUMENT",
        "has its data in fp64_contents: expected contents.fp32_contents",
    ),
    "too large": (
        lambda x: (MODEL, [fp32(rows(200))], None),
        "RESOURCE_EXHAUSTED",
        # NOTE: gRPC's own refusal, from the message's length prefix: nothing of it is buffered
        f"Received message larger than max (6444 vs. {MAX_REQUEST_BYTES})",
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_a_bad_request_is_refused_and_the_next_good_one_answered(client: Any, case: str) -> None:
    build, code, text = BAD[case]
    model, inputs, version = build(rows(2))
    error = failure(lambda: client.infer(model, inputs, model_version=version or ""))
    assert error.status() == f"StatusCode.{code}" and text in error.message(), error.message()
    assert "/" not in error.message().replace("TestFlow/", "")  # NOTE: never a server path
    good = client.infer(MODEL, [fp32(rows(1))])
    np.testing.assert_allclose(good.as_numpy("output__0"), forest().proba(rows(1)), atol=PROBA_ATOL)


def test_an_error_after_the_version_is_resolved_carries_the_stamp(stub: Any) -> None:
    request = raw_request(rows(2))
    request.inputs[0].datatype = "INT32"
    with pytest.raises(grpc.RpcError) as caught:
        stub.ModelInfer(request)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert dict(caught.value.trailing_metadata())["x-deployment-id"] == f"{MODEL}:1@TestFlow/1795314379884117"


def test_a_stream_answers_an_error_in_a_message_and_stays_open(client: Any) -> None:
    answers: queue.Queue[tuple[Any, Any]] = queue.Queue()
    client.start_stream(lambda result, error: answers.put((result, error)))
    try:
        client.async_stream_infer("no-such-model", [fp32(rows(1))], request_id="bad")
        result, error = answers.get(timeout=30)
        assert result is None and "Request for unknown model: 'no-such-model' is not found" in error.message()
        client.async_stream_infer(MODEL, [fp32(rows(3))], request_id="good")
        result, error = answers.get(timeout=30)
    finally:
        client.stop_stream()
    assert error is None
    response = result.get_response()
    assert response.id == "good" and response.parameters["deployment_id"].string_param.startswith(
        f"{MODEL}:1@"
    )
    np.testing.assert_allclose(result.as_numpy("output__0"), forest().proba(rows(3)), atol=PROBA_ATOL)


def test_the_asyncio_client(server: Server) -> None:
    async def run() -> tuple[bool, list[np.ndarray]]:
        async with aioclient.InferenceServerClient(server.grpc_url) as c:
            x = rows(1)
            tensor = aioclient.InferInput("input__0", list(x.shape), "FP32")
            tensor.set_data_from_numpy(x)
            results = await asyncio.gather(*(c.infer(MODEL, [tensor]) for _ in range(8)))
            return await c.is_server_live(), [r.as_numpy("output__0") for r in results]

    live, outputs = asyncio.run(run())
    assert live and len(outputs) == 8
    for output in outputs:
        np.testing.assert_allclose(output, forest().proba(rows(1)), atol=PROBA_ATOL)


# -- statistics, repository, settings, shared memory -------------------------------------------------
def test_statistics_count_grpc_requests_and_match_http(server: Server, client: Any) -> None:
    before = client.get_inference_statistics(MODEL, "1").model_stats[0].inference_stats.success.count
    for _ in range(3):
        client.infer(MODEL, [fp32(rows(2))])
    stats = client.get_inference_statistics(MODEL, "1")
    assert stats.model_stats[0].inference_stats.success.count == before + 3
    assert stats == ParseDict(
        server.client.get_inference_statistics(MODEL, "1"), service_pb2.ModelStatisticsResponse()
    )
    assert {s.name for s in client.get_inference_statistics().model_stats} == {MODEL, "onnx-classifier"}


def test_repository_rpcs_are_restricted_as_http(server: Server, client: Any) -> None:
    error = failure(client.get_model_repository_index)
    assert error.status() == "StatusCode.UNAVAILABLE" and "x-admin-key" in error.message()
    admin = dict([ADMIN])
    index = client.get_model_repository_index(headers=admin)
    listed = json.loads(server.request("POST", "/v2/repository/index", b"{}", admin)[2])
    assert index == ParseDict({"models": listed}, service_pb2.RepositoryIndexResponse())
    assert {(m.name, m.state) for m in index.models} == {(MODEL, "READY"), ("onnx-classifier", "READY")}
    client.unload_model("onnx-classifier", headers=admin)
    assert not client.is_model_ready("onnx-classifier")
    client.load_model("onnx-classifier", headers=admin)
    assert client.is_model_ready("onnx-classifier")
    missing = failure(lambda: client.load_model("no-such-model", headers=admin))
    assert "failed to load 'no-such-model'" in missing.message() and "/" not in missing.message()


def test_log_and_trace_settings_are_the_nodes(server: Server, client: Any) -> None:
    updated = client.update_log_settings({"log_verbose_level": 1})
    assert updated.settings["log_verbose_level"].uint32_param == 1
    assert server.client.get_log_settings()["log_verbose_level"] == 1
    client.update_log_settings({"log_verbose_level": 0})
    trace = client.get_trace_settings()
    assert {k: list(v.value) for k, v in trace.settings.items()} == {
        k: v if isinstance(v, list) else [v] for k, v in server.client.get_trace_settings().items()
    }


def test_system_shared_memory_in_and_out(client: Any) -> None:
    import tritonclient.utils.shared_memory as shm

    x = rows(4)
    out_size = 4 * 2 * 4
    handle = shm.create_shared_memory_region("grpc-io", "/tritonflow-grpc-io", x.nbytes + out_size)
    try:
        shm.set_shared_memory_region(handle, [x])
        client.register_system_shared_memory("grpc-io", "/tritonflow-grpc-io", x.nbytes + out_size)
        status = client.get_system_shared_memory_status()
        assert status.regions["grpc-io"].byte_size == x.nbytes + out_size
        tensor = grpcclient.InferInput("input__0", list(x.shape), "FP32")
        tensor.set_shared_memory("grpc-io", x.nbytes)
        output = grpcclient.InferRequestedOutput("output__0")
        output.set_shared_memory("grpc-io", out_size, offset=x.nbytes)
        result = client.infer(MODEL, [tensor], outputs=[output])
        answer = result.get_output("output__0")
        assert answer.parameters["shared_memory_byte_size"].int64_param == out_size
        written = shm.get_contents_as_numpy(handle, np.float32, [4, 2], offset=x.nbytes)
        np.testing.assert_allclose(written, forest().proba(x), atol=PROBA_ATOL)
        client.unregister_system_shared_memory("grpc-io")
        assert not client.get_system_shared_memory_status().regions
    finally:
        shm.destroy_shared_memory_region(handle)
    assert not client.get_cuda_shared_memory_status().regions
    error = failure(lambda: client.register_cuda_shared_memory("gpu", b"\0" * 64, 0, 64))
    assert error.status() == "StatusCode.INVALID_ARGUMENT" and "no GPU" in error.message()


def test_the_metrics_port_answers_metrics_only(server: Server) -> None:
    import http.client

    def get(path: str) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", server.metrics_port, timeout=10)
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()

    status, body = get("/metrics")
    assert status == 200 and b"nv_inference_request_success" in body
    assert get("/v2/health/live")[0] == 404 and get(f"/v2/models/{MODEL}")[0] == 404
    assert server.request("GET", "/metrics")[0] == 200  # NOTE: still on the HTTP port too


def test_tls_cert_secures_grpc_too(serve: Any, tmp_path_factory: pytest.TempPathFactory) -> None:
    from test_tls import certificate

    folder = tmp_path_factory.mktemp("grpc-tls")
    publish(folder / "repo", MODEL, forest())
    cert, key, _ = certificate(folder, "node")
    server = serve(
        folder / "repo",
        "--tls-cert",
        str(cert),
        "--tls-key",
        str(key),
        tls=ssl.create_default_context(cafile=cert),
    )
    secure = grpcclient.InferenceServerClient(server.grpc_url, ssl=True, root_certificates=str(cert))
    plain = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        result = secure.infer(MODEL, [fp32(rows(2))])
        np.testing.assert_allclose(result.as_numpy("output__0"), forest().proba(rows(2)), atol=PROBA_ATOL)
        assert failure(plain.is_server_live).status() == "StatusCode.UNAVAILABLE"
    finally:
        secure.close()
        plain.close()
    assert f"gRPC listening on {server.grpc_url} (TLS)" in server.log_text()


def test_classification_answers_as_http(server: Server, client: Any) -> None:
    x = rows(3)
    asked = [grpcclient.InferRequestedOutput("output__0", class_count=2)]
    result = client.infer(MODEL, [fp32(x)], outputs=asked)
    assert result.get_response().outputs[0].datatype == "BYTES"
    http_input = httpclient.InferInput("input__0", list(x.shape), "FP32")
    http_input.set_data_from_numpy(x)
    http = server.client.infer(
        MODEL, [http_input], outputs=[httpclient.InferRequestedOutput("output__0", class_count=2)]
    )
    np.testing.assert_array_equal(result.as_numpy("output__0"), http.as_numpy("output__0"))
    top = result.as_numpy("output__0")[:, 0]
    assert [int(entry.split(b":")[1]) for entry in top] == list(forest().proba(x).argmax(axis=1))


def test_sigterm_drains_grpc_before_the_models_unload(
    serve: Any, tmp_path_factory: pytest.TempPathFactory
) -> None:
    root = tmp_path_factory.mktemp("grpc-drain") / "repo"
    publish(root, MODEL, forest())
    server = serve(root, "--shutdown-timeout", "1")
    client = grpcclient.InferenceServerClient(server.grpc_url)
    answers: queue.Queue[tuple[Any, Any]] = queue.Queue()
    client.start_stream(lambda result, error: answers.put((result, error)))
    try:
        client.async_stream_infer(MODEL, [fp32(rows(1))])
        assert answers.get(timeout=30)[1] is None
        # NOTE: the stream stays open through the signal: gRPC waits for it, then the models unload
        assert server.stop() == 0
    finally:
        client.stop_stream()
        client.close()
    log = server.log_text()
    assert "Traceback" not in log
    assert log.index("gRPC stopped") < log.index(f"unloaded {MODEL}:1"), log


def test_grpc_requests_share_the_in_flight_budget_with_http(server: Server, client: Any) -> None:
    """A stalled HTTP upload that claimed the whole --max-inflight-bytes: a gRPC request does not fit
    beside it (UNAVAILABLE, retry) until the upload is gone; then it is answered."""
    upload = socket.create_connection(("127.0.0.1", server.port))
    head = f"POST /v2/models/{MODEL}/infer HTTP/1.1\r\nHost: x\r\nContent-Length: {MAX_REQUEST_BYTES}\r\n\r\n"
    upload.sendall(head.encode() + b"{")
    try:
        error = eventually(lambda: failure(lambda: client.infer(MODEL, [fp32(rows(2))])))
        assert error.status() == "StatusCode.UNAVAILABLE" and "--max-inflight-bytes" in error.message()
    finally:
        upload.close()
    answer = eventually(lambda: client.infer(MODEL, [fp32(rows(2))]))
    np.testing.assert_allclose(answer.as_numpy("output__0"), forest().proba(rows(2)), atol=PROBA_ATOL)


def eventually(call: Any, timeout: float = 10.0) -> Any:
    """call's result once it stops raising (the node sees a connection's state a moment later)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return call()
        except (AssertionError, InferenceServerException, pytest.fail.Exception):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
