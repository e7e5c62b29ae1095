"""`/metrics` as Triton prints it: its names, types and labels, and its counts after good and bad requests.

Requests rejected before the model runs (unknown input, bad shape, malformed JSON...) are no
failures, as in Triton (tests/triton/test_triton_metrics.py checks that against Triton 24.10).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import Server, config_for, data, forest, publish
from metric_cases import GOOD_ROWS, REASONS, bad_bodies, good_body, request, scrape, send, version_samples

MODEL = "fraud-classifier"
X = data()[0]
TRITON_TYPES = {
    "nv_inference_request_success": "counter",
    "nv_inference_request_failure": "counter",
    "nv_inference_count": "counter",
    "nv_inference_exec_count": "counter",
    "nv_inference_request_duration_us": "counter",
    "nv_inference_queue_duration_us": "counter",
    "nv_inference_compute_input_duration_us": "counter",
    "nv_inference_compute_infer_duration_us": "counter",
    "nv_inference_compute_output_duration_us": "counter",
    "nv_inference_pending_request_count": "gauge",
}


@pytest.fixture(scope="module")
def server(serve_module, tmp_path_factory: pytest.TempPathFactory) -> Server:
    root: Path = tmp_path_factory.mktemp("metrics") / "repo"
    root.mkdir()
    publish(root, MODEL, forest(), config_for(MODEL, forest()))
    return serve_module(root)


def counts(server: Server) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return version_samples(scrape(server.port)[1], MODEL)


def test_good_requests_count_and_rejected_ones_are_no_failures(server):
    before = counts(server)
    statuses = send(server.port, MODEL, X)
    assert [statuses[f"good {rows}"] for rows in GOOD_ROWS] == [200] * len(GOOD_ROWS)
    rejected = {what: status for what, status in statuses.items() if not what.startswith("good")}
    assert set(rejected) == set(bad_bodies(X)) and all(400 <= s < 500 for s in rejected.values()), rejected
    after = counts(server)
    added = {key: after[key] - before[key] for key in after}
    assert added["nv_inference_request_success", frozenset()] == len(GOOD_ROWS)
    assert added["nv_inference_count", frozenset()] == sum(GOOD_ROWS)
    assert added["nv_inference_exec_count", frozenset()] == len(GOOD_ROWS)
    failures = {
        reason: after["nv_inference_request_failure", frozenset({("reason", reason)})] for reason in REASONS
    }
    assert failures == dict.fromkeys(REASONS, 0)
    # the statistics extension counts the same way: a rejected request is no `fail`
    stats = server.client.get_inference_statistics(MODEL, "1")["model_stats"][0]["inference_stats"]
    assert stats["success"]["count"] == after["nv_inference_request_success", frozenset()]
    assert stats["fail"]["count"] == 0


def test_metrics_are_typed_and_labelled_as_tritons(server):
    types, samples = scrape(server.port)
    assert {name: types.get(name) for name in TRITON_TYPES} == TRITON_TYPES
    for name in TRITON_TYPES:
        labels = {labels for n, labels in samples if n == name}
        extra = (
            {frozenset({("reason", r)}) for r in REASONS}
            if name == "nv_inference_request_failure"
            else {frozenset()}
        )
        assert labels == {frozenset({("model", MODEL), ("version", "1")}) | e for e in extra}, name
    # tritonflow's own metrics keep their names
    assert types["tritonflow_inference_batch_size"] == "histogram"
    assert types["tritonflow_version_refusals_total"] == "counter"


def test_pending_requests_return_to_zero(server):
    def infer(rows: int) -> int:
        return request(server.port, "POST", f"/v2/models/{MODEL}/infer", good_body(X, rows))[0]

    before = counts(server)["nv_inference_request_success", frozenset()]
    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(infer, [300] * 16)) == [200] * 16
    after = counts(server)
    assert after["nv_inference_request_success", frozenset()] == before + 16
    assert after["nv_inference_pending_request_count", frozenset()] == 0
