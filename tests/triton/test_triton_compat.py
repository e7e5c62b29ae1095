"""Real Triton serves our repositories unchanged, with the same answers and a traceable version.

The server is Triton 24.10 from the nvidia-pytriton wheel: it has no native FIL backend, so it
runs ours (`tritonflow triton-backends`: a Python-based `fil` backend on tritonflow's forest
engine, here Treelite's GTIL) while our serving node runs nvForest where installed. It has no
onnxruntime backend either: ONNX versions run on our Python-based `onnxruntime` backend (ONNX
Runtime through the same OnnxBackend our node loads).
The repository holds the fraud flow's winner, a pre-25.09 (`output_class`) classifier, a classifier
on string labels (its labels file beside config.pbtxt) and a regressor that gets a second version
while Triton polls.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from google.protobuf import json_format
from servers import Server, wait_for
from sklearn.datasets import make_classification, make_regression
from sklearn.ensemble import GradientBoostingClassifier, RandomForestClassifier, RandomForestRegressor
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from tritonflow.lineage.repository import ModelRepository
from tritonflow.plugin.options import parse_options
from tritonflow.plugin.publish import Provenance, deploy
from tritonflow.serving.model_config import ModelConfig, parse_config

ROOT = Path(__file__).resolve().parents[2]
ROWS = 256  # rows compared per model
ATOL = 1e-5  # float32 forests: Treelite/nvForest vs the native library differ by <= 1.2e-7
MODELS = ("fraud-classifier", "legacy-gb", "labelled-rf", "price")
CLASSES = ["fraud", "ok", "review"]  # labelled-rf's, in column order

pytestmark = pytest.mark.slow

# Run in the flow's Metaflow environment: the winner's own predict_proba on the validation rows.
NATIVE_SCRIPT = """
import sys
import numpy as np
from metaflow import Task, namespace
namespace(None)
task = Task(sys.argv[1])
X = task.data.X_val.to_numpy(dtype=np.float32)[: int(sys.argv[2])]
np.savez(sys.argv[3], X=X, native=task.data.model.predict_proba(X))
"""


@dataclass(frozen=True)
class Deployed:
    """One published version, rows to ask it about, and the trained model's own answers."""

    name: str
    version: int
    deployment_id: str
    run_id: str
    X: np.ndarray
    native: np.ndarray


# -- the repository -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("triton-compat") / "repo"


def deploy_direct(repository: Path, name: str, model: Any, X: np.ndarray, run_id: str, **options: str) -> Any:
    """Publish as @deploy does, without a flow (the record names a made-up run)."""
    opts = parse_options(
        {"name": name, "repository": str(repository), **options}, "DirectFlow", is_join=False
    )
    meta = {"flow": "DirectFlow", "run_id": run_id, "task": f"DirectFlow/{run_id}/train/1"}
    return deploy(model, opts, sample=X, provenance=Provenance(metaflow=meta))


