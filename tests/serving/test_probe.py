"""The probe: a version is loaded, run once and unloaded in a child process before the node loads it.

Real files throughout: the forest and ONNX models trained in conftest, Treelite checkpoints with
bits flipped or fields overwritten, small ONNX graphs built with onnx.helper. A file that crashes
an engine is also loaded the old way (in a plain process, as the node did in its own) to show that
it really kills the process that loads it; here only the probe child dies and this test process
goes on.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import psutil
import pytest
import treelite
from conftest import N_FEATURES, config_for, forest, onnx_forest, wait_for
from onnx import TensorProto, helper, numpy_helper
from tritonclient.grpc import model_config_pb2 as pb

from tritonflow.lineage.errors import TritonflowError
from tritonflow.serving.backends import BackendError, load_backend
from tritonflow.serving.model_config import ConfigSpec, ModelConfig, TensorSpec, build_config, render
from tritonflow.serving.probe import (
    SAMPLE_ROWS,
    ProbeFailed,
    ProbeLimits,
    probe_version,
    sample_inputs,
    start_method,
)

LIMITS = ProbeLimits(memory_bytes=1 << 30, timeout_s=60)
FOREST_OUTPUTS = {"output__0": (SAMPLE_ROWS, 2)}

# Loads a version the old way, in the process itself (as the node did), then predicts once.
IN_PROCESS = """
import sys; from pathlib import Path
from tritonflow.serving.backends import load_backend
from tritonflow.serving.model_config import parse_config
from tritonflow.serving.probe import sample_inputs
config = parse_config((Path(sys.argv[1]).parent / "config.pbtxt").read_text())
load_backend(Path(sys.argv[1]), config, sys.argv[2]).predict(sample_inputs(config))
"""

# A node stand-in: probes the versions it is given, all at once on threads, and prints the outcomes.
DRIVER = """
import json, sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from tritonflow.serving.model_config import parse_config
from tritonflow.serving.probe import ProbeFailed, ProbeLimits, probe_version

def probe(job):
    folder, engine, method, timeout_s = job
    config = parse_config((Path(folder).parent / "config.pbtxt").read_text())
    try:
        report = probe_version(Path(folder), config, engine, ProbeLimits(1 << 30, timeout_s), method=method)
        return {"outputs": {k: list(v) for k, v in report.outputs.items()}, "method": report.method}
    except ProbeFailed as exc:
        return {"cause": exc.cause, "message": str(exc)}

jobs = json.loads(sys.argv[1])
with ThreadPoolExecutor(len(jobs)) as pool:
    print(json.dumps(list(pool.map(probe, jobs))))
