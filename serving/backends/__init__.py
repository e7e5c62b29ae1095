"""Runtimes by Triton backend name, imported on first use (a new one: a file plus a line)."""

from __future__ import annotations

from pathlib import Path

from tritonflow.lineage.errors import TritonflowError
from tritonflow.lineage.imports import load_object
from tritonflow.serving.backends.base import Backend
from tritonflow.serving.model_config import ONNX_PLATFORM, ModelConfig

# What `tritonflow serve --engine` chooses among (it applies to forest models): auto measures at load;
# fil is what Triton's FIL backend runs (nvForest when installed, else GTIL); the others are forced.
FOREST_ENGINES = ("auto", "fil", "nvforest", "treelite", "xgboost", "onnxruntime")

BACKENDS = {
    "fil": "tritonflow.serving.backends.forest.ForestBackend",
    "onnxruntime": "tritonflow.serving.backends.onnx.OnnxBackend",
}
PLATFORMS = {ONNX_PLATFORM: "onnxruntime"}


class BackendError(TritonflowError):
    """A model version cannot be loaded or run; the message names the file and the reason."""


class RefusedValues(BackendError):
    """The engine refused a request's values, not its shapes or types, which the node checks first."""


def backend_name(config: ModelConfig) -> str:
    name = config.backend or PLATFORMS.get(config.platform, config.platform)
    if name not in BACKENDS:
        raise BackendError(
            f"backend {name or '(none)'!r} is not served here: use one of {', '.join(BACKENDS)}"
        )
    return name


def load_backend(version_dir: Path, config: ModelConfig, engine: str = "auto") -> Backend:
    backend: Backend = load_object(BACKENDS[backend_name(config)])(version_dir, config, engine)
    return backend


__all__ = ["BACKENDS", "FOREST_ENGINES", "Backend", "BackendError", "backend_name", "load_backend"]
