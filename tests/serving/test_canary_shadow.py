"""The node follows a model's canary and shadow (lineage.releases) on a real `tritonflow serve`.

Unversioned requests split between champion and canary by the canary's share (by request id when
there is one, so a retry gets the same version), explicit versions are never redirected, a shadow
sees a copy of the champion's requests off the response path and its disagreement is in /metrics,
every per-version tritonflow metric says the version's role, and changing any of it under load
fails no request.
"""

from __future__ import annotations

import http.client
import json
import re
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from conftest import Server, Trained, config_for, data, fil_forest, forest, publish, wait_for
from sklearn.ensemble import RandomForestClassifier
from test_release_swaps import MODEL

from tritonflow.lineage import layout
from tritonflow.lineage.records import DeploymentRecord
from tritonflow.lineage.releases import promote, rollback, set_canary, set_shadow
from tritonflow.lineage.repository import ModelRepository
from tritonflow.serving.release_policy import champion_config

X = data()[0]
REQUESTS = 2_000
# NOTE: 10% of 2,000 requests: sigma = sqrt(0.1 * 0.9 / 2000) = 0.67 points; 2.5 points is 3.7 sigma
SHARE, TOLERANCE = 10.0, 2.5
SHADOW = {"model": MODEL, "champion_version": "1", "shadow_version": "2"}


@cache
def slow_forest() -> Trained:
    """A forest 15x the trees of `forest()`, unbounded depth: a shadow whose engine is much slower."""
    est = RandomForestClassifier(n_estimators=300, random_state=5).fit(*data())
    return fil_forest(est)


