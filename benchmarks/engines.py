"""Forest engines side by side, through the same `load_backend` the serving node uses.

    python benchmarks/engines.py            # every batch size, ~1-2 minutes on 2 CPU cores
    python benchmarks/engines.py --quick    # a few seconds: smaller batches, shorter timing

Models: a random forest (100 trees, depth 8) and XGBoost (500 rounds, depth 8), both binary
classifiers over 30 features, answering probabilities. Engines: every one importable here:
nvForest on CPU (and on the GPU when one is visible), Treelite GTIL, onnxruntime (CUDA too when
its provider is installed). Prints a table; writes benchmarks/results/engines.json.
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

import numpy as np
import onnxruntime as ort
import treelite
import xgboost as xgb
from machine import RESULTS, machine
from sklearn.datasets import make_classification
from sklearn.ensemble import RandomForestClassifier

from tritonflow.serving.backends import load_backend
from tritonflow.serving.backends.base import Backend
from tritonflow.serving.backends.forest import cuda_device_count, nvforest_or_reason
from tritonflow.serving.model_config import ConfigSpec, ModelConfig, TensorSpec, build_config

N_FEATURES = 30
BATCHES = (1, 16, 256, 1024, 16384, 65536)
QUICK_BATCHES = (1, 16, 256, 1024)
OUT = RESULTS / "engines.json"
# backend -> (input, output) names: FIL's fixed ones, and those skl2onnx/onnxmltools write
TENSORS = {"fil": ("input__0", "output__0"), "onnxruntime": ("input", "probabilities")}


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


def train(rows: int) -> dict[str, tuple[treelite.Model, bytes]]:
    """name -> (Treelite model, ONNX bytes) for the two benchmark models."""
    import onnxmltools
    from onnxmltools.convert.common.data_types import FloatTensorType as MlFloat
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    X, y = make_classification(rows, N_FEATURES, n_informative=12, random_state=0)
    X = X.astype(np.float32)
    rf = RandomForestClassifier(n_estimators=100, max_depth=8, n_jobs=-1, random_state=0).fit(X, y)
    booster = xgb.XGBClassifier(n_estimators=500, max_depth=8, random_state=0).fit(X, y)
    return {
        "rf-100x8": (
            treelite.sklearn.import_model(rf),
            convert_sklearn(
                rf,
                initial_types=[("input", FloatTensorType([None, N_FEATURES]))],
                options={"zipmap": False},
            ).SerializeToString(),
        ),
        "xgb-500x8": (
            treelite.frontend.from_xgboost(booster.get_booster()),
            onnxmltools.convert_xgboost(
                booster, initial_types=[("input", MlFloat([None, N_FEATURES]))]
            ).SerializeToString(),
        ),
    }


def config(backend: str, kind: str) -> ModelConfig:
    input_name, output_name = TENSORS[backend]
    params = {"model_type": "treelite_checkpoint", "is_classifier": "true", "predict_proba": "true"}
    spec = ConfigSpec(
        "bench",
        backend,
        inputs=(TensorSpec(input_name, "FP32", (N_FEATURES,)),),
        outputs=(TensorSpec(output_name, "FP32", (2,)),),
        max_batch_size=max(BATCHES),
        instance_kind=kind,
        parameters=params if backend == "fil" else {},
    )
    return build_config(spec)


def engines() -> list[tuple[str, str, str, str]]:
    """(label, backend, engine argument, instance kind) for every engine available here."""
    found = [("treelite-gtil", "fil", "treelite", "cpu")]
    if isinstance(nvforest_or_reason(), ModuleType):
        found.insert(0, ("nvforest-cpu", "fil", "nvforest", "cpu"))
        if cuda_device_count() > 0:
            found.insert(0, ("nvforest-gpu", "fil", "nvforest", "gpu"))
    found.append(("onnxruntime-cpu", "onnxruntime", "auto", "cpu"))
    if "CUDAExecutionProvider" in ort.get_available_providers():
        found.append(("onnxruntime-cuda", "onnxruntime", "auto", "gpu"))
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
    name: str, folder: Path, pool: np.ndarray, batches: tuple[int, ...], budget_s: float
) -> tuple[list[Row], dict[str, float]]:
    """Every engine on one model folder; and each engine's largest difference from the first one."""
    rows: list[Row] = []
    agreement: dict[str, float] = {}
    reference: np.ndarray | None = None
    for label, backend_name, engine, kind in engines():
        backend = load_backend(folder, config(backend_name, kind), engine)
        input_name, output_name = TENSORS[backend_name]
        probe = backend.predict({input_name: pool[:1024]})[output_name]
        reference = probe if reference is None else reference
        agreement[label] = float(np.abs(probe - reference).max())
        for batch in batches:
            seconds, calls = run(backend, input_name, pool[:batch], budget_s)
            rows.append(Row(name, label, batch, seconds * 1e3, batch / seconds, calls))
            print(rows[-1], flush=True)
        backend.unload()
    return rows, agreement


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
    with tempfile.TemporaryDirectory() as tmp:
        for name, (tl_model, onnx_bytes) in train(2_000 if args.quick else 20_000).items():
            folder = Path(tmp) / name / "1"
            folder.mkdir(parents=True)
            tl_model.serialize(str(folder / "checkpoint.tl"))
            (folder / "model.onnx").write_bytes(onnx_bytes)
            model_rows, agreement[name] = bench_model(name, folder, pool, batches, budget_s)
            rows += model_rows

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(_report(rows, agreement, args.quick), indent=2) + "\n")
    print(f"wrote {args.out}")


def _report(rows: list[Row], agreement: dict[str, dict[str, float]], quick: bool) -> dict[str, Any]:
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
        },
        # max |probability - first engine's| over 1024 rows: the engines must agree before they race
        "max_abs_diff": agreement,
        "results": [asdict(row) for row in rows],
    }


if __name__ == "__main__":
    main()
