"""What the probe tests share: version folders, a Treelite checkpoint with a field overwritten, small
ONNX graphs built with onnx.helper, and checks that probe processes are gone.

Used by test_probe.py (what a version's files make of a probe), test_probe_processes.py (where
probes run and what becomes of them) and test_integrity.py (a broken checkpoint behind a record).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import psutil
import treelite
from conftest import N_FEATURES, config_for, forest
from onnx import TensorProto, helper, numpy_helper
from tritonclient.grpc import model_config_pb2 as pb

from tritonflow.serving.model_config import ConfigSpec, ModelConfig, TensorSpec, build_config, render
from tritonflow.serving.probe import SAMPLE_ROWS, ProbeLimits

LIMITS = ProbeLimits(memory_bytes=1 << 30, timeout_s=60)
FOREST_OUTPUTS = {"output__0": (SAMPLE_ROWS, 2)}


# -- versions ---------------------------------------------------------------------------------------
def version(root: Path, files: dict[str, bytes], config: ModelConfig | None = None) -> Path:
    """A version folder holding `files` (and its model's config.pbtxt one level up, for subprocesses)."""
    folder = root / f"v{len(list(root.iterdir())) if root.exists() else 0}" / "1"
    folder.mkdir(parents=True)
    for name, blob in files.items():
        (folder / name).write_bytes(blob)
    if config is not None:
        (folder.parent / "config.pbtxt").write_text(render(config))
    return folder


def checkpoint() -> bytes:
    return forest().files["checkpoint.tl"]


def forest_config(kind: str = "cpu") -> ModelConfig:
    config = config_for("m", forest())
    if kind == "gpu":
        config.instance_group[0].kind = pb.ModelInstanceGroup.KIND_GPU
    return config


def overwrite(field: str, value: int, *, count: bool = False) -> bytes:
    """The checkpoint with tree 0's `field` array changed: its first element, or (count) the
    element count written before it, set to `value`. Located through Treelite's own accessor."""
    blob = checkpoint()
    model = treelite.Model.deserialize_bytes(blob)
    array = model.get_tree_accessor(0).get_field(field).copy()  # NOTE: a view into the model's memory
    at = blob.find(array.tobytes())
    assert at > 8 and blob.find(array.tobytes(), at + 1) == -1, f"tree 0's {field} is not unique"
    patched = bytearray(blob)
    if count:
        patched[at - 8 : at] = np.uint64(value).tobytes()
    else:
        patched[at : at + array.itemsize] = np.array(value, array.dtype).tobytes()
    return bytes(patched)


def onnx_model(nodes: list, initializers: list, out_dims: list) -> bytes:
    """A one-input (batch, N_FEATURES) FP32 graph; `out_dims` as the model declares its output."""
    graph = helper.make_graph(
        nodes,
        "probe-test",
        [helper.make_tensor_value_info("input__0", TensorProto.FLOAT, [None, N_FEATURES])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, out_dims)],
        initializers,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def onnx_config(out_dims: int) -> ModelConfig:
    tensors = (TensorSpec("input__0", "FP32", (N_FEATURES,)),), (TensorSpec("scores", "FP32", (out_dims,)),)
    return build_config(ConfigSpec("g", "onnxruntime", *tensors, max_batch_size=8))


def spinning_loop() -> bytes:
    """Loads at once; its prediction runs a Loop of 2^62 empty iterations (it never answers)."""
    scalar = lambda name, kind: helper.make_tensor_value_info(name, kind, [])  # noqa: E731
    any_shape = lambda name: helper.make_tensor_value_info(name, TensorProto.FLOAT, None)  # noqa: E731
    body = helper.make_graph(
        [helper.make_node("Identity", ["c"], ["c_out"]), helper.make_node("Identity", ["x"], ["x_out"])],
        "body",
        [scalar("i", TensorProto.INT64), scalar("c", TensorProto.BOOL), any_shape("x")],
        [scalar("c_out", TensorProto.BOOL), any_shape("x_out")],
    )
    constants = [
        numpy_helper.from_array(np.array(1 << 62), "M"),
        numpy_helper.from_array(np.array(True), "c"),
    ]
    return onnx_model(
        [helper.make_node("Loop", ["M", "c", "input__0"], ["scores"], body=body)], constants, [None, 8]
    )


# -- probe processes ---------------------------------------------------------------------------------
def probe_children(root: psutil.Process) -> list[psutil.Process]:
    """Live probe processes under `root`: the fork server's children, and spawned children."""
    found = []
    for process in root.children(recursive=True):
        try:
            parent = process.parent()
            spawned = "import spawn_main" in " ".join(process.cmdline())
            forked = parent is not None and "forkserver import main" in " ".join(parent.cmdline())
            if (spawned or forked) and process.status() != psutil.STATUS_ZOMBIE:
                found.append(process)
        except psutil.NoSuchProcess:
            pass
    return found


def gone(pid: int | None) -> bool:
    """The process has exited and been waited for (or is a zombie of a reaper that is not ours)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True
