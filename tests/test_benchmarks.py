"""The benchmarks still run: each in its quickest mode, as a subprocess, writing into a temporary folder."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"

pytestmark = pytest.mark.slow


def run(script: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "METAFLOW_USER": os.environ.get("METAFLOW_USER", "tester")}
    done = subprocess.run(
        [sys.executable, str(script), *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=120
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def test_serving_benchmark_quick_covers_every_contender(tmp_path: Path) -> None:
    run(
        BENCHMARKS / "serving.py",
        "--quick",
        "--no-triton",
        "--no-load-generator",
        "--out",
        str(tmp_path),
        cwd=tmp_path,
    )

    report = json.loads((tmp_path / "serving.json").read_text())
    markdown = (tmp_path / "serving.md").read_text()
    assert (tmp_path / "serving_latency.png").read_bytes().startswith(b"\x89PNG")
    expected = {"tritonflow treelite", "tritonflow onnxruntime", "fastapi (starter pack)"}
    if importlib.util.find_spec("nvforest"):
        expected.add("tritonflow nvforest")
    [result] = report["models"]
    timed = {row["contender"] for row in result["sequential"]}
    assert expected <= timed
    assert {row["contender"] for row in result["batch"]} == timed
    assert any(label.endswith("batching off") for label in (s["contender"] for s in result["servers"]))
    assert all(row["p50_ms"] > 0 for row in result["sequential"])
    assert all(row["agreement"] > 0.99 for row in result["batch"])
    for label in expected:
        assert f"| {label} |" in markdown
    assert report["skipped"] == {"load tests (wrk)": "--no-load-generator", "Triton": "--no-triton"}
    assert report["machine"]["cores"] == os.cpu_count() and report["machine"]["cpu"]
    treelite = next(s for s in result["servers"] if s["contender"] == "tritonflow treelite")
    assert not treelite["nvforest_mapped"], "--engine treelite must not load nvForest"


def test_deploy_overhead_quick(tmp_path: Path) -> None:
    run(BENCHMARKS / "deploy_overhead.py", "--quick", "--out", str(tmp_path), cwd=tmp_path)
    rows = json.loads((tmp_path / "deploy_overhead.json").read_text())["results"]
    assert len(rows) == 3 and all(row["first_call_s"] > 0 for row in rows)


def test_engines_quick(tmp_path: Path) -> None:
    out = tmp_path / "engines.json"
    run(BENCHMARKS / "engines.py", "--quick", "--out", str(out), cwd=tmp_path)
    report = json.loads(out.read_text())
    assert {"treelite-gtil", "onnxruntime-cpu"} <= {row["engine"] for row in report["results"]}
    assert all(diff < 1e-4 for model in report["max_abs_diff"].values() for diff in model.values())
    assert report["machine"]["cores"] == os.cpu_count() and "gpu" in report["machine"]


def test_lineage_lookup_once(tmp_path: Path) -> None:
    run(BENCHMARKS / "lineage_lookup.py", "--repeats", "1", "--out", str(tmp_path), cwd=tmp_path)
    rows = json.loads((tmp_path / "lineage_lookup.json").read_text())["results"]
    assert len(rows) == 3 and all(row["median_s"] > 0 for row in rows.values())