@pytest.fixture(scope="module")
def fraud(
    repository: Path, metaflow_env_module: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Deployed:
    """The example flow's winner, deployed by the flow itself."""
    run = subprocess.run(
        [sys.executable, "flows/fraud_flow.py", "--no-pylint", "run", "--rows", "4000"],
        cwd=ROOT,
        env={**metaflow_env_module, "TRITONFLOW_REPOSITORY": str(repository)},
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    record = ModelRepository(str(repository)).read_record("fraud-classifier", 1)
    assert record.backend == "fil", (
        f"the flow's winner is {record.model['class']} ({record.backend}): not FIL"
    )
    assert f"deployed {record.deployment_id}" in run.stdout + run.stderr
    out = tmp_path_factory.mktemp("native") / "fraud.npz"
    winner = record.selection["winner"]["task"]
    native = subprocess.run(
        [sys.executable, "-c", NATIVE_SCRIPT, winner, str(ROWS), str(out)],
        env=metaflow_env_module,
        capture_output=True,
    )
    assert native.returncode == 0, native.stderr.decode()[-3000:]
    saved = np.load(out)
    return Deployed(
        record.model_name, 1, record.deployment_id, record.metaflow["run_id"], saved["X"], saved["native"]
    )


@pytest.fixture(scope="module")
def legacy(repository: Path) -> Deployed:
    """A gradient-boosting classifier in the pre-25.09 dialect (`output_class`), as for Triton 25.08."""
    X, y = make_classification(800, 12, n_informative=6, random_state=3)
    X = X.astype(np.float32)
    model = GradientBoostingClassifier(n_estimators=30, max_depth=3, random_state=3).fit(X, y)
    record = deploy_direct(repository, "legacy-gb", model, X, "101", triton_version="25.08")
    assert "output_class" in ModelRepository(str(repository)).read_config("legacy-gb")
    return Deployed("legacy-gb", 1, record.deployment_id, "101", X[:ROWS], model.predict_proba(X[:ROWS]))


@pytest.fixture(scope="module")
def labelled(repository: Path) -> Deployed:
    """A classifier trained on string labels: config.pbtxt names labels.txt beside it."""
    X, y = make_classification(600, 8, n_classes=3, n_informative=5, random_state=4)
    X = X.astype(np.float32)
    model = RandomForestClassifier(n_estimators=20, max_depth=6, random_state=4).fit(X, np.array(CLASSES)[y])
    record = deploy_direct(repository, "labelled-rf", model, X, "401")
    assert (repository / "labelled-rf" / "labels.txt").read_text().split() == CLASSES
    return Deployed("labelled-rf", 1, record.deployment_id, "401", X[:ROWS], model.predict_proba(X[:ROWS]))


def regressor(seed: int) -> tuple[RandomForestRegressor, np.ndarray]:
    X, y = make_regression(600, 10, noise=5.0, random_state=0)
    X = X.astype(np.float32)
    return RandomForestRegressor(n_estimators=20 + seed, max_depth=6, random_state=seed).fit(X, y), X


@pytest.fixture(scope="module")
def price(repository: Path) -> Deployed:
    model, X = regressor(seed=1)
    record = deploy_direct(repository, "price", model, X, "201")
    return Deployed("price", 1, record.deployment_id, "201", X[:ROWS], model.predict(X[:ROWS]).reshape(-1, 1))


@pytest.fixture(scope="module")
def deployed(fraud: Deployed, legacy: Deployed, labelled: Deployed, price: Deployed) -> dict[str, Deployed]:
    return {d.name: d for d in (fraud, legacy, labelled, price)}


@pytest.fixture(scope="module")
def triton(start_triton: Any, repository: Path, deployed: dict[str, Deployed]) -> Any:
    server = start_triton(repository)
    for d in deployed.values():
        server.wait_ready(d.name, d.version)
    return server


@pytest.fixture(scope="module")
def node(serve_module: Any, repository: Path, deployed: dict[str, Deployed]) -> Server:
    return serve_module(repository)


# -- clients ----------------------------------------------------------------------------------------
def infer(client: Any, model: str, X: np.ndarray) -> tuple[np.ndarray, Any]:
    """output__0 and the response (a dict over HTTP, a protobuf over gRPC) for one request."""
    protocol = grpcclient if isinstance(client, grpcclient.InferenceServerClient) else httpclient
    tensor = protocol.InferInput("input__0", list(X.shape), "FP32")
    tensor.set_data_from_numpy(X)
    result = client.infer(model, [tensor])
    return result.as_numpy("output__0"), result.get_response()


def lineage(repository: Path, short_id: str, env: dict[str, str], *flags: str) -> dict[str, Any]:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "tritonflow",
            "lineage",
            short_id,
            "--repository",
            str(repository),
            "--json",
            *flags,
        ],
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def max_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64))))


