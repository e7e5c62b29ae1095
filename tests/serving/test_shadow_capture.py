"""`tritonflow serve --capture` on a node with a shadow: the shadow's answers, computed in its worker
process, are captured too, under the shadow version, beside the champion's, on a real node."""

from __future__ import annotations

import http.client
from collections.abc import Callable
from pathlib import Path

import numpy as np
import tritonclient.http as httpclient
from conftest import Server, wait_for
from test_canary_shadow import MODEL, X, ask, release, shadow_count, three_versions
from test_capture import INPUT, OUTPUT, local_files, read_files
from test_shadow_worker import worker_pids

from tritonflow.lineage import capture_layout as layout
from tritonflow.lineage.releases import set_shadow

REQUESTS = 12


def direct(server: Server, rows: np.ndarray, version: str) -> np.ndarray:
    """What `version` itself answers for `rows` (binary tensors: the float32 values exactly)."""
    tensor = httpclient.InferInput("input__0", list(rows.shape), "FP32")
    tensor.set_data_from_numpy(rows)
    answer = server.client.infer(MODEL, [tensor], model_version=version, request_id="direct").as_numpy(
        "output__0"
    )
    assert answer is not None
    return answer


def by_version(files: list[tuple[str, bytes]]) -> dict[int, list[tuple[str, bytes]]]:
    """The capture files of each version folder."""
    grouped: dict[int, list[tuple[str, bytes]]] = {}
    for key, blob in files:
        parsed = layout.parse_key(key)
        assert parsed is not None, key
        grouped.setdefault(parsed.version, []).append((key, blob))
    return grouped


def test_the_shadows_answers_are_captured_under_its_version(
    serve: Callable[..., Server], local_repo: Path, tmp_path: Path
) -> None:
    records = {r.version: r.deployment_id for r in three_versions(local_repo)}
    release(local_repo, set_shadow, 2)
    root = tmp_path / "captures"
    server = serve(local_repo, "--capture", str(root))
    server.wait_for_state(MODEL, 2, "READY")
    wait_for(lambda: worker_pids(server), what="the shadow's worker process")
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    sent = {}  # request id -> its rows
    for i in range(REQUESTS):
        rows = np.ascontiguousarray(X[2 * i : 2 * i + 1 + i % 3], dtype=np.float32)
        status, answer, _ = ask(conn, rows, f"req-{i}")
        assert status == 200 and answer["model_version"] == "1"
        sent[f"req-{i}"] = rows
    conn.close()
    wait_for(lambda: shadow_count(server, "compared") == REQUESTS, what="the worker's comparisons")
    champion = {request_id: direct(server, rows, "1") for request_id, rows in sent.items()}
    shadow = {request_id: direct(server, rows, "2") for request_id, rows in sent.items()}
    assert server.stop() == 0  # NOTE: SIGTERM writes every accepted row

    files = by_version(local_files(root))
    assert set(files) == {1, 2}
    for version, role, expected in ((1, "champion", champion), (2, "shadow", shadow)):
        rows = [r for r in read_files(files[version]).to_pylist() if r[layout.REQUEST_ID] != "direct"]
        assert {r[layout.REQUEST_ID] for r in rows} == set(sent), role
        assert len(rows) == sum(len(x) for x in sent.values()), role
        for row in rows:
            assert row[layout.ROLE] == role
            assert row[layout.DEPLOYMENT_ID] == records[version]
            assert row[layout.LATENCY_US] > 0
            request_id, index = row[layout.REQUEST_ID], row[layout.ROW]
            np.testing.assert_array_equal(np.asarray(row[INPUT], np.float32), sent[request_id][index])
            np.testing.assert_array_equal(np.asarray(row[OUTPUT], np.float32), expected[request_id][index])
    # the two versions disagree somewhere: the shadow's rows are its own answers, not the champion's
    assert any(not np.array_equal(champion[r], shadow[r]) for r in sent)
