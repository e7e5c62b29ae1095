"""From a served prediction back to its run: real flow, real node, real client, the real command."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient

from tritonflow.plugin.options import parse_options
from tritonflow.plugin.publish import Provenance, deploy

ROOT = Path(__file__).resolve().parents[2]
FRAUD_FLOW = ROOT / "flows" / "fraud_flow.py"
MODEL = "fraud-classifier"


def run(args: list[str], env: dict, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def lineage(env: dict, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return run([sys.executable, "-m", "tritonflow", "lineage", *args], env, cwd)


def client_facts(env: dict, cwd: Path) -> dict:
    code = """
import json
from metaflow import Flow, namespace
namespace(None)
run = Flow("FraudFlow").latest_run
train = {t.data.kind: t for t in run["train"]}
print(json.dumps({
    "run": run.pathspec,
    "scores": {k: t.data.val_auc for k, t in train.items()},
    "tasks": {k: t.pathspec for k, t in train.items()},
    "x_train_sha": {k: t["X_train"].sha for k, t in train.items()},
    "preprocess": run["preprocess"].task.pathspec,
}))
"""
    out = run([sys.executable, "-c", code], env, cwd)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.splitlines()[-1])


def fraud_run(env: dict, cwd: Path) -> None:
    result = run([sys.executable, str(FRAUD_FLOW), "--no-pylint", "run", "--rows", "4000"], env, cwd)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]


def publish_tree(repo: Path, metaflow: dict) -> None:
    """A small model deployed the way @deploy does, for lookups that need no real run."""
    from sklearn.tree import DecisionTreeRegressor

    X = np.random.default_rng(0).normal(size=(100, 4)).astype("float32")
    model = DecisionTreeRegressor(max_depth=3).fit(X, X[:, 0])
    opts = parse_options({"name": "m", "repository": str(repo)}, "GoneFlow", is_join=False)
    deploy(model, opts, sample=X, provenance=Provenance(metaflow=metaflow))


@pytest.mark.slow
def test_from_a_served_response_back_to_the_run(tmp_path, metaflow_env, serve):
    repo = tmp_path / "model_repository"
    env = {**metaflow_env, "TRITONFLOW_REPOSITORY": str(repo)}
    fraud_run(env, tmp_path)
    facts = client_facts(env, tmp_path)
    best = max(facts["scores"], key=facts["scores"].get)
    # NOTE: a zone far from UTC (POSIX spelling, no tz database needed): Metaflow's Client gives
    # local times, and lineage must print them in UTC like every other timestamp.
    env["TZ"] = "IST-5:30"

    server = serve(repo)
    rows = np.random.default_rng(0).normal(size=(3, 30)).astype("float32")
    x = httpclient.InferInput("input__0", list(rows.shape), "FP32")
    x.set_data_from_numpy(rows)
    response = server.client.infer(MODEL, [x]).get_response()
    stamped = response["parameters"]["deployment_id"]
    assert stamped == f"{MODEL}:1@{facts['run']}"

    result = lineage(env, tmp_path, stamped, "--json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["schema"] == "tritonflow.lineage/v1" and doc["metaflow"]["available"] is True
    assert doc["run"]["pathspec"] == facts["run"] and doc["run"]["status"] == "successful"
    assert doc["deployment"]["deployment_id"] == stamped and doc["deployment"]["currently_served"] is True
    x_train = next(a for a in doc["data"]["artifacts"] if a["name"] == "X_train")
    assert x_train["sha"] == facts["x_train_sha"][best] and x_train["sha_matches_metaflow"] is True
    # made in preprocess (before the foreach), read by the winning candidate's task
    assert x_train["task"] == facts["preprocess"] and x_train["seen_in"] == facts["tasks"][best]
    assert f"Task('{facts['preprocess']}')['X_train']" in doc["inspect"]["artifacts"]
    stamps = [doc["run"]["created_at"], doc["deployment"]["created_at"], doc["run"]["finished_at"]]
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", t) for t in stamps), stamps
    assert stamps == sorted(stamps)  # the run started, then deployed, then finished: one clock, one zone
    assert doc["model"]["classes"] == [0, 1]
    assert doc["decision"]["winner"]["label"] == best
    assert doc["decision"]["winner"]["task"] == facts["tasks"][best]
    assert len(doc["decision"]["candidates"]) == 4
    assert doc["inspect"]["run"] == f"Run('{facts['run']}')"
    assert doc["model"]["metrics"]["val_auc"] == pytest.approx(facts["scores"][best])

    # the node's /lineage answers with the same document
    assert server.json("GET", f"/v2/models/{MODEL}/versions/1/lineage") == doc

    # what stock Triton returns (model_name, model_version) resolves to the same deployment
    short = lineage(env, tmp_path, f"{MODEL}:{response['model_version']}", "--json")
    assert json.loads(short.stdout) == doc

    # a saved response body (JSON, as curl would save it)
    body = {"inputs": [{"name": "input__0", "shape": [1, 30], "datatype": "FP32", "data": rows[0].tolist()}]}
    status, _, raw = server.request("POST", f"/v2/models/{MODEL}/infer", json.dumps(body).encode())
    assert status == 200
    (tmp_path / "resp.json").write_bytes(raw)
    saved = lineage(env, tmp_path, "--response", str(tmp_path / "resp.json"), "--json")
    assert json.loads(saved.stdout)["deployment"]["deployment_id"] == stamped

    # which deployments came from this run
    by_run = lineage(env, tmp_path, "--run", facts["run"], "--json")
    assert [d["deployment"]["deployment_id"] for d in json.loads(by_run.stdout)] == [stamped]

    # the readable chain
    text = lineage(env, tmp_path, stamped).stdout
    for heading in ("Deployment", "Run", "Code", "Data", "Model", "Decision: max:val_auc", "Inspect"):
        assert f"\n{heading}" in f"\n{text}", text
    assert f"* {best}" in text and "(matches Metaflow)" in text
    assert re.search(r"\n  classes +output__0 columns: 0=0, 1=1\n", text), text
    assert re.search(rf"\n  X_train +sha {x_train['sha']} .* {facts['preprocess']} ", text), text
    for stamp in stamps:
        assert f"  {stamp}\n" in text

    # the run deleted from Metaflow: the record still answers, with a one-line notice
    shutil.rmtree(Path(metaflow_env["METAFLOW_DATASTORE_SYSROOT_LOCAL"]) / ".metaflow" / "FraudFlow")
    orphan = lineage(env, tmp_path, stamped, "--json")
    assert orphan.returncode == 0, orphan.stderr
    orphan_doc = json.loads(orphan.stdout)
    assert orphan_doc["metaflow"]["available"] is False
    assert "showing the deployment record only" in orphan_doc["metaflow"]["notice"]
    assert orphan_doc["decision"] == doc["decision"] and orphan_doc["run"]["status"] == "unknown"
    assert "note: run " in lineage(env, tmp_path, stamped).stdout


@pytest.mark.slow
def test_lineage_from_s3(tmp_path, metaflow_s3_env, s3_bucket):
    env = {**metaflow_s3_env, "TRITONFLOW_REPOSITORY": s3_bucket}
    fraud_run(env, tmp_path)
    facts = client_facts(env, tmp_path)
    best = max(facts["scores"], key=facts["scores"].get)
    result = lineage(env, tmp_path, f"{MODEL}:1", "--json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["deployment"]["repository"] == s3_bucket and doc["run"]["pathspec"] == facts["run"]
    assert doc["metaflow"]["available"] is True
    x_train = next(a for a in doc["data"]["artifacts"] if a["name"] == "X_train")
    assert x_train["sha"] == facts["x_train_sha"][best] and x_train["sha_matches_metaflow"] is True


def test_unreachable_metaflow_is_a_notice_not_an_error(tmp_path, metaflow_env):
    meta = {"flow": "GoneFlow", "run_id": "42", "task": "GoneFlow/42/train/3", "datastore": "local"}
    publish_tree(tmp_path / "repo", meta)
    env = {**metaflow_env, "TRITONFLOW_REPOSITORY": str(tmp_path / "repo")}
    result = lineage(env, tmp_path, "m:1@GoneFlow/42")
    assert result.returncode == 0, result.stderr
    assert "note: run GoneFlow/42 is not in the Metaflow metadata" in result.stdout
    assert "m:1@GoneFlow/42" in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["m:7"], "no deployment m:7"),
        (["other:1"], "no deployment other:1"),
        (["m:1@OtherFlow/9"], "another repository"),
        (["fraud-classifier"], "is not a deployment ID"),
        (["m:0"], "is not a deployment ID"),
        (["m:1", "--repository", "{tmp}/nowhere"], "does not exist"),
        (["--response", "{tmp}/missing.json"], "cannot read --response"),
        (["--run", "GoneFlow"], "is not a run pathspec"),
        (["--run", "GoneFlow/999"], "no deployment in"),
        ([], "give exactly one of"),
    ],
)
def test_bad_lookups_exit_2_with_a_clear_message(tmp_path, metaflow_env, args, message):
    publish_tree(tmp_path / "repo", {"flow": "GoneFlow", "run_id": "42"})
    env = {**metaflow_env, "TRITONFLOW_REPOSITORY": str(tmp_path / "repo")}
    result = lineage(env, tmp_path, *(a.replace("{tmp}", str(tmp_path)) for a in args))
    assert result.returncode == 2, result.stdout
    assert message in result.stderr and "Traceback" not in result.stderr