# -- the tests --------------------------------------------------------------------------------------
@pytest.mark.parametrize("model", MODELS)
def test_triton_reports_our_config_and_a_ready_version(triton: Any, repository: Path, model: str) -> None:
    ours = parse_config(ModelRepository(str(repository)).read_config(model))
    http_config = triton.http.get_model_config(model)
    grpc_config = triton.grpc.get_model_config(model, as_json=True)["config"]
    assert triton.grpc.is_model_ready(model, "1")
    for reported in (http_config, grpc_config):
        theirs = json_format.ParseDict(reported, ModelConfig(), ignore_unknown_fields=True)
        assert theirs.backend == ours.backend == "fil"
        assert theirs.max_batch_size == ours.max_batch_size
        assert list(theirs.input) == list(ours.input)
        assert list(theirs.output) == list(ours.output)
        assert dict(theirs.parameters) == dict(ours.parameters)
        assert theirs.version_policy == ours.version_policy
        assert [(g.kind, g.count) for g in theirs.instance_group] == [
            (g.kind, g.count) for g in ours.instance_group
        ]
    log = triton.log_text()
    assert "/fil/model.py" in log, "Triton did not take the Python-based fil backend"
    assert f"tritonflow fil: {model} version 1 runs on treelite-gtil" in log


@pytest.mark.parametrize("model", MODELS)
def test_triton_answers_as_the_native_model_and_our_node(
    triton: Any, node: Server, deployed: dict[str, Deployed], model: str
) -> None:
    d = deployed[model]
    over_http, http_response = infer(triton.http, model, d.X)
    over_grpc, grpc_response = infer(triton.grpc, model, d.X)
    from_node, node_response = infer(node.client, model, d.X)
    print(
        f"{model}: {d.native.shape} max |triton - native| {max_diff(over_http, d.native):.2e}, "
        f"|triton - node| {max_diff(over_http, from_node):.2e}"
    )
    assert (http_response["model_name"], http_response["model_version"]) == (model, "1")
    assert (grpc_response.model_name, grpc_response.model_version) == (model, "1")
    assert node_response["parameters"]["deployment_id"] == d.deployment_id
    np.testing.assert_array_equal(over_http, over_grpc)
    np.testing.assert_allclose(over_http, d.native, rtol=1e-5, atol=ATOL)
    np.testing.assert_allclose(over_http, from_node, rtol=1e-5, atol=ATOL)


def test_triton_names_the_columns_from_the_labels_file(triton: Any, labelled: Deployed) -> None:
    """Triton finds label_filename in the model folder: its classification extension names each
    column by its line, and its config shows the file."""
    assert triton.http.get_model_config(labelled.name)["output"][0]["label_filename"] == "labels.txt"
    tensor = httpclient.InferInput("input__0", list(labelled.X.shape), "FP32")
    tensor.set_data_from_numpy(labelled.X)
    wanted = [httpclient.InferRequestedOutput("output__0", class_count=len(CLASSES))]
    top = triton.http.infer(labelled.name, [tensor], outputs=wanted).as_numpy("output__0")
    assert top.shape == (ROWS, len(CLASSES))
    for row, native in zip(top, labelled.native, strict=True):
        entries = [entry.decode().split(":") for entry in row]  # "score:index:label", best first
        assert [label for _, _, label in entries] == [CLASSES[int(index)] for _, index, _ in entries]
        np.testing.assert_allclose(
            [float(s) for s, _, _ in entries], native[[int(i) for _, i, _ in entries]], atol=ATOL
        )


def test_concurrent_requests_are_batched_and_split_back(triton: Any, fraud: Deployed) -> None:
    """Requests that Triton's dynamic batcher hands to one `execute` get their own rows back."""
    sizes = [1, 7, 64, 3, 100, 2, 31, 48]
    starts = np.cumsum([0, *sizes[:-1]])
    pending = []
    for start, rows in zip(starts, sizes, strict=True):
        tensor = httpclient.InferInput("input__0", [rows, fraud.X.shape[1]], "FP32")
        tensor.set_data_from_numpy(fraud.X[start : start + rows])
        pending.append(triton.http.async_infer(fraud.name, [tensor]))
    for start, rows, request in zip(starts, sizes, pending, strict=True):
        answer = request.get_result().as_numpy("output__0")
        np.testing.assert_allclose(answer, fraud.native[start : start + rows], rtol=1e-5, atol=ATOL)