"""


# -- files ----------------------------------------------------------------------------------------
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


def flip_bit(seed: int, span: int | None = None) -> bytes:
    """One bit flipped at a seeded position in the first `span` bytes (all of them: None)."""
    rng = np.random.default_rng(seed)
    blob = bytearray(checkpoint())
    at = int(rng.integers(span or len(blob)))
    blob[at] ^= 1 << int(rng.integers(8))
    return bytes(blob)


def flip_bytes(seed: int, count: int) -> bytes:
    """`count` bytes at seeded positions each XORed with a seeded non-zero value."""
    rng = np.random.default_rng(seed)
    blob = bytearray(checkpoint())
    for at in rng.choice(len(blob), count, replace=False):
        blob[at] ^= int(rng.integers(1, 256))
    return bytes(blob)


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


def constant_folding_bomb() -> bytes:
    """40 chained 2048x2048 matrix products of constants, which onnxruntime folds while loading."""
    nodes = [
        helper.make_node(
            "ConstantOfShape", ["shape"], ["c0"], value=numpy_helper.from_array(np.array([0.5], np.float32))
        ),
        *(helper.make_node("MatMul", [f"c{k}", f"c{k}"], [f"c{k + 1}"]) for k in range(40)),
        helper.make_node("ReduceSum", ["c40"], ["s"], keepdims=0),
        helper.make_node("Add", ["input__0", "s"], ["scores"]),
    ]
    return onnx_model(nodes, [numpy_helper.from_array(np.array([2048, 2048]), "shape")], [None, 8])


def in_process_exit(folder: Path, engine: str = "auto") -> int:
    """The exit status of a plain process that loads the version itself (negative: killed by that signal)."""
    return subprocess.run(
        [sys.executable, "-c", IN_PROCESS, str(folder), engine], capture_output=True
    ).returncode


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


# -- good versions -------------------------------------------------------------------------------
@pytest.mark.parametrize("engine", ["auto", "treelite"])
def test_a_good_forest_passes_with_the_outputs_the_node_would_give(tmp_path, engine):
    config = forest_config()
    folder = version(tmp_path, forest().files)
    report = probe_version(folder, config, engine, LIMITS)
    in_process = load_backend(folder, config, engine)
    expected = {name: v.shape for name, v in in_process.predict(sample_inputs(config)).items()}
    assert report.outputs == expected == FOREST_OUTPUTS
    assert report.engine == in_process.engine
    assert report.method == "forkserver"
    assert report.load_s > 0 and report.predict_s > 0 and report.wall_s >= report.load_s
    assert report.peak_rss_bytes > 10 << 20  # the child's own high-water mark, engines included


@pytest.mark.parametrize(
    ("max_batch_size", "rows", "outputs"),
    [
        (1024, SAMPLE_ROWS, {"label": (SAMPLE_ROWS, 1), "probabilities": (SAMPLE_ROWS, 2)}),
        (0, 1, {"label": (1,), "probabilities": (1, 2)}),  # no batch dimension: dims -1 become 1
    ],
)
def test_a_good_onnx_model_passes_with_every_config_output(tmp_path, max_batch_size, rows, outputs):
    config = config_for("o", onnx_forest(), max_batch_size=max_batch_size)
    inputs = sample_inputs(config)
    assert {name: x.shape for name, x in inputs.items()} == {"input__0": (rows, N_FEATURES)}
    folder = version(tmp_path, onnx_forest().files)
    report = probe_version(folder, config, "auto", LIMITS)
    in_process = load_backend(folder, config, "auto").predict(inputs)
    assert report.outputs == {name: v.shape for name, v in in_process.items()}
    assert report.outputs == outputs
    assert report.engine == "onnxruntime-cpu"


def test_sample_rows_are_deterministic_and_of_each_inputs_datatype():
    inputs = {"x": ("FP32", (3,)), "ids": ("INT64", (-1,)), "mask": ("BOOL", (2,)), "small": ("UINT8", (1,))}
    spec = ConfigSpec(
        "t", "onnxruntime", tuple(TensorSpec(k, *v) for k, v in inputs.items()), (), max_batch_size=2
    )
    first, again = sample_inputs(build_config(spec)), sample_inputs(build_config(spec))
    assert {k: (v.shape, v.dtype.name) for k, v in first.items()} == {
        "x": ((2, 3), "float32"),
        "ids": ((2, 1), "int64"),
        "mask": ((2, 2), "bool"),
        "small": ((2, 1), "uint8"),
    }
    for name in first:
        np.testing.assert_array_equal(first[name], again[name])
    assert len(np.unique(first["x"])) == 6 and set(np.unique(first["mask"])) == {False, True}


# -- broken files ----------------------------------------------------------------------------------
LOADING, PREDICTING = "loading checkpoint.tl", "running a test prediction on checkpoint.tl"


@pytest.mark.parametrize(
    ("corrupt", "engine", "phase"),
    [
        # nvForest reads a child index out of the tree while converting the forest, GTIL while predicting
        pytest.param(lambda: overwrite("cleft", 1 << 30), "auto", LOADING, id="child index-nvforest"),
        pytest.param(lambda: overwrite("cleft", 1 << 30), "treelite", PREDICTING, id="child index-gtil"),
        # seeds (found by the sweep below) whose one bit flipped in the first 2 KiB sends a child
        # index of tree 0 millions of nodes away; smaller jumps crash or not by the heap's layout
        *(
            pytest.param(lambda s=s: flip_bit(s, span=2048), "auto", LOADING, id=f"bit {s}")
            for s in (21, 38, 74)
        ),
    ],
)
def test_a_file_that_segfaults_the_engine_crashes_only_the_probe(tmp_path, corrupt, engine, phase):
    config = forest_config()
    folder = version(tmp_path, {"checkpoint.tl": corrupt()}, config)
    assert in_process_exit(folder, engine) == -signal.SIGSEGV  # what loading it in the node cost
    with pytest.raises(ProbeFailed) as refused:
        probe_version(folder, config, engine, LIMITS)
    assert refused.value.cause == "crash"
    assert f"the engine crashed (SIGSEGV) {phase}" in str(refused.value)
    assert gone(refused.value.pid)


def test_a_file_whose_prediction_raises_is_refused_with_the_engines_error(tmp_path):
    # seed 15 flips a bit of a split's comparison operator: the file loads, every prediction raises
    config = forest_config()
    folder = version(tmp_path, {"checkpoint.tl": flip_bit(15, span=2048)})
    with pytest.raises(treelite.TreeliteError, match="Unrecognized"):
        load_backend(folder, config, "treelite").predict(sample_inputs(config))  # the node: 500s
    with pytest.raises(ProbeFailed, match=f"{PREDICTING} raised TreeliteError: .*Unrecognized") as refused:
        probe_version(folder, config, "treelite", LIMITS)
    assert refused.value.cause == "error"


@pytest.mark.parametrize("engine", ["auto", "treelite"])
def test_a_sweep_of_one_bit_flips_never_reaches_this_process(tmp_path, engine):
    config = forest_config()
    causes: dict[str, int] = {}
    for seed in range(100):
        folder = version(tmp_path, {"checkpoint.tl": flip_bit(seed, span=2048)})
        try:
            # NOTE: a flip that reads garbage crashes, loops (GTIL following a cycle) or passes by the
            # heap's layout; a good probe takes ~50 ms, so 15 s stops a loop without a false verdict
            report = probe_version(folder, config, engine, ProbeLimits(1 << 30, timeout_s=15))
        except ProbeFailed as exc:
            assert exc.cause in {"crash", "memory", "timeout", "refused", "error"}, str(exc)
            assert gone(exc.pid)
            causes[exc.cause] = causes.get(exc.cause, 0) + 1
        else:
            assert report.outputs == FOREST_OUTPUTS
            causes["passed"] = causes.get("passed", 0) + 1
    # ~5% crash either engine, ~10% are refused with a reason (2 KiB of a 95 KiB checkpoint flipped)
    assert causes.get("crash", 0) >= 1 and causes.get("refused", 0) + causes.get("error", 0) >= 1
    assert causes.get("passed", 0) >= 50
    assert probe_children(psutil.Process()) == []


@pytest.mark.parametrize(
    "corrupt",
    [
        pytest.param(lambda: overwrite("cleft", 1 << 31, count=True), id="a count of 2^31 nodes"),
        pytest.param(lambda: flip_bit(125), id="one flipped bit"),
        pytest.param(lambda: flip_bytes(4, 200), id="200 flipped bytes"),
        pytest.param(lambda: flip_bytes(7, 200), id="200 other flipped bytes"),
    ],
)
def test_a_load_that_floods_memory_is_killed_at_the_limit(tmp_path, corrupt):
    with pytest.raises(ProbeFailed) as refused:
        probe_version(version(tmp_path, {"checkpoint.tl": corrupt()}), forest_config(), "auto", LIMITS)
    assert refused.value.cause == "memory"
    assert "loading checkpoint.tl took more than 1.00 GiB of memory" in str(refused.value)
    assert gone(refused.value.pid)


def mismatched_config() -> ModelConfig:
    config = forest_config()
    config.input[0].dims[0] = N_FEATURES + 1
    return config


@pytest.mark.parametrize(
    ("files", "config"),
    [
        *(
            pytest.param(
                lambda n=n: {"checkpoint.tl": checkpoint()[:n]}, forest_config, id=f"truncated to {n}"
            )
            for n in (0, 8, 300, len(forest().files["checkpoint.tl"]) // 2)
        ),
        pytest.param(lambda: forest().files, mismatched_config, id="a config the model does not match"),
    ],
)
def test_what_the_backend_refuses_is_refused_with_its_message(tmp_path, files, config):
    folder = version(tmp_path, files())
    with pytest.raises(BackendError) as in_process:
        load_backend(folder, config(), "auto")
    with pytest.raises(ProbeFailed) as refused:
        probe_version(folder, config(), "auto", LIMITS)
    assert refused.value.cause == "refused"
    assert str(refused.value) == str(in_process.value)  # passed through as the node would say it


def test_outputs_with_another_row_count_than_the_inputs_are_refused(tmp_path):
    # (rows, 8) -> (2 * rows, 4): onnxruntime accepts the config's dims [4] at load, the batch
    # dimension being symbolic; every response would split the rows wrongly
    shape = numpy_helper.from_array(np.array([-1, N_FEATURES // 2]), "shape")
    model = onnx_model([helper.make_node("Reshape", ["input__0", "shape"], ["scores"])], [shape], [None, 4])
    folder = version(tmp_path, {"model.onnx": model})
    assert load_backend(folder, onnx_config(4), "auto")  # what the node would have served
    with pytest.raises(
        ProbeFailed, match=r"answered 'scores' with shape \[8, 4\], the config says \[4, 4\]"
    ) as e:
        probe_version(folder, onnx_config(4), "auto", LIMITS)
    assert e.value.cause == "outputs"


@pytest.mark.parametrize(
    ("model", "phase"),
    [
        (constant_folding_bomb, "loading model.onnx"),
        (spinning_loop, "running a test prediction on model.onnx"),
    ],
)
def test_a_version_that_never_finishes_is_killed_at_the_timeout(tmp_path, model, phase):
    folder = version(tmp_path, {"model.onnx": model()})
    with pytest.raises(ProbeFailed) as refused:
        probe_version(folder, onnx_config(8), "auto", ProbeLimits(1 << 30, timeout_s=2))
    assert refused.value.cause == "timeout"
    assert f"{phase} did not finish within 2 s" in str(refused.value)
    assert gone(refused.value.pid)


def test_a_fifo_for_a_model_file_is_refused_without_blocking(tmp_path):
    # NOTE: opening a FIFO blocks until a writer comes; the backends check for a regular file first
    folder = version(tmp_path, {})
    os.mkfifo(folder / "checkpoint.tl")
    with pytest.raises(ProbeFailed, match="checkpoint.tl is missing") as refused:
        probe_version(folder, forest_config(), "auto", ProbeLimits(1 << 30, timeout_s=60))
    assert refused.value.cause == "refused"


# -- processes --------------------------------------------------------------------------------------
def driver(jobs: list[tuple[Path, str, str | None, float]], **env: str) -> subprocess.Popen[str]:
    """DRIVER on (version folder, engine, start method, timeout) jobs; each folder's config beside it."""
    return subprocess.Popen(
        [sys.executable, "-c", DRIVER, json.dumps([[str(f), *rest] for f, *rest in jobs])],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **env},
    )


