"""Triton 24.10's gRPC and the node's answer a client's mistakes with the same status codes and texts.

Each check runs on both servers, on the same repository, in model control mode poll; the texts
compared are the parts Triton's clients and examples match (the rest of each message is our own).
"""

from __future__ import annotations

import queue
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from sklearn.datasets import make_classification
from sklearn.ensemble import RandomForestClassifier
from test_triton_compat import deploy_direct
from tritonclient.utils import InferenceServerException

MODEL = "wired"
N = 6  # features
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Any:
    X, y = make_classification(200, N, random_state=3)
    repository = tmp_path_factory.mktemp("triton-grpc") / "repo"
    model = RandomForestClassifier(n_estimators=3, random_state=3).fit(X, y)
    deploy_direct(repository, MODEL, model, X.astype(np.float32), "601")
    return repository


@pytest.fixture(scope="module", params=["triton", "node"])
def client(request: pytest.FixtureRequest, repository: Any) -> Any:
    if request.param == "triton":
        triton = request.getfixturevalue("start_triton")(repository)
        triton.wait_ready(MODEL, 1)
        return triton.grpc
    node = request.getfixturevalue("serve_module")(repository)
    c = grpcclient.InferenceServerClient(node.grpc_url)
    request.addfinalizer(c.close)
    return c


def tensor(shape: list[int], datatype: str = "FP32", name: str = "input__0") -> grpcclient.InferInput:
    x = grpcclient.InferInput(name, shape, datatype)
    x.set_data_from_numpy(np.zeros(shape, {"FP32": np.float32, "FP64": np.float64}[datatype]))
    return x


def raw(size: int) -> grpcclient.InferInput:
    x = tensor([2, N])
    x._raw_content = b"\0" * size  # NOTE: tritonclient sends what set_data_from_numpy left here
    return x


def typed(field: str, keep_raw: bool) -> grpcclient.InferInput:
    x = tensor([2, N]) if keep_raw else grpcclient.InferInput("input__0", [2, N], "FP32")
    getattr(x._input.contents, field).extend([0] * 2 * N)
    return x


CASES = {
    "unknown model": (
        lambda c: c.infer("nope", [tensor([2, N])]),
        "NOT_FOUND",
        "Request for unknown model: 'nope' is not found",
    ),
    "unknown version": (
        lambda c: c.infer(MODEL, [tensor([2, N])], model_version="7"),
        "NOT_FOUND",
        f"Request for unknown model: '{MODEL}' version 7 is not found",
    ),
    "metadata of an unknown model": (
        lambda c: c.get_model_metadata("nope"),
        "NOT_FOUND",
        "Request for unknown model: 'nope' is not found",
    ),
    "config of an unknown model": (
        lambda c: c.get_model_config("nope"),
        "NOT_FOUND",
        "Request for unknown model: 'nope' is not found",
    ),
    "load in mode poll": (lambda c: c.load_model(MODEL), "UNAVAILABLE", ""),
    "unload in mode poll": (lambda c: c.unload_model(MODEL), "UNAVAILABLE", ""),
    "wrong datatype": (lambda c: c.infer(MODEL, [tensor([2, N], "FP64")]), "INVALID_ARGUMENT", "'input__0'"),
    "wrong shape": (lambda c: c.infer(MODEL, [tensor([2, N - 1])]), "INVALID_ARGUMENT", "'input__0'"),
    "unknown input": (
        lambda c: c.infer(MODEL, [tensor([2, N], name="other")]),
        "INVALID_ARGUMENT",
        "'other'",
    ),
    "unknown output": (
        lambda c: c.infer(MODEL, [tensor([2, N])], outputs=[grpcclient.InferRequestedOutput("zz")]),
        "INVALID_ARGUMENT",
        "'zz'",
    ),
    "raw contents of the wrong size": (
        lambda c: c.infer(MODEL, [raw(20)]),
        "INVALID_ARGUMENT",
        "input byte size mismatch for input 'input__0'",
    ),
    "raw and typed contents": (
        lambda c: c.infer(MODEL, [typed("fp32_contents", keep_raw=True)]),
        "INVALID_ARGUMENT",
        "contents field must not be specified when using raw_input_contents",
    ),
    "typed contents in the wrong field": (
        lambda c: c.infer(MODEL, [typed("int64_contents", keep_raw=False)]),
        "INVALID_ARGUMENT",
        "'input__0'",
    ),
    "CUDA shared memory without a GPU": (
        lambda c: c.register_cuda_shared_memory("r", b"\0" * 64, 0, 64),
        "INVALID_ARGUMENT",
        "",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_the_same_mistake_gets_the_same_code(client: Any, case: str) -> None:
    call, code, text = CASES[case]
    with pytest.raises(InferenceServerException) as caught:
        call(client)
    assert caught.value.status() == f"StatusCode.{code}", caught.value.message()
    assert text in caught.value.message()
    assert client.infer(MODEL, [tensor([2, N])]).as_numpy("output__0").shape == (2, 2)


def test_typed_contents_and_readiness(client: Any) -> None:
    assert client.infer(MODEL, [typed("fp32_contents", keep_raw=False)]).as_numpy("output__0").shape == (2, 2)
    assert client.is_server_ready() and client.is_model_ready(MODEL)
    assert not client.is_model_ready("nope")  # NOTE: not an error, on either


def test_a_stream_error_is_a_message_and_the_stream_goes_on(client: Any) -> None:
    answers: queue.Queue[tuple[Any, Any]] = queue.Queue()
    client.start_stream(lambda result, error: answers.put((result, error)))
    try:
        client.async_stream_infer("nope", [tensor([1, N])])
        bad = answers.get(timeout=30)
        client.async_stream_infer(MODEL, [tensor([1, N])])
        good = answers.get(timeout=30)
    finally:
        client.stop_stream()
    assert bad[0] is None and "Request for unknown model: 'nope' is not found" in bad[1].message()
    assert good[1] is None and good[0].as_numpy("output__0").shape == (1, 2)
