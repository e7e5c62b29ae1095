"""Triton ensembles on the node: hand-written `platform: "ensemble"` configs over real step models
(an ONNX preprocessor with a string column -> a Treelite forest; an ONNX scaler -> a forest), served
by a real `tritonflow serve` and called with tritonclient over HTTP (JSON, binary) and gRPC. The
answers must be the steps' own, run by hand; broken ensembles are refused with their reason."""

from __future__ import annotations

import asyncio
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import tritonclient.http.aio as aiohttpclient
from conftest import N_FEATURES, PROBA_ATOL, Server, data, publish, wait_for
from ensemble_models import (
    ENSEMBLE_FILES,
    PIPELINE_INPUTS,
    ensemble_config,
    forest_proba,
    frame,
    inputs_of,
    numeric_ensemble_text,
    onnx_config,
    pipeline,
    publish_numeric,
    publish_pipeline,
    publish_text,
    scaled_forest,
    scaler_apply,
)
from faults import S3Faults
from tritonclient.grpc import model_config_pb2

from tritonflow.serving.model_config import ConfigError, check_config

X = data()[0][:20]
ONE_ROW = (
    b'{"inputs": [{"name": "x", "shape": [1, 8], "datatype": "FP32", "data": [0, 0, 0, 0, 0, 0, 0, 0]}]}'
)


def numeric_by_hand(x: np.ndarray, seed: int = 0) -> np.ndarray:
    return forest_proba(scaled_forest(seed), scaler_apply(x))


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    root = tmp_path_factory.mktemp("ensembles") / "repo"
    records = {"numeric": publish_numeric(root), "pipeline": publish_pipeline(root)}
    # refused at load: a step model that does not exist; a step input fed a tensor of another datatype
    unknown = [("nope", -1, {"input__0": "x"}, {"output__0": "proba"})]
    publish_text(root, "unknown-step", ENSEMBLE_FILES, _single("unknown-step", unknown))
    mismatch = [("forest", -1, {"input__0": "x"}, {"output__0": "proba"})]
    publish_text(root, "wrong-type", ENSEMBLE_FILES, _single("wrong-type", mismatch, "TYPE_FP64"))
    return root, records


def _single(name: str, steps: list[Any], datatype: str = "TYPE_FP32") -> str:
    return ensemble_config(name, [("x", datatype, N_FEATURES)], [("proba", "TYPE_FP32", 2)], steps)


@pytest.fixture(scope="module")
def server(serve_module: Any, repo: tuple[Path, dict[str, Any]]) -> Server:
    s = serve_module(repo[0])
    for name in ("numeric", "pipeline"):
        s.wait_for_state(name, 1, "READY")
    return s


def http_inputs(tensors: dict[str, np.ndarray], binary: bool) -> list[httpclient.InferInput]:
    made = []
    for name, array in tensors.items():
        tensor = httpclient.InferInput(name, list(array.shape), "BYTES" if array.dtype == object else "FP32")
        tensor.set_data_from_numpy(array, binary_data=binary)
        made.append(tensor)
    return made


def grpc_inputs(tensors: dict[str, np.ndarray]) -> list[grpcclient.InferInput]:
    made = []
    for name, array in tensors.items():
        tensor = grpcclient.InferInput(name, list(array.shape), "BYTES" if array.dtype == object else "FP32")
        tensor.set_data_from_numpy(array)
        made.append(tensor)
    return made


def answers(
    server: Server, model: str, tensors: dict[str, np.ndarray]
) -> list[tuple[np.ndarray, dict[str, Any]]]:
    """The ensemble's `proba` and response parameters over HTTP JSON, HTTP binary and gRPC."""
    found = []
    for binary in (False, True):
        out = [httpclient.InferRequestedOutput("proba", binary_data=binary)]
        result = server.client.infer(model, http_inputs(tensors, binary), outputs=out)
        found.append((result.as_numpy("proba"), result.get_response()["parameters"]))
    client = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        result = client.infer(model, grpc_inputs(tensors))
        parameters = {k: v.string_param for k, v in result.get_response().parameters.items()}
        found.append((result.as_numpy("proba"), parameters))
    finally:
        client.close()
    return found