def test_concurrent_probes_from_a_fresh_process_each_get_their_own_answer(tmp_path):
    good = version(tmp_path, forest().files, forest_config())
    onnx_good = version(tmp_path, onnx_forest().files, config_for("o", onnx_forest()))
    crash = version(tmp_path, {"checkpoint.tl": overwrite("cleft", 1 << 30)}, forest_config())
    flood = version(tmp_path, {"checkpoint.tl": overwrite("cleft", 1 << 31, count=True)}, forest_config())
    jobs = [(good, engine, None, 60.0) for engine in ("auto", "treelite") * 2]
    jobs += [(onnx_good, "auto", None, 60.0)] * 2 + [(crash, "auto", None, 60.0), (flood, "auto", None, 60.0)]
    process = driver(jobs)
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, err
    results = json.loads(out)
    assert results[:4] == [{"outputs": {"output__0": [SAMPLE_ROWS, 2]}, "method": "forkserver"}] * 4
    onnx_outputs = {"label": [SAMPLE_ROWS, 1], "probabilities": [SAMPLE_ROWS, 2]}
    assert results[4:6] == [{"outputs": onnx_outputs, "method": "forkserver"}] * 2
    assert [r.get("cause") for r in results[6:]] == ["crash", "memory"]


@pytest.mark.parametrize("method", ["forkserver", "spawn"])
def test_a_probe_never_outlives_a_node_killed_with_sigkill(tmp_path, method):
    folder = version(tmp_path, {"model.onnx": spinning_loop()}, onnx_config(8))
    node = driver([(folder, "auto", method, 600.0)])
    try:
        node_process = psutil.Process(node.pid)
        probe = wait_for(lambda: probe_children(node_process), timeout=120, what="the probe to start")[0]
        # NOTE: wait until it is past its imports and spinning in the prediction, where it writes
        # nothing more: a probe that writes to a dead node's pipe dies of that alone
        wait_for(lambda: sum(probe.cpu_times()[:2]) > 5, timeout=120, what="the probe to spin")
        descendants = node_process.children(recursive=True)  # the probe, and the fork server if any
    finally:
        node.kill()
        node.wait()
    try:
        wait_for(lambda: all(gone(p.pid) for p in descendants), timeout=60, what="the probe to die")
    finally:
        for process in descendants:  # a survivor (a failed test) is not left spinning
            if not gone(process.pid):
                process.kill()
        node.stdout.close()
        node.stderr.close()


