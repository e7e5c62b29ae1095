"""A trained model as every exporter sees it, whatever its library.

One adapter per library family (native_sklearn.py, native_xgboost.py, native_lightgbm.py, beside
this base) knows how that library predicts, describes itself and converts to Treelite or ONNX; the
exporters only know file formats and configs. `predict` answers in the served output's terms
(classifiers: class probabilities (rows, n_classes); regressors: values (rows, n_targets)), so the
parity gate compares like with like. Libraries are imported inside methods: a family costs nothing
until a model of it is exported.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import numpy as np

from tritonflow.plugin.exporters.base import ExportError, brief, onnx_bytes

ONNX_OPSET = 15  # the newest onnxmltools writes; onnxruntime >= 1.10 (every supported Triton) reads it


class NativeModel(ABC):
    """One trained model: its served-output predictions, its description, its conversions."""

    library: str  # the distribution name shown in records: "scikit-learn", "xgboost", "lightgbm"
    onnx_converter: str  # the distribution that writes its ONNX graph

    def __init__(self, model: Any) -> None:
        self.model = model
        self.is_classifier, self.n_classes = self._task()

    @abstractmethod
    def _task(self) -> tuple[bool, int | None]:
        """(is_classifier, n_classes or None); raise ExportError for anything else."""

    @property
    @abstractmethod
    def is_tree_ensemble(self) -> bool:
        """True when Treelite reads it and FIL serves it: a single-output tree ensemble."""

    @abstractmethod
    def predict(self, rows: np.ndarray) -> np.ndarray:
        """Float32 rows -> the served output, float32 (rows, width)."""

    @abstractmethod
    def hyperparameters(self) -> dict[str, Any]:
        """A small, JSON-safe description of how the model was trained."""

    @abstractmethod
    def to_treelite(self) -> Any:
        """The model as a treelite.Model (only called when `is_tree_ensemble`)."""

    @abstractmethod
    def to_onnx(self, n_features: int) -> Any:
        """The converter's ONNX ModelProto, input INPUT FP32 [N, n_features], no ZipMap."""

    def batch_engine_file(self, n_features: int) -> tuple[str, bytes]:
        """(engine, file) of the CPU engine that beats FIL's on batches (serving/backends/
        forest_engines.py): ONNX Runtime, unless the library's own predictor is faster still."""
        return "onnxruntime", onnx_bytes(self.to_onnx(n_features), type(self.model).__name__)

    def info(self) -> dict[str, Any]:
        from importlib.metadata import version

        cls = type(self.model)
        info = {
            "class": f"{cls.__module__}.{cls.__qualname__}",
            "library": self.library,
            "library_version": version(self.library),
            "hyperparameters": self.hyperparameters(),
        }
        if self.is_classifier and hasattr(self.model, "classes_"):
            info["classes"] = json_safe(list(self.model.classes_))  # the meaning of each output column
        return info

    def width(self, n_features: int) -> int:
        """Values per served row; asks the model itself, which also proves it reads n_features."""
        try:
            return int(self.predict(np.zeros((1, n_features), np.float32)).shape[1])
        except Exception as exc:  # each library raises its own type for a wrong width
            raise ExportError(
                f"{type(self.model).__name__} does not predict on {n_features} features: {brief(exc)}"
            ) from None


# -- shared ------------------------------------------------------------------------------------
def sklearn_api_predict(model: Any, rows: np.ndarray, is_classifier: bool) -> np.ndarray:
    """predict_proba or predict of an sklearn-style model, as the served (rows, width) float32."""
    names = getattr(model, "feature_names_in_", None)
    if names is not None:  # fitted on a DataFrame: name the columns, as the model expects
        import pandas as pd

        rows = pd.DataFrame(rows, columns=names)
    out = model.predict_proba(rows) if is_classifier else model.predict(rows)
    return np.asarray(out, dtype=np.float32).reshape(len(rows), -1)


def json_safe(value: Any) -> Any:
    """Parameters as strict JSON: scalars as they are, estimators by class name, others as a short repr."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return repr(value)  # XGBoost's missing=nan: JSON has no NaN
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if hasattr(value, "get_params"):
        return type(value).__name__
    return repr(value)[:200]
