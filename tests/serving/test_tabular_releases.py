"""A deployed tabular ensemble under releases, on a real node: each ensemble version runs the step
versions its record pins (champion and canary side by side), a rollback moves the steps with the
ensemble, and requests that do not fit the columns get a 400 naming the column while the node serves on.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import wait_for
from tabular_data import tabular_flow

from tritonflow.client import FrameError, infer_frame
from tritonflow.lineage.releases import promote, read_state, rollback, set_canary
from tritonflow.lineage.repository import ModelRepository
from tritonflow.plugin.options import parse_options
from tritonflow.plugin.publish import Provenance, deploy
from tritonflow.serving.ensemble import STEPS_PARAMETER
from tritonflow.serving.release_policy import champion_config

MODEL = "tabular"


def _deploy(repo: Path, model: Any, sample: Any, run: str, labels: Any = None, **attributes: Any) -> Any:
    named = {"sample": "X_val", **({"labels": "y_val"} if labels is not None else {})}
    options = parse_options(
        {"name": MODEL, "repository": str(repo), **named, **attributes}, "TabularFlow", False
    )
    provenance = Provenance(
        metaflow={"flow": "TabularFlow", "run_id": run, "task": f"TabularFlow/{run}/train/2"}
    )
    return deploy(
        model, options, sample=sample, provenance=provenance, sample_name="X_val", sample_labels=labels
    )


@pytest.fixture(scope="module")
def trained() -> dict[str, Any]:
    flow = tabular_flow()
    X, X_val = flow.frame(1500, 0), flow.frame(300, 1)
    first = flow.build("onehot-xgb").fit(X, flow.labels(X))
    second = flow.build("onehot-xgb").set_params(gbm__n_estimators=3, gbm__max_depth=2).fit(X, flow.labels(X))
    test = flow.frame(100, 2, unseen=0.1)
    return {"first": first, "second": second, "X_val": X_val, "y_val": flow.labels(X_val), "X_test": test}


def _steps(response: Any) -> str:
    return response.get_response()["parameters"][STEPS_PARAMETER]


def test_champion_and_canary_run_their_own_steps_and_a_rollback_moves_the_steps(trained, tmp_path, serve):
    repo = tmp_path / "repo"
    one = _deploy(repo, trained["first"], trained["X_val"], "1")
    two = _deploy(repo, trained["second"], trained["X_val"], "2", promote="never")
    assert (one.version, two.version) == (1, 2) and two.pins == {
        f"{MODEL}.preprocess": 2,
        f"{MODEL}.forest": 2,
    }
    frame = trained["X_test"]
    native = {1: trained["first"].predict_proba(frame), 2: trained["second"].predict_proba(frame)}
    assert np.abs(native[1] - native[2]).max() > 0.05  # the two versions answer differently

    server = serve(repo)
    server.wait_for_state(MODEL, 1, "READY")
    served, stamp = infer_frame(server.url, MODEL, frame)
    assert stamp == one.deployment_id
    np.testing.assert_allclose(served, native[1], atol=1e-5)

    # v2 as a canary: it loads with its own step versions, beside the champion on theirs
    set_canary(ModelRepository(str(repo)), MODEL, 2, 50.0, champion_config, reason="try v2")
    server.wait_for_state(MODEL, 2, "READY")
    for version, steps in (
        (1, "tabular.preprocess:1,tabular.forest:1"),
        (2, "tabular.preprocess:2,tabular.forest:2"),
    ):
        served, stamp = infer_frame(server.url, MODEL, frame, version=str(version))
        np.testing.assert_allclose(served, native[version], atol=1e-5)
        assert stamp == (one, two)[version - 1].deployment_id
        tensors = _inputs(server, frame)
        assert _steps(server.client.infer(MODEL, tensors, model_version=str(version))) == steps

    # promote v2, then roll back: the ensemble's config pins the champion's steps, for Triton too
    promote(ModelRepository(str(repo)), MODEL, 2, champion_config, reason="v2 is better", replacing=1)
    # NOTE: until the node follows the promotion, v2 answers half the requests as canary: wait for v1 to go
    wait_for(lambda: server.index_row(MODEL, 1).get("state") != "READY", what="v1 unloaded")
    assert infer_frame(server.url, MODEL, frame)[1] == two.deployment_id
    assert _pinned(repo) == {"tabular.preprocess": 2, "tabular.forest": 2}
    assert _served_versions(repo, "tabular.forest") == [1, 2]  # the previous champion's steps stay warm
    rollback(ModelRepository(str(repo)), MODEL, champion_config, reason="v2 misbehaves")
    assert read_state(ModelRepository(str(repo)), MODEL).champion == 1
    assert _pinned(repo) == {"tabular.preprocess": 1, "tabular.forest": 1}
    wait_for(lambda: server.index_row(MODEL, 2).get("state") != "READY", what="v2 unloaded")
    assert infer_frame(server.url, MODEL, frame)[1] == one.deployment_id
    served, _ = infer_frame(server.url, MODEL, frame)
    np.testing.assert_allclose(served, native[1], atol=1e-5)
    answer = server.client.infer(MODEL, _inputs(server, frame)).get_response()["parameters"]
    assert answer[STEPS_PARAMETER] == "tabular.preprocess:1,tabular.forest:1", (answer, server.index())


def test_if_better_scores_the_new_ensemble_and_the_champion_through_its_pinned_steps(trained, tmp_path):
    from sklearn.metrics import roc_auc_score

    repo = tmp_path / "repo"
    X_val, y_val = trained["X_val"], trained["y_val"]
    _deploy(repo, trained["first"], X_val, "1")
    worse = _deploy(repo, trained["second"], X_val, "2", labels=y_val, promote="if_better:roc_auc")
    evaluation = worse.release["evaluation"]
    assert not worse.release["promoted"] and evaluation["champion"]["version"] == 1
    for model, score in (
        (trained["first"], evaluation["champion"]["score"]),
        (trained["second"], evaluation["new"]),
    ):
        assert score == pytest.approx(roc_auc_score(y_val, model.predict_proba(X_val)[:, 1]), abs=1e-6)
    assert read_state(ModelRepository(str(repo)), MODEL).champion == 1
    assert _pinned(repo) == {"tabular.preprocess": 1, "tabular.forest": 1}
    assert _served_versions(repo, "tabular.forest") == [1]  # a challenger's steps serve nowhere yet


def test_requests_that_do_not_fit_the_columns_are_refused_by_name(trained, tmp_path, serve):
    repo = tmp_path / "repo"
    _deploy(repo, trained["first"], trained["X_val"], "1")
    server = serve(repo)
    server.wait_for_state(MODEL, 1, "READY")
    frame = trained["X_test"].head(3)
    good = [_json_input(frame, name) for name in frame.columns]

    def infer(inputs: list[dict[str, Any]]) -> tuple[int, str]:
        status, _, body = server.request(
            "POST", f"/v2/models/{MODEL}/infer", json.dumps({"inputs": inputs}).encode()
        )
        return status, json.loads(body).get("error", "")

    assert infer(good)[0] == 200
    x0 = {**_json_input(frame, "x0"), "datatype": "BYTES", "data": ["a", "b", "c"]}
    status, error = infer([x0 if i["name"] == "x0" else i for i in good])  # a string for a number
    assert status == 400 and "x0" in error and "FP64" in error, error
    status, error = infer([i for i in good if i["name"] != "country"])  # a column missing
    assert status == 400 and "country" in error, error
    status, error = infer([*good, {**_json_input(frame, "x0"), "name": "x9"}])  # a column the model lacks
    assert status == 400 and "x9" in error, error
    # the client helper names them before sending
    with pytest.raises(FrameError, match=r"missing 'country'; extra 'region'"):
        infer_frame(server.url, MODEL, frame.rename(columns={"country": "region"}))
    with pytest.raises(FrameError, match=r"column 'x1' must hold numbers for the model's FP64 input"):
        infer_frame(server.url, MODEL, frame.assign(x1=["one", "two", "three"]))
    assert infer(good)[0] == 200  # and the node serves on


def _inputs(server: Any, frame: Any) -> list[Any]:
    """The frame as the ensemble's input tensors, from its metadata (as infer_frame sends them)."""
    import tritonclient.http as httpclient

    from tritonflow.client import frame_inputs

    tensors = []
    for name, datatype, rows in frame_inputs(frame, server.client.get_model_metadata(MODEL)["inputs"]):
        tensor = httpclient.InferInput(name, list(rows.shape), datatype)
        tensor.set_data_from_numpy(rows)
        tensors.append(tensor)
    return tensors


def _json_input(frame: Any, name: str) -> dict[str, Any]:
    values = frame[name]
    if values.dtype.kind == "f":
        return {"name": name, "datatype": "FP64", "shape": [len(frame), 1], "data": values.fillna(0).tolist()}
    return {"name": name, "datatype": "BYTES", "shape": [len(frame), 1], "data": values.astype(str).tolist()}


def _pinned(repo: Path) -> dict[str, int]:
    from tritonflow.serving.model_config import parse_config

    config = parse_config(ModelRepository(str(repo)).read_config(MODEL))
    return {s.model_name: s.model_version for s in config.ensemble_scheduling.step}


def _served_versions(repo: Path, model: str) -> list[int]:
    from tritonflow.serving.model_config import parse_config

    return list(parse_config(ModelRepository(str(repo)).read_config(model)).version_policy.specific.versions)
