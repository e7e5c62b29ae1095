"""The README's main job, as a new user runs it: `tritonflow quickstart`, and `tritonflow init`."""

import re
import socket
import subprocess
import sys

import pytest

from tritonflow.starter import FILES, HERE


def tritonflow(*args, cwd=None, timeout=300):
    command = [sys.executable, "-m", "tritonflow", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, cwd=cwd, timeout=timeout)


@pytest.mark.slow
def test_quickstart_runs_the_whole_loop_and_stops_what_it_started(tmp_path):
    result = tritonflow("quickstart", cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    for step in range(1, 6):
        assert f"[{step}/5]" in out
    stamped = re.search(r"x-deployment-id: (fraud-classifier:1@StarterFlow/\d+)", out)
    assert stamped, out
    assert f"id                    {stamped.group(1)}" in out  # the lineage chain of that very ID
    assert "Decision: max:val_auc" in out and "(matches Metaflow)" in out
    assert f"tritonflow lineage {stamped.group(1)}" in out  # the by-hand commands

    folder = tmp_path / "tritonflow-quickstart"
    assert (folder / "model_repository" / "fraud-classifier" / "1" / "deployment.json").is_file()
    port = int(re.search(r"127\.0\.0\.1:(\d+)", out).group(1))
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        pass  # the node is stopped

    again = tritonflow("quickstart", cwd=tmp_path)  # a second run gets a new folder
    assert again.returncode == 0 and (tmp_path / "tritonflow-quickstart-2").is_dir()


def test_quickstart_fails_clearly_and_starts_nothing(tmp_path):
    (tmp_path / "flow.py").write_text("# the user's own file\n")
    result = tritonflow("quickstart", tmp_path)
    assert result.returncode == 2
    assert "already exist" in result.stderr and "Traceback" not in result.stderr
    assert (tmp_path / "flow.py").read_text() == "# the user's own file\n"
    assert "[2/5]" not in result.stdout


@pytest.mark.slow
def test_a_failing_step_is_reported_with_its_output(tmp_path):
    model = tmp_path / "qs" / "model_repository" / "fraud-classifier"
    model.mkdir(parents=True)
    # A model of the same name with another signature: the deploy must refuse it.
    (model / "config.pbtxt").write_text(
        'name: "fraud-classifier"\nbackend: "onnxruntime"\nmax_batch_size: 8\n'
        'input { name: "x" data_type: TYPE_FP32 dims: 3 }\n'
        'output { name: "y" data_type: TYPE_FP32 dims: 1 }\n'
    )
    result = tritonflow("quickstart", tmp_path / "qs")
    assert result.returncode == 2
    assert "the starter flow failed" in result.stderr and "keeps one signature" in result.stderr
    assert "[3/5]" not in result.stdout


def test_init_copies_the_starter_pack(tmp_path):
    result = tritonflow("init", tmp_path / "mine")
    assert result.returncode == 0, result.stderr
    for name in FILES:
        assert (tmp_path / "mine" / name).read_bytes() == (HERE / name).read_bytes()
    assert tritonflow("init", tmp_path / "mine").returncode == 2  # never overwrites by default
    assert tritonflow("init", tmp_path / "mine", "--force").returncode == 0
