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
    engine = "nvforest" if importlib.util.find_spec("nvforest") else "treelite"
    workers = {"1": f"tritonflow {engine}", "2": f"tritonflow {engine} --workers 2"}
    if (os.cpu_count() or 1) > 2:
        workers["auto"] = f"tritonflow {engine} --workers auto"
    expected = {"tritonflow treelite", "tritonflow onnxruntime", "fastapi (starter pack)", *workers.values()}
    [result] = report["models"]
    timed = {row["contender"] for row in result["sequential"]}
    assert expected <= timed
    assert result["workers"] == workers and report["workers_auto"] == os.cpu_count()
    # NOTE: the workers nodes are timed (sequential, wrk) but not batch-scored; auto is, in v2 JSON too
    batch = timed - {workers["2"], workers.get("auto")} | {"tritonflow auto (JSON)"}
    assert {row["contender"] for row in result["batch"]} == batch
    assert any(label.endswith("batching off") for label in (s["contender"] for s in result["servers"]))
    assert all(row["p50_ms"] > 0 for row in result["sequential"])
    assert all(row["agreement"] > 0.99 for row in result["batch"])
    for label in expected:
        assert f"| {label} |" in markdown
    assert report["skipped"] == {"load tests (wrk)": "--no-load-generator", "Triton": "--no-triton"}
    assert report["machine"]["cores"] == os.cpu_count() and report["machine"]["cpu"]
    servers = {s["contender"]: s for s in result["servers"]}
    assert not servers["tritonflow treelite"]["nvforest_mapped"], "--engine treelite must not load nvForest"
    two = servers[workers["2"]]
    assert (two["workers"], two["engine"]) == ("2", servers[workers["1"]]["engine"])
    assert two["processes"] > servers[workers["1"]]["processes"], "a supervisor and two workers"
    assert two["nvforest_mapped"] == (engine == "nvforest"), "read from the workers, not the supervisor"
    assert f"| 2 | {workers['2']} |" in markdown, "the workers table"
    auto_note = f"`--workers auto` starts os.cpu_count() = {os.cpu_count()} worker(s)"
    assert (auto_note in markdown) == ("auto" not in workers)
    rows = {(row["target"], row["contender"]): row for row in report["targets"]}
    versus_one = rows["p50 at c1: --workers 2 / --workers 1", workers["2"]]
    assert versus_one["value"] > 0 and versus_one["met"] is not None
    assert rows["req/s at c64: --workers 2 / Triton", workers["2"]]["met"] is None, "no Triton, no wrk"
    largest = max(row["rows"] for row in result["batch"])
    json_batch = rows[f"rows/s at {largest:,} rows, JSON: node / FastAPI", "tritonflow auto (JSON)"]
    assert json_batch["value"] > 0 and json_batch["met"] is not None


def test_deploy_overhead_quick(tmp_path: Path) -> None:
    run(BENCHMARKS / "deploy_overhead.py", "--quick", "--out", str(tmp_path), cwd=tmp_path)
    rows = json.loads((tmp_path / "deploy_overhead.json").read_text())["results"]
    assert len(rows) == 3 and all(row["first_call_s"] > 0 for row in rows)


def test_engines_quick(tmp_path: Path) -> None:
    out = tmp_path / "engines.json"
    run(BENCHMARKS / "engines.py", "--quick", "--out", str(out), cwd=tmp_path)
    report = json.loads(out.read_text())
    assert {"treelite-gtil", "onnxruntime-cpu", "xgboost-cpu", "auto"} <= {
        row["engine"] for row in report["results"]
    }
    assert all(diff < 1e-4 for model in report["max_abs_diff"].values() for diff in model.values())
    # what auto chose per model: FIL's engine first, then maybe a batch engine from a crossover on
    assert set(report["auto"]) == {"rf-100x8", "xgb-500x8", "lgbm-300x8"}
    assert all(c.split("; ")[0] in ("nvforest-cpu", "treelite-gtil", "onnxruntime-cpu", "xgboost-cpu")
               for c in report["auto"].values())  # fmt: skip
    assert report["machine"]["cores"] == os.cpu_count() and "gpu" in report["machine"]


