"""Real Triton serves an ensemble whose retrain changed the preprocessing's output width: the step
configs leave the `features` tensor between the steps variable (dims [-1]), Triton loads both widths'
step versions under them and its ensemble scheduler runs the champion's steps, equal to the native
pipeline; after a rollback, the narrower version on its own steps. Each step version answers its own
width when asked directly.

The pipelines are tests/plugin/flows/retrain_flow.py's (OneHotEncoder over 6, then 7, merchants and
two numbers, then a random forest), deployed in-process as @deploy does; Triton 24.10 runs its own
ensemble scheduler over our Python-based `onnxruntime` and `fil` backends.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.http as httpclient
from servers import wait_for
from tabular_data import retrain_flow
from test_triton_compat import deploy_direct
from tritonclient.utils import InferenceServerException

from tritonflow.client import FrameError, infer_frame
from tritonflow.lineage.releases import rollback
from tritonflow.lineage.repository import ModelRepository
from tritonflow.serving.release_policy import champion_config

ATOL = 1e-5
MODEL = "retrain"
MERCHANTS = {1: 6, 2: 7}  # version -> merchants trained on: 8, then 9 features

pytestmark = pytest.mark.slow
flow = retrain_flow()


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[int, Any]]:
    """Versions 1 and 2 of one ensemble (v2 the champion), each with its fitted pipeline."""
    root = tmp_path_factory.mktemp("triton-retrain") / "repo"
    models = {}
    for version, merchants in MERCHANTS.items():
        X = flow.frame(800, 0, merchants)
        models[version] = flow.build().fit(X, flow.labels(X))
        sample = flow.frame(200, 1, merchants)
        record = deploy_direct(root, MODEL, models[version], sample, str(900 + version))
        assert record.version == version and record.model["features"] == merchants + 2
    return root, models


def step_dims(triton: Any, step: str, kind: str) -> list[int]:
    return [int(d) for d in triton.http.get_model_config(f"{MODEL}.{step}")[kind][0]["dims"]]


def answers(triton: Any, frame: Any) -> dict[str, np.ndarray | None]:
    """The ensemble's answer over HTTP and gRPC; None while Triton refuses it (reloading)."""
    got: dict[str, np.ndarray | None] = {}
    for protocol, port in (("http", triton.http_port), ("grpc", triton.grpc_port)):
        try:
            got[protocol] = infer_frame(f"127.0.0.1:{port}", MODEL, frame, protocol=protocol)[0]
        except FrameError:
            got[protocol] = None
    return got


def test_triton_serves_both_widths_under_variable_step_dims(start_triton: Any, deployed: Any) -> None:
    root, models = deployed
    frame = flow.frame(120, 2, 7)  # m-6: a category v1 never saw
    native = {version: model.predict_proba(frame) for version, model in models.items()}
    assert np.abs(native[1] - native[2]).max() > 0.05, "the two versions must answer apart"
    triton = start_triton(root)
    triton.wait_ready(MODEL, 2)
    for version in MERCHANTS:  # the previous champion's steps stay loaded
        triton.wait_ready(f"{MODEL}.preprocess", version)
        triton.wait_ready(f"{MODEL}.forest", version)
    assert step_dims(triton, "preprocess", "output") == [-1] and step_dims(triton, "forest", "input") == [-1]
    for protocol, answer in answers(triton, frame).items():
        assert answer is not None, protocol
        np.testing.assert_allclose(answer, native[2], atol=ATOL)

    # each forest version reads its own width, under the one config
    for version, model in models.items():
        features = model[:-1].transform(frame).astype(np.float32)
        assert features.shape[1] == MERCHANTS[version] + 2
        tensor = httpclient.InferInput("input__0", list(features.shape), "FP32")
        tensor.set_data_from_numpy(features)
        result = triton.http.infer(f"{MODEL}.forest", [tensor], model_version=str(version))
        np.testing.assert_allclose(result.as_numpy("output__0"), native[version], atol=ATOL)

    # rolled back, the ensemble runs the narrower version's steps again
    rollback(ModelRepository(str(root)), MODEL, champion_config, reason="compare with the first")

    def serves_first() -> bool:
        try:
            steps = triton.http.get_model_config(MODEL)["ensemble_scheduling"]["step"]
        except InferenceServerException:  # NOTE: between unloading the old config and loading the new
            return False
        if {int(s["model_version"]) for s in steps} != {1} or not triton.http.is_model_ready(MODEL, "1"):
            return False
        got = answers(triton, frame).values()
        return all(a is not None and np.allclose(a, native[1], rtol=0, atol=ATOL) for a in got)

    wait_for(serves_first, 60, f"Triton serving {MODEL}:1 on its own steps")
