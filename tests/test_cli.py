"""The `tritonflow` command as users run it: a subprocess, real repositories, real pipes."""

import json
import os
import re
import subprocess
import sys
from functools import partial

import numpy as np
import pytest
from sklearn.ensemble import RandomForestRegressor

from tritonflow import __version__
from tritonflow.lineage.repository import ModelRepository
from tritonflow.plugin.options import parse_options
from tritonflow.plugin.publish import Provenance, deploy

MODEL = "fraud-classifier"
RUNS = ("TrainFlow/1795314379884117", "TrainFlow/1795314379884999")


def tritonflow(*args, cwd=None, env=None, timeout=300):
    command = [sys.executable, "-m", "tritonflow", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, cwd=cwd, env=env, timeout=timeout)


def user_shell(**env):
    """The environment of a user's shell: output buffered (no PYTHONUNBUFFERED), plus `env`."""
    return {**{k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}, **env}


def piped(*args, cwd=None):
    """`tritonflow ARGS | head -1` when head has its line and is gone before the command writes:
    the timing that breaks a command, every time."""
    reader = subprocess.Popen(["head", "-n", "0"], stdin=subprocess.PIPE)
    reader.wait()
    command = [sys.executable, "-m", "tritonflow", *map(str, args)]
    try:
        return subprocess.run(
            command, stdout=reader.stdin, stderr=subprocess.PIPE, text=True, cwd=cwd, env=user_shell()
        )
    finally:
        reader.stdin.close()


@pytest.fixture
def repository(tmp_path, make_record):
    """./model_repository under tmp_path: fraud-classifier 1 and 2, one from each of RUNS."""
    repo = ModelRepository(tmp_path / "model_repository")
    for run in RUNS:
        flow, run_id = run.split("/")
        files = {"checkpoint.tl": run_id.encode()}
        record = partial(make_record, MODEL, flow=flow, run_id=run_id, files=files, repository=repo.uri)
        repo.publish(MODEL, f'name: "{MODEL}"\nbackend: "fil"\n', files, record, {"run": run})
    return repo


def test_version_and_help():
    assert tritonflow("--version").stdout.strip() == f"tritonflow {__version__}"
    out = tritonflow("--help").stdout
    for command in ("serve", "models", "check-config"):
        assert command in out


def test_models_lists_versions_with_their_runs(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 4)).astype("float32")
    model = RandomForestRegressor(n_estimators=5, max_depth=3, random_state=0).fit(X, X[:, 0])
    opts = parse_options({"name": "price", "repository": str(tmp_path)}, "PriceFlow", is_join=False)
    for task in ("PriceFlow/11/train/2", "PriceFlow/12/train/2"):
        run_id = task.split("/")[1]
        provenance = Provenance(metaflow={"flow": "PriceFlow", "run_id": run_id, "task": task})
        deploy(model, opts, sample=X, provenance=provenance)
    (tmp_path / "price" / "3").mkdir()  # an unfinished publish: listed, never served

    table = tritonflow("models", tmp_path)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split()[:3] == ["MODEL", "VERSION", "STATE"]
    assert "price:2@PriceFlow/12" in lines[2] and "PriceFlow/12/train/2" in lines[2]
    assert "unfinished" in lines[3]

    rows = json.loads(tritonflow("models", tmp_path, "--json").stdout)
    assert [r["deployment_id"] for r in rows[:2]] == ["price:1@PriceFlow/11", "price:2@PriceFlow/12"]


def test_errors_are_one_line_with_exit_2(tmp_path):
    missing = tritonflow("models", tmp_path / "typo")
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    result = tritonflow("models", "s3://x")
    assert result.returncode == 2 and result.stderr.startswith("tritonflow models: error:")
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["--help"],
        ["serve", "--help"],
        ["models", "model_repository"],
        ["models", "model_repository", "--json"],
        ["lineage", f"{MODEL}:1", "--repository", "model_repository", "--no-metaflow"],
        ["lineage", "--run", RUNS[0], "--repository", "model_repository", "--no-metaflow", "--json"],
        ["check-config", "model_repository"],
        ["gc", "model_repository", "--dry-run"],
    ],
)
def test_every_command_stops_quietly_when_the_reader_of_its_pipe_is_gone(repository, tmp_path, args):
    done = piped(*args, cwd=tmp_path)
    assert (done.returncode, done.stderr) == (141, "")  # NOTE: 128 + SIGPIPE, as a Unix tool's


def test_typos_are_answered_with_the_closest_command_or_option(tmp_path):
    command = tritonflow("servee", tmp_path)
    assert command.returncode == 2
    assert command.stderr.splitlines()[-1] == (
        "tritonflow: error: unknown command 'servee': did you mean 'serve'? (tritonflow --help lists them)"
    )
    option = tritonflow("models", tmp_path, "--jsn", "--dry-rn=1")
    assert option.returncode == 2
    assert option.stderr.splitlines()[-1] == (
        "tritonflow models: error: unrecognized arguments: --jsn --dry-rn=1 (--jsn: did you mean --json?)"
    )


