"""@deploy end to end: real Metaflow runs in subprocesses, real repositories (local and moto S3)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tritonflow.lineage.repository import ModelRepository
from tritonflow.serving.model_config import check_config

ROOT = Path(__file__).resolve().parents[2]
FRAUD_FLOW = ROOT / "flows" / "fraud_flow.py"
TINY_FLOW = Path(__file__).parent / "flows" / "tiny_flow.py"

pytestmark = pytest.mark.slow


def run_flow(flow: Path, env: dict, cwd: Path, *args: str, deploy: dict | None = None, timeout=300):
    env = {**os.environ, **env, "TINY_DEPLOY": json.dumps(deploy or {})}
    return subprocess.run(
        [sys.executable, str(flow), "--no-pylint", "run", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def client(env: dict, cwd: Path, code: str):
    """Run Metaflow Client code in a subprocess (its config is read at import) and return its JSON."""
    script = "import json\nfrom metaflow import Flow, Run, Task, namespace\nnamespace(None)\n" + code
    out = subprocess.run(
        [sys.executable, "-c", script], env={**os.environ, **env}, cwd=cwd, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def only_record(repo: str, model: str):
    repository = ModelRepository(repo)
    versions = repository.versions(model)
    assert len(versions) == 1, versions
    return repository, repository.read_record(model, versions[0])


def test_fraud_flow_trains_selects_and_deploys(tmp_path, metaflow_env):
    repo = tmp_path / "model_repository"
    result = run_flow(
        FRAUD_FLOW, {**metaflow_env, "TRITONFLOW_REPOSITORY": str(repo)}, tmp_path, "--rows", "8000"
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]

    repository, record = only_record(str(repo), "fraud-classifier")
    assert record.version == 1
    check_config(repository.read_config("fraud-classifier"))
    version_dir = repo / "fraud-classifier" / "1"
    assert (version_dir / "deployment.json").is_file()
    for entry in record.files:
        assert (repo / "fraud-classifier" / entry["path"]).stat().st_size == entry["size"]

    facts = client(
        metaflow_env,
        tmp_path,
        """