def test_ensemble_configs_are_checked_from_the_text() -> None:
    good = numeric_ensemble_text()
    assert check_config(good, model_name="numeric").platform == "ensemble"
    steps = [("a", -1, {"i": "x"}, {"o": "t1"}), ("b", -1, {"i": "t1"}, {"o": "proba"})]
    cases = {
        "wait on each other": [
            ("a", -1, {"i": "t2"}, {"o": "t1"}),
            ("b", -1, {"i": "t1"}, {"o": "t2", "p": "proba"}),
        ],
        "which is no ensemble input and no step's output": [("a", -1, {"i": "ghost"}, {"o": "proba"})],
        "is written by no step's output_map": [("a", -1, {"i": "x"}, {"o": "t1"})],
        "is written by steps 1 and 2": [*steps, ("c", -1, {"i": "x"}, {"o": "proba"})],
        "model_version is -1 (latest) or a version >= 1": [("a", 0, {"i": "x"}, {"o": "proba"})],
        "calls the ensemble 'e' itself": [("e", -1, {"i": "x"}, {"o": "proba"})],
    }
    for message, written in cases.items():
        with pytest.raises(ConfigError, match=re.escape(message)):
            check_config(_single("e", written), model_name="e")
    with pytest.raises(
        ConfigError, match="another member of oneof"
    ):  # NOTE: the schema's own rule: steps batch
        check_config(_single("e", steps) + "dynamic_batching { }", model_name="e")
    with pytest.raises(ConfigError, match="no backend"):
        check_config(_single("e", steps) + 'backend: "fil"', model_name="e")
    text = onnx_config("prep", PIPELINE_INPUTS, [("out", "TYPE_STRING", 1)])
    assert check_config(text, model_name="prep").input[0].data_type == model_config_pb2.TYPE_STRING


def test_numeric_ensemble_answers_as_its_steps_by_hand_on_every_wire(server: Server, repo: Any) -> None:
    records = repo[1]["numeric"]
    expected = numeric_by_hand(X)
    for proba, parameters in answers(server, "numeric", {"x": X}):
        np.testing.assert_allclose(proba, expected, atol=PROBA_ATOL)
        assert parameters["deployment_id"] == records["ensemble"].deployment_id
        assert parameters["tritonflow_steps"] == "scaler:1,forest:1"
    status, headers, _ = server.request("POST", "/v2/models/numeric/infer", ONE_ROW)
    assert (status, headers["x-deployment-id"]) == (200, records["ensemble"].deployment_id)


def test_string_pipeline_answers_as_its_steps_by_hand_unseen_category_too(server: Server) -> None:
    df = frame().head(30).copy()
    df.loc[df.index[:3], "color"] = ["purple", "", "naïve"]  # never seen in training: all zeros one-hot
    tensors = inputs_of(df)
    expected = pipeline().by_hand(tensors)
    for proba, parameters in answers(server, "pipeline", tensors):
        np.testing.assert_allclose(proba, expected, atol=PROBA_ATOL)
        assert parameters["tritonflow_steps"] == "pipeline.prep:1,pipeline.forest:1"


def test_metadata_config_and_stats_of_an_ensemble_and_its_steps(server: Server) -> None:
    metadata = server.json("GET", "/v2/models/pipeline")
    assert (metadata["platform"], metadata["engine"]) == ("ensemble", "ensemble")
    assert [(t["name"], t["datatype"]) for t in metadata["inputs"]] == [
        (n, "BYTES" if t == "TYPE_STRING" else "FP32") for n, t, _ in PIPELINE_INPUTS
    ]
    config = server.json("GET", "/v2/models/pipeline/config")
    assert [s["model_name"] for s in config["ensemble_scheduling"]["step"]] == [
        "pipeline.prep",
        "pipeline.forest",
    ]

    def count(model: str) -> int:
        return server.json("GET", f"/v2/models/{model}/stats")["model_stats"][0]["inference_count"]

    before = {m: count(m) for m in ("pipeline", "pipeline.prep", "pipeline.forest")}
    server.client.infer("pipeline", http_inputs(inputs_of(frame().head(7)), True))
    assert {m: count(m) - before[m] for m in before} == {
        "pipeline": 7,
        "pipeline.prep": 7,
        "pipeline.forest": 7,
    }
    assert server.metric("nv_inference_count", "pipeline", 1) >= 7


def test_concurrent_ensemble_requests_each_get_their_own_rows(server: Server) -> None:
    async def run() -> list[np.ndarray]:
        client = aiohttpclient.InferenceServerClient(server.url)
        try:
            calls = [
                client.infer("numeric", http_inputs({"x": data()[0][i : i + 3]}, True)) for i in range(24)
            ]
            return [r.as_numpy("proba") for r in await asyncio.gather(*calls)]
        finally:
            await client.close()

    for i, proba in enumerate(asyncio.run(run())):
        np.testing.assert_allclose(proba, numeric_by_hand(data()[0][i : i + 3]), atol=PROBA_ATOL)


