"""Flows deployed to Argo Workflows / Step Functions (and Airflow): the S3 check at `create` and in
the task, and run IDs of the form `argo-...` / `sfn-...` through deployment IDs, lineage and a node.

No scheduler runs here: `create --only-json` (Airflow: `create dag.py`) is real Metaflow up to the
point where it needs the cluster, and the task side runs the command lines those schedulers start
in each task."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient

from tritonflow.lineage.ids import DeploymentId
from tritonflow.lineage.repository import ModelRepository
from tritonflow.plugin.remote import where_it_runs

FLOWS = Path(__file__).parent / "flows"
TINY_FLOW = FLOWS / "tiny_flow.py"
# an Argo run of a @project flow deployed with --production, and a Step Functions execution
ARGO_RUN = "argo-fraud.prod.projectflow-abc12"
SFN_RUN = "sfn-1234-5678-9abc-def012345678"
# `create` command group -> the scheduler's name, the decorators it puts on its tasks, a run ID
SCHEDULERS = {
    "argo-workflows": (
        "Argo Workflows",
        ("kubernetes", "argo_workflows_internal:auto-emit-argo-events=0"),
        ARGO_RUN,
    ),
    "step-functions": ("AWS Step Functions", ("batch", "step_functions_internal"), SFN_RUN),
    "airflow": ("Airflow", ("kubernetes", "airflow_internal"), "airflow-1a2b3c4d5e"),
}
CREATE = {"argo-workflows": ("--only-json",), "step-functions": ("--only-json",), "airflow": ("dag.py",)}
# what each scheduler does right after step_init, once @deploy lets it through
NEXT_STEP = {
    "argo-workflows": "Argo Workflows requires --datastore=s3",
    "step-functions": "Deploying TinyFlow to AWS Step Functions",
    "airflow": "Datastore type `local` is not supported with `airflow create`",
}

pytestmark = pytest.mark.slow


@pytest.fixture
def flow_env(metaflow_env: dict[str, str], aws_env: dict[str, str]) -> dict[str, str]:
    """A local Metaflow, dummy AWS credentials, and every AWS endpoint on a closed local port: a
    command that gets past step_init fails fast instead of reaching out."""
    env = {**os.environ, **metaflow_env, **aws_env, "AWS_ENDPOINT_URL": "http://127.0.0.1:9"}
    env.pop("TRITONFLOW_REPOSITORY", None)
    return env


def metaflow(env: dict[str, str], cwd: Path, *args: str, deploy: dict | None = None) -> tuple[int, str]:
    done = subprocess.run(
        [sys.executable, str(TINY_FLOW), "--no-pylint", *args],
        env={**env, "TINY_DEPLOY": json.dumps(deploy or {})},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return done.returncode, done.stdout + done.stderr


def deploy_line(output: str) -> str:
    """@deploy's refusal: the line after Metaflow's `@deploy:` headline."""
    lines = output.splitlines()
    return next(lines[i + 1].strip() for i, line in enumerate(lines) if line.strip() == "@deploy:")


@pytest.mark.parametrize("group", SCHEDULERS)
def test_create_refuses_a_local_repository_with_the_task_s_message(group, flow_env, tmp_path) -> None:
    scheduler, decorators, run_id = SCHEDULERS[group]
    code, out = metaflow(flow_env, tmp_path, group, "create", *CREATE[group])
    assert code != 0
    refusal = deploy_line(out)
    assert refusal.startswith(f"step train: this step runs on {scheduler}, where the local repository")
    assert "repository='s3://bucket/prefix'" in refusal
    assert NEXT_STEP[group] not in out  # refused before the scheduler's own checks, or any cluster

    # the command the scheduler starts in each task (its decorators passed with --with): same words
    s3_datastore = {**flow_env, "METAFLOW_DATASTORE_SYSROOT_S3": "s3://mf-bucket/mf"}
    task_args = ("--quiet", "--datastore=s3", *(f"--with={d}" for d in decorators), "step", "train")
    ids = ("--run-id", run_id, "--task-id", "t-2", "--input-paths", f"{run_id}/start/t-1")
    code, out = metaflow(s3_datastore, tmp_path, *task_args, *ids)
    assert code != 0 and deploy_line(out) == refusal


@pytest.mark.parametrize("group", SCHEDULERS)
def test_create_goes_on_with_an_s3_repository(group, flow_env, tmp_path) -> None:
    code, out = metaflow(
        flow_env, tmp_path, group, "create", *CREATE[group], deploy={"repository": "s3://b/models"}
    )
    assert code != 0 and "@deploy" not in out and NEXT_STEP[group] in out


@pytest.mark.parametrize("group", SCHEDULERS)
def test_a_repository_from_the_shell_must_reach_the_tasks(group, flow_env, tmp_path) -> None:
    env = {**flow_env, "TRITONFLOW_REPOSITORY": "s3://b/models"}
    code, out = metaflow(env, tmp_path, group, "create", *CREATE[group])
    assert code != 0
    assert "do not see $TRITONFLOW_REPOSITORY ('s3://b/models') from this shell" in deploy_line(out)

    passed = 'environment:vars={"TRITONFLOW_REPOSITORY": "s3://b/models"}'
    code, out = metaflow(env, tmp_path, "--with", passed, group, "create", *CREATE[group])
    assert code != 0 and "@deploy" not in out and NEXT_STEP[group] in out


def test_where_it_runs() -> None:
    assert where_it_runs(["deploy"], ["run"]) is None
    assert where_it_runs(["deploy", "kubernetes"], ["run"]) == "@kubernetes"
    assert where_it_runs(["deploy"], ["argo-workflows", "create", "--only-json"]) == "Argo Workflows"
    assert where_it_runs(["kubernetes", "argo_workflows_internal"], ["step", "train"]) == "Argo Workflows"
    assert where_it_runs(["deploy"], ["argo-workflows", "trigger"]) is None  # runs what `create` checked


# -- scheduler run IDs through the ID, lineage and the node ---------------------------------------
def run_as_scheduler(flow: Path, options: tuple[str, ...], run_id: str, env: dict[str, str], cwd: Path):
    """A real run driven the way Argo and Step Functions drive one: `init`, then one `step` command
    per task with the scheduler's run ID and task IDs (here on this machine, local datastore)."""
    tasks = [("init", None, "t-0", None), ("step", "start", "t-1", "_parameters/t-0")]
    tasks += [("step", "train", "t-2", "start/t-1"), ("step", "end", "t-3", "train/t-2")]
    output = ""
    for command, step, task_id, inputs in tasks:
        args = [command, *([step] if step else []), "--run-id", run_id, "--task-id", task_id]
        if inputs:
            args += ["--input-paths", f"{run_id}/{inputs}"]
        done = subprocess.run(
            [sys.executable, str(flow), "--quiet", "--no-pylint", *options, *args],
            env=env,
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=300,
        )
        output += done.stdout + done.stderr
        assert done.returncode == 0, output[-3000:]
    return output


