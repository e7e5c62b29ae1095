"""Forest engines side by side, through the same `load_backend` the serving node uses.

    python benchmarks/engines.py            # every batch size, ~2-3 minutes on 2 CPU cores
    python benchmarks/engines.py --quick    # a few seconds: smaller batches, shorter timing

Models: a random forest (100 trees, depth 8), XGBoost (500 rounds, depth 8) and LightGBM (300 rounds,
depth 8), binary classifiers over 30 features answering probabilities, exported by @deploy's own
exporters (Treelite checkpoint with its batch engine file, and ONNX). Engines: every one importable
here: nvForest on CPU (and on the GPU when one is visible), Treelite GTIL, onnxruntime (CUDA too when
its provider is installed), XGBoost's own predictor on the batch engine file, and `auto`: what the
node chooses at load (the choice is printed and kept in the results). Prints a table; writes
benchmarks/results/engines.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import lightgbm as lgb
import numpy as np
import onnxruntime as ort
import treelite
import xgboost as xgb
from machine import RESULTS, machine
from sklearn.datasets import make_classification
from sklearn.ensemble import RandomForestClassifier

from tritonflow.plugin.batch_engine import with_batch_engine
from tritonflow.plugin.exporters import Export, config_spec, export_model
from tritonflow.serving.backends import load_backend
from tritonflow.serving.backends.base import Backend
from tritonflow.serving.backends.forest import cuda_device_count, nvforest_or_reason
from tritonflow.serving.model_config import ModelConfig, build_config
from tritonflow.serving.triton_releases import NEWEST_TRITON

N_FEATURES = 30
BATCHES = (1, 16, 256, 1024, 16384, 65536)
QUICK_BATCHES = (1, 16, 256, 1024)
OUT = RESULTS / "engines.json"


@dataclass(frozen=True)
class Row:
    model: str
    engine: str
    batch: int
    median_ms: float
    rows_per_s: float
    calls: int

    def __str__(self) -> str:
        return (
            f"{self.model:10s} {self.engine:17s} {self.batch:6d} rows "
            f"{self.median_ms:10.4f} ms {self.rows_per_s:14,.0f} rows/s"
        )


def train(rows: int) -> dict[str, Any]:
    """name -> fitted classifier, for the two benchmark models."""
    X, y = make_classification(rows, N_FEATURES, n_informative=12, random_state=0)
    X = X.astype(np.float32)
    rf = RandomForestClassifier(n_estimators=100, max_depth=8, n_jobs=-1, random_state=0)
    booster = xgb.XGBClassifier(n_estimators=500, max_depth=8, random_state=0)
    lightgbm = lgb.LGBMClassifier(n_estimators=300, max_depth=8, num_leaves=255, verbose=-1, random_state=0)
    return {"rf-100x8": rf.fit(X, y), "xgb-500x8": booster.fit(X, y), "lgbm-300x8": lightgbm.fit(X, y)}


def config(export: Export, kind: str) -> ModelConfig:
    return build_config(config_spec(export, "bench", max_batch_size=max(BATCHES), instance_kind=kind))


def engines(batch_engine: str | None) -> list[tuple[str, str, str, str]]:
    """(label, export format, engine argument, instance kind) for every engine available here; the
    model's batch engine file is read by XGBoost's predictor, or by ONNX Runtime (a row already)."""
    found = [("treelite-gtil", "treelite", "treelite", "cpu")]
    if isinstance(nvforest_or_reason(), ModuleType):
        found.insert(0, ("nvforest-cpu", "treelite", "nvforest", "cpu"))
        if cuda_device_count() > 0:
            found.insert(0, ("nvforest-gpu", "treelite", "nvforest", "gpu"))
    found.append(("onnxruntime-cpu", "onnx", "auto", "cpu"))
    if "CUDAExecutionProvider" in ort.get_available_providers():
        found.append(("onnxruntime-cuda", "onnx", "auto", "gpu"))
    if batch_engine == "xgboost":
        found.append(("xgboost-cpu", "treelite", "xgboost", "cpu"))
    found.append(("auto", "treelite", "auto", "cpu"))
    return found


def run(backend: Backend, name: str, X: np.ndarray, budget_s: float) -> tuple[float, int]:
    """Median seconds per call after a warm-up, timing until the budget is spent (3 calls at least)."""
    inputs = {name: X}
    backend.predict(inputs)
    times: list[float] = []
    deadline = time.perf_counter() + budget_s
    while len(times) < 3 or (time.perf_counter() < deadline and len(times) < 5000):
        start = time.perf_counter()
        backend.predict(inputs)
        times.append(time.perf_counter() - start)
    return statistics.median(times), len(times)


def bench_model(
    name: str, estimator: Any, folder: Path, pool: np.ndarray, batches: tuple[int, ...], budget_s: float
) -> tuple[list[Row], dict[str, float], str]:
    """Every engine on one model; each engine's largest difference from the first one; what auto chose."""
    exports = {fmt: export_model(estimator, fmt, N_FEATURES, NEWEST_TRITON) for fmt in ("treelite", "onnx")}
    exports["treelite"], note = with_batch_engine(exports["treelite"], pool[:1024])
    folder.mkdir(parents=True)
    for export in exports.values():
        for file, data in export.files.items():
            (folder / file).write_bytes(data)
    rows: list[Row] = []
    agreement: dict[str, float] = {}
    reference: np.ndarray | None = None
    chosen = ""
    for label, fmt, engine, kind in engines(note["engine"] if note and "left_out" not in note else None):
        export = exports[fmt]
        backend = load_backend(folder, config(export, kind), engine)
        if label == "auto":
            chosen = backend.engine
            print(f"{name}: auto chose {chosen}", flush=True)
        input_name, output_name = export.inputs[0].name, export.outputs[0].name
        probe = backend.predict({input_name: pool[:1024]})[output_name]
        reference = probe if reference is None else reference
        agreement[label] = float(np.abs(probe - reference).max())
        for batch in batches:
            seconds, calls = run(backend, input_name, pool[:batch], budget_s)
            rows.append(Row(name, label, batch, seconds * 1e3, batch / seconds, calls))
            print(rows[-1], flush=True)
        backend.unload()
    return rows, agreement, chosen


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="a few seconds: batches up to 1024, short timing"
    )
    parser.add_argument("--out", type=Path, default=OUT, help=f"JSON results (default {OUT})")
    args = parser.parse_args(argv)
    batches = QUICK_BATCHES if args.quick else BATCHES
    budget_s = 0.05 if args.quick else 1.0
    pool = np.random.default_rng(0).standard_normal((max(batches), N_FEATURES), dtype=np.float32) * 2

    rows: list[Row] = []
    agreement: dict[str, dict[str, float]] = {}
    chosen: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, estimator in train(2_000 if args.quick else 20_000).items():
            folder = Path(tmp) / name / "1"
            model_rows, agreement[name], chosen[name] = bench_model(
                name, estimator, folder, pool, batches, budget_s
            )
            rows += model_rows

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(_report(rows, agreement, chosen, args.quick), indent=2) + "\n")
    print(f"wrote {args.out}")


def _report(
    rows: list[Row], agreement: dict[str, dict[str, float]], chosen: dict[str, str], quick: bool
) -> dict[str, Any]:
    nvforest = nvforest_or_reason()
    gpu = ""
    if shutil.which("nvidia-smi"):
        query = ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"]
        gpu = subprocess.run(query, capture_output=True, text=True, check=False).stdout.strip()
    return {
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "quick": quick,
        "machine": {**machine(), "gpu": gpu},
        "versions": {
            "python": platform.python_version(),
            "treelite": treelite.__version__,
            "nvforest": nvforest if isinstance(nvforest, str) else nvforest.__version__,
            "onnxruntime": ort.__version__,
            "xgboost": xgb.__version__,
            "lightgbm": lgb.__version__,
        },
        "auto": chosen,  # model -> what `--engine auto` chose at load (FIL's engine, then the crossover)
        # max |probability - first engine's| over 1024 rows: the engines must agree before they race
        "max_abs_diff": agreement,
        "results": [asdict(row) for row in rows],
    }


if __name__ == "__main__":
    main()