def release(repo: Path, change: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
    """One release decision on the repository, as `tritonflow promote/canary/shadow` make it."""
    change(ModelRepository(str(repo)), MODEL, *args, champion_config, reason="test", **kwargs)


def three_versions(repo: Path, third: Trained | None = None) -> list[DeploymentRecord]:
    """v1, v2, v3 of MODEL, v1 champion."""
    records = [
        publish(repo, MODEL, trained, run_id=f"100000000000000{i}")
        for i, trained in enumerate((forest(0), forest(2), third or forest(3)), start=1)
    ]
    release(repo, promote, 1)
    return records


def body(x: np.ndarray, request_id: str | None = None) -> bytes:
    tensor = {"name": "input__0", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}
    return json.dumps({"inputs": [tensor], **({"id": request_id} if request_id else {})}).encode()


def ask(
    conn: http.client.HTTPConnection, x: np.ndarray, request_id: str | None = None, version: str = ""
) -> Any:
    """One JSON inference request: (status, the response body, its x-deployment-id header)."""
    path = f"/v2/models/{MODEL}" + (f"/versions/{version}" if version else "") + "/infer"
    conn.request("POST", path, body(x, request_id), {"Content-Type": "application/json"})
    response = conn.getresponse()
    return response.status, json.loads(response.read()), response.getheader("x-deployment-id")


def metric_lines(server: Server, name: str) -> list[str]:
    text = server.request("GET", "/metrics")[2].decode()
    return [line for line in text.splitlines() if line.startswith(name)]


def shadow_count(server: Server, outcome: str) -> float:
    lines = metric_lines(server, "tritonflow_shadow_requests_total")
    wanted = dict(SHADOW, outcome=outcome)
    found = [line for line in lines if all(f'{k}="{v}"' in line for k, v in wanted.items())]
    return float(found[0].rsplit(" ", 1)[1]) if found else -1.0


def roles(server: Server) -> set[tuple[str, str, str]]:
    """(model, version, role) of every tritonflow_version_role sample."""
    pattern = r'tritonflow_version_role\{model="([^"]+)",role="(\w+)",version="(\d+)"\} 1'
    return {
        (m, v, r)
        for m, r, v in re.findall(pattern, "\n".join(metric_lines(server, "tritonflow_version_role")))
    }


def test_a_canary_takes_its_share_by_request_id_and_explicit_versions_stay(serve, local_repo):
    records = {str(r.version): r.deployment_id for r in three_versions(local_repo)}
    release(local_repo, set_canary, 2, SHARE)
    server = serve(local_repo)
    server.wait_for_state(MODEL, 2, "READY")
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    by_id = {}
    for i in range(REQUESTS):
        status, answer, header = ask(conn, X[i % len(X)][None], f"req-{i}")
        assert status == 200 and answer["id"] == f"req-{i}", answer
        version = answer["model_version"]
        assert answer["parameters"]["deployment_id"] == header == records[version]
        by_id[f"req-{i}"] = version
    share = 100 * Counter(by_id.values())["2"] / REQUESTS
    assert set(by_id.values()) == {"1", "2"} and abs(share - SHARE) <= TOLERANCE, share
    # a retried request (the same id) gets the version that answered it, on either transport
    assert {i: ask(conn, X[:1], i)[1]["model_version"] for i in list(by_id)[:200]} == {
        i: by_id[i] for i in list(by_id)[:200]
    }
    grpc = grpcclient.InferenceServerClient(server.grpc_url)
    tensor = grpcclient.InferInput("input__0", [1, X.shape[1]], "FP32")
    tensor.set_data_from_numpy(X[:1])
    retried = list(by_id)[:200]
    over_grpc = {i: grpc.infer(MODEL, [tensor], request_id=i).get_response().model_version for i in retried}
    grpc.close()
    assert over_grpc == {i: by_id[i] for i in retried}
    # without an id the split is random, at the same share
    anonymous = Counter(ask(conn, X[:1])[1]["model_version"] for _ in range(REQUESTS))
    assert abs(100 * anonymous["2"] / REQUESTS - SHARE) <= TOLERANCE, anonymous
    # an explicit version is never redirected, whatever its id
    for version in ("1", "2"):
        answered = {ask(conn, X[:1], f"req-{i}", version)[1]["model_version"] for i in range(100)}
        assert answered == {version}
    assert roles(server) == {(MODEL, "1", "champion"), (MODEL, "2", "canary")}
    # the node's /lineage tells the version's role and the events that gave it
    release_doc = server.json("GET", f"/v2/models/{MODEL}/versions/2/lineage")["release"]
    assert release_doc["role"] == "canary" and [e["change"] for e in release_doc["history"]] == [
        f"v2 became canary for {SHARE:g}% of unversioned requests"
    ]
    # stopping it sends every unversioned request to the champion again
    release(local_repo, set_canary, None, 0)
    server.wait_for_state(MODEL, 2, "UNAVAILABLE")
    assert {ask(conn, X[:1], i)[1]["model_version"] for i in list(by_id)[:200]} == {"1"}


def test_the_shadow_runs_a_copy_and_its_disagreement_is_in_the_metrics(serve, local_repo):
    three_versions(local_repo)
    release(local_repo, set_shadow, 2)
    server = serve(local_repo)
    server.wait_for_state(MODEL, 2, "READY")
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    sizes = [1, 3, 2, 5] * 10
    start = 0
    for rows in sizes:
        x = X[start : start + rows]
        status, answer, _ = ask(conn, x)
        # the client gets the champion's answer, stamped v1
        assert status == 200 and answer["model_version"] == "1"
        np.testing.assert_allclose(
            np.reshape(answer["outputs"][0]["data"], (rows, 2)), forest(0).proba(x), atol=1e-5
        )
        start += rows
    wait_for(lambda: shadow_count(server, "compared") == len(sizes), what="every copy compared")
    # explicit versions are no copies: one more unversioned request is the only one more compared
    for version in ("1", "2"):
        assert ask(conn, X[:2], version=version)[1]["model_version"] == version
    ask(conn, X[:1])
    wait_for(lambda: shadow_count(server, "compared") >= len(sizes) + 1, what="the next copy")
    assert shadow_count(server, "compared") == len(sizes) + 1
    assert (shadow_count(server, "dropped"), shadow_count(server, "failed")) == (0, 0)
    # the histogram has one observation per row: the largest probability difference of the two forests
    rows = sum(sizes) + 1
    expected = np.abs(forest(0).proba(X[:start]) - forest(2).proba(X[:start])).max(axis=1).sum()
    expected += np.abs(forest(0).proba(X[:1]) - forest(2).proba(X[:1])).max()
    pair = dict(sorted(SHADOW.items()))  # NOTE: /metrics sorts the labels
    assert server.sample("tritonflow_shadow_disagreement_count", **pair) == rows
    total = server.sample("tritonflow_shadow_disagreement_sum", **pair)
    assert total == pytest.approx(expected, abs=rows * 1e-5) and total > 0
    assert (
        server.sample("tritonflow_shadow_disagreement_bucket", **dict(sorted({**pair, "le": "+Inf"}.items())))
        == rows
    )
    assert roles(server) == {(MODEL, "1", "champion"), (MODEL, "2", "shadow")}
    batch_roles = {
        line.split("role=")[1].split(",")[0]
        for line in metric_lines(server, "tritonflow_inference_batch_size_count")
    }
    assert batch_roles == {'"champion"', '"shadow"'}
    # stopping it removes its series and unloads it
    release(local_repo, set_shadow, None)
    server.wait_for_state(MODEL, 2, "UNAVAILABLE")
    assert metric_lines(server, "tritonflow_shadow_requests_total") == []


def test_a_slow_shadow_drops_copies_and_never_holds_the_champion_back(serve, local_repo):
    three_versions(local_repo)
    publish(local_repo, MODEL, slow_forest(), run_id="1000000000000009")
    release(local_repo, set_shadow, 4)
    server = serve(local_repo)
    server.wait_for_state(MODEL, 4, "READY")
    x = np.tile(X, (3, 1))[:1024]
    expected = forest(0).proba(x)

    def burst(_: int) -> list[tuple[str, np.ndarray]]:
        client = httpclient.InferenceServerClient(server.url)
        tensor = httpclient.InferInput("input__0", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        answers = []
        for _ in range(15):
            result = client.infer(MODEL, [tensor])
            answers.append((result.get_response()["model_version"], result.as_numpy("output__0")))
        client.close()
        return answers

    with ThreadPoolExecutor(16) as pool:
        answers = [a for batch in pool.map(burst, range(16)) for a in batch]
    assert {version for version, _ in answers} == {"1"}
    for _, output in answers:
        np.testing.assert_allclose(output, expected, atol=1e-5)
    pair = {"model": MODEL, "champion_version": "1", "shadow_version": "4"}

    def counted() -> float:
        lines = metric_lines(server, "tritonflow_shadow_requests_total")
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in lines
            if all(f'{k}="{v}"' in line for k, v in pair.items())
        )

    # every copy is accounted for, compared or dropped; the queue was full for some of them
    wait_for(lambda: counted() == len(answers), timeout=120, what="every copy compared or dropped")
    dropped = [
        line
        for line in metric_lines(server, "tritonflow_shadow_requests_total")
        if 'outcome="dropped"' in line
    ]
    assert float(dropped[0].rsplit(" ", 1)[1]) > 0, dropped


def test_release_changes_under_load_fail_no_request(serve, local_repo):
    records = {str(r.version): r.deployment_id for r in three_versions(local_repo)}
    server = serve(local_repo)
    answers: list[tuple[str, str, str]] = []  # (status, version, deployment id)
    stop = threading.Event()

    def http_load(with_ids: bool) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        deadline, i = time.monotonic() + 120, 0  # bounded, whatever happens
        while not stop.is_set() and time.monotonic() < deadline:
            status, answer, header = ask(conn, X[i % len(X)][None], f"load-{i}" if with_ids else None)
            answers.append((str(status), answer.get("model_version", ""), header or ""))
            i += 1
        conn.close()

    def grpc_load() -> None:
        client = grpcclient.InferenceServerClient(server.grpc_url)
        tensor = grpcclient.InferInput("input__0", [2, X.shape[1]], "FP32")
        tensor.set_data_from_numpy(X[:2])
        deadline = time.monotonic() + 120
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                response = client.infer(MODEL, [tensor]).get_response()
            except Exception as exc:  # NOTE: recorded as a failure, asserted below
                answers.append((f"grpc: {exc}", "", ""))
                continue
            answers.append(("200", response.model_version, response.parameters["deployment_id"].string_param))

    def answered(version: str) -> bool:
        count = len(answers)
        wait_for(lambda: len(answers) > count + 20, what="new answers")
        return any(v == version for _, v, _ in answers[count:])

    def only(version: str) -> bool:
        count = len(answers)
        wait_for(lambda: len(answers) > count + 50, what="new answers")
        return {v for _, v, _ in answers[-50:]} == {version}

    threads = [threading.Thread(target=http_load, args=(w,)) for w in (True, False)]
    threads.append(threading.Thread(target=grpc_load))
    for thread in threads:
        thread.start()
    try:
        wait_for(lambda: only("1"), what="v1 (champion) to answer")
        for change, args, done in (
            (set_canary, (2, 30.0), lambda: answered("2")),
            (set_canary, (2, 70.0), lambda: answered("2")),
            (set_shadow, (3,), lambda: compared(server, "1", "3")),
            (set_canary, (None, 0), lambda: only("1")),
            (promote, (2,), lambda: only("2")),
            (set_shadow, (None,), lambda: metric_lines(server, "tritonflow_shadow_requests_total") == []),
            (rollback, (), lambda: only("1")),
        ):
            release(local_repo, change, *args)
            wait_for(done, timeout=30, what=f"the node to follow {change.__name__}{args}")
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert [a for a in answers if a[0] != "200"] == []
    # every answer is stamped with the version that gave it; the shadow (v3) never answers a client
    assert {v for _, v, _ in answers} == {"1", "2"}
    assert all(stamp == records[version] for _, version, stamp in answers)


def compared(server: Server, champion: str, shadow: str) -> bool:
    """Whether the shadow of that pair has compared a copy."""
    lines = metric_lines(server, "tritonflow_shadow_requests_total")
    wanted = (f'champion_version="{champion}"', f'shadow_version="{shadow}"', 'outcome="compared"')
    return any(all(w in line for w in wanted) and not line.endswith(" 0.0") for line in lines)


def test_roles_without_a_release_state_and_a_broken_release_log(serve, local_repo):
    for i, seed in enumerate((0, 2), start=1):
        publish(
            local_repo,
            MODEL,
            forest(seed),
            config_for(MODEL, forest(seed), latest=2),
            run_id=f"100000000000000{i}",
        )
    server = serve(local_repo)
    server.wait_for_state(MODEL, 2, "READY")
    # before any decision: the version unversioned requests get is the champion, the other a challenger
    assert roles(server) == {(MODEL, "2", "champion"), (MODEL, "1", "challenger")}
    nv = [line for line in metric_lines(server, "nv_inference_request_success") if "{" in line]
    assert all("role" not in line for line in nv) and len(nv) == 2  # Triton's metrics keep Triton's labels
    # a release log that does not read is logged once; the node serves what config.pbtxt says
    events = local_repo / MODEL / layout.RELEASES
    events.mkdir()
    (events / "00000001.json").write_text("not an event")
    wait_for(lambda: "cannot follow the release log" in server.log_text(), what="the broken log reported")
    (events / "00000002.json").write_text("nor this")
    # NOTE: a new version, loaded in the same poll that reads the log again: the node has seen both files
    publish(local_repo, MODEL, forest(3), config_for(MODEL, forest(3), latest=2), run_id="1000000000000003")
    server.wait_for_state(MODEL, 3, "READY")
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    assert ask(conn, X[:1])[1]["model_version"] == "3"
    assert server.log_text().count("cannot follow the release log") == 1
