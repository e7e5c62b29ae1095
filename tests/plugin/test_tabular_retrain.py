"""A retrain that changes the preprocessing's output width: two real Metaflow runs deploy the same
ensemble name, the second one's encoder having learned one more category. The steps' `features`
tensor is variable in their configs (dims [-1]), so both widths' step versions live side by side:
the deploy is accepted (also over step configs an earlier release wrote with a fixed width, which
the node serving v1 then reloads), the champion and the retrain (a canary, then promoted) answer as
their native pipelines on a real node, pinned or not, and a request of the wrong width to a step is a
400 naming the tensor and the width of that version. The ensemble's own signature, and a step's other tensors,
are still checked."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from servers import wait_for
from tabular_data import RETRAIN_FLOW as FLOW
from tabular_data import client_answer, retrain_flow

from tritonflow.client import infer_frame
from tritonflow.lineage.releases import promote, set_canary
from tritonflow.lineage.repository import ModelRepository
from tritonflow.plugin.publish import SignatureChanged, check_signature
from tritonflow.serving import model_config
from tritonflow.serving.release_policy import champion_config

MODEL = "retrain"
CLASSES = ("0", "1")  # the forest's and the ensemble's labels file
WIDTHS = {1: 8, 2: 9}  # version -> features: 6 then 7 merchants one-hot, and two numbers
pytestmark = pytest.mark.slow


flow = retrain_flow()


def run_flow(env: dict[str, str], cwd: Path, merchants: int, **deploy: object) -> None:
    attributes = {"name": MODEL, "sample": "X_val", **deploy}
    done = subprocess.run(
        [sys.executable, str(FLOW), "--no-pylint", "run", "--merchants", str(merchants)],
        env={**os.environ, **env, "RETRAIN_DEPLOY": json.dumps(attributes)},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]


def native_answers(env: dict[str, str], cwd: Path, rows: tuple[int, int, int]) -> dict[int, np.ndarray]:
    """Each run's pipeline's own predict_proba on `flow.frame(*rows)` (Metaflow's Client), by version."""
    code = (
        f"import json, sys\nsys.path.insert(0, {str(FLOW.parent)!r})\nfrom retrain_flow import frame\n"
        "from metaflow import Flow, namespace\nnamespace(None)\n"
        f"X = frame{rows}\n"
        "runs = sorted(Flow('RetrainFlow').runs(), key=lambda r: r.created_at)\n"
        "print(json.dumps([r['train'].task.data.model.predict_proba(X).tolist() for r in runs]))\n"
    )
    answers = client_answer(code, env, cwd)
    return {version: np.asarray(p) for version, p in enumerate(answers, 1)}


def fixed_width(repo: Path, width: int) -> None:
    """The step configs as tritonflow wrote them before widths could vary: `features` of `width`."""
    for step, kind in (("preprocess", "output"), ("forest", "input")):
        path = repo / f"{MODEL}.{step}" / "config.pbtxt"
        config = model_config.parse_config(path.read_text())
        tensor = getattr(config, kind)[0]
        del tensor.dims[:]
        tensor.dims.append(width)
        path.write_text(model_config.render(config))


@pytest.fixture(scope="module")
def retrained(
    metaflow_env_module: dict[str, str], tmp_path_factory: pytest.TempPathFactory, serve_module: Any
) -> Any:
    """Two runs, 6 merchants then 7, deployed as versions 1 and 2 of one ensemble (v1 stays champion),
    the first one's step configs left as the releases before this one wrote them (fixed widths) and
    served by a node while the second run deploys."""
    cwd = tmp_path_factory.mktemp("retrain")
    repo = cwd / "repo"
    env = {**metaflow_env_module, "TRITONFLOW_REPOSITORY": str(repo)}
    rows = (120, 2, 7)  # m-6 is a category v1 never saw (handle_unknown="ignore")
    frame = flow.frame(*rows)
    run_flow(env, cwd, 6)
    fixed_width(repo, WIDTHS[1])
    server = serve_module(repo)
    server.wait_for_state(MODEL, 1, "READY")
    before = infer_frame(server.url, MODEL, frame)
    run_flow(env, cwd, 7, promote="never")
    return repo, frame, native_answers(env, cwd, rows), server, before


def test_the_retrain_is_deployed_with_the_step_versions_of_its_width(retrained) -> None:
    repo, _, native, _, _ = retrained
    repository = ModelRepository(str(repo))
    for version, width in WIDTHS.items():
        record = repository.read_record(MODEL, version)
        assert record.pins == {f"{MODEL}.preprocess": version, f"{MODEL}.forest": version}
        assert record.model["features"] == width and record.model["parity"]["max_abs_diff"] <= 1e-5
        for step in record.pins:
            assert repository.read_record(step, version).model["features"] == width
    assert np.abs(native[1] - native[2]).max() > 0.05  # the two versions answer apart
    ensemble = model_config.parse_config(repository.read_config(MODEL))
    assert [(t.name, list(t.dims)) for t in ensemble.input] == [("merchant", [1]), ("x0", [1]), ("x1", [1])]
    preprocess = model_config.parse_config(repository.read_config(f"{MODEL}.preprocess"))
    forest = model_config.parse_config(repository.read_config(f"{MODEL}.forest"))
    assert [list(t.dims) for t in preprocess.output] == [[-1]]
    assert [list(t.dims) for t in forest.input] == [[-1]] and [list(t.dims) for t in forest.output] == [[2]]
    # NOTE: Triton's onnxruntime backend compares a config's output dims with the session's exactly
    for version in WIDTHS:
        session = ort.InferenceSession(repo / f"{MODEL}.preprocess" / str(version) / "model.onnx")
        assert [(o.name, o.shape[1:]) for o in session.get_outputs()] == [("features", ["width"])]


def test_the_champion_and_the_old_version_answer_as_their_native_pipelines(retrained) -> None:
    repo, frame, native, server, before = retrained
    repository = ModelRepository(str(repo))
    records = {v: repository.read_record(MODEL, v) for v in WIDTHS}
    assert before[1] == records[1].deployment_id  # v1 served under the fixed-width step configs
    np.testing.assert_allclose(before[0], native[1], atol=1e-5)
    # the second deploy left the step configs of any width: the node reloads v1's steps under them
    for step, kind in (("preprocess", "output"), ("forest", "input")):
        wait_for(lambda step=step, kind=kind: _dims(server, f"{MODEL}.{step}", kind) == [-1], 30, step)
    served, stamp = infer_frame(server.url, MODEL, frame)
    assert stamp == records[1].deployment_id
    np.testing.assert_allclose(served, native[1], atol=1e-5)

    # the wider version as a canary: it loads on its own steps beside the champion on its narrower ones
    set_canary(repository, MODEL, 2, 50.0, champion_config, reason="try the retrain")
    server.wait_for_state(MODEL, 2, "READY")
    for version in WIDTHS:
        for protocol, url in (("http", server.url), ("grpc", server.grpc_url)):
            served, stamp = infer_frame(url, MODEL, frame, version=str(version), protocol=protocol)
            assert stamp == records[version].deployment_id
            np.testing.assert_allclose(served, native[version], atol=1e-5)

    # a step's own clients are checked against the width of the version they ask for
    for version, width in WIDTHS.items():
        for sent in (width, width + 1):
            body = {
                "inputs": [{"name": "input__0", "datatype": "FP32", "shape": [1, sent], "data": [0.0] * sent}]
            }
            status, _, answer = server.request(
                "POST", f"/v2/models/{MODEL}.forest/versions/{version}/infer", json.dumps(body).encode()
            )
            if sent == width:
                assert status == 200, answer
            else:
                error = json.loads(answer)["error"]
                assert status == 400 and "input__0" in error and f"[-1, {width}]" in error, error

    # promoted, the wider version answers every client of the ensemble
    promote(repository, MODEL, 2, champion_config, reason="the retrain is better", replacing=1)
    wait_for(lambda: server.index_row(MODEL, 1).get("state") != "READY", 30, "v1 unloaded")
    served, stamp = infer_frame(server.url, MODEL, frame)
    assert stamp == records[2].deployment_id
    np.testing.assert_allclose(served, native[2], atol=1e-5)


def _dims(server: Any, model: str, kind: str) -> list[int]:
    return [int(d) for d in server.client.get_model_config(model)[kind][0]["dims"]]


def _config(text: str, **changes: Any) -> model_config.ModelConfig:
    config = model_config.parse_config(text)
    for field, dims in changes.items():
        kind, index = field.split("_")
        del getattr(config, kind)[int(index)].dims[:]
        getattr(config, kind)[int(index)].dims.extend(dims)
    return config


def test_only_the_steps_feature_width_may_change(retrained) -> None:
    repo = retrained[0]
    repository = ModelRepository(str(repo))
    forest, preprocess = (repository.read_config(f"{MODEL}.{step}") for step in ("forest", "preprocess"))

    # a step config written with a fixed width (before widths could vary) takes a variable one
    fixed = model_config.render(_config(forest, input_0=[8]))
    check_signature(fixed, _config(forest), CLASSES, f"{MODEL}.forest", repository)
    narrow = model_config.render(_config(preprocess, output_0=[8]))
    check_signature(narrow, _config(preprocess), (), f"{MODEL}.preprocess", repository)

    # but a step's other tensors keep their dims, and a fixed width stays fixed
    with pytest.raises(SignatureChanged, match="output__0"):
        check_signature(forest, _config(forest, output_0=[3]), CLASSES, f"{MODEL}.forest", repository)
    with pytest.raises(SignatureChanged, match="merchant"):
        check_signature(preprocess, _config(preprocess, input_0=[2]), (), f"{MODEL}.preprocess", repository)
    with pytest.raises(SignatureChanged, match="input__0"):
        check_signature(fixed, _config(forest, input_0=[9]), CLASSES, f"{MODEL}.forest", repository)

    # FIL takes the width of its input from the request, not of its output: the config must fix that
    model_config.check_config(forest)
    with pytest.raises(model_config.ConfigError, match="output 'output__0' needs one positive dim"):
        model_config.check_config(model_config.render(_config(forest, output_0=[-1])))

    # and the ensemble's own inputs and outputs are the clients': checked as ever
    ensemble = repository.read_config(MODEL)
    with pytest.raises(SignatureChanged, match=MODEL):
        check_signature(ensemble, _config(ensemble, input_0=[-1]), CLASSES, MODEL, repository)
