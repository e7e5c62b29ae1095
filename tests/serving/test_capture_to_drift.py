"""The loop back to training, end to end: @deploy's publish writes the reference profile, a real node
captures what tritonclient asks, and `tritonflow drift`, `lookup` and flows/monitor_flow.py (a real
Metaflow run, its card) read those captures against it."""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import tritonclient.http as httpclient
from sklearn.ensemble import RandomForestClassifier

from tritonflow.plugin.options import parse_options
from tritonflow.plugin.publish import Provenance, deploy

MONITOR = Path(__file__).parents[2] / "flows" / "monitor_flow.py"
MODEL = "loop"
FEATURES = [f"f{j}" for j in range(5)]


def tritonflow(*args: object) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "tritonflow", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def rows(n: int, seed: int, shift: dict[str, float] | None = None) -> np.ndarray:
    X = pd.DataFrame(np.random.default_rng(seed).normal(size=(n, len(FEATURES))), columns=FEATURES)
    for name, by in (shift or {}).items():
        X[name] += by
    return X.to_numpy(np.float32)


def ask(server: Any, X: np.ndarray, prefix: str) -> dict[str, np.ndarray]:
    """Send `X` in requests of 8 rows, ids `<prefix><i>`; what the node answered, by request id."""
    answers = {}
    for i, start in enumerate(range(0, len(X), 8)):
        tensor = httpclient.InferInput("input__0", [len(X[start : start + 8]), len(FEATURES)], "FP32")
        tensor.set_data_from_numpy(X[start : start + 8])
        answers[f"{prefix}{i}"] = server.client.infer(MODEL, [tensor], request_id=f"{prefix}{i}").as_numpy(
            "output__0"
        )
    return answers


def test_captured_traffic_is_checked_against_the_training_data_it_was_deployed_with(
    serve: Any, tmp_path: Path
) -> None:
    repo, captures = tmp_path / "repo", tmp_path / "captures"
    train = pd.DataFrame(rows(3000, seed=0), columns=FEATURES)
    model = RandomForestClassifier(n_estimators=10, max_depth=5, random_state=0).fit(
        train, (train["f0"] - train["f1"] > 0).astype(int)
    )
    options = parse_options({"name": MODEL, "repository": str(repo)}, "LoopFlow", is_join=False)
    provenance = Provenance(metaflow={"flow": "LoopFlow", "run_id": "7", "task": "LoopFlow/7/train/1"})
    record = deploy(model, options, sample=train, provenance=provenance, sample_name="X_train")

    server = serve(repo, "--capture", str(captures))
    like_training = ask(server, rows(1600, seed=1), "same-")
    assert server.stop() == 0  # NOTE: SIGTERM writes every accepted row before exit

    same = tritonflow("drift", f"{MODEL}:1", "--captures", captures, "--repository", repo, "--json")
    assert same.returncode == 0, same.stdout + same.stderr
    doc = json.loads(same.stdout)
    assert (doc["drift"], doc["rows"]) == (False, 1600)

    server = serve(repo, "--capture", str(captures))
    shifted = ask(server, rows(1600, seed=2, shift={"f3": 2.0}), "moved-")
    assert server.stop() == 0
    moved = tritonflow("drift", f"{MODEL}:1", "--captures", captures, "--repository", repo, "--json")
    assert moved.returncode == 1, moved.stdout + moved.stderr
    doc = json.loads(moved.stdout)
    assert doc["rows"] == 3200 and doc["drifting"] == ["f3"], doc["drifting"]

    found = tritonflow(
        "lookup",
        "--request-id",
        "moved-5",
        "--captures",
        captures,
        "--repository",
        repo,
        "--json",
        "--no-metaflow",
    )
    assert found.returncode == 0, found.stdout + found.stderr
    looked = json.loads(found.stdout)
    assert list(looked["lineage"]) == [record.deployment_id] and "LoopFlow/7" in json.dumps(looked["lineage"])
    assert [row["row"] for row in looked["rows"]] == list(range(8)) and len(like_training) == 200
    assert {row["deployment_id"] for row in looked["rows"]} == {record.deployment_id}
    sent = rows(1600, seed=2, shift={"f3": 2.0})[40:48]  # NOTE: request 5 of 8 rows each
    np.testing.assert_array_equal(
        np.array([row["input.input__0"] for row in looked["rows"]], np.float32), sent
    )
    np.testing.assert_array_equal(
        np.array([row["output.output__0"] for row in looked["rows"]], np.float32), shifted["moved-5"]
    )

    # NOTE: the scheduled check: the champion (v1, served by `latest 1`) against the same captures
    env = {**os.environ, "METAFLOW_USER": os.environ.get("METAFLOW_USER", "ci")}
    flow = [sys.executable, str(MONITOR)]
    args = ["--model", MODEL, "--repository", str(repo), "--captures", str(captures)]
    run = subprocess.run(
        [*flow, "run", *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert (
        f"retraining is due: {record.deployment_id} drifted in f3 over 3,200 captured rows"
        in run.stdout + run.stderr
    )
    card = tmp_path / "drift.html"
    got = subprocess.run(
        [*flow, "card", "get", "check", str(card), "--id", "drift"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert got.returncode == 0, got.stdout + got.stderr
    data = json.loads(base64.b64decode(re.search(r'__MF_DATA__\[".+?"\] = "(.+?)"', card.read_text())[1]))
    shown = json.dumps(data)  # NOTE: a Metaflow card is its components' JSON, rendered by the page's script
    assert f"Drift of {record.deployment_id}: drift in f3" in shown and "3,200 captured rows" in shown
    assert shown.count('"type": "image"') == 1 and '"DRIFT"' in shown
