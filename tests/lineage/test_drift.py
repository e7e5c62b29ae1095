"""`tritonflow drift` as users run it: a real deploy writes the reference profile, capture files as the
node writes them (local and moto S3), the command in a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from capture_files import capture_bytes, now, write_capture
from sklearn.ensemble import RandomForestClassifier

from tritonflow.lineage.repository import ModelRepository
from tritonflow.plugin.options import parse_options
from tritonflow.plugin.publish import Provenance, deploy

MODEL = "risk"
FEATURES = [f"f{j}" for j in range(6)]


def tritonflow(*args: object) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "tritonflow", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def training(rows: int, seed: int) -> pd.DataFrame:
    return pd.DataFrame(np.random.default_rng(seed).normal(size=(rows, len(FEATURES))), columns=FEATURES)


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, RandomForestClassifier]:
    """risk:1 with a reference profile (deployed with a sample), risk:2 without (no sample)."""
    repo = str(tmp_path_factory.mktemp("drift") / "repo")
    X = training(3000, seed=0)
    y = (X["f0"] + X["f2"] > 0).astype(int)  # NOTE: f3 and f5 do not move the prediction when shifted
    model = RandomForestClassifier(n_estimators=10, max_depth=5, random_state=0).fit(X, y)
    opts = parse_options({"name": MODEL, "repository": repo}, "RiskFlow", is_join=False)
    for run_id, sample in (("11", X), ("12", None)):
        provenance = Provenance(
            metaflow={"flow": "RiskFlow", "run_id": run_id, "task": f"RiskFlow/{run_id}/t/1"}
        )
        deploy(
            model, opts, sample=sample, provenance=provenance, sample_name="X" if sample is not None else None
        )
    return repo, model


def traffic(model: RandomForestClassifier, shift: dict[str, float], rows: int = 2000, seed: int = 1):
    X = training(rows, seed)
    for name, by in shift.items():
        X[name] += by
    rows = X.to_numpy(np.float32)  # NOTE: as the node gets them, and answers them: in float32
    return rows, model.predict_proba(pd.DataFrame(rows, columns=FEATURES))


def capture(root: str, model, shift: dict[str, float] | None = None, version: int = 1, **kw) -> None:
    X, P = traffic(model, shift or {}, **kw)
    data = capture_bytes(X, P, [f"r{i}" for i in range(len(X))], f"{MODEL}:{version}@RiskFlow/11", now())
    write_capture(root, MODEL, version, "part-0.parquet", data, now())


def test_the_deploy_lists_its_reference_profile(deployed) -> None:
    repo, _ = deployed
    repository = ModelRepository(repo)
    record = repository.read_record(MODEL, 1)
    assert record.reference["path"] == "1/reference.json"
    data = (Path(repo) / MODEL / "1" / "reference.json").read_bytes()
    profile = json.loads(data)
    assert [f["name"] for f in profile["features"]] == FEATURES
    assert profile["rows"] == 3000 and profile["prediction"]["rows"] == 3000
    assert all(abs(s - 0.1) < 0.01 for f in profile["features"] for s in f["shares"])
    assert "reference.json" not in {f["path"].split("/")[-1] for f in record.files}  # Triton's files only
    assert repository.read_record(MODEL, 2).reference is None


def test_traffic_like_the_training_data_is_no_drift(deployed, tmp_path) -> None:
    repo, model = deployed
    capture(str(tmp_path / "captures"), model)
    result = tritonflow(
        "drift", f"{MODEL}:1", "--captures", tmp_path / "captures", "--repository", repo, "--json"
    )
    assert result.returncode == 0, result.stdout + result.stderr
    doc = json.loads(result.stdout)
    assert doc["drift"] is False and doc["drifting"] == [] and doc["rows"] == 2000
    assert all(f["psi"] < 0.05 and f["ks"] < 0.1 for f in doc["features"])
    assert doc["prediction"]["psi"] < 0.05 and doc["prediction"]["ks"] < 0.1  # a forest's tied scores too


def test_two_shifted_features_are_flagged_exactly(deployed, tmp_path) -> None:
    repo, model = deployed
    root = str(tmp_path / "captures")
    capture(root, model, {"f3": 1.0, "f5": -1.5})
    html = tmp_path / "report.html"
    result = tritonflow("drift", f"{MODEL}:1", "--captures", root, "--repository", repo, "--html", html)
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[1].split()[0] == "FEATURE"
    assert {lines[2].split()[0], lines[3].split()[0]} == {"f3", "f5"}  # sorted by drift: the two first
    flagged = [line.split()[0] for line in lines[2:] if line.rstrip().endswith("DRIFT")]
    assert flagged == [lines[2].split()[0], lines[3].split()[0]]
    assert "drift in f5, f3" in lines[-1] or "drift in f3, f5" in lines[-1]
    page = html.read_text()
    assert page.count("data:image/png;base64,") == 2 and "<h2>f3</h2>" in page and "<h2>f5</h2>" in page

    doc = json.loads(
        tritonflow("drift", f"{MODEL}:1", "--captures", root, "--repository", repo, "--json").stdout
    )
    assert sorted(doc["drifting"]) == ["f3", "f5"]
    assert all(f["psi"] > 0.2 for f in doc["features"] if f["name"] in ("f3", "f5"))
    # a threshold above the shift's PSI and KS: nothing over it
    loose = tritonflow(
        "drift",
        f"{MODEL}:1",
        "--captures",
        root,
        "--repository",
        repo,
        "--psi-threshold",
        100,
        "--ks-threshold",
        1,
    )
    assert loose.returncode == 0, loose.stdout + loose.stderr


def test_since_compares_only_recent_rows(deployed, tmp_path) -> None:
    repo, model = deployed
    root = str(tmp_path / "captures")
    X, P = traffic(model, {"f3": 3.0})
    old = now() - timedelta(hours=5)
    write_capture(root, MODEL, 1, "old.parquet", capture_bytes(X, P, ["o"] * len(X), f"{MODEL}:1", old), old)
    capture(root, model, rows=500)
    every = json.loads(
        tritonflow("drift", f"{MODEL}:1", "--captures", root, "--repository", repo, "--json").stdout
    )
    recent = tritonflow(
        "drift", f"{MODEL}:1", "--captures", root, "--repository", repo, "--since", "1h", "--json"
    )
    assert every["rows"] == 2500 and "f3" in every["drifting"]
    assert recent.returncode == 0 and json.loads(recent.stdout)["rows"] == 500


def test_captures_on_s3(deployed, s3_bucket) -> None:
    repo, model = deployed
    root = s3_bucket.replace("/models", "/captures")
    capture(root, model, {"f3": 1.0, "f5": -1.5})
    result = tritonflow("drift", f"{MODEL}:1", "--captures", root, "--repository", repo, "--json")
    assert result.returncode == 1, result.stdout + result.stderr
    assert sorted(json.loads(result.stdout)["drifting"]) == ["f3", "f5"]


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("no reference", "has no reference profile (deployed without one): redeploy the model"),
        ("not in repository", "no deployment risk:7 in"),
        ("other model", "it has no model 'rsk'; did you mean 'risk'?"),
        ("missing root", "does not exist: pass the folder"),
        ("foreign files", "it holds only files that are not captures"),
        ("no captures of the version", "no capture files of risk:1 under"),
        ("bad since", "argument --since: '24' is not a duration"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(deployed, tmp_path, case, message) -> None:
    repo, model = deployed
    root = tmp_path / "captures"
    capture(str(root), model, version=2)
    target, args = f"{MODEL}:1", ["--captures", root]
    if case == "no reference":
        target = f"{MODEL}:2"
    elif case == "not in repository":
        target = f"{MODEL}:7"
    elif case == "other model":
        target = "rsk:1"
    elif case == "missing root":
        args = ["--captures", tmp_path / "typo"]
    elif case == "foreign files":
        (tmp_path / "foreign").mkdir()
        (tmp_path / "foreign" / "notes.txt").write_text("not a capture")
        args = ["--captures", tmp_path / "foreign"]
    elif case == "bad since":
        args += ["--since", "24"]
    result = tritonflow("drift", target, *args, "--repository", repo)
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert message in lines[-1] and "Traceback" not in result.stderr
    assert len(lines) == 1 or case == "bad since", result.stderr  # argparse's usage, then its one line
