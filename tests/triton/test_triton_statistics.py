"""The node's statistics JSON against Triton 24.10's for the same FIL model and the same requests:
the same keys at every level (response_stats, batch_stats and memory_usage included) and counts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.http as httpclient
from servers import Server
from sklearn.datasets import make_classification
from sklearn.ensemble import RandomForestClassifier
from test_triton_compat import deploy_direct

MODEL = "counted"
ROWS = (1, 2, 5, 2)  # sequential requests: each its own engine call on both servers


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    X, y = make_classification(300, 6, random_state=7)
    X = X.astype(np.float32)
    root = tmp_path_factory.mktemp("triton-statistics") / "repo"
    deploy_direct(root, MODEL, RandomForestClassifier(n_estimators=5, max_depth=3).fit(X, y), X, "503")
    return root, X


def _keys(value: Any) -> Any:
    """The JSON's shape: every dict's keys, recursively, and the shapes of a list's items; leaves by type."""
    if isinstance(value, dict):
        return {key: _keys(item) for key, item in value.items()}
    if isinstance(value, list):
        return sorted({repr(_keys(item)) for item in value})
    return type(value).__name__


def test_statistics_have_tritons_keys_and_counts(start_triton: Any, serve_module: Any, published) -> None:
    repository, X = published
    triton = start_triton(repository)
    triton.wait_ready(MODEL, 1)
    node: Server = serve_module(repository)
    clients = {"node": node.client, "triton": triton.http}
    for client in clients.values():
        for rows in ROWS:
            tensor = httpclient.InferInput("input__0", [rows, X.shape[1]], "FP32")
            tensor.set_data_from_numpy(X[:rows])
            client.infer(MODEL, [tensor])
    stats = {side: client.get_inference_statistics(MODEL, "1") for side, client in clients.items()}
    assert _keys(stats["node"]) == _keys(stats["triton"]), stats
    node_stats, triton_stats = (stats[side]["model_stats"][0] for side in ("node", "triton"))
    assert node_stats["response_stats"] == triton_stats["response_stats"] == {}
    assert node_stats["memory_usage"] == triton_stats["memory_usage"] == []

    def counts(s: dict[str, Any]) -> tuple[Any, ...]:
        inference = s["inference_stats"]
        batches = {b["batch_size"]: b["compute_infer"]["count"] for b in s["batch_stats"]}
        return (s["inference_count"], s["execution_count"], inference["success"]["count"], batches)

    assert counts(node_stats) == counts(triton_stats) == (sum(ROWS), len(ROWS), len(ROWS), {1: 1, 2: 2, 5: 1})
