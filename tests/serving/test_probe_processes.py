"""Where probes run, and what becomes of them: many at once from a fresh process, a node killed
with SIGKILL, a fork server that cannot start, GPU configs in spawned processes.

Each test drives the probe from a node stand-in (DRIVER, a fresh `python -c` process) or from this
process, on real version folders (probes.py). What a version's files make of a probe: test_probe.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
from conftest import config_for, forest, onnx_forest, wait_for
from probes import (
    FOREST_OUTPUTS,
    LIMITS,
    forest_config,
    gone,
    onnx_config,
    overwrite,
    probe_children,
    spinning_loop,
    version,
)

from tritonflow.serving.backends import load_backend
from tritonflow.serving.probe import SAMPLE_ROWS, probe_version, start_method

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