def test_triton_responses_trace_back_to_their_run(
    triton: Any, repository: Path, fraud: Deployed, metaflow_env_module: dict[str, str]
) -> None:
    _, response = infer(triton.http, fraud.name, fraud.X[:1])
    doc = lineage(repository, f"{response['model_name']}:{response['model_version']}", metaflow_env_module)
    assert doc["deployment"]["deployment_id"] == fraud.deployment_id
    assert doc["run"]["pathspec"] == f"FraudFlow/{fraud.run_id}"
    assert doc["run"]["status"] == "successful"  # the live Metaflow lookup found the run


def test_a_second_deploy_becomes_the_version_triton_serves(
    triton: Any, node: Server, repository: Path, price: Deployed, metaflow_env_module: dict[str, str]
) -> None:
    model, X = regressor(seed=2)
    record = deploy_direct(repository, "price", model, X, "202")
    assert record.version == 2
    triton.wait_ready("price", 2, timeout=10 * triton.POLL_SECS + 20)
    # version_policy latest 1: Triton unloads version 1 once version 2 is in
    wait_for(lambda: not triton.http.is_model_ready("price", "1"), timeout=20, what="price:1 unloaded")
    answer, response = infer(triton.http, "price", X[:ROWS])
    assert (response["model_name"], response["model_version"]) == ("price", "2")
    np.testing.assert_allclose(answer, model.predict(X[:ROWS]).reshape(-1, 1), rtol=1e-5, atol=ATOL)
    wait_for(
        lambda: infer(node.client, "price", X[:1])[1]["parameters"]["deployment_id"] == record.deployment_id,
        what="our node to serve price:2",
    )
    from_node, _ = infer(node.client, "price", X[:ROWS])
    np.testing.assert_allclose(answer, from_node, rtol=1e-5, atol=ATOL)
    doc = lineage(repository, f"price:{response['model_version']}", metaflow_env_module, "--no-metaflow")
    assert doc["deployment"]["deployment_id"] == "price:2@DirectFlow/202"


def test_onnx_versions_answer_as_the_native_model_and_our_node(
    triton: Any, node: Server, repository: Path
) -> None:
    X, y = make_classification(400, 8, random_state=5)
    X = X.astype(np.float32)
    model = make_pipeline(StandardScaler(), LogisticRegression()).fit(X, y)
    record = deploy_direct(repository, "onnx-lr", model, X, "301")
    assert record.backend == "onnxruntime"
    triton.wait_ready("onnx-lr", 1, timeout=10 * triton.POLL_SECS + 20)
    for client in (triton.http, triton.grpc):
        answer, _ = infer(client, "onnx-lr", X[:ROWS])
        np.testing.assert_allclose(answer, model.predict_proba(X[:ROWS]), rtol=1e-5, atol=ATOL)
    wait_for(lambda: node.client.is_model_ready("onnx-lr"), what="our node to serve onnx-lr")
    from_node, _ = infer(node.client, "onnx-lr", X[:ROWS])
    np.testing.assert_allclose(answer, from_node, rtol=1e-6, atol=1e-6)
    # requests Triton's dynamic batcher joins into one execute get their own rows back
    sizes, pending = [1, 9, 40, 3], []
    for n in sizes:
        tensor = httpclient.InferInput("input__0", [n, X.shape[1]], "FP32")
        tensor.set_data_from_numpy(X[:n])
        pending.append(triton.http.async_infer("onnx-lr", [tensor]))
    for n, request in zip(sizes, pending, strict=True):
        part = request.get_result().as_numpy("output__0")
        np.testing.assert_allclose(part, model.predict_proba(X[:n]), rtol=1e-5, atol=ATOL)
