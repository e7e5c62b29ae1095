"""Statistics under concurrent load: counts that agree at every read, phases that cover each request.

Threads of tritonclient.http clients load two models at once (one merging requests, one running each
alone, a few requests large enough to run in chunks) while another thread reads the statistics.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.http as httpclient
from conftest import Server, config_for, data, forest, publish

MERGED, ALONE = "merged", "alone"
CLIENTS = 6
REQUESTS = 40  # per client and model
FIXED_ROWS = 3  # every request to ALONE: its inference_count is then 3 x success.count at any read
LARGE_ROWS = 3000  # over the first chunk (1,024 rows): runs in chunks
PHASES = ("queue", "compute_input", "compute_infer", "compute_output")
# The share of a request's time in the node (success.ns) its phases must account for.
COVERED = 0.99


@pytest.fixture(scope="module")
def server(serve_module, tmp_path_factory: pytest.TempPathFactory) -> Server:
    root: Path = tmp_path_factory.mktemp("statistics") / "repo"
    root.mkdir()
    publish(root, MERGED, forest(), config_for(MERGED, forest(), max_batch_size=4096))
    publish(root, ALONE, forest(), config_for(ALONE, forest(), queue_delay_us=None))
    return serve_module(root)


def _infer(client: httpclient.InferenceServerClient, model: str, rows: int) -> int:
    """One request; the client's wall time for it, in ns."""
    X = np.resize(data()[0], (rows, data()[0].shape[1]))
    tensor = httpclient.InferInput("input__0", list(X.shape), "FP32")
    tensor.set_data_from_numpy(X, binary_data=True)
    started = time.perf_counter_ns()
    result = client.infer(model, [tensor])
    wall = time.perf_counter_ns() - started
    assert result.as_numpy("output__0").shape == (rows, 2)
    return wall


def _load(server: Server, seed: int) -> dict[str, tuple[int, int, int]]:
    """One client's requests to both models, interleaved: per model (requests, rows, wall ns)."""
    rng = np.random.default_rng(seed)
    client = httpclient.InferenceServerClient(server.url)
    done = {MERGED: [0, 0, 0], ALONE: [0, 0, 0]}
    try:
        for i in range(REQUESTS):
            for model in (MERGED, ALONE):
                rows = FIXED_ROWS if model == ALONE else int(rng.integers(1, 9))
                if model == MERGED and seed == 0 and i % 10 == 0:
                    rows = LARGE_ROWS
                counted = done[model]
                counted[0] += 1
                counted[1] += rows
                counted[2] += _infer(client, model, rows)
    finally:
        client.close()
    return {model: (n, rows, wall) for model, (n, rows, wall) in done.items()}


def _stats(client: httpclient.InferenceServerClient, model: str) -> dict[str, Any]:
    return client.get_inference_statistics(model, "1")["model_stats"][0]


def test_counts_agree_at_every_read_and_phases_cover_each_request(server):
    before = {model: _stats(server.client, model) for model in (MERGED, ALONE)}
    stop = threading.Event()
    reads: list[tuple[int, int]] = []

    def watch() -> None:
        reader = httpclient.InferenceServerClient(server.url)
        try:
            while not stop.is_set():
                stats = _stats(reader, ALONE)
                reads.append((stats["inference_count"], stats["inference_stats"]["success"]["count"]))
        finally:
            reader.close()

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        with ThreadPoolExecutor(CLIENTS) as pool:
            loads = list(pool.map(lambda seed: _load(server, seed), range(CLIENTS)))
    finally:
        stop.set()
        watcher.join()

    assert len(reads) > 10, "the statistics were hardly read during the load"
    drifted = [(count, success) for count, success in reads if count != FIXED_ROWS * success]
    assert not drifted, (
        f"inference_count != {FIXED_ROWS} x success.count at {len(drifted)} reads: {drifted[:5]}"
    )
    for model in (MERGED, ALONE):
        old, new = before[model], _stats(server.client, model)
        requests = sum(load[model][0] for load in loads)
        rows = sum(load[model][1] for load in loads)
        wall = sum(load[model][2] for load in loads)
        added = {
            key: new["inference_stats"][key]["ns"] - old["inference_stats"][key]["ns"]
            for key in ("success", *PHASES)
        }
        counts = {
            key: new["inference_stats"][key]["count"] - old["inference_stats"][key]["count"]
            for key in ("success", "fail", *PHASES)
        }
        assert counts == {"success": requests, "fail": 0} | dict.fromkeys(PHASES, requests), model
        assert new["inference_count"] - old["inference_count"] == rows, model
        # every row answered ran in exactly one engine call, as batch_stats counts them
        batched = sum(b["batch_size"] * b["compute_infer"]["count"] for b in new["batch_stats"])
        assert batched == new["inference_count"], model
        assert sum(b["compute_infer"]["count"] for b in new["batch_stats"]) == new["execution_count"]
        phases = sum(added[key] for key in PHASES)
        assert phases <= added["success"] <= wall, (model, added, wall)
        unattributed_us = (added["success"] - phases) / requests / 1000
        assert phases >= COVERED * added["success"], (
            f"{model}: {unattributed_us:.1f} us per request in the node in no phase: {added}"
        )
