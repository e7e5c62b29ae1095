"""The classification extension (`class_count` on an output) through the unmodified tritonclient.http
client, against a real `tritonflow serve` on models published by the plugin's own `deploy`: the
top classes of each row as Triton formats them ("<value>:<index>[:<label>]", BYTES), checked against
the trained model's own probabilities and predictions."""

from __future__ import annotations

import http.client
import json
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from conftest import Server
from test_class_labels import CLASSES, classifier, publish, regressor

ROWS = 16


@pytest.fixture(scope="module")
def models() -> dict[str, tuple[Any, np.ndarray]]:
    """Each model to publish: the trained one and rows to ask about."""
    return {"labelled": classifier(CLASSES), "binary": classifier([0, 1]), "price": regressor()}


@pytest.fixture(scope="module")
def server(
    serve_module: Any, models: dict[str, tuple[Any, np.ndarray]], tmp_path_factory: pytest.TempPathFactory
) -> Server:
    root = tmp_path_factory.mktemp("classification") / "repo"
    for i, (name, (model, X)) in enumerate(models.items()):
        publish(root, name, model, X, str(700 + i))
    return serve_module(root)


def infer(server: Server, model: str, X: np.ndarray, **asked: Any) -> Any:
    x = httpclient.InferInput("input__0", list(X.shape), "FP32")
    x.set_data_from_numpy(X)
    outputs = [httpclient.InferRequestedOutput("output__0", **asked)] if asked else None
    return server.client.infer(model, [x], outputs=outputs)


def top_classes(
    server: Server, model: str, X: np.ndarray, k: int, binary: bool
) -> tuple[Any, list[list[str]]]:
    """The response and each row's entries as text."""
    result = infer(server, model, X, binary_data=binary, class_count=k)
    entries = result.as_numpy("output__0")
    text = [[e.decode() if isinstance(e, bytes) else e for e in row] for row in entries.tolist()]
    return result, text


def expected(scores: np.ndarray, k: int, labels: list[str] | None) -> list[list[str]]:
    """What Triton answers for these served scores: descending, equal scores in column order."""
    rows = []
    for row in scores.tolist():
        ranked = sorted(range(len(row)), key=lambda i: (-row[i], i))[:k]
        rows.append([f"{row[i]:f}:{i}" + (f":{labels[i]}" if labels else "") for i in ranked])
    return rows


@pytest.mark.parametrize("binary", [True, False])
@pytest.mark.parametrize("k", [1, 2, 5])
def test_top_classes_name_the_labels_file_and_rank_the_native_probabilities(
    server: Server, models: dict[str, Any], k: int, binary: bool
) -> None:
    model, X = models["labelled"]
    X = X[:ROWS]
    result, text = top_classes(server, "labelled", X, k, binary)
    output = result.get_output("output__0")
    top = min(k, len(CLASSES))  # NOTE: a class_count above the columns answers every column, as Triton
    assert (output["datatype"], output["shape"]) == ("BYTES", [ROWS, top])
    assert ("binary_data_size" in output.get("parameters", {})) is binary
    assert result.get_response()["parameters"]["deployment_id"].startswith("labelled:1@")
    served = infer(server, "labelled", X).as_numpy("output__0")
    assert text == expected(served, k, CLASSES)
    native = model.predict_proba(X)
    values = np.array([[float(e.split(":")[0]) for e in row] for row in text])
    indices = np.array([[int(e.split(":")[1]) for e in row] for row in text])
    np.testing.assert_allclose(values, np.take_along_axis(native, indices, axis=1), atol=2e-6)
    assert (values[:, :-1] >= values[:, 1:]).all()  # ranked, best first
    labels = [[e.split(":")[2] for e in row] for row in text]
    assert [row[0] for row in labels] == list(model.predict(X))  # the first is the model's prediction


def test_one_row_and_numeric_classes(server: Server, models: dict[str, Any]) -> None:
    model, X = models["binary"]
    _, text = top_classes(server, "binary", X[:1], 2, binary=False)
    p = model.predict_proba(X[:1])[0]
    best = int(np.argmax(p))
    assert len(text) == 1 and len(text[0]) == 2
    assert text[0][0].endswith(f":{best}:{best}")  # the labels file holds "0" and "1"
    assert float(text[0][0].split(":")[0]) == pytest.approx(p[best], abs=2e-6)


@pytest.mark.parametrize("binary", [True, False])
def test_a_regressor_has_one_column_and_no_labels(
    server: Server, models: dict[str, Any], binary: bool
) -> None:
    model, X = models["price"]
    result, text = top_classes(server, "price", X[:ROWS], 3, binary)
    assert result.get_output("output__0")["shape"] == [ROWS, 1]
    served = infer(server, "price", X[:ROWS]).as_numpy("output__0")
    assert text == expected(served, 3, None)
    np.testing.assert_allclose([float(row[0][:-2]) for row in text], model.predict(X[:ROWS]), rtol=1e-5)


def raw_infer(server: Server, model: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    connection = http.client.HTTPConnection(*server.url.split(":"))
    try:
        connection.request("POST", f"/v2/models/{model}/infer", json.dumps(body))
        answer = connection.getresponse()
        return answer.status, json.loads(answer.read())
    finally:
        connection.close()


@pytest.mark.parametrize("value", [-1, "3", 1.5, True])
def test_a_bad_class_count_is_a_400_and_the_next_request_is_answered(
    server: Server, models: dict[str, Any], value: Any
) -> None:
    _, X = models["labelled"]
    tensor = {"name": "input__0", "shape": [1, X.shape[1]], "datatype": "FP32", "data": X[0].tolist()}
    asked = {"name": "output__0", "parameters": {"classification": value}}
    status, body = raw_infer(server, "labelled", {"inputs": [tensor], "outputs": [asked]})
    # NOTE: Triton answers 500 for this client mistake; the node keeps the 4xx
    assert status == 400 and f"classification is {value!r}" in body["error"], body
    asked["parameters"]["classification"] = 2
    status, body = raw_infer(server, "labelled", {"inputs": [tensor], "outputs": [asked]})
    assert status == 200, body
    (output,) = body["outputs"]
    assert (output["datatype"], output["shape"], len(output["data"])) == ("BYTES", [1, 2], 2)
    assert output["data"][0].split(":")[2] == models["labelled"][0].predict(X[:1])[0]


def test_the_server_lists_the_extension(server: Server) -> None:
    assert "classification" in server.client.get_server_metadata()["extensions"]


def test_grpc_answers_the_same_strings(server: Server, models: dict[str, Any]) -> None:
    _, X = models["labelled"]
    x = grpcclient.InferInput("input__0", list(X[:ROWS].shape), "FP32")
    x.set_data_from_numpy(X[:ROWS])
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        result = client.infer(
            "labelled", [x], outputs=[grpcclient.InferRequestedOutput("output__0", class_count=2)]
        )
    output = result.get_output("output__0")
    assert (output.datatype, list(output.shape)) == ("BYTES", [ROWS, 2])
    assert result.as_numpy("output__0").tolist() == [
        [e.encode() for e in row] for row in top_classes(server, "labelled", X[:ROWS], 2, binary=True)[1]
    ]