run = Flow("FraudFlow").latest_run
task = run["select"].task
scores = {t.data.kind: t.data.val_auc for t in run["train"]}
print(json.dumps({
    "task": task.pathspec, "run": run.pathspec, "deployment_id": task.data.deployment_id,
    "deployment": task.data.deployment, "scores": scores,
    "x_train_sha": {t.data.kind: t["X_train"].sha for t in run["train"]},
}))
""",
    )
    run_id = facts["run"].split("/")[1]
    assert record.deployment_id == f"fraud-classifier:1@FraudFlow/{run_id}" == facts["deployment_id"]
    assert record.metaflow["task"] == facts["task"]
    assert facts["deployment"]["deployment_id"] == record.deployment_id

    best = max(facts["scores"], key=facts["scores"].get)
    selection = record.selection
    assert selection["rule"] == "max:val_auc" and selection["winner"]["label"] == best
    assert {c["label"]: c["score"] for c in selection["candidates"]} == pytest.approx(facts["scores"])
    assert record.metrics["val_auc"] == pytest.approx(facts["scores"][best])
    data = {d["name"]: d for d in record.data}
    assert data["X_train"]["sha"] == facts["x_train_sha"][best]
    assert record.signature["n_features"] == 30 and record.signature["feature_names"][0] == "Time"
    assert record.model["parity"]["max_abs_diff"] <= record.model["parity"]["tolerance"]
    assert "deployed fraud-classifier:1@FraudFlow/" in result.stdout + result.stderr


def test_versions_increase_and_signature_is_kept(tmp_path, metaflow_env):
    repo = str(tmp_path / "repo")
    env = {**metaflow_env, "TRITONFLOW_REPOSITORY": repo}
    for _ in range(2):
        result = run_flow(TINY_FLOW, env, tmp_path, deploy={"name": "tiny"})
        assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    repository = ModelRepository(repo)
    assert repository.versions("tiny") == [1, 2]
    first, second = (repository.read_record("tiny", v) for v in (1, 2))
    assert first.metaflow["run_id"] != second.metaflow["run_id"]

    changed = run_flow(TINY_FLOW, env, tmp_path, "--features", "5", deploy={"name": "tiny"})
    assert changed.returncode != 0
    changed_out = changed.stdout + changed.stderr
    assert "keeps one signature" in changed_out and "nothing was published" in changed_out
    assert repository.versions("tiny") == [1, 2]


def test_a_retried_task_does_not_publish_twice(tmp_path, metaflow_env):
    repo = str(tmp_path / "repo")
    env = {**metaflow_env, "TRITONFLOW_REPOSITORY": repo}
    result = run_flow(
        TINY_FLOW, env, tmp_path, "--with", "retry", "--fail_first_attempt", "true", deploy={"name": "tiny"}
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    out = result.stdout + result.stderr
    assert out.count("@deploy: published tiny:1@TinyFlow/") == 2  # attempt 0 published, attempt 1 reused it
    assert ModelRepository(repo).versions("tiny") == [1]
    facts = client(
        metaflow_env,
        tmp_path,
        'task = Flow("TinyFlow").latest_run["train"].task\n'
        "print(json.dumps([task.current_attempt, task.data.deployment_id]))",
    )
    assert facts[0] == 1 and facts[1].startswith("tiny:1@TinyFlow/")


def test_fraud_flow_reads_a_csv(tmp_path, metaflow_env):
    from tritonflow.starter.fraud_data import synthetic_transactions

    frame = synthetic_transactions(3000, seed=1).rename(columns={"Class": "is_fraud"})
    frame.to_csv(tmp_path / "transactions.csv", index=False)
    env = {**metaflow_env, "TRITONFLOW_REPOSITORY": str(tmp_path / "repo")}
    args = ("--data", "transactions.csv", "--target", "is_fraud")
    result = run_flow(FRAUD_FLOW, env, tmp_path, *args)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    _, record = only_record(str(tmp_path / "repo"), "fraud-classifier")
    assert record.metaflow["parameters"]["data"] == "transactions.csv"
    assert record.signature["n_features"] == 30 and "is_fraud" not in record.signature["feature_names"]


@pytest.mark.parametrize(
    ("kind", "deploy", "messages"),
    [
        (  # every wrong attribute at once, one line each, before the run starts
            "forest",
            {"format": "pickle", "instance_kind": "tpu"},
            [
                "2 @deploy attributes are wrong:",
                "format='pickle' is not one of",
                "instance_kind='tpu' is not",
            ],
        ),
        ("forest", {"select": "max:auc"}, ["not a join"]),
        ("forest", {"name": "../escape"}, ["not a valid Triton model name"]),
        ("none", {}, ["has no artifact 'model' to deploy"]),
        ("object", {}, ["dict"]),
        ("offset", {}, ["parity"]),
        ("forest", {"format": "treelite", "sample": "missing_artifact"}, ["missing_artifact"]),
        (
            "unfitted",
            {"sample": "X"},
            ["nothing was published: RandomForestClassifier is not fitted: call .fit"],
        ),
    ],
)
def test_bad_input_fails_clearly_and_publishes_nothing(tmp_path, metaflow_env, kind, deploy, messages):
    repo = tmp_path / "repo"
    env = {**metaflow_env, "TRITONFLOW_REPOSITORY": str(repo)}
    result = run_flow(TINY_FLOW, env, tmp_path, "--kind", kind, deploy={"name": "tiny", **deploy})
    out = result.stdout + result.stderr
    assert result.returncode != 0
    for message in messages:
        assert message in out, out[-3000:]
    assert "Traceback" not in out and "Internal error" not in out, out[-3000:]
    assert not (repo / "tiny").exists() or ModelRepository(str(repo)).versions("tiny") == []


def test_a_pipeline_encoding_a_string_column_is_an_ensemble_and_one_tensor_refuses_strings(
    tmp_path, metaflow_env
):
    repo = tmp_path / "repo"
    env = {**metaflow_env, "TRITONFLOW_REPOSITORY": str(repo)}
    # the whole pipeline as one FP32 tensor cannot carry the strings: refused, naming the column
    refused = run_flow(
        TINY_FLOW,
        env,
        tmp_path,
        "--kind",
        "text",
        deploy={"name": "tiny", "sample": "X_text", "format": "onnx"},
    )
    out = refused.stdout + refused.stderr
    assert refused.returncode != 0
    assert "nothing was published: the Pipeline reads the columns ['city'] as strings or categories" in out
    assert "served as a Triton ensemble" in out and "Traceback" not in out and "Internal error" not in out
    assert not repo.exists()
    # by default, with the DataFrame sample, it is served as an ensemble taking each column by name
    result = run_flow(TINY_FLOW, env, tmp_path, "--kind", "text", deploy={"name": "tiny", "sample": "X_text"})
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    _, record = only_record(str(repo), "tiny")
    assert record.format == "ensemble" and [t["name"] for t in record.signature["inputs"]] == [
        "amount",
        "city",
    ]


def test_deploy_to_s3_with_s3_datastore(tmp_path, metaflow_s3_env, s3_bucket):
    env = {**metaflow_s3_env, "TRITONFLOW_REPOSITORY": s3_bucket}
    result = run_flow(FRAUD_FLOW, env, tmp_path, "--rows", "4000")
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    repository, record = only_record(s3_bucket, "fraud-classifier")
    assert record.repository == repository.uri and record.metaflow["datastore"] == "s3"
    check_config(repository.read_config("fraud-classifier"))
    facts = client(
        metaflow_s3_env,
        tmp_path,
        'print(json.dumps(Flow("FraudFlow").latest_run["select"].task.data.deployment_id))',
    )
    assert facts == record.deployment_id


def test_unreachable_s3_fails_clearly(tmp_path, metaflow_env):
    env = {
        **metaflow_env,
        "TRITONFLOW_REPOSITORY": "s3://nowhere/models",
        "TRITONFLOW_S3_ENDPOINT_URL": "http://127.0.0.1:9",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
    }
    result = run_flow(TINY_FLOW, env, tmp_path, deploy={"name": "tiny"}, timeout=120)
    assert result.returncode != 0
    out = result.stdout + result.stderr
    assert "nothing was published" in out and "127.0.0.1:9" in out
