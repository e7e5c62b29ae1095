"""The classification extension on real Triton 24.10 and on the node, on the same repository: the same
request answers the same strings, datatype and shape. The models are what our deploys publish: a
classifier on string classes and one on numbers (each with its labels file), a regressor (one
column), and single-tree classifiers whose pure leaves give equal scores (ties), 3 and 20 columns."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from sklearn.datasets import make_classification, make_regression
from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor
from test_triton_compat import deploy_direct

pytestmark = pytest.mark.slow

ROWS = 8


def _classified(
    classes: int, trees: int, depth: int, labels: list[str] | None = None
) -> tuple[Any, np.ndarray]:
    X, y = make_classification(
        600,
        6,
        n_classes=classes,
        n_informative=5,
        n_redundant=0,
        n_clusters_per_class=1,
        random_state=classes,
    )
    target = np.array(labels)[y] if labels else y
    forest = RandomForestClassifier(n_estimators=trees, max_depth=depth, bootstrap=trees > 1, random_state=0)
    return forest.fit(X.astype(np.float32), target), X.astype(np.float32)


def _regressor() -> tuple[Any, np.ndarray]:
    X, y = make_regression(300, 6, random_state=0)
    return RandomForestRegressor(n_estimators=5, max_depth=3, random_state=0).fit(X, y), X.astype(np.float32)


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, np.ndarray]]:
    root = tmp_path_factory.mktemp("classification") / "repo"
    models = {
        "labelled": _classified(3, 5, 3, ["fraud", "ok", "review"]),
        "numbered": _classified(3, 5, 3),
        "price": _regressor(),
        "ties": _classified(3, 1, 12),
        "many-ties": _classified(20, 1, 12),
    }
    for i, (name, (model, X)) in enumerate(models.items()):
        deploy_direct(root, name, model, X, str(610 + i))
    return root, {name: X[:ROWS] for name, (_, X) in models.items()}


@pytest.fixture(scope="module")
def servers(start_triton: Any, serve_module: Any, repository: tuple[Path, dict[str, np.ndarray]]) -> Any:
    """Each transport's client of Triton and of the node, and the rows to ask each model about."""
    root, rows = repository
    triton = start_triton(root)
    for name in rows:
        triton.wait_ready(name, 1)
    # NOTE: Triton here runs Treelite's GTIL (see test_triton_compat): the node too, so the scores are equal
    node = serve_module(root, "--engine", "treelite")
    node_grpc = grpcclient.InferenceServerClient(node.grpc_url)
    yield {"http": (triton.http, node.client), "grpc": (triton.grpc, node_grpc)}, rows
    node_grpc.close()


def top(client: Any, model: str, X: np.ndarray, k: int, binary: bool) -> tuple[str, list[int], list[str]]:
    """Datatype, shape and entries of the output asked for with class_count k (gRPC: always binary)."""
    http = isinstance(client, httpclient.InferenceServerClient)
    lib = httpclient if http else grpcclient
    x = lib.InferInput("input__0", list(X.shape), "FP32")
    x.set_data_from_numpy(X)
    asked = lib.InferRequestedOutput("output__0", class_count=k, **({"binary_data": binary} if http else {}))
    result = client.infer(model, [x], outputs=[asked])
    output = result.get_output("output__0")
    datatype, shape = (output["datatype"], output["shape"]) if http else (output.datatype, list(output.shape))
    entries = [e.decode() if isinstance(e, bytes) else e for e in result.as_numpy("output__0").ravel()]
    return datatype, shape, entries


@pytest.mark.parametrize("transport", ["http-binary", "http-json", "grpc"])
@pytest.mark.parametrize("k", [1, 2, 3, 25])
@pytest.mark.parametrize("model", ["labelled", "numbered", "price", "ties", "many-ties"])
def test_class_count_answers_tritons_strings(servers: Any, model: str, k: int, transport: str) -> None:
    clients, rows = servers
    triton, node = clients[transport.split("-")[0]]
    theirs = top(triton, model, rows[model], k, transport != "http-json")
    assert theirs[0] == "BYTES"  # what the comparison covers: Triton classified
    assert top(node, model, rows[model], k, transport != "http-json") == theirs


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_one_row(servers: Any, transport: str) -> None:
    clients, rows = servers
    triton, node = clients[transport]
    one = rows["labelled"][:1]
    assert top(node, "labelled", one, 2, False) == top(triton, "labelled", one, 2, False)
