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
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tritonflow.lineage.errors import TritonflowError
from tritonflow.lineage.repository import ModelRepository
from tritonflow.plugin.exporters import config_spec
from tritonflow.plugin.exporters.base import Export, library_errors
from tritonflow.plugin.exporters.tabular import EnsembleExport
from tritonflow.serving import datatypes
from tritonflow.serving.backends import Backend, load_backend
from tritonflow.serving.backends.missing_values import missing_value_rows
from tritonflow.serving.ensemble_config import plan
from tritonflow.serving.frames import column_tensor
from tritonflow.serving.loading import published_backend
from tritonflow.serving.model_config import ModelConfig, build_config, check_config, pb

if TYPE_CHECKING:
    import pandas as pd

TOLERANCE = 1e-5
LATENCY_ROWS = (1, 1000)  # batch sizes whose engine latency the deployment card shows
LATENCY_REPEATS = 7
HINTS = {
    "ensemble": (
        "the preprocessing's ONNX graph (skl2onnx) may not compute what the scikit-learn steps do: "
        'check the steps named in the error, or pass format="onnx" to export the whole pipeline'
    ),
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


def check_parity(
    export: Export, rows: np.ndarray, tolerance: float = TOLERANCE, engine: str | None = None
) -> dict[str, Any]:
    """Serve `rows` through the export and the native model; raise ParityError past `tolerance`.
    Then the same rows with a missing value each (`missing_value_rows`), when the model takes them.

    `engine` runs it (serving/backends); by default what Triton runs: for a forest, FIL's engine.
    Returns the report kept in the deployment record: rows, missing_value_rows, max_abs_diff,
    tolerance, rule, engine, and the engine's latency on this machine (`measure_latency`), timed
    while the export is loaded.
    """
    rows = np.ascontiguousarray(rows, dtype=np.float32)
    missing = (missing_value_rows(rows), f"row i missing feature i % {rows.shape[1]}")
    model = export.model_info["class"].rsplit(".", 1)[-1]
    with library_errors(model, "the parity check of"), _loaded(export, engine) as backend:
        report = _gate(
            (export.format, export.n_classes, tolerance),
            lambda batch: backend.predict({export.inputs[0].name: batch})[export.outputs[0].name],
            export.native_predict,
            rows,
            missing,
            lambda n: np.ascontiguousarray(np.resize(rows, (n, rows.shape[1]))),
        )
        return {**report, "engine": backend.engine}


def check_ensemble_parity(
    export: EnsembleExport, frame: pd.DataFrame, tolerance: float = TOLERANCE
) -> dict[str, Any]:
    """The ensemble's steps served in the order its config runs them (each step's tensors mapped as
    the config maps them), on the frame's columns as a client sends them, against the native
    pipeline on the frame itself, then on it with values missing in its float columns
    (`missing_value_frame`); ParityError past `tolerance`. The report as `check_parity`'s."""
    with library_errors("Pipeline", "the parity check of"), _loaded_ensemble(export) as run:
        report = _gate(
            ("ensemble", export.n_classes, tolerance),
            run,
            export.native_predict,
            frame,
            missing_value_frame(frame),
            lambda n: frame.iloc[np.arange(n) % len(frame)],
        )
        return {**report, "engine": run.engines}


def missing_value_frame(frame: pd.DataFrame) -> tuple[pd.DataFrame, str] | None:
    """`missing_value_rows` of a frame's float columns (the others kept: a string or integer column
    has no NaN a client could send), and which rows miss what; None when it has no float column."""
    floats = [name for name in frame.columns if frame[name].dtype.kind == "f"]
    if not floats:
        return None
    values = missing_value_rows(frame[floats].to_numpy(dtype=np.float64))
    missing = frame.iloc[np.arange(len(values)) % len(frame)].reset_index(drop=True)
    for j, name in enumerate(floats):
        missing[name] = values[:, j].astype(frame[name].dtype)
    named = f" of {floats}" if len(floats) <= 8 else " (the frame's float columns in order)"
    return missing, f"row i missing float column i % {len(floats)}{named}"


def _gate(
    judge: tuple[str, int | None, float],
    run: Callable[[Any], Any],
    native_predict: Callable[[Any], Any],
    sample: Any,
    missing: tuple[Any, str] | None,
    batch: Callable[[int], Any],
) -> dict[str, Any]:
    """`run` against `native_predict` on the sample, then on its rows with missing values when the
    model takes them (`judge`: format, classes, tolerance); with `run`'s latency (`batch(n)` rows)."""
    fmt, n_classes, tolerance = judge
    report = compare(fmt, n_classes, np.asarray(run(sample)), native_predict(sample), tolerance)
    report["latency"] = measure_latency(run, batch)
    report["missing_value_rows"] = 0
    if missing is None:
        return report
    rows, which = missing
    try:
        native = native_predict(rows)
    except Exception:  # noqa: BLE001 ("Input X contains NaN", a user's step failing on NaN: none is sent)
        return report
    where = f"on the sample's rows with a missing value (NaN), {which}"
    on_missing = compare(fmt, n_classes, np.asarray(run(rows)), native, tolerance, where)
    report["max_abs_diff"] = max(report["max_abs_diff"], on_missing["max_abs_diff"])
    report["missing_value_rows"] = len(rows)
    return report


def ensemble_predictor(export: EnsembleExport) -> Callable[[pd.DataFrame], np.ndarray]:
    """What the exported ensemble answers on a frame, its steps loaded for the call."""

    def predict(frame: pd.DataFrame) -> np.ndarray:
        with _loaded_ensemble(export) as run:
            return run(frame)

    return predict


def published_predictor(
    repository: ModelRepository, name: str, version: int
) -> Callable[[pd.DataFrame], np.ndarray]:
    """What a published ensemble version answers on a frame: its pinned step versions loaded as
    the node loads them (VersionRefused when one does not load)."""

    def predict(frame: pd.DataFrame) -> np.ndarray:
        record = repository.read_record(name, version)
        config = check_config(repository.read_config(name), f"{name}/config.pbtxt", name)
        with ExitStack() as stack:
            backends = {
                model: stack.enter_context(published_backend(repository, model, pinned))[1]
                for model, pinned in record.pins.items()
            }
            return _Steps(config, backends)(frame)

    return predict


@contextmanager
def _loaded_ensemble(export: EnsembleExport) -> Iterator[_Steps]:
    config = build_config(config_spec(export, name="parity", steps=export.schedule("parity")))
    exports = dict(export.steps)
    with ExitStack() as stack:
        backends = {
            model: stack.enter_context(_loaded(exports[step]))
            for step, model in export.step_models("parity").items()
        }
        yield _Steps(config, backends)


class _Steps:
    """An ensemble config's steps over loaded backends (step model -> backend), in the order the
    config runs them: a frame's columns in, the ensemble's first output out."""

    def __init__(self, config: ModelConfig, backends: dict[str, Backend]) -> None:
        self.order, self.backends = plan(config), backends
        self.columns = [(t.name, datatypes.from_config(pb.DataType.Name(t.data_type))) for t in config.input]
        self.output = config.output[0].name
        self.engines = "+".join(backends[step.model].engine for step in self.order)

    def __call__(self, frame: pd.DataFrame) -> np.ndarray:
        tensors = {name: column_tensor(frame, name, datatype) for name, datatype in self.columns}
        for step in self.order:
            outputs = self.backends[step.model].predict({name: tensors[t] for name, t in step.inputs.items()})
            tensors.update({tensor: outputs[name] for name, tensor in step.outputs.items()})
        return np.asarray(tensors[self.output])


@contextmanager
def _loaded(export: Export, engine: str | None = None) -> Iterator[Backend]:
    """The export loaded as the node loads a version: its files in a folder, its config, `load_backend`
    (a forest on FIL's engine unless `engine` says otherwise)."""
    config = build_config(config_spec(export, name="parity"))
    with tempfile.TemporaryDirectory(prefix="tritonflow-parity-") as folder:
        for name, data in export.files.items():
            (Path(folder) / name).write_bytes(data)
        engine = engine or ("fil" if export.backend == "fil" else "auto")
        backend = load_backend(Path(folder), config, engine)
        try:
            yield backend
        finally:
            backend.unload()


def compare(
    fmt: str, n_classes: int | None, served: np.ndarray, native: np.ndarray, tolerance: float, where: str = ""
) -> dict[str, Any]:
    """The comparison's report (rows, max_abs_diff, tolerance, rule); ParityError past `tolerance`,
    saying `where` the rows came from when they are not the sample's."""
    served, native = np.asarray(served, dtype=np.float64), np.asarray(native, dtype=np.float64)
    if served.shape != native.shape:
        raise ParityError(
            fmt, f"answers with shape {list(served.shape)}, the model with {list(native.shape)}"
        )
    diff = np.abs(served - native)
    diff[np.isnan(served) & np.isnan(native)] = 0.0  # a missing value answered alike on both sides
    diff = np.nan_to_num(diff, nan=np.inf)
    if n_classes:
        rule, scaled = "absolute", diff
    else:
        rule = "relative to max(1, largest |value| of the output)"
        scaled = diff / np.maximum(1.0, np.abs(np.nan_to_num(native)).max(axis=0))
    worst = np.unravel_index(int(np.argmax(scaled)), scaled.shape)
    if scaled[worst] > tolerance:
        where = f" {where}" if where else ""
        raise ParityError(
            fmt,
            f"answers differently from the model{where}: largest difference {diff[worst]:.3g} at row "
            f"{worst[0]}, output {worst[1]} (served {served[worst]:.9g}, model {native[worst]:.9g}; "
            f"{rule} tolerance {tolerance:g}, {len(served)} rows compared)",
        )
    return {"rows": len(served), "max_abs_diff": float(diff.max()), "tolerance": tolerance, "rule": rule}


def measure_latency(run: Callable[[Any], Any], batch: Callable[[int], Any]) -> dict[str, Any]:
    """Median time of `run` on LATENCY_ROWS rows (`batch(n)`: the sample repeated), after a warm-up
    call: what the engine alone costs on the machine that deployed (no HTTP, no batching)."""
    median_ms = {}
    for n in LATENCY_ROWS:
        rows = batch(n)
        run(rows)
        times = []
        for _ in range(LATENCY_REPEATS):
            start = time.perf_counter()
            run(rows)
            times.append(time.perf_counter() - start)
        median_ms[str(n)] = statistics.median(times) * 1e3
    return {
        "median_ms": median_ms,
        "repeats": LATENCY_REPEATS,
        "host": platform.node(),
        "cpus": os.cpu_count(),
    }