@pytest.mark.parametrize(
    "args, flag, value, wanted",
    [
        (["gc", "."], "--min-age", "inf", "a number of seconds >= 0"),
        (["quickstart", "qs"], "--rows", "0", "a whole number in 1-200"),
        (["quickstart", "qs"], "--rows", "201", "a whole number in 1-200"),
    ],
)
def test_numeric_flags_are_checked_by_the_parser(tmp_path, args, flag, value, wanted):
    done = tritonflow(*args, flag, value, cwd=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert (
        done.stderr.splitlines()[-1]
        == f"tritonflow {args[0]}: error: argument {flag}: {value!r} is not {wanted}"
    )
    assert not (tmp_path / "qs").exists()  # the quickstart did not begin


@pytest.mark.parametrize("command", ["models", "gc"])
def test_a_model_folder_or_a_folder_above_the_repository_is_named_with_the_repository(
    repository, tmp_path, command
):
    model = tritonflow(command, f"model_repository/{MODEL}", cwd=tmp_path)
    assert (model.returncode, model.stderr) == (
        2,
        f"tritonflow {command}: error: model_repository/{MODEL} is a model folder (it has config.pbtxt): "
        f"use its parent, `tritonflow {command} model_repository`\n",
    )
    above = tritonflow(command, ".", cwd=tmp_path)
    assert (above.returncode, above.stderr) == (
        2,
        f"tritonflow {command}: error: . has no models, but ./model_repository below has: "
        f"`tritonflow {command} model_repository`\n",
    )
    assert repository.versions(MODEL) == [1, 2]
    (tmp_path / "new").mkdir()
    assert tritonflow(command, "new", cwd=tmp_path).returncode == 0  # a new repository is one


@pytest.mark.parametrize(
    "args, wanted",
    [
        (
            ["fraud-clasifier:1"],
            "it has no model 'fraud-clasifier'; did you mean 'fraud-classifier'? "
            "(its models: fraud-classifier)",
        ),
        (
            [f"{MODEL}:1@TrainFlow/1795314379884118"],
            f"no version of '{MODEL}' there came from run TrainFlow/1795314379884118 ({MODEL}:1 is "
            f"{MODEL}:1@{RUNS[0]}); the runs that deployed it, closest first: {RUNS[0]} ({MODEL}:1), "
            f"{RUNS[1]} ({MODEL}:2). Check the run ID, or the ID comes from another repository",
        ),
        (
            [f"{MODEL}:1@{RUNS[1]}"],
            f"run {RUNS[1]} made {MODEL}:2@{RUNS[1]} there, and {MODEL}:1 is {MODEL}:1@{RUNS[0]}: "
            "check the version",
        ),
        (
            ["--run", "TrainFlow/179531437988411"],
            f"came from run TrainFlow/179531437988411; its runs, closest first: {RUNS[0]} ({MODEL}:1), "
            f"{RUNS[1]} ({MODEL}:2)",
        ),
    ],
)
def test_lineage_answers_a_typo_with_what_the_repository_has(repository, tmp_path, args, wanted):
    done = tritonflow("lineage", *args, "--repository", "model_repository", "--no-metaflow", cwd=tmp_path)
    assert done.returncode == 2 and len(done.stderr.splitlines()) == 1, done.stderr
    assert done.stderr.startswith("tritonflow lineage: error: no deployment") and wanted in done.stderr


def test_lineage_on_a_model_folder_names_the_repository(repository, tmp_path):
    done = tritonflow("lineage", f"{MODEL}:1", "--repository", f"model_repository/{MODEL}", cwd=tmp_path)
    assert (done.returncode, done.stderr) == (
        2,
        f"tritonflow lineage: error: model_repository/{MODEL} is a model folder (it has config.pbtxt): use "
        f"its parent, `tritonflow lineage {MODEL}:1 --repository model_repository`\n",
    )


def test_init_prints_next_steps_that_work_as_root(tmp_path, metaflow_env):
    as_root = {k: v for k, v in metaflow_env.items() if k not in ("METAFLOW_USER", "SUDO_USER", "USERNAME")}
    as_root["USER"] = "root"
    done = tritonflow("init", tmp_path / "pack", env=as_root)
    assert done.returncode == 0, done.stderr
    export = re.search(r"^  export METAFLOW_USER=(\S+) ", done.stdout, re.M)
    assert export, done.stdout
    for step in (
        "python flow.py run",
        "tritonflow serve model_repository",
        "--port 8080",
        "python client.py",
    ):
        assert f"{step}" in done.stdout
    assert "--url 127.0.0.1:8080" in done.stdout
    # NOTE: `show` is the cheapest command that needs a user name: refused without it, run with it
    show = [sys.executable, "flow.py", "--no-pylint", "show"]
    refused = subprocess.run(show, cwd=tmp_path / "pack", env=as_root, capture_output=True, text=True)
    assert refused.returncode != 0 and "Unknown user" in refused.stdout + refused.stderr
    named = {**as_root, "METAFLOW_USER": export.group(1)}
    shown = subprocess.run(show, cwd=tmp_path / "pack", env=named, capture_output=True, text=True)
    assert shown.returncode == 0, shown.stdout + shown.stderr

    again = tritonflow("init", tmp_path / "other", env=named)
    assert again.returncode == 0 and "METAFLOW_USER" not in again.stdout


def test_init_into_a_file_is_a_one_line_error(tmp_path):
    (tmp_path / "taken").write_text("")
    done = tritonflow("init", tmp_path / "taken")
    assert (done.returncode, done.stderr) == (
        2,
        f"tritonflow init: error: cannot write the starter pack to {tmp_path / 'taken'}: File exists: "
        "choose a new folder\n",
    )


def test_check_config_names_a_file_it_cannot_read_and_goes_on(tmp_path):
    """A folder named config.pbtxt or a binary one is an error line for that file, not a traceback."""
    (tmp_path / "folder" / "config.pbtxt").mkdir(parents=True)
    (tmp_path / "binary").mkdir()
    (tmp_path / "binary" / "config.pbtxt").write_bytes(b"\xff\xfe\x00name")
    done = tritonflow("check-config", str(tmp_path))
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    for model in ("folder", "binary"):
        assert f"{model}/config.pbtxt:1: error: cannot be read as a UTF-8 text file" in done.stdout
