"""The cost @deploy adds to a step: export, config checks, parity gate and publish.

    python benchmarks/deploy_overhead.py [--quick]

Trains each model once (not timed), then times `tritonflow.plugin.publish.deploy` into a fresh
local repository: the first call in a fresh process (imports included, as in a real task) and
the median of warm repeats. Prints a table and writes benchmarks/results/deploy_overhead.json.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from machine import RESULTS, write_result

CHILD = r"""
import json, pickle, sys, tempfile, time
t0 = time.perf_counter()
from tritonflow.plugin.options import parse_options
from tritonflow.plugin.publish import Provenance, deploy
imports_s = time.perf_counter() - t0
model, X = pickle.load(open(sys.argv[1], "rb"))
times = []
for i in range(int(sys.argv[2])):
    repo = tempfile.mkdtemp()
    opts = parse_options({"name": "bench", "repository": repo}, "BenchFlow", is_join=False)
    start = time.perf_counter()
    deploy(model, opts, sample=X[:1024], provenance=Provenance(metaflow={"task": f"B/1/s/{i}"}))
    times.append(time.perf_counter() - start)
print(json.dumps({"imports_s": imports_s, "first_s": times[0], "warm_s": times[1:]}))
"""


def models(quick: bool) -> Iterator[tuple[str, tuple[Any, Any]]]:
    """(label, (fitted model, its training rows)): what the child process unpickles, one library at a time."""
    import numpy as np
    import xgboost
    from lightgbm import LGBMClassifier
    from sklearn.ensemble import RandomForestClassifier

    rng = np.random.default_rng(0)
    X = rng.normal(size=(4000, 30)).astype("float32")
    y = (X[:, :5].sum(axis=1) + rng.normal(size=4000) > 0).astype(int)
    trees = 50 if quick else 500
    for label, model in (
        (
            f"RandomForest {trees}x depth 8",
            RandomForestClassifier(n_estimators=trees, max_depth=8, n_jobs=-1, random_state=0),
        ),
        (f"XGBoost {trees} rounds depth 8", xgboost.XGBClassifier(n_estimators=trees, max_depth=8, n_jobs=2)),
        (f"LightGBM {trees} rounds", LGBMClassifier(n_estimators=trees, verbose=-1)),
    ):
        yield label, (model.fit(X, y), X)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small models, few repeats")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for the JSON result")
    args = parser.parse_args()
    repeats = 2 if args.quick else 6
    env = {**os.environ, "METAFLOW_USER": os.environ.get("METAFLOW_USER", "bench")}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, payload in models(args.quick):
            path = Path(tmp) / "model.pkl"
            path.write_bytes(pickle.dumps(payload))
            start = time.perf_counter()
            out = subprocess.run(
                [sys.executable, "-c", CHILD, str(path), str(repeats)],
                capture_output=True,
                text=True,
                env=env,
                check=True,
            )
            process_s = time.perf_counter() - start
            result = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append(
                {
                    "model": label,
                    "plugin_import_s": round(result["imports_s"], 3),
                    "first_call_s": round(result["first_s"], 3),
                    "warm_median_s": round(statistics.median(result["warm_s"]), 3),
                    "process_s": round(process_s, 3),
                }
            )
            print(
                f"{label:28s} import {rows[-1]['plugin_import_s']:5.2f} s  "
                f"first call {rows[-1]['first_call_s']:6.3f} s  "
                f"warm median {rows[-1]['warm_median_s']:6.3f} s  whole process {process_s:6.2f} s"
            )
    path = write_result("deploy_overhead", {"quick": args.quick, "results": rows}, args.out)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
