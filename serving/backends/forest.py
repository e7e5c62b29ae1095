"""Triton's FIL backend on this node: forests run by nvForest (CPU or GPU) or by Treelite's GTIL.

nvForest is the engine inside Triton's FIL backend since 26.06; it ships as the `gpu` extra
(CUDA wheels, ~3.4 GB) yet also runs on CPU. Without it, Treelite's GTIL (always installed)
gives the same answers, only slower. Both go through one post-processing step that copies
Triton's, so a repository answers the same here and in Triton. On CPU, large batches may go to a
faster engine reading a second file of the version (forest_engines.py), through the same step.
"""

from __future__ import annotations

import ctypes
import functools
import importlib
import logging
import os
import re
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import treelite
import treelite.gtil

from tritonflow.serving.backends import FOREST_ENGINES, BackendError
from tritonflow.serving.backends.base import Backend
from tritonflow.serving.backends.forest_engines import (
    ENGINE_FILES,
    Engine,
    Raw,
    batch_engines,
    fastest,
    open_engine,
    with_batch_rows,
)
from tritonflow.serving.model_config import FilOptions, ModelConfig, fil_options, instance_kind, parameter

log = logging.getLogger(__name__)

LAYOUTS = ("depth_first", "breadth_first", "layered")
INSTALL_HINT = "pip install 'tritonflow[gpu]'"
# Both engines run a batch on OpenMP threads; a batch then waits on its slowest thread, and one busy
# core (the HTTP loop, another process) turns a 7 us row into 16-28 ms and a 0.2 ms 64-row batch into
# 8-27 ms. Only batches with enough work (rows x trees, about a millisecond a thread) get more threads.
TREE_ROWS_PER_THREAD = 100_000
CORES = os.cpu_count() or 1
# Triton's FIL backend imports into nvForest with 128-byte tree alignment and single precision
# (float32 in, float32 out): no per-call conversion of a float32 batch.
ALIGN_BYTES = 128


class ForestBackend(Backend):
    """One forest model version under a FIL config: `input[0]` (rows, n_features) -> `output[0]`."""

    def __init__(self, version_dir: Path, config: ModelConfig, engine: str = "auto") -> None:
        if engine not in FOREST_ENGINES:
            raise BackendError(
                f"engine {engine!r} is not a forest engine: use one of {', '.join(FOREST_ENGINES)}"
            )
        if len(config.input) != 1 or len(config.output) != 1:
            raise BackendError(
                f"model {config.name!r}: the FIL backend takes exactly one input and one output"
            )
        try:
            options = fil_options(config)
        except (KeyError, ValueError) as exc:  # an unchecked config: no or unknown model_type, bad threshold
            raise BackendError(
                f"model {config.name!r}: FIL parameters incomplete or invalid ({exc!r}); "
                "run `tritonflow check-config` on its config.pbtxt"
            ) from None
        self.path = Path(version_dir) / options.model_file
        self.input_name = config.input[0].name
        self.output_name = config.output[0].name
        model = _load_treelite(
            self.path, options.model_type, parameter(config, "xgboost_allow_unknown_field")
        )
        self.n_features = model.num_feature
        width = _check_shapes(self.path, config, options, model)
        started = _start_engine(self.path, model, config, engine, width)
        self.engine, self._raw, self.batch_rows = started.name, started.run, started.batch_rows
        self._finish = _postprocess(options, width)

    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            x = inputs[self.input_name]
        except KeyError:
            raise BackendError(f"missing input {self.input_name!r}") from None
        if x.dtype != np.float32 or not x.flags.c_contiguous:
            x = np.ascontiguousarray(x, dtype=np.float32)
        # NOTE: GTIL pads missing features with NaN and ignores extra ones: check, never guess.
        if x.ndim != 2 or x.shape[1] != self.n_features:
            raise BackendError(
                f"input {self.input_name!r} must be (rows, {self.n_features}) FP32, got shape {list(x.shape)}"
            )
        return {self.output_name: self._finish(self._raw(x))}

    def input_dims(self) -> dict[str, tuple[int, ...]]:
        return {self.input_name: (self.n_features,)}

    def unload(self) -> None:
        # NOTE: the closure holds the engine's forest; dropping it frees GPU memory under nvForest.
        del self._raw


