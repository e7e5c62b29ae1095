"""The probe: a version is loaded, run once and unloaded in a child process before the node loads it.

What a version's files make of it. Real files throughout: the forest and ONNX models trained in
conftest, Treelite checkpoints with bits flipped or fields overwritten, small ONNX graphs built
with onnx.helper. A file that crashes an engine is also loaded the old way (in a plain process, as
the node did in its own) to show that it really kills the process that loads it; here only the
probe child dies and this test process goes on. Where probes run: test_probe_processes.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import psutil
import pytest
import treelite
from conftest import N_FEATURES, config_for, forest, onnx_forest
from onnx import helper, numpy_helper
from probes import (
    FOREST_OUTPUTS,
    LIMITS,
    checkpoint,
    forest_config,
    gone,
    onnx_config,
    onnx_model,
    overwrite,
    probe_children,
    spinning_loop,
    version,
)

from tritonflow.lineage.errors import TritonflowError
from tritonflow.serving.backends import BackendError, load_backend
from tritonflow.serving.model_config import ConfigSpec, ModelConfig, TensorSpec, build_config
from tritonflow.serving.probe import SAMPLE_ROWS, ProbeFailed, ProbeLimits, probe_version, sample_inputs

# Loads a version the old way, in the process itself (as the node did), then predicts once.
IN_PROCESS = """
import sys; from pathlib import Path
from tritonflow.serving.backends import load_backend
from tritonflow.serving.model_config import parse_config
from tritonflow.serving.probe import sample_inputs
config = parse_config((Path(sys.argv[1]).parent / "config.pbtxt").read_text())
load_backend(Path(sys.argv[1]), config, sys.argv[2]).predict(sample_inputs(config))
"""


# -- files ----------------------------------------------------------------------------------------
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


@pytest.mark.parametrize("limits", [{"memory_bytes": 0}, {"timeout_s": -1}])
def test_limits_must_be_positive(limits):
    with pytest.raises(TritonflowError, match="probe limits must be positive"):
        ProbeLimits(**limits)
