"""One scenario for the node's metrics and Triton's: good requests, bad ones, then a scrape.

Shared by tests/serving/test_metrics.py (the node alone) and tests/triton/test_triton_metrics.py
(the node beside Triton 24.10), so both send exactly the same requests.
"""

from __future__ import annotations

import http.client
import json
import re
from typing import Any

import numpy as np

# The rows of each good request: their sum is what nv_inference_count must read.
GOOD_ROWS = (1, 3, 2, 5)
TOO_MANY_ROWS = 20_000  # beyond any max_batch_size the tests publish (8192 at most)
# Triton's failure reasons: every version has all four series.
REASONS = ("BACKEND", "CANCELED", "OTHER", "REJECTED")
SAMPLE = re.compile(r"^(\w+)\{([^}]*)\} (\S+)$")


def _input(name: str, shape: list[int], datatype: str, data: list[Any]) -> dict[str, Any]:
    return {"name": name, "shape": shape, "datatype": datatype, "data": data}


def bad_bodies(X: np.ndarray) -> dict[str, bytes]:
    """Requests a server must reject before its model runs, by what is wrong with them."""
    row, features = X[0].tolist(), X.shape[1]
    good = _input("input__0", [1, features], "FP32", row)
    bodies: dict[str, Any] = {
        "unknown input": {"inputs": [{**good, "name": "nope"}]},
        "wrong shape": {"inputs": [_input("input__0", [1, features + 1], "FP32", [0.0] * (features + 1))]},
        "wrong datatype": {"inputs": [_input("input__0", [1, features], "INT32", [0] * features)]},
        "data shorter than its shape": {"inputs": [{**good, "shape": [2, features]}]},
        "no inputs": {"inputs": []},
        "unknown output": {"inputs": [good], "outputs": [{"name": "nope"}]},
        "too many rows": {
            "inputs": [
                _input("input__0", [TOO_MANY_ROWS, features], "FP32", [0.0] * (TOO_MANY_ROWS * features))
            ]
        },
    }
    return {
        **{what: json.dumps(body).encode() for what, body in bodies.items()},
        "malformed JSON": b'{"inputs": [',
    }


def good_body(X: np.ndarray, rows: int) -> bytes:
    return json.dumps(
        {"inputs": [_input("input__0", [rows, X.shape[1]], "FP32", X[:rows].ravel().tolist())]}
    ).encode()


def request(port: int, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request(method, path, body=body, headers={"content-type": "application/json"})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def send(port: int, model: str, X: np.ndarray) -> dict[str, int]:
    """The scenario: every good request, then every bad one; each answer's status by case."""
    path = f"/v2/models/{model}/infer"
    statuses = {f"good {rows}": request(port, "POST", path, good_body(X, rows))[0] for rows in GOOD_ROWS}
    statuses.update({what: request(port, "POST", path, body)[0] for what, body in bad_bodies(X).items()})
    return statuses


def scrape(port: int) -> tuple[dict[str, str], dict[tuple[str, frozenset[tuple[str, str]]], float]]:
    """/metrics on `port`: each metric's TYPE, and each sample by (name, its labels)."""
    status, body = request(port, "GET", "/metrics")
    assert status == 200, body
    text = body.decode()
    types = dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M))
    samples = {}
    for line in text.splitlines():
        match = SAMPLE.match(line)
        if match:
            labels = frozenset(re.findall(r'(\w+)="([^"]*)"', match.group(2)))
            samples[match.group(1), labels] = float(match.group(3))
    return types, samples


def version_samples(
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float], model: str, version: str = "1"
) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """One version's nv_ samples, keyed by name and its labels other than model and version."""
    mine = {("model", model), ("version", version)}
    return {
        (name, labels - mine): value
        for (name, labels), value in samples.items()
        if name.startswith("nv_inference") and mine <= labels
    }