@pytest.mark.parametrize(
    ("flow", "options", "run_id", "full"),
    [
        (FLOWS / "project_flow.py", ("--production",), ARGO_RUN, f"fraud:1@ProjectFlow/{ARGO_RUN}"),
        (TINY_FLOW, (), SFN_RUN, f"tiny:1@TinyFlow/{SFN_RUN}"),
    ],
    ids=["argo", "sfn"],
)
def test_scheduler_run_ids_in_ids_lineage_and_the_node(
    flow, options, run_id, full, metaflow_env, tmp_path, serve
) -> None:
    repo = tmp_path / "repo"
    env = {**os.environ, **metaflow_env, "TRITONFLOW_REPOSITORY": str(repo)}
    output = run_as_scheduler(flow, options, run_id, {**env, "TINY_DEPLOY": '{"name": "tiny"}'}, tmp_path)
    assert f"@deploy: published {full} to {repo}" in output
    parsed = DeploymentId.parse(full)
    model = parsed.model
    assert (parsed.run_id, str(parsed)) == (run_id, full)
    record = ModelRepository(str(repo)).read_record(model, 1)
    assert record.deployment_id == full and record.metaflow["run_id"] == run_id

    for given in (full, f"{model}:1"):
        done = subprocess.run(
            [sys.executable, "-m", "tritonflow", "lineage", given, "--repository", str(repo), "--json"],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        doc = json.loads(done.stdout)
        assert doc["deployment"]["deployment_id"] == full
        assert doc["run"]["pathspec"] == f"{parsed.flow}/{run_id}"
        assert doc["run"]["task"] == f"{parsed.flow}/{run_id}/train/t-2"
        # the live lookup found the run in Metaflow's metadata, and its artifacts match the record
        assert doc["metaflow"]["available"] and doc["run"]["status"] == "successful"
        assert all(a["sha_matches_metaflow"] for a in doc["data"]["artifacts"])

    server = serve(repo)
    server.wait_for_state(model, 1, "READY")
    rows = np.random.default_rng(1).normal(size=(2, record.signature["n_features"])).astype(np.float32)
    tensor = httpclient.InferInput("input__0", list(rows.shape), "FP32")
    tensor.set_data_from_numpy(rows)
    assert server.client.infer(model, [tensor]).get_response()["parameters"]["deployment_id"] == full
    row = {"name": "input__0", "datatype": "FP32", "shape": [1, rows.shape[1]], "data": rows[0].tolist()}
    body = {"inputs": [row]}
    status, headers, _ = server.request("POST", f"/v2/models/{model}/infer", json.dumps(body).encode())
    assert status == 200 and headers["x-deployment-id"] == full
