"""Real Triton serves the hand-written ensembles tests/serving builds (an ONNX scaler -> a forest; an
ONNX preprocessor with a string column -> a forest), unchanged, with the same answers as our node.

Triton 24.10 (the nvidia-pytriton wheel) runs its own ensemble scheduler over our Python-based `fil`
and `onnxruntime` backends; our node runs the same repository. The repository is built by
tests/serving/ensemble_models.py in a subprocess (its imports are tests/serving's own conftest).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

ROOT = Path(__file__).resolve().parents[2]
ATOL = 1e-5
BUILD = """
import sys
from pathlib import Path
import numpy as np
from ensemble_models import data, frame, inputs_of, publish_numeric, publish_pipeline
root = Path(sys.argv[1])
publish_numeric(root)
publish_pipeline(root)
df = frame().head(40).copy()
df.loc[df.index[:2], "color"] = ["purple", "naïve"]  # unseen categories
np.savez(sys.argv[2], x=data()[0][:40], **{f"col_{k}": v for k, v in inputs_of(df).items()})
"""

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, np.ndarray]]:
    work = tmp_path_factory.mktemp("triton-ensemble")
    root, rows = work / "repo", work / "rows.npz"
    run = subprocess.run(
        [sys.executable, "-c", BUILD, str(root), str(rows)],
        cwd=ROOT / "tests" / "serving",
        env={**os.environ, "PYTHONPATH": f"{ROOT / 'tests' / 'serving'}:{ROOT / 'tests'}"},
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    saved = np.load(rows, allow_pickle=True)
    return root, {k: saved[k] for k in saved.files}


@pytest.fixture(scope="module")
def servers(start_triton: Any, serve_module: Any, built: tuple[Path, dict[str, np.ndarray]]) -> Any:
    root, _ = built
    triton = start_triton(root)
    for model in ("numeric", "pipeline"):
        triton.wait_ready(model, 1)
    node = serve_module(root, "--engine", "treelite")
    for model in ("numeric", "pipeline"):
        node.wait_for_state(model, 1, "READY")
    return triton, node


def tensors_of(rows: dict[str, np.ndarray], model: str) -> dict[str, np.ndarray]:
    if model == "numeric":
        return {"x": rows["x"]}
    return {k.removeprefix("col_"): v for k, v in rows.items() if k.startswith("col_")}


def http_infer(client: Any, model: str, tensors: dict[str, np.ndarray], binary: bool) -> Any:
    inputs = []
    for name, array in tensors.items():
        tensor = httpclient.InferInput(name, list(array.shape), "BYTES" if array.dtype == object else "FP32")
        tensor.set_data_from_numpy(array, binary_data=binary)
        inputs.append(tensor)
    return client.infer(model, inputs)


def grpc_infer(client: Any, model: str, tensors: dict[str, np.ndarray]) -> Any:
    inputs = []
    for name, array in tensors.items():
        tensor = grpcclient.InferInput(name, list(array.shape), "BYTES" if array.dtype == object else "FP32")
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    return client.infer(model, inputs)


@pytest.mark.parametrize("model", ["numeric", "pipeline"])
@pytest.mark.parametrize("wire", ["json", "binary", "grpc"])
def test_triton_and_the_node_answer_an_ensemble_alike(
    servers: Any, built: Any, model: str, wire: str
) -> None:
    triton, node = servers
    tensors = tensors_of(built[1], model)
    if wire == "grpc":
        theirs = grpc_infer(triton.grpc, model, tensors)
        client = grpcclient.InferenceServerClient(node.grpc_url)
        try:
            ours = grpc_infer(client, model, tensors)
        finally:
            client.close()
    else:
        theirs = http_infer(triton.http, model, tensors, wire == "binary")
        ours = http_infer(node.client, model, tensors, wire == "binary")
    np.testing.assert_allclose(ours.as_numpy("proba"), theirs.as_numpy("proba"), atol=ATOL)


def test_tritons_config_of_an_ensemble_is_the_nodes(servers: Any) -> None:
    triton, node = servers
    theirs = triton.http.get_model_config("pipeline")
    ours = node.client.get_model_config("pipeline")
    for key in ("platform", "input", "output", "max_batch_size"):
        assert ours[key] == theirs[key], key
    # NOTE: our schema is newer: it also prints ensemble_scheduling.max_inflight_requests (0, unset)
    assert ours["ensemble_scheduling"]["step"] == theirs["ensemble_scheduling"]["step"]
