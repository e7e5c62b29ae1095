"""`tritonflow.client.infer_frame` against a real node, over HTTP and gRPC: a forest trained on a
DataFrame gets the frame as its matrix, a model with one input per column gets each column by name;
answers equal the native model's, the stamp is the version's deployment ID, and a frame that does
not fit is an error naming the column before anything is sent."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pandas as pd
import pytest
from conftest import N_FEATURES, Trained, data, fil_forest, publish
from onnx import TensorProto, helper
from sklearn.ensemble import RandomForestClassifier

from tritonflow.client import FrameError, infer_frame
from tritonflow.serving.model_config import ConfigSpec, TensorSpec, build_config

COLUMNS = [f"f{i}" for i in range(N_FEATURES)]


def two_column_model() -> Trained:
    """An ONNX model with one [rows, 1] FP32 input per column: out = a + 2 * b."""
    a, b = (helper.make_tensor_value_info(n, TensorProto.FLOAT, [None, 1]) for n in ("a", "b"))
    out = helper.make_tensor_value_info("out", TensorProto.FLOAT, [None, 1])
    two = helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])
    nodes = [helper.make_node("Mul", ["b", "two"], ["b2"]), helper.make_node("Add", ["a", "b2"], ["out"])]
    graph = helper.make_graph(nodes, "adder", [a, b], [out], initializer=[two])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return Trained(None, {"model.onnx": model.SerializeToString()}, "onnxruntime")


@pytest.fixture(scope="module")
def node(serve_module: Any, tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any, dict[str, str]]:
    repo = tmp_path_factory.mktemp("frames") / "repo"
    X, y = data()
    frame = pd.DataFrame(X, columns=COLUMNS)
    forest = RandomForestClassifier(10, max_depth=4, random_state=0).fit(frame, y)
    trained = fil_forest(forest)
    stamps = {"forest": publish(repo, "forest", trained).deployment_id}
    spec = ConfigSpec(
        name="adder",
        backend="onnxruntime",
        inputs=(TensorSpec("a", "FP32", (1,)), TensorSpec("b", "FP32", (1,))),
        outputs=(TensorSpec("out", "FP32", (1,)),),
        max_batch_size=64,
    )
    stamps["adder"] = publish(repo, "adder", two_column_model(), build_config(spec)).deployment_id
    return serve_module(repo), forest, stamps


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_a_frame_is_the_forests_matrix(node: tuple[Any, Any, dict[str, str]], protocol: str) -> None:
    server, forest, stamps = node
    frame = pd.DataFrame(data()[0][:50], columns=COLUMNS)
    url = server.url.removeprefix("http://") if protocol == "http" else server.grpc_url
    answer, deployment_id = infer_frame(url, "forest", frame, protocol=protocol)
    np.testing.assert_allclose(answer, forest.predict_proba(frame), rtol=1e-5, atol=1e-6)
    assert deployment_id == stamps["forest"]


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_columns_go_to_the_inputs_of_their_name(node: tuple[Any, Any, dict[str, str]], protocol: str) -> None:
    server, _, stamps = node
    frame = pd.DataFrame({"b": [1.0, 2.0, 3.5], "a": [10, 20, 30]})  # another order, ints: cast to FP32
    url = server.url.removeprefix("http://") if protocol == "http" else server.grpc_url
    answer, deployment_id = infer_frame(url, "adder", frame, protocol=protocol)
    np.testing.assert_allclose(answer.ravel(), [12.0, 24.0, 37.0])
    assert deployment_id == stamps["adder"]


@pytest.mark.parametrize(
    ("model", "frame", "message"),
    [
        ("adder", pd.DataFrame({"a": [1.0]}), "missing 'b' (the model takes a, b)"),
        ("adder", pd.DataFrame({"a": [1.0], "b": [1.0], "c": [0.0]}), "extra 'c' (the model takes a, b)"),
        (
            "adder",
            pd.DataFrame({"a": ["x"], "b": [1.0]}),
            "column 'a' must hold numbers for the model's",
        ),
        ("forest", pd.DataFrame({"f0": [1.0], "f1": [2.0]}), f"takes {N_FEATURES} columns, the frame has 2"),
        ("nope", pd.DataFrame({"a": [1.0]}), "cannot read the metadata of model 'nope'"),
    ],
)
def test_a_frame_that_does_not_fit_names_what_is_wrong(
    node: tuple[Any, Any, dict[str, str]], model: str, frame: pd.DataFrame, message: str
) -> None:
    server, _, _ = node
    with pytest.raises(FrameError, match=message.replace("(", r"\(").replace(")", r"\)")):
        infer_frame(server.url.removeprefix("http://"), model, frame)
    assert server.client.is_server_live()


def test_an_unreachable_server_is_one_clear_error(tmp_path: Path, free_port: int) -> None:
    with pytest.raises(FrameError, match="cannot reach the server for model 'forest'"):
        infer_frame(f"127.0.0.1:{free_port}", "forest", pd.DataFrame({"a": [1.0]}))