def test_broken_ensembles_are_refused_with_the_reason_and_others_serve(server: Server) -> None:
    unknown = server.wait_for_state("unknown-step", 1, "UNAVAILABLE")
    assert "step nope:latest is not serving" in unknown["reason"]
    wrong = server.wait_for_state("wrong-type", 1, "UNAVAILABLE")
    assert "input 'input__0' is FP32, but tensor 'x' is FP64" in wrong["reason"]
    status, _, body = server.request("POST", "/v2/models/wrong-type/infer", ONE_ROW)
    assert status == 404 and b"is FP64" in body
    assert server.client.is_model_ready("numeric")


def test_wrong_inputs_to_an_ensemble_are_400_and_stamped(server: Server, repo: Any) -> None:
    status, _, body = server.request(
        "POST",
        "/v2/models/pipeline/infer",
        b'{"inputs": [{"name": "color", "shape": [1, 1], "datatype": "FP32", "data": [1.0]}]}',
    )
    assert status == 400 and b"color" in body and b"BYTES" in body
    assert repo[1]["pipeline"]["ensemble"].deployment_id.encode() in body


# -- steps that change under a live ensemble --------------------------------------------------------
@pytest.fixture
def live(serve: Any, tmp_path: Path) -> tuple[Server, Path]:
    root = tmp_path / "repo"
    publish_numeric(root)
    s = serve(root)
    s.wait_for_state("numeric", 1, "READY")
    return s, root


def steps_of(server: Server) -> str:
    return answers(server, "numeric", {"x": X})[0][1]["tritonflow_steps"]


def test_a_new_step_version_is_followed_and_a_pinned_one_is_not(live: tuple[Server, Path]) -> None:
    server, root = live
    publish(root, "forest", scaled_forest(1), None)  # the latest forest: the step follows it
    wait_for(lambda: steps_of(server) == "scaler:1,forest:2", what="the ensemble on forest:2")
    for proba, _ in answers(server, "numeric", {"x": X}):
        np.testing.assert_allclose(proba, numeric_by_hand(X, seed=1), atol=PROBA_ATOL)
    wait_for(lambda: "unloaded forest:1" in server.log_text(), what="forest:1 unloaded once released")


def test_a_removed_step_leaves_the_ensemble_on_the_versions_it_holds(live: tuple[Server, Path]) -> None:
    server, root = live
    shutil.rmtree(root / "forest")
    wait_for(lambda: "numeric:1 keeps serving on scaler:1,forest:1" in server.log_text(), what="held")
    assert not server.client.is_model_ready("forest")
    for proba, parameters in answers(server, "numeric", {"x": X}):
        np.testing.assert_allclose(proba, numeric_by_hand(X), atol=PROBA_ATOL)
        assert parameters["tritonflow_steps"] == "scaler:1,forest:1"


def test_a_broken_new_config_keeps_the_previous_one_serving(live: tuple[Server, Path]) -> None:
    server, root = live
    cycle = [
        ("scaler", 1, {"float_input": "proba"}, {"variable": "x2"}),
        ("forest", -1, {"input__0": "x2"}, {"output__0": "proba"}),
    ]
    (root / "numeric" / "config.pbtxt").write_text(_single("numeric", cycle))
    row = wait_for(
        lambda: (r := server.index_row("numeric", 1)) and "previous config" in r["reason"] and r,
        what="the broken config noted",
    )
    assert row["state"] == "READY" and "wait on each other" in row["reason"]
    np.testing.assert_allclose(
        answers(server, "numeric", {"x": X})[0][0], numeric_by_hand(X), atol=PROBA_ATOL
    )


# -- an S3 repository ----------------------------------------------------------------------------
@pytest.fixture
def faults(s3_server: Any, s3_bucket: str) -> Iterator[S3Faults]:
    proxy = S3Faults(s3_server.endpoint, s3_bucket.removeprefix("s3://").split("/", 1)[1])
    yield proxy
    proxy.close()


def test_an_s3_ensemble_restarts_from_the_nodes_copy_while_s3_is_down(
    serve: Any, monkeypatch: pytest.MonkeyPatch, s3_bucket: str, faults: S3Faults
) -> None:
    ensemble = publish_numeric(s3_bucket)["ensemble"]
    monkeypatch.setenv("TRITONFLOW_S3_ENDPOINT_URL", faults.endpoint)
    first = serve(s3_bucket)
    first.wait_for_state("numeric", 1, "READY")
    assert answers(first, "numeric", {"x": X})[0][1]["deployment_id"] == ensemble.deployment_id
    first.stop()
    faults.down = True
    restarted = serve(s3_bucket)  # the same --cache-dir: its copy of what served
    restarted.wait_for_state("numeric", 1, "READY")
    for proba, parameters in answers(restarted, "numeric", {"x": X}):
        np.testing.assert_allclose(proba, numeric_by_hand(X), atol=PROBA_ATOL)
        assert parameters["deployment_id"] == ensemble.deployment_id
