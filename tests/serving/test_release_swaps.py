"""Release decisions reach a running node: after `tritonflow promote` / `rollback` its unversioned
requests are answered by the champion, with no failed request while the versions swap."""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import threading
import time
from itertools import groupby

import numpy as np
from conftest import data, forest, publish, wait_for

MODEL = "fraud-classifier"
X = data()[0][:2]
BODY = json.dumps(
    {"inputs": [{"name": "input__0", "shape": list(X.shape), "datatype": "FP32", "data": X.ravel().tolist()}]}
).encode()


def ask(conn: http.client.HTTPConnection) -> tuple[int, str, str]:
    """One unversioned JSON request: (status, the body's model_version, the x-deployment-id stamp)."""
    conn.request("POST", f"/v2/models/{MODEL}/infer", BODY, {"Content-Type": "application/json"})
    response = conn.getresponse()
    body = json.loads(response.read())
    return response.status, body.get("model_version", ""), response.getheader("x-deployment-id") or ""


def tritonflow(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "tritonflow", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=os.environ,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_promote_and_rollback_swap_the_champion_under_load_without_a_failed_request(serve, local_repo):
    v1 = publish(local_repo, MODEL, forest(0), run_id="1000000000000001")
    v2 = publish(local_repo, MODEL, forest(2), run_id="1000000000000002")
    server = serve(local_repo)
    answers: list[tuple[int, str, str]] = []
    stop = threading.Event()

    def load() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        deadline = time.monotonic() + 60  # bounded, whatever happens
        while not stop.is_set() and time.monotonic() < deadline:
            answers.append(ask(conn))
        conn.close()

    def champion_answers(version: int) -> bool:
        count = len(answers)
        wait_for(lambda: len(answers) > count, what="a new answer")
        return answers[-1][1] == str(version)

    thread = threading.Thread(target=load)
    thread.start()
    try:
        wait_for(lambda: champion_answers(2), what="v2 (latest 1) to answer")
        for command, version in (
            (("promote", str(local_repo), f"{MODEL}:1", "--reason", "v2 regressed"), 1),
            (("promote", str(local_repo), f"{MODEL}:2", "--reason", "fixed"), 2),
            (("rollback", str(local_repo), MODEL, "--reason", "alerts"), 1),
        ):
            tritonflow(*command)
            wait_for(lambda v=version: champion_answers(v), what=f"v{version} to answer after {command[0]}")
    finally:
        stop.set()
        thread.join()
    assert [a for a in answers if a[0] != 200] == []
    stamps = {"1": v1.deployment_id, "2": v2.deployment_id}
    assert all(stamp == stamps[version] for _, version, stamp in answers)
    # each swap is atomic: the answers go v2, v1, v2, v1, never back and forth within a swap
    assert [version for version, _ in groupby(version for _, version, _ in answers)] == ["2", "1", "2", "1"]
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.request("POST", f"/v2/models/{MODEL}/infer", BODY, {"Content-Type": "application/json"})
    outputs = json.loads(conn.getresponse().read())["outputs"][0]
    np.testing.assert_allclose(np.reshape(outputs["data"], outputs["shape"]), forest(0).proba(X), atol=1e-5)
