"""@project branches: one flow run on a user branch, a test branch (`--branch alice`), production
(`--production`) and a second production namespace (`--production --branch x`), each a real
Metaflow run into one repository; then what each published, and what a real node serves."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient

from tritonflow.lineage.errors import TritonflowError
from tritonflow.lineage.ids import DeploymentId
from tritonflow.lineage.releases import read_state
from tritonflow.lineage.repository import ModelRepository
from tritonflow.plugin.options import parse_options
from tritonflow.plugin.project import ProjectBranch, branch_model_name
from tritonflow.plugin.publish import Provenance, deploy

PROJECT_FLOW = Path(__file__).parent / "flows" / "project_flow.py"
# the flow's runs, in order: a branch before production, production, branches after it
RUNS = {
    "test.alice": ("--branch", "alice"),
    "prod": ("--production",),
    "user.tester": (),  # no option: Metaflow's user branch (METAFLOW_USER=tester)
    "prod.x": ("--production", "--branch", "x"),
}
MODELS = {
    "test.alice": "fraud.test.alice",
    "prod": "fraud",
    "user.tester": "fraud.user.tester",
    "prod.x": "fraud.prod.x",
}


@pytest.mark.parametrize(
    ("branch", "model"),
    [
        ("prod", "fraud"),
        ("user.alice", "fraud.user.alice"),
        ("test.foo", "fraud.test.foo"),
        ("prod.x", "fraud.prod.x"),
        # a user branch carries $METAFLOW_USER as it is: an e-mail address, a space
        ("user.Alice Smith@corp.com", "fraud.user.Alice-Smith-corp.com"),
        ("user.../etc", "fraud.user.-etc"),
    ],
)
def test_branch_model_names(branch: str, model: str) -> None:
    assert branch_model_name("fraud", branch) == model
    assert DeploymentId.parse(f"{model}:3@ProjectFlow/argo-fraud.prod.projectflow-abc12").model == model


def test_a_branch_name_too_long_for_triton_says_what_to_shorten() -> None:
    with pytest.raises(TritonflowError, match="shorter @deploy\\(name=...\\) or --branch"):
        branch_model_name("fraud", "test." + "b" * 125)


def test_only_prod_touches_production() -> None:
    def branch(name: str, production: bool) -> ProjectBranch:
        return ProjectBranch("fraud", name, production, "fraud", branch_model_name("fraud", name))

    assert branch("prod", True).touches_production
    assert "production untouched" in branch("user.alice", False).describe()
    second = branch("prod.x", True)
    assert not second.touches_production and "a production namespace of its own" in second.describe()


# -- real runs -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def runs(metaflow_env_module: dict[str, str], tmp_path_factory: pytest.TempPathFactory):
    """The four runs into one local repository: (repository path, branch -> the run's output)."""
    work = tmp_path_factory.mktemp("project")
    repo = work / "model_repository"
    env = {**os.environ, **metaflow_env_module, "TRITONFLOW_REPOSITORY": str(repo)}
    outputs = {}
    for branch, options in RUNS.items():
        done = subprocess.run(
            [sys.executable, str(PROJECT_FLOW), "--no-pylint", *options, "run"],
            env=env,
            cwd=work,
            capture_output=True,
            text=True,
            timeout=300,
        )
        outputs[branch] = done.stdout + done.stderr
        assert done.returncode == 0, outputs[branch][-3000:]
        assert f"Branch: {branch}" in outputs[branch]
    return repo, outputs


@pytest.mark.slow
def test_each_branch_publishes_its_own_model(runs) -> None:
    repo, outputs = runs
    repository = ModelRepository(str(repo))
    assert sorted(repository.models()) == sorted(MODELS.values())
    run_ids = set()
    for branch, model in MODELS.items():
        assert repository.versions(model) == [1]  # production's model got no branch's version
        record = repository.read_record(model, 1)
        production = branch.startswith("prod")
        assert record.metaflow["project"] == {
            "project": "fraud",
            "branch": branch,
            "production": production,
            "production_model": "fraud",
            "model": model,
        }
        assert record.deployment_id == f"{model}:1@ProjectFlow/{record.metaflow['run_id']}"
        run_ids.add(record.metaflow["run_id"])
        assert read_state(repository, model).champion == 1
    assert len(run_ids) == len(RUNS)
    out = outputs["test.alice"]
    assert "@deploy: branch test.alice: published as fraud.test.alice, production untouched" in out
    assert "@deploy: branch prod (production): published as fraud" in outputs["prod"]
    assert "fraud.prod.x, a production namespace of its own, production untouched" in outputs["prod.x"]


@pytest.mark.slow
def test_the_node_serves_production_and_each_branch_apart(runs, serve) -> None:
    repo, _ = runs
    repository = ModelRepository(str(repo))
    server = serve(repo)
    rows = np.random.default_rng(1).normal(size=(3, 4)).astype(np.float32)
    for model in MODELS.values():
        server.wait_for_state(model, 1, "READY")
        tensor = httpclient.InferInput("input__0", list(rows.shape), "FP32")
        tensor.set_data_from_numpy(rows)
        answer = server.client.infer(model, [tensor])
        stamp = answer.get_response()["parameters"]["deployment_id"]
        assert stamp == repository.read_record(model, 1).deployment_id
        assert answer.as_numpy("output__0").shape == (3, 2)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("branch", "served"), [("prod", {"fraud", "plain"}), ("test.alice", {"fraud.test.alice"})]
)
def test_a_node_on_one_branch_serves_only_that_branchs_models(
    runs, serve, tmp_path: Path, branch: str, served: set[str]
) -> None:
    """`tritonflow serve --branch`: the other branches' models are not loaded (so none can make the
    node unready); a model deployed without @project is production's."""
    from sklearn.ensemble import RandomForestClassifier

    repo = tmp_path / "repo"
    shutil.copytree(runs[0], repo)
    rows = np.random.default_rng(2).normal(size=(50, 4)).astype(np.float32)
    forest = RandomForestClassifier(3, max_depth=2, random_state=0).fit(rows, rows[:, 0] > 0)
    options = parse_options({"name": "plain", "repository": str(repo)}, "PlainFlow", is_join=False)
    deploy(forest, options, sample=rows, provenance=Provenance(metaflow={"flow": "PlainFlow", "run_id": "1"}))
    server = serve(repo, "--branch", branch)
    for model in served:
        server.wait_for_state(model, 1, "READY")
    assert {m["name"] for m in server.client.get_model_repository_index()} == served
    assert server.client.is_server_ready()
    others = set(MODELS.values()) - served
    assert not any(server.client.is_model_ready(model) for model in others)
    assert "not serving fraud.user.tester: deployed from branch user.tester" in server.log_text()


@pytest.mark.slow
def test_lineage_shows_the_branch(runs, metaflow_env_module: dict[str, str]) -> None:
    repo, _ = runs
    record = ModelRepository(str(repo)).read_record("fraud.test.alice", 1)

    def lineage(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "tritonflow", "lineage", record.deployment_id, "--repository", str(repo)]
            + list(args),
            env={**os.environ, **metaflow_env_module},
            cwd=repo.parent,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    doc = json.loads(lineage("--json"))
    assert doc["run"]["project"] == record.metaflow["project"]
    assert doc["run"]["status"] == "successful"  # the live Metaflow lookup found the branch's run
    text = lineage()
    assert "fraud  branch test.alice (a branch model; the production model is fraud)" in text
    parity = record.model["parity"]  # the gate's rows, and its rows with a missing value
    assert f"on {parity['rows']} rows + {parity['missing_value_rows']} with a missing value" in text