def test_lineage_lookup_once(tmp_path: Path) -> None:
    run(BENCHMARKS / "lineage_lookup.py", "--repeats", "1", "--out", str(tmp_path), cwd=tmp_path)
    rows = json.loads((tmp_path / "lineage_lookup.json").read_text())["results"]
    assert len(rows) == 3 and all(row["median_s"] > 0 for row in rows.values())


def test_fairness_quick_on_one_engine(tmp_path: Path) -> None:
    # NOTE: one engine and the binary background: the JSON body builder still runs (the 1-row requests)
    quick = ["--quick", "--engines", "treelite", "--backgrounds", "binary"]
    run(BENCHMARKS / "fairness.py", *quick, "--out", str(tmp_path), cwd=tmp_path)
    report = json.loads((tmp_path / "fairness.json").read_text())
    rows = {row["background"]: row for row in report["summary"]}
    assert set(rows) == {"none", "binary"}
    assert {row["node"] for row in rows.values()} == {"this checkout, treelite"}
    assert all(0 < row["p50_ms"] <= row["p90_ms"] <= row["p99_ms"] and row["n"] > 0 for row in rows.values())
    assert rows["binary"]["large_rows_per_s_alone"] > 0 and rows["binary"]["large_rows_per_s_shared"] > 0
    sweep = sorted(report["chunk_sweep"], key=lambda row: row["chunk_ms"])
    assert len(sweep) > 1 and {row["engine"] for row in sweep} == {"treelite-gtil"}
    assert sweep[0]["calls_per_request"] > 1, "the smallest chunk time must split an 8,192-row request"
    assert (sweep[-1]["calls_per_request"], sweep[-1]["chunk_rows"]) == (1, 8192), "no chunking at 1 s"
    assert "| this checkout, treelite | binary |" in (tmp_path / "fairness.md").read_text()


def test_upload_memory_small_uploads(tmp_path: Path) -> None:
    run(BENCHMARKS / "upload_memory.py", "--uploads", "2", "--mb", "1", "--out", str(tmp_path), cwd=tmp_path)
    report = json.loads((tmp_path / "upload_memory.json").read_text())
    assert report["upload_mb"] == pytest.approx(1, abs=0.1)
    assert set(report["results"]) == {"defaults", "no in-flight bound"}
    for row in report["results"].values():
        assert row["statuses"] == {"404": 2}, "each body read and decoded, then no such model"
        assert 0 < row["rss_before_mb"] <= row["rss_peak_mb"]
        assert 0 < row["rss_after_mb"] <= row["rss_peak_mb"]


def test_load_isolation_quick(tmp_path: Path) -> None:
    run(BENCHMARKS / "load_isolation.py", "--quick", "--out", str(tmp_path), cwd=tmp_path)
    report = json.loads((tmp_path / "load_isolation.json").read_text())
    assert len(report["per_version"]) > 1
    for row in report["per_version"]:
        assert row["engine"] and row["checkpoint_bytes"] > 0 and row["probe_peak_rss_mib"] > 0
        assert row["load_in_process_s"] > 0 and row["probe_then_load_s"] > 0 and row["probe_wall_s"] > 0
    assert {row["method"] for row in report["start_methods"]} == {"forkserver", "spawn"}
    assert all(row["probes"] > 0 and row["median_wall_s"] > 0 for row in report["start_methods"])
    assert report["fork_server_memory"].get("rss_mib", 0) > 0, "the fork server was not found"
    modes = {"loads only", "probes one by one", "probes at once"}
    assert report["startup"] and all(row[mode] > 0 for row in report["startup"] for mode in modes)
    assert "## Start-up" in (tmp_path / "load_isolation.md").read_text()


