"""The shared memory answers the node claims as Triton's, side by side with Triton 24.10 (no GPU here).

The same calls go to both: status entries and their keys, register/unregister answers, infers
with inputs and outputs in regions, the bad cases' status codes and texts, and the CUDA answers
of a Triton without GPUs. Where Triton answers a 5xx for a client's mistake the node answers 400.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.utils.shared_memory as shm
from sklearn.datasets import make_classification
from sklearn.ensemble import RandomForestClassifier
from test_triton_compat import deploy_direct

MODEL = "shared"
KEY = f"/tf-triton-shm-{os.getpid()}"  # NOTE: /dev/shm is shared by every test run on the machine
ROWS, FEATURES = 2, 6


def infer(inputs: dict[str, int], outputs: dict[str, int | str]) -> tuple[str, str, dict[str, Any]]:
    shaped = {"name": "input__0", "datatype": "FP32", "shape": [ROWS, FEATURES]}
    body = {
        "inputs": [{**shaped, "parameters": {"shared_memory_region": "in", **inputs}}],
        "outputs": [{"name": "output__0", "parameters": {"shared_memory_region": "out", **outputs}}],
    }
    return "POST", f"/v2/models/{MODEL}/infer", body


def register(name: str, key: str, byte_size: int, offset: int = 0) -> tuple[str, str, dict[str, Any]]:
    body = {"key": key, "offset": offset, "byte_size": byte_size}
    return "POST", f"/v2/systemsharedmemory/region/{name}/register", body


IN = ROWS * FEATURES * 4
CALLS: list[tuple[str, str, dict[str, Any] | None]] = [
    ("GET", "/v2/systemsharedmemory/status", None),
    register("in", f"{KEY}-in", 64),
    register("out", f"{KEY}-out", 64),
    register("in", f"{KEY}-in", 64),  # twice
    ("GET", "/v2/systemsharedmemory/region/in/status", None),
    ("GET", "/v2/systemsharedmemory/status", None),
    ("GET", "/v2/systemsharedmemory/region/nope/status", None),
    register("gone", f"{KEY}-none", 8),  # no such key
    register("big", f"{KEY}-in", 64, 32),  # past the file
    # NOTE: no byte_size 0 region here: Triton 24.10 sometimes never answers that register (its libevent
    # logs "Epoll MOD ... Bad file descriptor"; seen twice in CI), so it cannot be compared call for call
    infer({"shared_memory_byte_size": IN}, {"shared_memory_byte_size": 64}),
    infer({"shared_memory_byte_size": IN}, {"shared_memory_byte_size": 56, "shared_memory_offset": 8}),
    infer({"shared_memory_byte_size": IN}, {"shared_memory_byte_size": 60, "shared_memory_offset": 8}),
    infer({"shared_memory_byte_size": IN, "shared_memory_offset": 32}, {"shared_memory_byte_size": 16}),
    infer({"shared_memory_byte_size": IN}, {"shared_memory_byte_size": 8}),  # output does not fit
    infer({"shared_memory_byte_size": IN}, {"shared_memory_region": "zz", "shared_memory_byte_size": 16}),
    ("POST", "/v2/systemsharedmemory/region/nope/unregister", None),
    ("POST", "/v2/systemsharedmemory/region/in/unregister", None),
    ("GET", "/v2/systemsharedmemory/status", None),
    ("POST", "/v2/systemsharedmemory/unregister", None),
    ("GET", "/v2/systemsharedmemory/status", None),
    ("GET", "/v2/cudasharedmemory/status", None),
    ("GET", "/v2/cudasharedmemory/region/nope/status", None),
    (
        "POST",
        "/v2/cudasharedmemory/region/c/register",
        {"raw_handle": {"b64": base64.b64encode(bytes(64)).decode()}, "device_id": 0, "byte_size": 8},
    ),
    ("POST", "/v2/cudasharedmemory/region/c/unregister", None),
    ("POST", "/v2/cudasharedmemory/unregister", None),
]
# Triton's texts the node answers with, word for word at the start of its message.
SAME_TEXT = (
    "already in manager",
    "Unable to find",
    "Unable to open shared memory region",
    "Invalid shared memory region",
    "Invalid offset + byte size",
)


def call(port: int, method: str, path: str, body: dict[str, Any] | None) -> tuple[int, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, json.dumps(body) if body is not None else None)
        response = conn.getresponse()
        data = response.read()
        return response.status, json.loads(data) if data else None
    finally:
        conn.close()


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    X, y = make_classification(200, FEATURES, random_state=3)
    X = X.astype(np.float32)
    repository = tmp_path_factory.mktemp("triton-shm") / "repo"
    model = RandomForestClassifier(n_estimators=3, max_depth=3, random_state=3).fit(X, y)
    deploy_direct(repository, MODEL, model, X, "601")
    return repository


def run(
    port: int, regions: dict[str, shm.SharedMemoryRegion], log: Callable[[], str] = str
) -> list[tuple[int, Any, np.ndarray]]:
    """Each call's status, body and the output region's contents right after it. `log`: the server's
    log, shown when a call gets no answer (a server that closed the connection or died)."""
    shm.set_shared_memory_region(regions["out"], [np.zeros(16, np.float32)])
    answers = []
    for i, (method, path, body) in enumerate(CALLS):
        try:
            try:
                status, answer = call(port, method, path, body)
            except (http.client.RemoteDisconnected, ConnectionResetError):
                # NOTE: seen once in CI from Triton, alive afterwards: a closed connection, asked again
                status, answer = call(port, method, path, body)
        except OSError as exc:
            raise AssertionError(
                f"call {i} ({method} {path} {body}) got no answer: {exc!r}; its log:\n{log()[-4000:]}"
            ) from exc
        # NOTE: a copy: the helper's array is a view of a mapping this test unmaps before comparing
        written = shm.get_contents_as_numpy(regions["out"], np.float32, [16]).copy()
        answers.append((status, answer, written))
    return answers


def test_shared_memory_answers_as_triton(start_triton: Any, serve_module: Any, repository: Path) -> None:
    regions = {
        "in": shm.create_shared_memory_region("in", f"{KEY}-in", 64),
        "out": shm.create_shared_memory_region("out", f"{KEY}-out", 64),
    }
    try:
        shm.set_shared_memory_region(regions["in"], [np.random.default_rng(1).random((4, 4), np.float32)])
        triton = start_triton(repository)
        triton.wait_ready(MODEL, 1)
        theirs = run(triton.http_port, regions, triton.log_text)
        ours = run(serve_module(repository).port, regions)
    finally:
        for handle in regions.values():
            shm.destroy_shared_memory_region(handle)
    for (method, path, body), mine, triton_side in zip(CALLS, ours, theirs, strict=True):
        what = f"{method} {path} {body}: node {mine[:2]}, Triton {triton_side[:2]}"
        (status, answer, written), (expected, their_answer, their_written) = mine, triton_side
        assert status == (expected if expected < 500 else 400), what
        np.testing.assert_allclose(written, their_written, atol=1e-5, err_msg=what)
        if status != 200:
            text, their_text = answer["error"], their_answer["error"]
            if any(words in their_text for words in SAME_TEXT):
                assert text.startswith(their_text), what
        elif path.endswith("/infer"):
            assert answer["outputs"] == their_answer["outputs"], what
        else:
            assert answer == their_answer, what
