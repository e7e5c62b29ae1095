"""The parity gate: the exported files, served by the node's own backends, must answer as the model does.

The export is loaded exactly as the serving node loads a version (config from `config_spec`,
`load_backend`), fed the same float32 rows as the native model, and compared element-wise:
- classifiers (probabilities in [0, 1]): |served - native| <= tolerance;
- regressors: |served - native| <= tolerance * max(1, largest |native| of that output over the rows).
  Relative to the output's range rather than to each value: served models sum leaves in float32,
  so a prediction near zero made of leaves in the thousands carries an absolute error of ~1e-4
  (seen on a faithful export), while a row sent down a wrong split is off by a share of the range.
"""

from __future__ import annotations

import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from tritonflow.lineage.errors import TritonflowError
from tritonflow.plugin.exporters import config_spec
from tritonflow.plugin.exporters.base import Export, library_errors
from tritonflow.serving.backends import Backend, load_backend
from tritonflow.serving.model_config import build_config

TOLERANCE = 1e-5
LATENCY_ROWS = (1, 1000)  # batch sizes whose engine latency the deployment card shows
LATENCY_REPEATS = 7
HINTS = {
    "treelite": 'Treelite may not capture everything this model does: try format="onnx"',
    "onnx": (
        "the ONNX graph computes in float32 (a scaler in front of trees can move rows across splits) and "
        'its converter may miss part of the model: for trees, try format="treelite" with the '
        "preprocessing done before the model, or fit the trees on float32-transformed features"
    ),
}


class ParityError(TritonflowError):
    """The exported model does not answer as the trained model does; nothing was published."""

    def __init__(self, fmt: str, detail: str) -> None:
        super().__init__(f"parity check failed: the {fmt} export {detail}. {HINTS[fmt]}")


def check_parity(export: Export, rows: np.ndarray, tolerance: float = TOLERANCE) -> dict[str, Any]:
    """Serve `rows` through the export and the native model; raise ParityError past `tolerance`.

    Returns the report kept in the deployment record: rows, max_abs_diff, tolerance, rule, engine,
    and the engine's latency on this machine (`measure_latency`), timed while the export is loaded.
    """
    rows = np.ascontiguousarray(rows, dtype=np.float32)
    config = build_config(config_spec(export, name="parity"))
    with library_errors(export.model_info["class"].rsplit(".", 1)[-1], "the parity check of"):
        with tempfile.TemporaryDirectory(prefix="tritonflow-parity-") as folder:
            for name, data in export.files.items():
                (Path(folder) / name).write_bytes(data)
            backend = load_backend(Path(folder), config, engine="auto")
            try:
                served = backend.predict({export.inputs[0].name: rows})[export.outputs[0].name]
                latency = measure_latency(backend, export.inputs[0].name, rows)
            finally:
                backend.unload()
        native = np.asarray(export.native_predict(rows), dtype=np.float64)
    served = np.asarray(served, dtype=np.float64)
    if served.shape != native.shape:
        raise ParityError(
            export.format, f"answers with shape {list(served.shape)}, the model with {list(native.shape)}"
        )
    diff = np.abs(served - native)
    diff[np.isnan(served) & np.isnan(native)] = 0.0  # a missing value answered alike on both sides
    diff = np.nan_to_num(diff, nan=np.inf)
    if export.n_classes:
        rule, scaled = "absolute", diff
    else:
        rule = "relative to max(1, largest |value| of the output)"
        scaled = diff / np.maximum(1.0, np.abs(np.nan_to_num(native)).max(axis=0))
    worst = np.unravel_index(int(np.argmax(scaled)), scaled.shape)
    if scaled[worst] > tolerance:
        raise ParityError(
            export.format,
            f"answers differently from the model: largest difference {diff[worst]:.3g} at row {worst[0]}, "
            f"output {worst[1]} (served {served[worst]:.9g}, model {native[worst]:.9g}; {rule} tolerance "
            f"{tolerance:g}, {len(rows)} rows compared)",
        )
    return {
        "rows": len(rows),
        "max_abs_diff": float(diff.max()),
        "tolerance": tolerance,
        "rule": rule,
        "engine": backend.engine,
        "latency": latency,
    }


def measure_latency(backend: Backend, input_name: str, rows: np.ndarray) -> dict[str, Any]:
    """Median time of `backend.predict` on LATENCY_ROWS rows (the sample repeated), after a warm-up
    call: what the engine alone costs on the machine that deployed (no HTTP, no batching)."""
    median_ms = {}
    for n in LATENCY_ROWS:
        batch = np.ascontiguousarray(np.resize(rows, (n, rows.shape[1])))
        backend.predict({input_name: batch})
        times = []
        for _ in range(LATENCY_REPEATS):
            start = time.perf_counter()
            backend.predict({input_name: batch})
            times.append(time.perf_counter() - start)
        median_ms[str(n)] = statistics.median(times) * 1e3
    return {
        "median_ms": median_ms,
        "repeats": LATENCY_REPEATS,
        "host": platform.node(),
        "cpus": os.cpu_count(),
    }
