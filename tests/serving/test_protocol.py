"""Every endpoint of the KServe v2 / Triton HTTP protocol, through the unmodified tritonclient.http
client and raw HTTP, against the `tritonflow serve` command on a repository published here."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient
from conftest import (
    N_FEATURES,
    PROBA_ATOL,
    Server,
    config_for,
    data,
    forest,
    onnx_forest,
    publish,
)
from tritonclient.utils import InferenceServerException

from tritonflow.lineage.records import DeploymentRecord
from tritonflow.serving.model_config import check_config, render, to_json
from tritonflow.serving.served_config import as_served

MODEL = "fraud-classifier"


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, list[DeploymentRecord]]]:
    root = tmp_path_factory.mktemp("protocol") / "repo"
    root.mkdir()
    rf, onnx = forest(), onnx_forest()
    policies = {
        "policy-latest2": config_for("policy-latest2", rf, latest=2),
        "policy-all": config_for("policy-all", rf, policy="all"),
        "policy-specific": config_for("policy-specific", rf, policy="specific", specific=(2,)),
    }
    records = {
        MODEL: [publish(root, MODEL, rf)],
        "onnx-classifier": [publish(root, "onnx-classifier", onnx)],
        "onnx-unbatched": [
            publish(
                root,
                "onnx-unbatched",
                onnx,
                config_for("onnx-unbatched", onnx, max_batch_size=0, queue_delay_us=None),
            )
        ],
        "spare-rf": [publish(root, "spare-rf", rf)],
        **{
            name: [publish(root, name, rf, config, run_id=f"17953143798841{v}") for v in range(3)]
            for name, config in policies.items()
        },
    }
    return root, records


@pytest.fixture(scope="module")
def server(serve_module, repo) -> Server:
    # explicit: the repository API's load and unload requests are accepted
    return serve_module(repo[0], "--model-control-mode", "explicit", "--load-model", "*")


@pytest.fixture(scope="module")
def records(repo) -> dict[str, list[DeploymentRecord]]:
    return repo[1]


def rows(n: int, start: int = 0) -> np.ndarray:
    return data()[0][start : start + n]


def fp32_input(x: np.ndarray, binary: bool = True) -> httpclient.InferInput:
    tensor = httpclient.InferInput("input__0", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, binary_data=binary)
    return tensor


# -- health and metadata --------------------------------------------------------------------------
def test_health_and_server_metadata(server):
    assert server.client.is_server_live()
    assert server.client.is_server_ready()
    metadata = server.client.get_server_metadata()
    assert metadata["name"] == "tritonflow"
    assert {"binary_tensor_data", "model_repository", "statistics", "model_configuration"} <= set(
        metadata["extensions"]
    )


def test_model_metadata_names_engine_and_deployment(server, records):
    record = records[MODEL][0]
    for version in ("", "1"):
        metadata = server.client.get_model_metadata(MODEL, version)
        assert metadata["name"] == MODEL
        assert metadata["versions"] == ["1"]
        assert metadata["platform"] == metadata["backend"] == "fil"
        assert metadata["inputs"] == [{"name": "input__0", "datatype": "FP32", "shape": [-1, N_FEATURES]}]
        assert metadata["outputs"] == [{"name": "output__0", "datatype": "FP32", "shape": [-1, 2]}]
        assert metadata["engine"] in ("nvforest-cpu", "nvforest-gpu", "treelite-gtil")
        assert metadata["deployment_id"] == record.deployment_id
    onnx = server.client.get_model_metadata("onnx-classifier")
    assert [o["name"] for o in onnx["outputs"]] == ["label", "probabilities"]
    assert onnx["engine"].startswith("onnxruntime")


def test_model_ready_and_config(server):
    assert server.client.is_model_ready(MODEL)
    assert server.client.is_model_ready(MODEL, "1")
    assert not server.client.is_model_ready(MODEL, "2")
    assert not server.client.is_model_ready("no-such-model")
    expected = to_json(as_served(check_config(render(config_for(MODEL, forest()))), MODEL))
    assert server.client.get_model_config(MODEL) == expected
    assert server.json("GET", f"/v2/models/{MODEL}/versions/1/config") == expected
    assert expected["max_batch_size"] == 1024  # int64 fields as numbers, as Triton writes them


def test_server_logs_each_loaded_version_with_its_engine(server, records):
    log = server.log_text()
    unselected = {("policy-latest2", 1), ("policy-specific", 1), ("policy-specific", 3)}  # version_policy
    for versions in records.values():
        for record in versions:
            line = f"{record.model_name}:{record.version} ({record.deployment_id}) engine="
            assert (line in log) == ((record.model_name, record.version) not in unselected), line


# -- inference ------------------------------------------------------------------------------------
def test_binary_infer_matches_the_native_model_and_is_stamped(server, records):
    x = rows(5)
    result = server.client.infer(MODEL, [fp32_input(x)], request_id="req-7")
    np.testing.assert_allclose(result.as_numpy("output__0"), forest().proba(x), atol=PROBA_ATOL)
    response = result.get_response()
    assert response["id"] == "req-7"
    assert response["model_name"] == MODEL and response["model_version"] == "1"
    assert response["parameters"]["deployment_id"] == records[MODEL][0].deployment_id
    assert response["outputs"][0]["parameters"]["binary_data_size"] == 5 * 2 * 4


def test_binary_stamp_header_and_framing(server, records):
    x = rows(2)
    header = json.dumps(
        {
            "id": "raw-1",
            "inputs": [
                {
                    "name": "input__0",
                    "shape": [2, N_FEATURES],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": x.nbytes},
                }
            ],
            "outputs": [{"name": "output__0", "parameters": {"binary_data": True}}],
        }
    ).encode()
    status, headers, body = server.request(
        "POST",
        f"/v2/models/{MODEL}/infer",
        header + x.tobytes(),
        {"Inference-Header-Content-Length": str(len(header))},
    )
    assert status == 200
    assert headers["content-type"] == "application/octet-stream"
    assert headers["x-deployment-id"] == records[MODEL][0].deployment_id
    length = int(headers["inference-header-content-length"])
    meta = json.loads(body[:length])
    assert meta["parameters"]["deployment_id"] == records[MODEL][0].deployment_id
    assert meta["id"] == "raw-1"
    out = np.frombuffer(body[length:], np.float32).reshape(meta["outputs"][0]["shape"])
    np.testing.assert_allclose(out, forest().proba(x), atol=PROBA_ATOL)


def test_json_infer_flat_and_nested(server, records):
    x = rows(3)
    result = server.client.infer(
        MODEL,
        [fp32_input(x, binary=False)],
        outputs=[httpclient.InferRequestedOutput("output__0", binary_data=False)],
    )
    np.testing.assert_allclose(result.as_numpy("output__0"), forest().proba(x), atol=PROBA_ATOL)
    assert result.get_response()["parameters"]["deployment_id"] == records[MODEL][0].deployment_id
    for values in (x.ravel().tolist(), x.tolist()):
        request = {
            "id": "j1",
            "inputs": [{"name": "input__0", "shape": [3, N_FEATURES], "datatype": "FP32", "data": values}],
        }
        status, headers, body = server.request(
            "POST", f"/v2/models/{MODEL}/versions/1/infer", json.dumps(request).encode()
        )
        assert status == 200, body
        assert headers["content-type"] == "application/json"
        assert headers["x-deployment-id"] == records[MODEL][0].deployment_id
        response = json.loads(body)
        assert response["id"] == "j1" and response["model_version"] == "1"
        assert response["parameters"] == {"deployment_id": records[MODEL][0].deployment_id}
        out = np.asarray(response["outputs"][0]["data"], np.float32).reshape(response["outputs"][0]["shape"])
        np.testing.assert_allclose(out, forest().proba(x), atol=PROBA_ATOL)


def test_requested_outputs_binary_and_json_mixed(server):
    x = rows(4, 10)
    est = onnx_forest()
    only = server.client.infer(
        "onnx-classifier", [fp32_input(x)], outputs=[httpclient.InferRequestedOutput("probabilities")]
    )
    assert [o["name"] for o in only.get_response()["outputs"]] == ["probabilities"]
    np.testing.assert_allclose(only.as_numpy("probabilities"), est.proba(x), atol=PROBA_ATOL)
    mixed = server.client.infer(
        "onnx-classifier",
        [fp32_input(x)],
        outputs=[
            httpclient.InferRequestedOutput("label", binary_data=False),
            httpclient.InferRequestedOutput("probabilities", binary_data=True),
        ],
    )
    label, proba = mixed.get_response()["outputs"]
    assert label["datatype"] == "INT64" and "data" in label
    assert "binary_data_size" in proba["parameters"]
    np.testing.assert_array_equal(mixed.as_numpy("label").ravel(), est.estimator.predict(x))
    np.testing.assert_allclose(mixed.as_numpy("probabilities"), est.proba(x), atol=PROBA_ATOL)
    everything = server.client.infer("onnx-classifier", [fp32_input(x)])
    assert [o["name"] for o in everything.get_response()["outputs"]] == ["label", "probabilities"]


def test_model_without_a_batch_dimension(server):
    metadata = server.client.get_model_metadata("onnx-unbatched")
    assert metadata["inputs"][0]["shape"] == [-1, N_FEATURES]  # the config's dims, nothing added
    x = rows(3)
    result = server.client.infer("onnx-unbatched", [fp32_input(x)])
    assert result.as_numpy("label").shape == (3,)
    np.testing.assert_array_equal(result.as_numpy("label"), onnx_forest().estimator.predict(x))
    np.testing.assert_allclose(result.as_numpy("probabilities"), onnx_forest().proba(x), atol=PROBA_ATOL)
    with pytest.raises(InferenceServerException, match=r"has shape \[8\]: expected \[-1, 8\]"):
        server.client.infer("onnx-unbatched", [fp32_input(x[0])])


def test_gzip_and_deflate_requests(server):
    x = rows(2)
    for algorithm in ("gzip", "deflate"):
        result = server.client.infer(MODEL, [fp32_input(x)], request_compression_algorithm=algorithm)
        np.testing.assert_allclose(result.as_numpy("output__0"), forest().proba(x), atol=PROBA_ATOL)


# -- versions -------------------------------------------------------------------------------------
def test_version_policy_latest_all_specific(server, records):
    def ids(name: str) -> list[str]:
        return [r.deployment_id for r in records[name]]

    expectations = {"policy-latest2": ["2", "3"], "policy-all": ["1", "2", "3"], "policy-specific": ["2"]}
    for name, serving in expectations.items():
        assert server.client.get_model_metadata(name)["versions"] == serving
        for version in ("1", "2", "3"):
            assert server.client.is_model_ready(name, version) == (version in serving)
        # unversioned requests go to the highest version serving
        latest = server.client.infer(name, [fp32_input(rows(1))]).get_response()
        assert latest["model_version"] == serving[-1]
        assert latest["parameters"]["deployment_id"] == ids(name)[int(serving[-1]) - 1]
    with pytest.raises(InferenceServerException, match="not selected by the config's version_policy"):
        server.client.infer("policy-latest2", [fp32_input(rows(1))], model_version="1")


def test_repository_index_lists_every_version_with_state(server):
    index = {(row["name"], row["version"]): row for row in server.client.get_model_repository_index()}
    assert index[(MODEL, "1")] == {"name": MODEL, "version": "1", "state": "READY", "reason": ""}
    assert index[("policy-latest2", "1")]["state"] == "UNAVAILABLE"
    assert "version_policy" in index[("policy-latest2", "1")]["reason"]
    ready = server.json("POST", "/v2/repository/index", {"ready": True})
    assert ready and all(row["state"] == "READY" for row in ready)
    assert ("policy-latest2", "1") not in {(r["name"], r["version"]) for r in ready}


def test_unload_and_load_requests(server, repo):
    server.client.unload_model("spare-rf")
    assert not server.client.is_model_ready("spare-rf")
    with pytest.raises(InferenceServerException, match="unloaded by request"):
        server.client.infer("spare-rf", [fp32_input(rows(1))])
    index = {(r["name"], r["version"]): r for r in server.index()}
    assert index[("spare-rf", "1")] == {
        "name": "spare-rf",
        "version": "1",
        "state": "UNAVAILABLE",
        "reason": "unloaded by request",
    }
    server.client.load_model("spare-rf")
    assert server.client.is_model_ready("spare-rf")
    reloaded = server.client.infer("spare-rf", [fp32_input(rows(1))]).as_numpy("output__0")
    assert reloaded.shape == (1, 2)
    np.testing.assert_allclose(reloaded, forest().proba(rows(1)), atol=PROBA_ATOL)
    with pytest.raises(InferenceServerException, match="failed to load 'ghost'") as refused:
        server.client.load_model("ghost")
    assert str(repo[0]) not in str(refused.value)  # no server path in an answer to a client


# -- lineage, stats, metrics --------------------------------------------------------------------
def test_lineage_returns_the_lineage_document(server, records):
    record = records[MODEL][0]
    doc = server.json("GET", f"/v2/models/{MODEL}/versions/1/lineage")
    assert doc["schema"] == "tritonflow.lineage/v1"
    assert doc["deployment"]["deployment_id"] == record.deployment_id
    assert doc["deployment"]["currently_served"] is True
    assert doc["run"]["pathspec"] == f"TestFlow/{record.metaflow['run_id']}"
    assert doc["decision"] == record.selection
    # no such run in any Metaflow metadata here: the record alone answers, with a one-line notice
    assert doc["metaflow"]["available"] is False and "record only" in doc["metaflow"]["notice"]
    # a version that is published but not serving is read from the repository
    old = records["policy-latest2"][0]
    assert (
        server.json("GET", "/v2/models/policy-latest2/versions/1/lineage")["deployment"]["deployment_id"]
        == old.deployment_id
    )
    status, _, body = server.request("GET", f"/v2/models/{MODEL}/versions/9/lineage")
    assert status == 404 and "version 9" in json.loads(body)["error"]


def test_stats_in_tritons_shape_and_counting(server):
    before = server.client.get_inference_statistics(MODEL)["model_stats"][0]
    server.client.infer(MODEL, [fp32_input(rows(3))])
    stats = server.client.get_inference_statistics(MODEL, "1")["model_stats"][0]
    assert stats["name"] == MODEL and stats["version"] == "1"
    assert stats["inference_count"] == before["inference_count"] + 3
    assert stats["execution_count"] == before["execution_count"] + 1
    inference = stats["inference_stats"]
    assert inference["success"]["count"] == before["inference_stats"]["success"]["count"] + 1
    for key in (
        "fail",
        "queue",
        "compute_input",
        "compute_infer",
        "compute_output",
        "cache_hit",
        "cache_miss",
    ):
        assert set(inference[key]) == {"count", "ns"}
    assert inference["compute_infer"]["ns"] > 0
    assert {b["batch_size"] for b in stats["batch_stats"]} >= {3}
    assert stats["last_inference"] > 0
    every = server.json("GET", "/v2/models/stats")["model_stats"]
    assert {(s["name"], s["version"]) for s in every} >= {(MODEL, "1"), ("policy-all", "3")}


def test_metrics_per_model_and_version(server):
    def counts() -> dict[str, float]:
        names = ("nv_inference_request_success", "nv_inference_count", "nv_inference_exec_count")
        return {name: server.metric(name, MODEL, 1) for name in names}

    before = counts()
    server.client.infer(MODEL, [fp32_input(rows(4))])
    after = counts()
    assert after["nv_inference_request_success"] == before["nv_inference_request_success"] + 1
    assert after["nv_inference_count"] == before["nv_inference_count"] + 4
    assert after["nv_inference_exec_count"] == before["nv_inference_exec_count"] + 1
    status, headers, body = server.request("GET", "/metrics")
    text = body.decode()
    assert status == 200 and headers["content-type"].startswith("text/plain")
    for name in (
        "nv_inference_request_success",
        "nv_inference_count",
        "nv_inference_exec_count",
        "nv_inference_request_duration_us",
        "nv_inference_queue_duration_us",
        "nv_inference_compute_infer_duration_us",
    ):
        assert f'{name}{{model="{MODEL}",version="1"}}' in text
    bucket = f'tritonflow_inference_batch_size_bucket{{le="4.0",model="{MODEL}",role="champion",version="1"}}'
    assert bucket in text
    assert server.metric("nv_inference_request_duration_us", MODEL, 1) > 0


# -- lifecycle ------------------------------------------------------------------------------------
def test_sigterm_lets_an_in_flight_request_finish(serve, tmp_path):
    root = tmp_path / "repo"
    root.mkdir()
    record = publish(root, MODEL, forest())
    server = serve(root)
    x = rows(1)
    body = json.dumps(
        {
            "inputs": [
                {"name": "input__0", "shape": [1, N_FEATURES], "datatype": "FP32", "data": x.ravel().tolist()}
            ]
        }
    ).encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        head = f"POST /v2/models/{MODEL}/infer HTTP/1.1\r\nHost: t\r\nContent-Length: {len(body)}\r\n\r\n"
        sock.sendall(head.encode() + body[:10])
        time.sleep(0.3)
        server.process.send_signal(signal.SIGTERM)  # mid-request: the rest of the body is still to come
        time.sleep(0.3)
        assert server.process.poll() is None
        sock.sendall(body[10:])
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    status_line, _, rest = reply.partition(b"\r\n")
    assert status_line == b"HTTP/1.1 200 OK", reply
    assert f"x-deployment-id: {record.deployment_id}".encode() in rest
    assert server.process.wait(timeout=10) in (0, -signal.SIGTERM)
    log = server.log_text()
    assert "Application shutdown complete" in log
    assert f"unloaded {MODEL}:1" in log


def test_the_serving_node_does_not_import_metaflow():
    code = (
        "import sys, tritonflow.cli, tritonflow.serving.server as s, tritonflow.serving.app as a;"
        "a.create_app(a.Settings('.'));"
        "assert not [m for m in sys.modules if m.split('.')[0] == 'metaflow'], 'metaflow imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_missing_repository_is_a_one_line_error(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "tritonflow", "serve", str(tmp_path / "typo")], capture_output=True, text=True
    )
    assert result.returncode == 2
    assert (
        result.stderr.startswith("tritonflow serve: error: repository") and "does not exist" in result.stderr
    )
