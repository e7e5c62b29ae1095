"""`tritonflow captures` and `tritonflow lookup` as users run them: capture files as the node writes them
(local and moto S3), a real deploy for the lineage, the commands in subprocesses."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import timedelta

import numpy as np
import pytest
from capture_files import capture_bytes, now, write_capture
from sklearn.ensemble import RandomForestClassifier

from tritonflow.plugin.options import parse_options
from tritonflow.plugin.publish import Provenance, deploy

MODEL = "risk"
STAMP = f"{MODEL}:1@RiskFlow/11"


def tritonflow(*args: object) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "tritonflow", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = str(tmp_path_factory.mktemp("captures") / "repo")
    X = np.random.default_rng(0).normal(size=(500, 3)).astype(np.float32)
    model = RandomForestClassifier(n_estimators=5, max_depth=3, random_state=0).fit(X, X[:, 0] > 0)
    opts = parse_options({"name": MODEL, "repository": path}, "RiskFlow", is_join=False)
    deploy(model, opts, sample=X, provenance=Provenance(metaflow={"flow": "RiskFlow", "run_id": "11"}))
    return path


def fill(root: str) -> tuple[np.ndarray, np.ndarray]:
    """risk:1: 2 files this hour (a 3-row request 'batch-7' among 10 rows), 1 file 2 hours ago; other:4: 1."""
    rng = np.random.default_rng(1)
    X, P = rng.normal(size=(10, 3)), rng.random(size=(10, 2))
    ids = ["a", "b", "batch-7", "batch-7", "batch-7", "c", None, "d", "e", "f"]
    write_capture(root, MODEL, 1, "p0.parquet", capture_bytes(X, P, ids, STAMP, now(), role="canary"), now())
    write_capture(
        root, MODEL, 1, "p1.parquet", capture_bytes(X[:4], P[:4], list("ghij"), STAMP, now()), now()
    )
    old = now() - timedelta(hours=2)
    write_capture(root, MODEL, 1, "p2.parquet", capture_bytes(X[:5], P[:5], list("klmno"), STAMP, old), old)
    write_capture(
        root, "other", 4, "p0.parquet", capture_bytes(None, P[:2], ["x", "y"], "other:4", now()), now()
    )
    return X, P


def test_captures_lists_files_and_rows_per_version_and_hour(tmp_path) -> None:
    root = str(tmp_path / "captures")
    fill(root)
    (tmp_path / "captures" / "README.txt").write_text("a foreign file")
    (tmp_path / "captures" / MODEL / "1" / "notes.parquet").write_bytes(b"misplaced")
    result = tritonflow("captures", root, "--json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    counts = [(c["model"], c["version"], c["files"], c["rows"]) for c in doc["captures"]]
    assert counts == [("other", 4, 1, 2), (MODEL, 1, 1, 5), (MODEL, 1, 2, 14)]
    assert doc["captures"][1]["hour"] < doc["captures"][2]["hour"]
    assert sorted(s.split()[0] for s in doc["skipped"]) == ["README.txt", f"{MODEL}/1/notes.parquet"]
    assert "skipped 2 file(s)" in result.stderr and "README.txt" in result.stderr

    table = tritonflow("captures", root, "--model", "other")
    assert table.returncode == 0, table.stderr
    header, row = table.stdout.splitlines()
    assert header.split() == ["MODEL", "VERSION", "HOUR", "FILES", "ROWS"]
    assert row.split()[:2] == ["other", "4"] and row.split()[3:] == ["1", "2"]


def test_captures_on_s3(s3_bucket) -> None:
    root = s3_bucket.replace("/models", "/captures")
    fill(root)
    result = tritonflow("captures", root, "--model", MODEL, "--json")
    assert result.returncode == 0, result.stderr
    assert sum(c["rows"] for c in json.loads(result.stdout)["captures"]) == 19


def test_a_file_with_another_schema_is_skipped_and_named(tmp_path) -> None:
    root = str(tmp_path / "captures")
    P = np.zeros((3, 2))
    write_capture(root, MODEL, 1, "ok.parquet", capture_bytes(None, P, list("abc"), STAMP, now()), now())
    other = capture_bytes(None, P, list("abc"), STAMP, now(), schema="someone.else/v9")
    key = write_capture(root, MODEL, 1, "odd.parquet", other, now())
    result = tritonflow("captures", root, "--json")
    assert [c["rows"] for c in json.loads(result.stdout)["captures"]] == [3]
    assert f"{key} (schema 'someone.else/v9'" in result.stderr


def test_lookup_prints_a_requests_rows_and_lineage(tmp_path, repo) -> None:
    root = str(tmp_path / "captures")
    X, P = fill(root)
    result = tritonflow(
        "lookup", "--request-id", "batch-7", "--captures", root, "--repository", repo, "--json"
    )
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    rows = doc["rows"]
    assert [r["row"] for r in rows] == [0, 1, 2] and {r["role"] for r in rows} == {"canary"}
    assert {r["deployment_id"] for r in rows} == {STAMP}
    assert np.allclose([r["input.input__0"] for r in rows], X[2:5].astype(np.float32))
    assert np.allclose([r["output.output__0"] for r in rows], P[2:5].astype(np.float32))
    assert rows[0]["time"].endswith("Z")
    lineage = doc["lineage"][STAMP]
    assert lineage["deployment"]["deployment_id"] == STAMP and lineage["run"]["pathspec"] == "RiskFlow/11"

    text = tritonflow(
        "lookup", "--request-id", "batch-7", "--captures", root, "--repository", repo, "--no-metaflow"
    )
    assert text.returncode == 0, text.stderr
    assert text.stdout.startswith(f"request batch-7 row 0: {STAMP} (canary) at ")
    assert "input.input__0: [" in text.stdout and STAMP in text.stdout.split("\n\n", 1)[1]


def test_lookup_of_a_deployment_not_in_the_repository_still_shows_the_rows(tmp_path, repo) -> None:
    root = str(tmp_path / "captures")
    fill(root)
    result = tritonflow("lookup", "--request-id", "x", "--captures", root, "--repository", repo)
    assert result.returncode == 0, result.stderr
    assert "lineage of other:4: no deployment other:4 in" in result.stdout


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("unknown id", "no captured request with id 'nope' in 4 capture file(s)"),
        ("missing root", "captures root"),
        ("foreign files", "no capture files of any model under"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, repo, case, message) -> None:
    root = tmp_path / "captures"
    fill(str(root))
    if case == "missing root":
        root = tmp_path / "typo"
    elif case == "foreign files":
        root = tmp_path / "foreign"
        (root / "a").mkdir(parents=True)
        (root / "a" / "b.csv").write_text("1,2\n")
    for command in (["lookup", "--request-id", "nope", "--captures", root], ["captures", root]):
        if case == "unknown id" and command[0] == "captures":
            continue
        result = (
            tritonflow(*command, "--repository", repo) if command[0] == "lookup" else tritonflow(*command)
        )
        assert result.returncode == 2, result.stdout + result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0] and "Traceback" not in result.stderr, result.stderr
