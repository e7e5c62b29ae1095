"""The README's main job, as a new user runs it: `tritonflow quickstart`, and `tritonflow init`."""

import os
import re
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tritonflow.plugin.source_identity import work_tree
from tritonflow.quickstart import default_folder
from tritonflow.starter import FILES, HERE


def tritonflow(*args, cwd=None, timeout=300, env=None):
    command = [sys.executable, "-m", "tritonflow", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, cwd=cwd, timeout=timeout, env=env)


def git_init(folder):
    folder.mkdir(parents=True, exist_ok=True)
    subprocess.run(["git", "init", "-q", str(folder)], check=True)
    return folder


@pytest.mark.slow
def test_quickstart_runs_the_whole_loop_and_stops_what_it_started(tmp_path):
    # As a new user meets it: root with no Metaflow user name, in a clone of tritonflow's repository
    # (whose tritonflow/ folder is not the installed package), through the installed command.
    clone, home = git_init(tmp_path / "clone"), tmp_path / "home"
    (clone / "tritonflow").mkdir()
    (clone / "tritonflow" / "__init__.py").write_text("raise ImportError('the checkout, not the package')\n")
    users = ("METAFLOW_USER", "SUDO_USER", "USERNAME", "USER")
    env = {**{k: v for k, v in os.environ.items() if k not in users}, "USER": "root", "HOME": str(home)}
    command = [Path(sys.executable).with_name("tritonflow"), "quickstart"]
    result = subprocess.run(command, capture_output=True, text=True, cwd=clone, timeout=300, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    for step in range(1, 6):
        assert f"[{step}/5]" in out
    stamped = re.search(r"x-deployment-id: (fraud-classifier:1@StarterFlow/\d+)", out)
    assert stamped, out
    assert f"id                    {stamped.group(1)}" in out  # the lineage chain of that very ID
    assert "Decision: max:val_auc" in out and "(matches Metaflow)" in out
    assert f"tritonflow lineage {stamped.group(1)}" in out  # the by-hand commands
    # what the by-hand commands need: a user name as root, another port when 8000 is taken
    assert re.search(r"\n  export METAFLOW_USER=\w+ +# as root", out), out
    assert "(--port N)" in out and "--url 127.0.0.1:N" in out

    # not inside the clone, where flow.py would be untracked, and it says where it went instead
    folder = home / "tritonflow-quickstart"
    assert f"[1/5] Copying the starter pack to {folder}\n" in out
    assert f"inside the git checkout {clone}" in out and not (clone / "tritonflow-quickstart").exists()
    assert (folder / "model_repository" / "fraud-classifier" / "1" / "deployment.json").is_file()
    assert "(the flow was not in a git checkout)" in out and "WARNING" not in out
    port = int(re.search(r"127\.0\.0\.1:(\d+)", out).group(1))
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        pass  # the node is stopped

    again = subprocess.run(command, capture_output=True, text=True, cwd=clone, timeout=300, env=env)
    # a second run gets a new folder
    assert again.returncode == 0 and (home / "tritonflow-quickstart-2").is_dir()


def test_the_default_folder_is_never_inside_a_git_checkout(tmp_path, monkeypatch):
    if work_tree(tmp_path) is not None:
        pytest.skip(f"the test's own folder {tmp_path} is inside a git checkout")
    home, temp = tmp_path / "home", tmp_path / "temp"
    temp.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("TMPDIR", str(temp))
    monkeypatch.setattr(tempfile, "tempdir", None)  # NOTE: tempfile reads TMPDIR once, then caches it
    (tmp_path / "plain" / "tritonflow-quickstart").mkdir(parents=True)
    assert default_folder(tmp_path / "plain") == (tmp_path / "plain" / "tritonflow-quickstart-2", None)

    clone = git_init(tmp_path / "clone")
    (clone / "sub").mkdir()
    assert default_folder(clone / "sub") == (home / "tritonflow-quickstart", clone)
    git_init(home)  # a home folder under git (dotfiles): the temp folder then
    assert default_folder(clone / "sub") == (temp / "tritonflow-quickstart", clone)


def test_quickstart_fails_clearly_and_starts_nothing(tmp_path):
    (tmp_path / "flow.py").write_text("# the user's own file\n")
    result = tritonflow("quickstart", tmp_path)
    assert result.returncode == 2
    assert (
        f"{tmp_path} already has flow.py: the quickstart needs a folder without a starter pack"
        in result.stderr
    )
    assert "--force" not in result.stderr  # an init flag, which quickstart does not have
    assert "Traceback" not in result.stderr
    assert (tmp_path / "flow.py").read_text() == "# the user's own file\n"
    assert "[1/5]" not in result.stdout


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
