"""The node's /metrics against Triton 24.10's, after the same good and bad requests on one repository.

Each nv_ metric both expose has the same TYPE, the same label sets and, for the counts, the same
values; the metrics only Triton exposes (memory and CPU gauges) are not compared.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from metric_cases import GOOD_ROWS, scrape, send, version_samples
from servers import Server
from sklearn.datasets import make_classification
from sklearn.ensemble import RandomForestClassifier
from test_triton_compat import deploy_direct

MODEL = "metered"
# Counts, not durations: these must be equal on both sides.
COUNTS = (
    "nv_inference_request_success",
    "nv_inference_request_failure",
    "nv_inference_count",
    "nv_inference_exec_count",
    "nv_inference_pending_request_count",
)


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    X, y = make_classification(300, 6, random_state=5)
    X = X.astype(np.float32)
    repository = tmp_path_factory.mktemp("triton-metrics") / "repo"
    model = RandomForestClassifier(n_estimators=5, max_depth=3, random_state=5).fit(X, y)
    deploy_direct(repository, MODEL, model, X, "501")
    return repository, X


def test_the_same_requests_give_tritons_metrics(start_triton: Any, serve_module: Any, published) -> None:
    repository, X = published
    triton = start_triton(repository)
    triton.wait_ready(MODEL, 1)
    node: Server = serve_module(repository)
    args = triton.process.args
    # NOTE: the conftest picks Triton's metrics port and passes it on the command line only
    triton_metrics = int(args[args.index("--metrics-port") + 1])

    ours, theirs = send(node.port, MODEL, X), send(triton.http_port, MODEL, X)
    assert {what for what, status in theirs.items() if status == 200} == {
        w for w in ours if w.startswith("good")
    }
    assert {what for what, status in ours.items() if status == 200} == {
        w for w in ours if w.startswith("good")
    }

    our_types, our_samples = scrape(node.port)
    their_types, their_samples = scrape(triton_metrics)
    shared = {name for name in their_types if name.startswith("nv_inference") and name in our_types}
    assert shared >= set(COUNTS), sorted(their_types)
    assert {name: our_types[name] for name in shared} == {name: their_types[name] for name in shared}
    mine, triton_side = version_samples(our_samples, MODEL), version_samples(their_samples, MODEL)
    assert {key for key in mine if key[0] in shared} == {key for key in triton_side if key[0] in shared}
    assert {k: v for k, v in mine.items() if k[0] in COUNTS} == {
        k: v for k, v in triton_side.items() if k[0] in COUNTS
    }
    # the statistics extension counts them the same way
    counted = [
        client.get_inference_statistics(MODEL, "1")["model_stats"][0] for client in (node.client, triton.http)
    ]
    assert [
        (
            c["inference_count"],
            c["inference_stats"]["success"]["count"],
            c["inference_stats"]["fail"]["count"],
        )
        for c in counted
    ] == [(sum(GOOD_ROWS), len(GOOD_ROWS), 0)] * 2
