"""Hot reload: the watcher loads new versions and config changes while the server keeps answering.

Each test runs its own server (polling every 0.2 s) on its own repository, and changes the
repository the way a deploy does (publish), or the way things go wrong (a corrupt checkpoint,
an unfinished publish, a broken config).
"""

from __future__ import annotations

import http.client
import json
import shutil
import threading
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np
from conftest import (
    N_FEATURES,
    PROBA_ATOL,
    Server,
    Trained,
    config_for,
    data,
    forest,
    publish,
    record_maker,
    wait_for,
)

from tritonflow.lineage.repository import ModelRepository
from tritonflow.serving.model_config import render

MODEL = "fraud-classifier"
X = data()[0][:3]


class Answer(NamedTuple):
    status: int
    deployment: str  # the x-deployment-id header
    outputs: np.ndarray | None
    error: str | None


def infer(
    server: Server,
    x: np.ndarray = X,
    conn: http.client.HTTPConnection | None = None,
    version: int | None = None,
) -> Answer:
    """One binary request, on `conn` (keep-alive) or a connection of its own."""
    tensor = {"name": "input__0", "shape": list(x.shape), "datatype": "FP32"}
    header = json.dumps(
        {
            "inputs": [{**tensor, "parameters": {"binary_data_size": x.nbytes}}],
            "parameters": {"binary_data_output": True},
        }
    ).encode()
    path = f"/v2/models/{MODEL}/versions/{version}/infer" if version else f"/v2/models/{MODEL}/infer"
    own = conn is None
    conn = conn or http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        conn.request(
            "POST", path, header + x.tobytes(), {"Inference-Header-Content-Length": str(len(header))}
        )
        response = conn.getresponse()
        body = response.read()
    finally:
        if own:
            conn.close()
    deployment = response.getheader("x-deployment-id") or ""
    if response.status != 200:
        return Answer(response.status, deployment, None, json.loads(body)["error"])
    length = int(response.getheader("inference-header-content-length"))
    shape = json.loads(body[:length])["outputs"][0]["shape"]
    return Answer(200, deployment, np.frombuffer(body[length:], np.float32).reshape(shape), None)


def serving_id(server: Server) -> str:
    return infer(server).deployment


def test_new_version_swaps_in_under_load_without_a_failed_request(serve, local_repo):
    v1 = publish(local_repo, MODEL, forest(0), run_id="1000000000000001")
    server = serve(local_repo)
    answers: list[list[tuple[int, str]]] = [[], []]
    stop = threading.Event()

    def load(out: list[tuple[int, str]]) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        deadline = time.monotonic() + 30  # bounded, whatever happens
        while not stop.is_set() and time.monotonic() < deadline:
            answer = infer(server, conn=conn)
            out.append((answer.status, answer.deployment))
        conn.close()

    threads = [threading.Thread(target=load, args=(out,)) for out in answers]
    for t in threads:
        t.start()
    time.sleep(0.3)
    v2 = publish(local_repo, MODEL, forest(2), run_id="1000000000000002")
    wait_for(lambda: all(out and out[-1][1] == v2.deployment_id for out in answers), what="v2 to answer")
    time.sleep(0.2)
    stop.set()
    for t in threads:
        t.join()
    for out in answers:
        assert [a for a in out if a[0] != 200] == []
        ids = [deployment for _, deployment in out]
        first_v2 = ids.index(v2.deployment_id)
        assert set(ids[:first_v2]) == {v1.deployment_id} and set(ids[first_v2:]) == {v2.deployment_id}
    answer = infer(server)
    assert (answer.status, answer.deployment) == (200, v2.deployment_id)
    np.testing.assert_allclose(answer.outputs, forest(2).proba(X), atol=PROBA_ATOL)
    assert "version_policy" in server.index_row(MODEL, 1)["reason"]
    wait_for(lambda: f"unloaded {MODEL}:1 ({v1.deployment_id})" in server.log_text(), what="v1 to unload")


def test_broken_version_is_refused_and_the_previous_one_keeps_serving(serve, local_repo):
    v1 = publish(local_repo, MODEL, forest(0), run_id="1000000000000001")
    server = serve(local_repo)
    broken = Trained(forest(0).estimator, {"checkpoint.tl": b"not a checkpoint"}, "fil")
    publish(local_repo, MODEL, broken, run_id="1000000000000002")  # recorded as it is: loads, fails
    assert "checkpoint.tl" in server.wait_for_state(MODEL, 2, "UNAVAILABLE")["reason"]
    assert server.index_row(MODEL, 1)["state"] == "READY"
    assert serving_id(server) == v1.deployment_id
    assert f"refused {MODEL}:2: " in server.log_text()
    answer = infer(server, version=2)
    assert answer.status == 404 and "checkpoint.tl" in answer.error
    v3 = publish(local_repo, MODEL, forest(0), run_id="1000000000000003")
    wait_for(lambda: serving_id(server) == v3.deployment_id, what="v3 to serve")
    assert server.index_row(MODEL, 2)["state"] == "UNAVAILABLE"


