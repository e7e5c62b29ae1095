"""Large requests do not starve small ones: through a real node, a 1-row request sent while a
65,536-row request is being executed is answered before it, and the large one runs in chunks whose
outputs, reassembled, are exactly the engine's output for all its rows at once. Large JSON bodies
are decoded off the event loop and answer as binary ones do.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from typing import Any

import numpy as np
import pytest
import tritonclient.http as httpclient
from conftest import N_FEATURES, PROBA_ATOL, Server, Trained, config_for, fil_forest, publish, wait_for
from sklearn.datasets import make_classification
from sklearn.ensemble import RandomForestClassifier

from tritonflow.serving.backends import load_backend
from tritonflow.serving.backends.forest import nvforest_or_reason
from tritonflow.serving.http import OFFLOAD_JSON_BYTES

MODEL = "heavy-rf"
LARGE_ROWS = 65_536
ENGINES = ["treelite"] if isinstance(nvforest_or_reason(), str) else ["nvforest", "treelite"]


@cache
def heavy_forest() -> Trained:
    """Enough trees and depth that 65,536 rows take many chunks (about a second of engine time)."""
    X, y = make_classification(4_000, N_FEATURES, n_informative=6, random_state=1)
    est = RandomForestClassifier(n_estimators=50, max_depth=10, random_state=0, n_jobs=-1).fit(X, y)
    est.set_params(n_jobs=None)
    return fil_forest(est)


@cache
def rows() -> np.ndarray:
    return np.random.default_rng(0).normal(size=(LARGE_ROWS, N_FEATURES)).astype(np.float32)


@pytest.fixture(scope="module", params=ENGINES)
def node(request, serve_module, tmp_path_factory) -> tuple[Server, np.ndarray]:
    """A node on the heavy forest, and that engine's output for all the rows in one call."""
    root = tmp_path_factory.mktemp(f"fairness-{request.param}") / "repo"
    root.mkdir()
    config = config_for(MODEL, heavy_forest(), max_batch_size=LARGE_ROWS)
    publish(root, MODEL, heavy_forest(), config)
    engine = load_backend(root / MODEL / "1", config, request.param)
    try:
        # NOTE: on a thread of its own, as the node's engine calls are: OpenMP limits are per thread,
        # and the plugin tests hold this one's to a single thread for the session
        with ThreadPoolExecutor(1) as worker:
            whole = worker.submit(engine.predict, {"input__0": rows()}).result()["output__0"]
    finally:
        engine.unload()
    return serve_module(root, "--engine", request.param), whole


def client(server: Server) -> httpclient.InferenceServerClient:
    """A client of its own (tritonclient's are not for sharing between threads)."""
    return httpclient.InferenceServerClient(server.url, network_timeout=300)


def infer(client: httpclient.InferenceServerClient, x: np.ndarray) -> np.ndarray:
    """One request with binary tensors."""
    tensor = httpclient.InferInput("input__0", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, binary_data=True)
    wanted = [httpclient.InferRequestedOutput("output__0", binary_data=True)]
    return client.infer(MODEL, [tensor], outputs=wanted).as_numpy("output__0")


def stats(server: Server) -> dict[str, Any]:
    return server.json("GET", f"/v2/models/{MODEL}/stats")["model_stats"][0]


def test_a_small_request_sent_during_a_large_one_is_answered_first(node):
    server, whole = node
    X = rows()
    # NOTE: the small request must arrive while the large one runs; on a starved machine the large one
    # can end before the small one is sent. Bounded rounds wait for one real overlap, not a timing.
    overlaps = []
    with ThreadPoolExecutor(1) as pool, client(server) as large_client, client(server) as small_client:
        for _ in range(5):
            before = stats(server)
            large = pool.submit(infer, large_client, X)
            wait_for(
                lambda: large.done() or stats(server)["execution_count"] > before["execution_count"],  # noqa: B023
                timeout=120,
                what="the large request's first engine call",
            )
            if large.done():  # over before the small request could be sent: no overlap this round
                large.result()
                overlaps.append(False)
                continue
            small = infer(small_client, X[-1:])
            # Counted on the node once the small request was answered: every row of the large one yet?
            during = stats(server)["inference_count"] - before["inference_count"]
            after_large = large.result(timeout=300)
            after = stats(server)
            np.testing.assert_array_equal(after_large, whole)  # chunked == one engine call on all rows
            np.testing.assert_array_equal(small, whole[-1:])
            assert after["inference_count"] - before["inference_count"] == LARGE_ROWS + 1
            overlaps.append(during < LARGE_ROWS + 1)
            if overlaps[-1]:
                break
    assert overlaps[-1], f"no round answered the small request before the large one's last rows: {overlaps}"
    # The large request ran as several engine calls, none of all its rows at once.
    assert after["execution_count"] - before["execution_count"] >= 3
    assert max(b["batch_size"] for b in after["batch_stats"]) < LARGE_ROWS
    np.testing.assert_allclose(whole, heavy_forest().proba(X), atol=PROBA_ATOL)


def test_a_large_json_request_decoded_off_the_loop_answers_as_binary_does(node):
    # NOTE: JSON parts over http.OFFLOAD_JSON_BYTES are decoded in a thread; this guards that path
    # (the latency it buys is measured by benchmarks/fairness.py, not asserted here).
    server, whole = node
    x = rows()[:4_096]
    tensor = {"name": "input__0", "shape": list(x.shape), "datatype": "FP32", "data": x.tolist()}
    body = json.dumps({"inputs": [tensor]}).encode()
    assert len(body) > OFFLOAD_JSON_BYTES
    status, headers, raw = server.request("POST", f"/v2/models/{MODEL}/infer", body)
    assert status == 200, raw
    out = json.loads(raw)["outputs"][0]
    np.testing.assert_array_equal(np.asarray(out["data"], np.float32).reshape(out["shape"]), whole[:4_096])
    assert headers["x-deployment-id"].startswith(f"{MODEL}:1@")
    status, _, raw = server.request("POST", f"/v2/models/{MODEL}/infer", body[:-100])
    assert status == 400 and b"not valid JSON" in raw, raw
    assert server.request("GET", "/v2/health/ready")[0] == 200
