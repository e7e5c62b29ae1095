"""A seeded fuzz of one real node: thousands of mutated and hostile requests, and none takes it down.

The node serves a forest (FIL) and an ONNX model. The corpus is fixed by SEED: mutations of valid
JSON and binary-extension requests (byte flips, truncation, wrong framing, hostile values in any
field), hostile URLs (model names and versions), random methods, and garbage headers. Every answer
must be under 500 and, when not 2xx, a JSON `{"error": ...}`; a hostile name or version is never
answered 2xx; every CHECK_EVERY requests both models still answer a good request as sklearn does,
and over the run the node's resident memory stays within RSS_GROWTH_MB. What the fuzz found is
replayed on its own below, so that it stays found whatever the corpus becomes.
"""

from __future__ import annotations

import http.client
import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.http as httpclient
from conftest import PROBA_ATOL, Server, config_for, data, publish
from fuzz_corpus import FAMILIES, MAX_BYTES, MODELS, Corpus, Fuzzed

SEED = 20261111
REQUESTS = 8000
CHECK_EVERY = 100
RSS_GROWTH_MB = 150


# -- the node ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def server(serve_module, tmp_path_factory: pytest.TempPathFactory) -> Server:
    root: Path = tmp_path_factory.mktemp("fuzz") / "repo"
    root.mkdir()
    for name, (trained, _) in MODELS.items():
        publish(root, name, trained(), config_for(name, trained()))
    return serve_module(root, "--max-request-bytes", str(MAX_BYTES))


def rss_mb(server: Server) -> float:
    status = Path(f"/proc/{server.process.pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmRSS:")).split()[1]) / 1024


def send(server: Server, fuzzed: Fuzzed) -> tuple[int, bytes] | str:
    """The status and body, or why there was no answer."""
    try:
        status, _, raw = server.request(fuzzed.method, fuzzed.path, fuzzed.body or None, fuzzed.headers)
    except (OSError, http.client.HTTPException) as exc:
        return f"no answer: {type(exc).__name__}: {exc}"
    return status, raw


def problem(fuzzed: Fuzzed, answer: tuple[int, bytes] | str) -> str | None:
    """What is wrong with the answer to one fuzzed request; None when nothing is."""
    if isinstance(answer, str):
        return answer
    status, raw = answer
    if fuzzed.family == "valid" and status != 200:
        return f"{status} to a valid request: {raw[:300]!r}"
    if status >= 500:
        return f"{status}: {raw[:300]!r}"
    if 200 <= status < 300:
        return f"{status} to a hostile model name or version" if fuzzed.hostile_url else None
    if fuzzed.method == "HEAD":
        return None  # NOTE: a HEAD answer has no body to check
    try:
        error = json.loads(raw)
    except ValueError:
        return f"{status} with a body that is not JSON: {raw[:200]!r}"
    if not isinstance(error, dict) or not isinstance(error.get("error"), str):
        return f"{status} without an error message: {raw[:200]!r}"
    return None


def assert_models_answer(server: Server) -> None:
    x = data()[0][:3]
    for name, (trained, output) in MODELS.items():
        tensor = httpclient.InferInput("input__0", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        result = server.client.infer(name, [tensor])
        np.testing.assert_allclose(result.as_numpy(output), trained().proba(x), atol=PROBA_ATOL)


def test_fuzzed_requests_never_take_the_node_down(server):
    corpus = Corpus(SEED)
    assert_models_answer(server)
    baseline = peak = rss_mb(server)
    failures: list[str] = []
    statuses: Counter[tuple[str, int]] = Counter()
    for i in range(1, REQUESTS + 1):
        fuzzed = corpus.next()
        answer = send(server, fuzzed)
        if not isinstance(answer, str):
            statuses[fuzzed.family, answer[0] // 100 * 100] += 1
        found = problem(fuzzed, answer)
        if found is not None:
            failures.append(f"#{i} {fuzzed} -> {found}")
            print(failures[-1])
        assert server.process.poll() is None, (
            f"the node died after #{i} {fuzzed}:\n{server.log_text()[-3000:]}"
        )
        if i % CHECK_EVERY == 0:
            assert_models_answer(server)
            peak = max(peak, rss_mb(server))
    print(f"answers by family and status class: {dict(sorted(statuses.items()))}")
    print(f"resident memory: {baseline:.0f} MB at the start, {peak:.0f} MB at most")
    assert not failures, f"{len(failures)} of {REQUESTS} fuzzed requests went wrong:\n" + "\n".join(
        failures[:40]
    )
    assert {family for family, _ in statuses} == set(FAMILIES), "the corpus must hold every family"
    assert peak - baseline < RSS_GROWTH_MB, f"resident memory grew from {baseline:.0f} MB to {peak:.0f} MB"


def sixty_five_dims(binary: bool) -> tuple[bytes, dict[str, str]]:
    """A shape of 65 dimensions (numpy holds 64) whose 8 values match the data: a 500 once."""
    x = data()[0][:1]
    tensor: dict[str, Any] = {"name": "input__0", "shape": [1] * 64 + [8], "datatype": "FP32"}
    if not binary:
        return json.dumps({"inputs": [{**tensor, "data": x.ravel().tolist()}]}).encode(), {}
    header = json.dumps({"inputs": [{**tensor, "parameters": {"binary_data_size": x.nbytes}}]}).encode()
    return header + x.tobytes(), {"Inference-Header-Content-Length": str(len(header))}


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_what_the_fuzz_found_is_a_4xx(server, binary):
    body, headers = sixty_five_dims(binary)
    status, _, raw = server.request("POST", "/v2/models/fraud-classifier/infer", body, headers)
    assert (status, "at most 64 non-negative integers" in json.loads(raw)["error"]) == (400, True), raw
    assert_models_answer(server)
