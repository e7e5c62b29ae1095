"""The `tritonflow` command as users run it: a subprocess, real repositories."""

import json
import subprocess
import sys

import numpy as np
from sklearn.ensemble import RandomForestRegressor

from tritonflow import __version__
from tritonflow.plugin.options import parse_options
from tritonflow.plugin.publish import Provenance, deploy


def tritonflow(*args):
    command = [sys.executable, "-m", "tritonflow", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True)


def test_version_and_help():
    assert tritonflow("--version").stdout.strip() == f"tritonflow {__version__}"
    out = tritonflow("--help").stdout
    for command in ("serve", "models", "check-config"):
        assert command in out


def test_models_lists_versions_with_their_runs(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 4)).astype("float32")
    model = RandomForestRegressor(n_estimators=5, max_depth=3, random_state=0).fit(X, X[:, 0])
    opts = parse_options({"name": "price", "repository": str(tmp_path)}, "PriceFlow", is_join=False)
    for task in ("PriceFlow/11/train/2", "PriceFlow/12/train/2"):
        run_id = task.split("/")[1]
        provenance = Provenance(metaflow={"flow": "PriceFlow", "run_id": run_id, "task": task})
        deploy(model, opts, sample=X, provenance=provenance)
    (tmp_path / "price" / "3").mkdir()  # an unfinished publish: listed, never served

    table = tritonflow("models", tmp_path)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split()[:3] == ["MODEL", "VERSION", "STATE"]
    assert "price:2@PriceFlow/12" in lines[2] and "PriceFlow/12/train/2" in lines[2]
    assert "unfinished" in lines[3]

    rows = json.loads(tritonflow("models", tmp_path, "--json").stdout)
    assert [r["deployment_id"] for r in rows[:2]] == ["price:1@PriceFlow/11", "price:2@PriceFlow/12"]


def test_errors_are_one_line_with_exit_2(tmp_path):
    missing = tritonflow("models", tmp_path / "typo")
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    result = tritonflow("models", "s3://x")
    assert result.returncode == 2 and result.stderr.startswith("tritonflow models: error:")
    assert "Traceback" not in result.stderr
