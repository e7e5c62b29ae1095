"""What an exporter produces, and the shape every exporter has."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tritonflow.lineage.errors import TritonflowError
from tritonflow.serving.model_config import TensorSpec

# Every export serves one input and one output under the names of Triton's FIL backend.
INPUT, OUTPUT = "input__0", "output__0"


class ExportError(TritonflowError):
    """The model cannot be exported as asked; the message names the type and what is supported."""


@contextmanager
def library_errors(model_class: str, doing: str) -> Iterator[None]:
    """Any exception from inside a library becomes one ExportError naming the model and the step.

    Without this, a library's own error (AttributeError, XGBoostError, ...) reaches Metaflow as an
    "Internal error" with a traceback. Our own errors pass unchanged: they already say what to do.
    """
    try:
        yield
    except TritonflowError:
        raise
    except Exception as exc:
        raise ExportError(
            f"{doing} the {model_class} failed inside a library ({type(exc).__name__}: {brief(exc)}): "
            "check that the model predicts on float32 rows shaped like its training data "
            "(model.predict(X[:5].astype('float32'))); if it does, try the other format "
            "(format='onnx' or 'treelite') and report this with the model's class"
        ) from None


@dataclass(frozen=True)
class Export:
    """A model turned into Triton files, with what the config and the parity gate need."""

    format: str  # "treelite" | "onnx"
    backend: str  # Triton backend: "fil" | "onnxruntime"
    files: dict[str, bytes]  # file name inside the version folder -> bytes
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    parameters: dict[str, str]  # config.pbtxt parameters (FIL: model_type, is_classifier, ...)
    n_classes: int | None  # None for regressors
    model_info: dict[str, Any]  # {"class", "library", "library_version", "hyperparameters"}
    versions: dict[str, str]  # library -> version that wrote the files (treelite, onnx, ...)
    # The native model's answer in the served output's terms: (rows, outputs[0].dims[0]).
    native_predict: Callable[[np.ndarray], np.ndarray] = field(repr=False)
    # A forest's second file for a faster CPU engine on batches: () -> (engine, bytes); batch_engine.py
    batch_engine_file: Callable[[], tuple[str, bytes]] | None = field(default=None, repr=False)

    @property
    def n_features(self) -> int:
        """Values per served input row (derived: the input tensor's one dim)."""
        return self.inputs[0].dims[0]


class Exporter(ABC):
    format: str

    @abstractmethod
    def can_export(self, model: Any) -> bool:
        """True when this exporter can write the model (a NativeModel adapter)."""

    @abstractmethod
    def export(self, model: Any, n_features: int, triton_version: str) -> Export:
        """Write the model's files; raise ExportError with an actionable message."""


def onnx_bytes(graph: Any, name: str) -> bytes:
    """An ONNX model serialized under a fixed graph name: the converters name a graph after a fresh
    uuid, so the same model would hash differently at each export, and a retried task (matched by
    its files' sha256) would publish it again."""
    graph.graph.name = name
    return bytes(graph.SerializeToString())


def brief(exc: BaseException) -> str:
    """An exception's first line, short: libraries append C++ stack traces and long reprs."""
    lines = str(exc).strip().splitlines()
    return lines[0][:300] if lines else type(exc).__name__
