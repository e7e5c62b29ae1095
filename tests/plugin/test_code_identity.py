"""The record names exactly the code that ran: a real flow in a real git checkout, run committed,
modified and as an untracked copy, then traced with the real `tritonflow lineage`."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tritonflow.lineage.repository import ModelRepository
from tritonflow.plugin.source_identity import MAX_UNTRACKED, script_in_git

# Three steps: X is made in start, X_scaled in scale, and the model trained in train, so the record
# must name two producing tasks; string labels, so it must name the classes.
FLOW = """\
import numpy as np
from metaflow import FlowSpec, deploy, step
from sklearn.ensemble import RandomForestClassifier


class IdentityFlow(FlowSpec):
    @step
    def start(self):
        self.X = np.random.default_rng(0).normal(size=(200, 4)).astype("float32")
        self.y = np.where(self.X[:, 0] > 0, "fraud", "legit")
        self.next(self.scale)

    @step
    def scale(self):
        self.X_scaled = self.X * 2
        self.next(self.train)

    @deploy(name="identity", sample="X_scaled")
    @step
    def train(self):
        forest = RandomForestClassifier(n_estimators=5, max_depth=3, random_state=0)
        self.model = forest.fit(self.X_scaled, self.y)
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    IdentityFlow()
"""


def git(repo: Path, *args: str) -> str:
    command = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args]
    return subprocess.run(command, cwd=repo, check=True, capture_output=True, text=True).stdout.strip()


def checkout(root: Path) -> Path:
    """A git work tree with flow.py committed on main."""
    repo = root / "checkout"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    (repo / "flow.py").write_text(FLOW)
    git(repo, "add", "flow.py")
    git(repo, "commit", "-q", "-m", "the flow")
    return repo


def run_and_trace(script: Path, env: dict) -> tuple[dict, dict, str]:
    """Run the flow, then return its record, the lineage JSON and the lineage text."""
    done = subprocess.run(
        [sys.executable, str(script), "--no-pylint", "run"],
        cwd=script.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    record = ModelRepository(env["TRITONFLOW_REPOSITORY"]).read_record("identity", 1).to_dict()
    lineage = [sys.executable, "-m", "tritonflow", "lineage", "identity:1"]
    as_json = subprocess.run([*lineage, "--json"], env=env, capture_output=True, text=True)
    as_text = subprocess.run(lineage, env=env, capture_output=True, text=True)
    assert as_json.returncode == 0 and as_text.returncode == 0, as_json.stderr + as_text.stderr
    return record, json.loads(as_json.stdout), as_text.stdout


@pytest.mark.slow
@pytest.mark.parametrize("case", ["committed", "modified", "untracked"])
def test_the_record_says_whether_the_commit_holds_the_script_that_ran(tmp_path, metaflow_env, case):
    repo = checkout(tmp_path)
    commit = git(repo, "rev-parse", "HEAD")
    script = repo / "flow.py"
    if case == "modified":
        script.write_text(FLOW + "# changed after the commit\n")
    elif case == "untracked":
        (repo / "copy").mkdir()
        script = Path(shutil.copy(script, repo / "copy" / "flow.py"))
        (repo / "copy" / "helper.py").write_text("HELP = 1\n")
    env = {**metaflow_env, "TRITONFLOW_REPOSITORY": str(tmp_path / "models")}
    record, doc, text = run_and_trace(script, env)

    ran = script.read_bytes()
    meta = record["metaflow"]
    assert os.path.realpath(meta["script_file"]["path"]) == os.path.realpath(script)
    assert meta["script_file"]["sha256"] == hashlib.sha256(ran).hexdigest()
    assert meta["script_file"]["size"] == len(ran)
    facts = meta["git"]
    assert facts["commit_sha"] == commit and facts["branch_name"] == "main"
    assert facts["script_path"] == script.relative_to(repo).as_posix()
    assert facts["script_tracked"] is (case != "untracked")
    assert facts["script_matches_commit"] is {"committed": True, "modified": False, "untracked": None}[case]
    # Metaflow's own check: tracked files only, so an untracked script leaves it false
    assert facts["has_uncommitted_changes"] is (case == "modified")
    assert facts["untracked_modules"] == (["helper.py"] if case == "untracked" else [])

    code = doc["code"]
    assert code["script_file"] == meta["script_file"] and code["git_commit"] == commit
    assert code["script_in_commit"] == {"committed": "identical"}.get(case, case)
    assert code["uncommitted_changes"] is (case != "committed")  # never "clean" when the script is not
    sha = meta["script_file"]["sha256"]
    assert f"sha256 {sha}" in text
    if case == "committed":
        assert code["warning"] is None and "WARNING" not in text
        assert "yes: the script is the committed file" in text
    else:
        how = "is not in commit" if case == "untracked" else "differs from commit"
        warning = f"{facts['script_path']} {how} {commit[:7]} ({case}): "
        assert (
            code["warning"] == f"{warning}the commit does not contain the code that ran; its sha256 is {sha}"
        )
        assert f"\n  WARNING: {code['warning']}\n" in text  # a plain line, in the Code section
        assert text.index("\nCode\n") < text.index("WARNING") < text.index("\nData\n")
    if case == "untracked":
        assert "helper.py (Python files beside the script, in no commit)" in text

    # each data artifact names the task that made it, not the one that read it
    tasks = {d["name"]: d for d in record["data"]}
    run = f"IdentityFlow/{meta['run_id']}"
    assert tasks["X"]["task"].startswith(f"{run}/start/") and tasks["y"]["task"] == tasks["X"]["task"]
    assert tasks["X_scaled"]["task"].startswith(f"{run}/scale/")
    assert {d["seen_in"] for d in record["data"]} == {tasks["X_scaled"]["task"]}
    assert all(a["sha_matches_metaflow"] for a in doc["data"]["artifacts"])
    assert f"Task('{tasks['X']['task']}')['X']" in doc["inspect"]["artifacts"]
    assert doc["inspect"]["model"] == f"Task('{meta['task']}').data.model"  # trained where it deployed

    # the class labels, in the order of output__0's columns
    assert doc["model"]["classes"] == record["model"]["classes"] == ["fraud", "legit"]
    assert re.search(r"\n  classes +output__0 columns: 0='fraud', 1='legit'\n", text), text


def test_the_git_check_degrades_to_no_claim(tmp_path):
    repo = checkout(tmp_path)
    (repo / "new.py").write_text("x = 1\n")
    git(repo, "add", "new.py")  # staged, not committed: still in no commit
    staged = script_in_git(repo / "new.py")
    assert staged["script_tracked"] is False and staged["script_matches_commit"] is None
    for i in range(MAX_UNTRACKED + 3):
        (repo / f"m{i:02}.py").write_text("")
    many = script_in_git(repo / "flow.py")
    assert len(many["untracked_modules"]) == MAX_UNTRACKED and many["untracked_modules_more"] == 3

    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "flow.py").write_text(FLOW)
    assert script_in_git(tmp_path / "plain" / "flow.py") == {}  # not a checkout
    # no git on the PATH at all: no claim, no error
    script = str(repo / "flow.py")
    code = f"from tritonflow.plugin.source_identity import script_in_git; print(script_in_git({script!r}))"
    env = {**os.environ, "PATH": str(tmp_path / "empty")}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == "{}", done.stderr