def test_probes_go_on_by_spawn_when_the_fork_server_cannot_start(tmp_path):
    # an nvForest whose CUDA libraries fail to load raises OSError at import, in the fork server too
    fake = tmp_path / "site"
    (fake / "nvforest").mkdir(parents=True)
    (fake / "nvforest" / "__init__.py").write_text(
        "raise OSError('libcudart.so.12: cannot open shared object')\n"
    )
    good = version(tmp_path / "repo", forest().files, forest_config())
    job = (good, "treelite", None, 120.0)
    path = [str(fake), *filter(None, [os.environ.get("PYTHONPATH")])]
    node = driver([job, job], PYTHONPATH=os.pathsep.join(path))
    out, err = node.communicate(timeout=300)
    assert node.returncode == 0, err
    assert json.loads(out) == [{"outputs": {"output__0": [SAMPLE_ROWS, 2]}, "method": "spawn"}] * 2
    assert "the probe fork server did not start" in err


# -- GPU ------------------------------------------------------------------------------------------
def test_gpu_configs_are_probed_in_spawned_processes(tmp_path):
    config = forest_config("gpu")
    assert start_method(config) == "spawn" and start_method(forest_config()) == "forkserver"
    folder = version(tmp_path, forest().files)
    report = probe_version(folder, config, "auto", LIMITS)
    assert report.method == "spawn" and report.outputs == FOREST_OUTPUTS
    # nvforest-gpu where a GPU is visible (nvforest-cpu without one): what the node itself would run
    assert report.engine == load_backend(folder, config, "auto").engine


@pytest.mark.parametrize("limits", [{"memory_bytes": 0}, {"timeout_s": -1}])
def test_limits_must_be_positive(limits):
    with pytest.raises(TritonflowError, match="probe limits must be positive"):
        ProbeLimits(**limits)
