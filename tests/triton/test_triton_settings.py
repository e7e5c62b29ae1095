"""The node's log and trace settings against Triton 24.10's on one repository: the same keys and
defaults, the same echo of updates that keep tracing off, and a refusal where Triton refuses too.

Triton answers some client mistakes with a 5xx (a log file: 501); the node keeps them 4xx.
"""

from __future__ import annotations

import http.client
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from servers import Server
from sklearn.datasets import make_classification
from sklearn.ensemble import RandomForestClassifier
from test_triton_compat import deploy_direct

MODEL = "settled"
# Updates both take; each is sent to both servers in turn and the answers compared.
TAKEN = [
    ("/v2/logging", {"log_verbose_level": 1}),
    ("/v2/logging", {"log_format": "ISO8601"}),
    ("/v2/logging", {"log_verbose_level": 0, "log_format": "default", "log_info": False}),
    ("/v2/logging", {"log_info": True}),
    ("/v2/trace/setting", {"trace_level": ["OFF"]}),
    ("/v2/trace/setting", {"trace_rate": "500", "trace_count": "5", "log_frequency": "2"}),
    ("/v2/trace/setting", {"trace_rate": None, "trace_count": None, "log_frequency": None}),
    (f"/v2/models/{MODEL}/trace/setting", {"trace_level": ["OFF"]}),
]
# Updates both refuse: Triton for want of a trace file or as not settable over the network.
REFUSED = [
    ("/v2/logging", {"log_file": "/tmp/node.log"}),
    ("/v2/trace/setting", {"trace_level": ["TIMESTAMPS"]}),
    ("/v2/trace/setting", {"trace_file": "/tmp/trace.json"}),
    ("/v2/trace/setting", {"trace_rate": "x"}),
    (f"/v2/models/{MODEL}/trace/setting", {"trace_level": ["TENSORS"]}),
]
READS = ["/v2/logging", "/v2/trace/setting", f"/v2/models/{MODEL}/trace/setting"]


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    X, y = make_classification(300, 6, random_state=5)
    X = X.astype(np.float32)
    root = tmp_path_factory.mktemp("triton-settings") / "repo"
    deploy_direct(root, MODEL, RandomForestClassifier(n_estimators=5, max_depth=3).fit(X, y), X, "502")
    return root


def _call(port: int, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(
            "POST" if body is not None else "GET", path, json.dumps(body) if body is not None else None
        )
        answer = conn.getresponse()
        return answer.status, json.loads(answer.read() or b"null")
    finally:
        conn.close()


def test_settings_keys_defaults_and_updates_match_tritons(start_triton: Any, serve_module: Any, repository):
    triton = start_triton(repository)
    triton.wait_ready(MODEL, 1)
    node: Server = serve_module(repository)
    ports = {"node": node.port, "triton": triton.http_port}
    for path in READS:
        answers = {side: _call(port, path) for side, port in ports.items()}
        assert answers["node"] == answers["triton"] and answers["node"][0] == 200, (path, answers)
    for path, update in TAKEN:
        answers = {side: _call(port, path, update) for side, port in ports.items()}
        assert answers["node"] == answers["triton"] and answers["node"][0] == 200, (path, update, answers)
    for path, update in REFUSED:
        answers = {side: _call(port, path, update) for side, port in ports.items()}
        assert answers["node"][0] == 400 and answers["triton"][0] >= 400, (path, update, answers)
        assert set(answers["node"][1]) == set(answers["triton"][1]) == {"error"}, answers
    for path in READS:  # the refusals changed nothing on either
        answers = {side: _call(port, path) for side, port in ports.items()}
        assert answers["node"] == answers["triton"], (path, answers)
    extensions = {side: set(_call(port, "/v2")[1]["extensions"]) for side, port in ports.items()}
    assert {"trace", "logging"} <= extensions["node"] & extensions["triton"]