def test_version_folder_without_its_record_is_ignored(serve, local_repo):
    v1 = publish(local_repo, MODEL, forest(0))
    server = serve(local_repo)
    repo = ModelRepository(local_repo)
    unfinished = local_repo / MODEL / "2"
    unfinished.mkdir()
    (unfinished / "checkpoint.tl").write_bytes(forest(2).files["checkpoint.tl"])
    time.sleep(0.6)  # three polls
    assert server.index_row(MODEL, 2) == {}
    assert serving_id(server) == v1.deployment_id
    text = repo.read_config(MODEL)
    record = record_maker(repo, MODEL, text, forest(2), "1000000000000002")(2)
    (unfinished / "deployment.json").write_bytes(record.to_json())  # the publish completes
    wait_for(lambda: serving_id(server) == record.deployment_id, what="v2 to serve once its record is there")


def test_config_change_reloads_and_a_broken_config_keeps_the_previous_one(serve, local_repo):
    v1 = publish(local_repo, MODEL, forest(0))
    server = serve(local_repo)
    config_file = local_repo / MODEL / "config.pbtxt"
    good = config_file.read_text()

    def reason() -> str:
        row = server.index_row(MODEL, 1)
        assert row["state"] == "READY"  # whatever the config does, version 1 keeps serving
        return row["reason"]

    config_file.write_text(good.replace("max_batch_size: 1024", "max_batch_size: banana"))
    wait_for(lambda: "serving the previous config" in reason(), what="the broken config reported")
    assert "max_batch_size" in reason() and f"refused the config of {MODEL}" in server.log_text()
    assert serving_id(server) == v1.deployment_id

    # valid for the schema, but no version loads under it: still the previous config
    config_file.write_text(good.replace(f"dims: {N_FEATURES}", f"dims: {N_FEATURES + 1}", 1))
    wait_for(lambda: "no version loads" in reason(), what="the config no version loads under")
    assert "reads 8 features" in reason()
    assert infer(server).status == 200

    config_file.write_text(render(config_for(MODEL, forest(0), max_batch_size=16)))
    wait_for(lambda: server.client.get_model_config(MODEL)["max_batch_size"] == 16, what="the new config")

    assert server.index_row(MODEL, 1) == {"name": MODEL, "version": "1", "state": "READY", "reason": ""}
    assert infer(server, data()[0][:16]).status == 200
    too_many = infer(server, data()[0][:17])
    assert (too_many.status, too_many.deployment) == (400, v1.deployment_id)
    assert "expected 1 to 16" in too_many.error
    assert server.log_text().count(f"serving: loaded {MODEL}:1 ({v1.deployment_id})") == 2


def test_model_removed_from_the_repository_is_unloaded(serve, local_repo):
    publish(local_repo, MODEL, forest(0))
    publish(local_repo, "other", forest(0))
    server = serve(local_repo)
    shutil.rmtree(local_repo / "other")
    wait_for(lambda: not server.client.is_model_ready("other"), what="the removed model to go")
    assert [r["name"] for r in server.index()] == [MODEL]
    assert infer(server).status == 200


def test_latest_two_keeps_two_versions_and_routes_to_the_highest(serve, local_repo: Path):
    config = config_for(MODEL, forest(0), latest=2)
    v1 = publish(local_repo, MODEL, forest(0), config, run_id="1000000000000001")
    server = serve(local_repo)
    v2 = publish(local_repo, MODEL, forest(2), config, run_id="1000000000000002")
    wait_for(lambda: serving_id(server) == v2.deployment_id, what="v2 to serve")
    assert server.client.get_model_metadata(MODEL)["versions"] == ["1", "2"]
    status, _, body = server.request("GET", f"/v2/models/{MODEL}/versions/1/lineage")
    assert status == 200, body
    assert json.loads(body)["deployment"]["deployment_id"] == v1.deployment_id
    v3 = publish(local_repo, MODEL, forest(0), config, run_id="1000000000000003")
    wait_for(lambda: server.client.get_model_metadata(MODEL)["versions"] == ["2", "3"], what="v1 to leave")
    assert serving_id(server) == v3.deployment_id


def test_explicit_mode_leaves_changes_to_a_load_request(serve, local_repo):
    v1 = publish(local_repo, MODEL, forest(0), run_id="1000000000000001")
    server = serve(local_repo, "--model-control-mode", "explicit", "--load-model", MODEL)
    v2 = publish(local_repo, MODEL, forest(2), run_id="1000000000000002")
    time.sleep(0.6)  # three polls, had polling been on
    assert serving_id(server) == v1.deployment_id
    server.client.load_model(MODEL)  # the repository API lists the versions itself
    answer = infer(server)
    assert answer.deployment == v2.deployment_id
    np.testing.assert_allclose(answer.outputs, forest(2).proba(X), atol=PROBA_ATOL)


def test_a_new_version_does_not_hide_a_broken_config(serve, local_repo):
    publish(local_repo, MODEL, forest(0))
    server = serve(local_repo)
    config_file = local_repo / MODEL / "config.pbtxt"
    broken = config_file.read_text().replace("max_batch_size: 1024", "max_batch_size: banana")
    config_file.write_text(broken)
    wait_for(lambda: "serving the previous config" in server.index_row(MODEL, 1)["reason"], what="the error")

    # A new version published while config.pbtxt stays broken: it loads under the previous config,
    # and the index keeps saying that the config on disk is refused.
    repo = ModelRepository(str(local_repo))
    trained = forest(2)
    repo.publish(
        MODEL, broken, trained.files, record_maker(repo, MODEL, broken, trained, "1000000000000002"), {}
    )
    server.wait_for_state(MODEL, 2, "READY")
    assert "serving the previous config" in server.index_row(MODEL, 2)["reason"]