# -- model files --------------------------------------------------------------------------------
def _load_treelite(path: Path, model_type: str, allow_unknown: str | None) -> treelite.Model:
    if not path.is_file():
        present = sorted(p.name for p in path.parent.iterdir()) if path.parent.is_dir() else []
        raise BackendError(
            f"model file {path} is missing (model_type {model_type!r} reads {path.name!r}; "
            f"the folder holds {present or 'nothing'}): publish it or set default_model_filename"
        )
    loaders: dict[str, Callable[[Path], treelite.Model]] = {
        "treelite_checkpoint": treelite.Model.deserialize,
        "xgboost_json": functools.partial(
            treelite.frontend.load_xgboost_model,
            format_choice="json",
            allow_unknown_field=allow_unknown == "true",
        ),
        "xgboost_ubj": functools.partial(
            treelite.frontend.load_xgboost_model,
            format_choice="ubjson",
            allow_unknown_field=allow_unknown == "true",
        ),
        "xgboost": treelite.frontend.load_xgboost_model_legacy_binary,
        "lightgbm": treelite.frontend.load_lightgbm_model,
    }
    try:
        return loaders[model_type](path)
    except treelite.TreeliteError as exc:
        raise BackendError(
            f"cannot read {path} as model_type {model_type!r}: {_treelite_reason(exc)}"
        ) from None


def _treelite_reason(exc: Exception) -> str:
    """Treelite's message without its '[hh:mm:ss] /project/src/file.cc:123: ' prefixes."""
    return re.sub(r"\[\d\d:\d\d:\d\d\] \S+:\d+: ", "", str(exc)).strip().replace("\n", " ")


def _check_shapes(path: Path, config: ModelConfig, options: FilOptions, model: treelite.Model) -> int:
    """The model's values per row (classes, or 1), after checking it against the config's tensors."""
    header = model.get_header_accessor()
    if int(header.get_field("num_target")[0]) != 1:
        raise BackendError(f"{path} has several targets: the FIL backend serves single-target models")
    width = int(np.max(header.get_field("num_class")))
    features = list(config.input[0].dims)
    # NOTE: [-1] lets versions of different widths share the config (an ensemble's forest step)
    if features not in ([model.num_feature], [-1]):
        raise BackendError(
            f"{path} does not match its config: input {config.input[0].name!r} has dims {features}, "
            f"the model reads {model.num_feature} features (or [-1]: the model's width)"
        )
    if options.predict_proba:
        expected, what = max(width, 2), "with predict_proba, one probability per class"
    elif width == 1 or options.is_classifier:
        expected, what = 1, "one class index or value per row"
    else:
        raise BackendError(
            f"{path} gives {width} class probabilities per row but the config says is_classifier "
            '"false": set is_classifier "true" (and predict_proba "true" for probabilities)'
        )
    dims = list(config.output[0].dims)
    if dims != [expected]:
        raise BackendError(
            f"{path} does not match its config: output {config.output[0].name!r} has dims {dims}, "
            f"the model gives [{expected}] ({what}; {width} raw value(s) per row)"
        )
    return width


# -- engines ------------------------------------------------------------------------------------
def _start_engine(path: Path, model: treelite.Model, config: ModelConfig, engine: str, width: int) -> Engine:
    """The engine asked for; with "auto" on CPU, FIL's engine joined by the version's batch engines
    (forest_engines.py) for the batch sizes where they measure faster."""
    if engine in ENGINE_FILES:
        return with_batch_rows(open_engine(engine, path.parent, width), model.num_feature)
    fil = _fil_engine(path, model, config, engine)
    if engine != "auto" or fil.name == "nvforest-gpu":
        return fil
    return fastest(fil, batch_engines(path.parent, width), model.num_feature)


def _fil_engine(path: Path, model: treelite.Model, config: ModelConfig, engine: str) -> Engine:
    """What Triton's FIL backend would run: nvForest (GPU for KIND_GPU), else Treelite's GTIL."""
    if engine == "treelite":
        return Engine("treelite-gtil", _gtil(model))
    nvforest = nvforest_or_reason()
    if isinstance(nvforest, str):
        if engine == "nvforest":
            raise BackendError(f"engine 'nvforest' needs nvForest ({nvforest}): {INSTALL_HINT}")
        return Engine("treelite-gtil", _gtil(model))
    device = "cpu"
    if instance_kind(config) == "gpu":
        if cuda_device_count() > 0:
            device = "gpu"
        else:
            log.warning("%s: config asks for KIND_GPU but no CUDA GPU is visible: running on CPU", path)
    return Engine(f"nvforest-{device}", _nvforest_forest(nvforest, path, model, config, device))