def test_json_decode_once(tmp_path: Path) -> None:
    run(BENCHMARKS / "json_decode.py", "--repeats", "1", "--out", str(tmp_path), cwd=tmp_path)
    rows = json.loads((tmp_path / "json_decode.json").read_text())["results"]
    cases = {(row["rows"], row["data"], row["values"]) for row in rows}
    assert {(1, "flat", "dense"), (1024, "nested", "one-hot")} <= cases and len(cases) == len(rows)
    strict, lenient = "decode, strict (after)", "decode, lenient (before)"
    for row in rows:
        assert row["parse only (orjson.loads)"] > 0 and row[strict] > 0 and row[lenient] > 0
        assert row["added_us"] == pytest.approx(row[strict] - row[lenient], abs=0.02)


def test_store_keys_gc_quick(tmp_path: Path) -> None:
    run(BENCHMARKS / "store_keys_gc.py", "--quick", "--out", str(tmp_path), cwd=tmp_path)
    report = json.loads((tmp_path / "store_keys_gc.json").read_text())
    assert len(report["per_call_us"]) == 4 and all(us > 0 for us in report["per_call_us"].values())
    figures = report["gc"]
    assert figures["removals"] == 4 * figures["models"], "one killed deploy's four leftovers per model"
    assert figures["published_versions"] > figures["models"] > 0 and figures["files_after"] > 0
    assert figures["plan_s"] >= 0 and figures["apply_s"] >= 0


def test_wire_quick_without_triton(tmp_path: Path) -> None:
    run(BENCHMARKS / "wire.py", "--quick", "--no-triton", "--out", str(tmp_path), cwd=tmp_path)
    report = json.loads((tmp_path / "wire.json").read_text())
    result = report["result"]
    assert set(result["single_row"]) == set(result["in_flight"]) == {"tritonflow http", "tritonflow grpc"}
    for row in result["single_row"].values():
        assert row["live_p50_ms"] > 0 and 0 < row["p50_ms"] <= row["p99_ms"]
    assert all(row["requests_per_s"] > 0 for row in result["in_flight"].values())
    big = {(row["endpoint"], row["shared_memory"]) for row in result["big"]}
    assert big == {(e, shm) for e in ("tritonflow http", "tritonflow grpc") for shm in (False, True)}
    assert all(row["agreement"] == 1.0 for row in result["big"]), "every transport answers the model"
    assert [t["target"] for t in result["targets"]][0].startswith("node gRPC 1-row p50 / node HTTP")
    assert report["skipped"] == {"Triton": "--no-triton"}
    assert "| tritonflow grpc |" in (tmp_path / "wire.md").read_text()


def test_capture_quick(tmp_path: Path) -> None:
    run(BENCHMARKS / "capture.py", "--quick", "--out", str(tmp_path), cwd=tmp_path)
    report = json.loads((tmp_path / "capture.json").read_text())
    assert [row["node"] for row in report["medians"]] == ["capture off", "capture on"]
    assert all(row["requests_per_s"] > 0 and 0 < row["p50_ms"] <= row["p99_ms"] for row in report["medians"])
    assert report["capture_counts"]["rows"] > 0 and report["capture_counts"]["files"] > 0
    assert all(ratio > 0 for ratio in report["round_ratios"].values())
    assert "| capture on |" in (tmp_path / "capture.md").read_text()


def test_tabular_quick(tmp_path: Path) -> None:
    run(BENCHMARKS / "tabular.py", "--quick", "--out", str(tmp_path), cwd=tmp_path)
    report = json.loads((tmp_path / "tabular.json").read_text())
    contenders = {"node ensemble", "onnxruntime (whole)", "sklearn"}
    for rows in (1, 1_000):
        timed = {r["contender"]: r for r in report["results"] if r["rows"] == rows}
        assert set(timed) == contenders
        assert all(0 < r["p50_ms"] <= r["p99_ms"] and r["rows_per_s"] > 0 for r in timed.values())
        assert report["node_server_side"][str(rows)]["ensemble_ms"] > 0
    assert report["parity_ok"] and report["parity_max_abs_diff"]["node ensemble"] <= 1e-6
    assert "| node ensemble |" in (tmp_path / "tabular.md").read_text()
