"""Triton's onnxruntime backend on this node: one InferenceSession per model version.

Tensors are checked against the config at load, so a request never meets a name, type or shape
the session would refuse. Batch-only outputs (skl2onnx's `label`, shape [N]) are served as
(N, 1) when the config says dims [1], as Triton does with `reshape { shape: [] }`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from onnxruntime.capi.onnxruntime_pybind11_state import Fail, InvalidArgument
from tritonclient.grpc import model_config_pb2 as pb

from tritonflow.serving import datatypes
from tritonflow.serving.backends import BackendError, RefusedValues
from tritonflow.serving.backends.base import Backend
from tritonflow.serving.model_config import ModelConfig, instance_kind, parameter

ENGINES = ("auto", "onnxruntime")
MODEL_FILE = "model.onnx"
# One request of a few rows gains nothing from more threads; 2 halve a 1024-row batch.
DEFAULT_THREADS = min(2, os.cpu_count() or 1)

Shape = tuple[int, ...]


class OnnxBackend(Backend):
    """An ONNX model version: every config input fed by name, every config output returned by name."""

    def __init__(self, version_dir: Path, config: ModelConfig, engine: str = "auto") -> None:
        if engine not in ENGINES:
            raise BackendError(f"engine {engine!r} is not an ONNX engine: use one of {', '.join(ENGINES)}")
        self.path = Path(version_dir) / (config.default_model_filename or MODEL_FILE)
        if not self.path.is_file():
            raise BackendError(f"model file {self.path} is missing: publish it or set default_model_filename")
        try:
            self._session = ort.InferenceSession(
                str(self.path), _session_options(config), providers=_providers(config)
            )
        except Exception as exc:  # onnxruntime's errors (InvalidProtobuf, Fail, ...) share no base class
            raise BackendError(f"onnxruntime cannot load {self.path}: {exc}") from None
        cuda = self._session.get_providers()[0] == "CUDAExecutionProvider"
        self.engine = "onnxruntime-cuda" if cuda else "onnxruntime-cpu"
        batched = config.max_batch_size > 0
        model_inputs = {node.name: node for node in self._session.get_inputs()}
        model_outputs = {node.name: node for node in self._session.get_outputs()}
        missing = sorted(set(model_inputs) - {t.name for t in config.input})
        if missing:
            raise BackendError(f"{self.path} needs inputs {missing} that the config does not list")
        # name -> the shape the session (inputs) or the client (outputs) gets, when they differ
        self._feeds = {t.name: _fit(self.path, "input", t, model_inputs, batched) for t in config.input}
        self._fetches = {t.name: _fit(self.path, "output", t, model_outputs, batched) for t in config.output}
        self._output_names = list(self._fetches)
        # NOTE: BYTES tensors are tensor(string) in the model: str objects in onnxruntime, bytes in the node
        self._text_inputs = {t.name for t in config.input if t.data_type == pb.TYPE_STRING}
        self._text_outputs = {t.name for t in config.output if t.data_type == pb.TYPE_STRING}

    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            feed = {
                name: inputs[name] if shape is None else inputs[name].reshape(shape)
                for name, shape in self._feeds.items()
            }
            for name in self._text_inputs:
                feed[name] = _map(feed[name], bytes.decode)  # NOTE: UTF-8, checked at the edge
        except KeyError as exc:
            raise BackendError(f"missing input {exc.args[0]!r}") from None
        try:
            results = self._session.run(self._output_names, feed)
        except InvalidArgument as exc:  # a batch of the wrong type or shape
            raise BackendError(f"onnxruntime refused the batch for {self.path.name}: {exc}") from None
        except Fail as exc:  # NOTE: a kernel's check of the values: with text inputs, an unknown category
            if self._text_inputs:
                raise RefusedValues(_node_message(exc)) from None
            raise
        outputs = {
            name: value if shape is None else value.reshape(shape)
            for (name, shape), value in zip(self._fetches.items(), results, strict=True)
        }
        for name in self._text_outputs:
            outputs[name] = _map(outputs[name], str.encode)
        return outputs

    def unload(self) -> None:
        # NOTE: the session owns the model's memory (GPU memory with CUDA); dropping it frees that.
        del self._session


def _map(array: np.ndarray, convert: Callable[[Any], Any]) -> np.ndarray:
    """An object array with `convert` applied to each element, same shape."""
    converted = np.empty(array.shape, object)
    converted.ravel()[:] = [convert(item) for item in array.ravel().tolist()]
    return converted


def _session_options(config: ModelConfig) -> ort.SessionOptions:
    """Threads as Triton's onnxruntime backend reads them from the config's parameters."""
    return session_options(
        int(parameter(config, "intra_op_thread_count") or DEFAULT_THREADS),
        int(parameter(config, "inter_op_thread_count") or 1),
    )


def session_options(intra_op_threads: int = DEFAULT_THREADS, inter_op_threads: int = 1) -> ort.SessionOptions:
    """A session's threads, never spinning: spinning threads would take the CPU from the HTTP event
    loop between requests."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = inter_op_threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def _providers(config: ModelConfig) -> list[str]:
    if instance_kind(config) == "gpu" and "CUDAExecutionProvider" in ort.get_available_providers():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def _fit(
    path: Path,
    kind: str,
    tensor: pb.ModelInput | pb.ModelOutput,
    nodes: dict[str, ort.NodeArg],
    batched: bool,
) -> Shape | None:
    """Check one config tensor against the model; the shape to reshape to, or None when they agree."""
    node = nodes.get(tensor.name)
    if node is None:
        raise BackendError(
            f"{path} has no {kind} {tensor.name!r} named in the config; its {kind}s are {sorted(nodes)}"
        )
    config_type = datatypes.from_config(pb.DataType.Name(tensor.data_type))
    model_type = _datatype(node.type)
    if config_type != model_type:
        raise BackendError(
            f"{path}: {kind} {tensor.name!r} is {config_type} in the config, {node.type} in the model"
        )
    dims = tuple(tensor.dims)
    model_dims: Sequence[int | str | None] = node.shape[1:] if batched else node.shape
    if len(model_dims) == len(dims) and all(_agree(m, c) for m, c in zip(model_dims, dims, strict=True)):
        return None
    fixed = [d for d in model_dims if isinstance(d, int)]
    static = len(fixed) == len(model_dims) and all(d > 0 for d in dims)
    if batched and static and math.prod(fixed) == math.prod(dims):
        # the per-row shapes differ only in layout (e.g. [] vs [1]): a reshape, no copy
        return (-1, *fixed) if kind == "input" else (-1, *dims)
    raise BackendError(
        f"{path}: {kind} {tensor.name!r} has dims {list(dims)} in the config, "
        f"the model's shape is {node.shape}{' (batch first)' if batched else ''}"
    )


def _agree(model_dim: int | str | None, config_dim: int) -> bool:
    """A symbolic model dim or a variable (-1) config dim matches anything."""
    return not isinstance(model_dim, int) or config_dim < 0 or model_dim == config_dim


def _datatype(onnx_type: str) -> str | None:
    """tensor(float) -> FP32, through the one datatype table."""
    name = onnx_type.removeprefix("tensor(").removesuffix(")")
    if name == "string":
        return "BYTES"
    try:
        dtype = np.dtype({"float": "float32", "double": "float64"}.get(name, name))
    except TypeError:
        return None
    return datatypes.DATATYPE.get(dtype)


def _node_message(exc: Exception) -> str:
    """onnxruntime's message without its status prefix: "running OneHotEncoder node ...: Unknown ..."."""
    text = str(exc)
    return text.split("Non-zero status code returned while ", 1)[-1]