@functools.cache
def nvforest_or_reason() -> ModuleType | str:
    """nvForest, or why it cannot be imported; looked for once per process, not per model load."""
    try:
        return importlib.import_module("nvforest")
    except Exception as exc:  # ImportError, or OSError from a CUDA wheel that cannot load its libraries
        return f"{type(exc).__name__}: {exc}"


@functools.cache
def cuda_device_count() -> int:
    """CUDA GPUs visible to this process; 0 without a driver. Only asked for KIND_GPU configs."""
    try:
        from cuda.bindings import runtime

        status, count = runtime.cudaGetDeviceCount()
    except Exception:  # no CUDA runtime at all: a CPU-only machine
        return 0
    return int(count) if status == runtime.cudaError_t.cudaSuccess else 0


def _gtil(model: treelite.Model) -> Raw:
    # GTIL gives (rows, targets=1, width) in the model's own precision; [:, 0] is a view.
    trees = model.num_tree
    return lambda x: treelite.gtil.predict(model, x, nthread=threads_for(x.shape[0], trees))[:, 0]


def _nvforest_forest(
    nvforest: ModuleType, path: Path, model: treelite.Model, config: ModelConfig, device: str
) -> Raw:
    layout = parameter(config, "layout") or "depth_first"
    if layout not in LAYOUTS:
        raise BackendError(f'{path}: FIL parameter layout "{layout}" is not one of {", ".join(LAYOUTS)}')
    chunk_size = parameter(config, "chunk_size")
    try:
        forest = nvforest.load_from_treelite_model(
            model,
            device=device,
            layout=layout,
            default_chunk_size=int(chunk_size) if chunk_size else None,
            align_bytes=ALIGN_BYTES,
            precision="single",
        )
    except Exception as exc:  # nvForest raises RuntimeError/ValueError from C++; name it with the file
        raise BackendError(
            f"nvForest cannot load {path} on {device}: {exc} (engine 'treelite' runs it without nvForest)"
        ) from None
    # Classifiers answer predict_proba with the post-processed scores, regressors predict.
    run: Callable[[np.ndarray], Any] = getattr(forest, "predict_proba", forest.predict)
    if device == "gpu":
        return lambda x: run(x).get()  # a cupy array: copy it back to the host
    set_threads = _nvforest_threads()
    if set_threads is None:
        return run

    trees = model.num_tree

    def run_cpu(x: np.ndarray) -> Any:
        # NOTE: sets the OpenMP thread count of the calling thread only (the model's worker thread).
        set_threads(threads_for(x.shape[0], trees))
        return run(x)

    return run_cpu


def threads_for(rows: int, trees: int) -> int:
    """OpenMP threads for a batch: one per TREE_ROWS_PER_THREAD of work, at most one per core."""
    return min(CORES, 1 + rows * trees // TREE_ROWS_PER_THREAD)


@functools.cache
def _nvforest_threads() -> Callable[[int], None] | None:
    """nvForest's own `omp_set_num_threads`; None if out of reach."""
    try:
        import libnvforest

        # dlsym on libnvforest finds the OpenMP runtime it links (vendored), not treelite's or numpy's
        lib = libnvforest.load_library()
        set_threads = lib.omp_set_num_threads
    except (ImportError, OSError, AttributeError):  # a system install without the wheel's loader
        return None
    set_threads.argtypes, set_threads.restype = [ctypes.c_int], None
    return set_threads


# -- Triton's output semantics -----------------------------------------------------------------
def _postprocess(options: FilOptions, width: int) -> Raw:
    """(rows, width) scores -> what Triton's FIL backend answers, as float32.

    Models with one value per row (gradient boosting binary classifiers: P(class 1); regressors)
    are thresholded for class output, and widened to [1 - p, p] for probabilities. Models with one
    value per class (random forests, multiclass) answer the argmax, as Triton does, whatever the
    threshold.
    """
    if options.predict_proba and width == 1:
        return _two_columns
    if options.is_classifier and not options.predict_proba:
        if width == 1:
            threshold = options.threshold
            return lambda raw: (raw > threshold).astype(np.float32)
        return lambda raw: raw.argmax(axis=1).astype(np.float32).reshape(-1, 1)
    return lambda raw: raw.astype(np.float32, copy=False)


def _two_columns(raw: np.ndarray) -> np.ndarray:
    out = np.empty((raw.shape[0], 2), dtype=np.float32)
    out[:, 1] = raw[:, 0]
    np.subtract(1.0, raw[:, 0], out=out[:, 0])
    return out
