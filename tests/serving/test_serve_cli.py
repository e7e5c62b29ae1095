"""`tritonflow serve` as a user starts it: flags, the folder and the port are checked before any model
loads, each a one-line error with exit status 2; a new, empty repository is served with a warning;
a log pipe whose reader is gone does not stop the node."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from conftest import forest, publish, wait_for
from servers import free_port, stop_process

MODEL = "fraud-classifier"
LOADED = f"loaded {MODEL}"  # serving/registry.py's line for each version it loads
LOG = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ [A-Z]+ ")  # a line of the node's log


def serve(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """A start that must fail: `tritonflow serve ARGS` run to its end (a node that starts is a hang)."""
    command = [sys.executable, "-m", "tritonflow", "serve", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, cwd=cwd, timeout=60)


def refusal(done: subprocess.CompletedProcess[str]) -> str:
    """The one line of a refused start: exit status 2, no model loaded, nothing else but log lines
    (and argparse's usage before its own errors)."""
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and LOADED not in done.stderr, done.stderr
    lines = [line for line in done.stderr.splitlines() if not LOG.match(line)]
    assert len(lines) == 1 or lines[0].startswith("usage: "), done.stderr
    return lines[-1]


def status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


@pytest.mark.parametrize(
    "flag, value, wanted",
    [
        ("--port", "99999", "a port number in 0-65535 (0: any free port)"),
        ("--port", "-5", "a port number in 0-65535 (0: any free port)"),
        ("--port", "http", "a port number in 0-65535 (0: any free port)"),
        ("--poll-interval", "0", "a number > 0"),
        ("--probe-memory", "-1", "a number > 0"),
        ("--probe-timeout", "nan", "a number > 0"),
        ("--header-timeout", "inf", "a number > 0"),
        ("--max-request-bytes", "0", "a whole number >= 1"),
        ("--max-inflight-bytes", "1.5", "a whole number >= 1"),
    ],
)
def test_numeric_flags_are_checked_by_the_parser(local_repo, flag, value, wanted):
    publish(local_repo, MODEL, forest(0))
    done = serve(local_repo, flag, value)
    assert refusal(done) == f"tritonflow serve: error: argument {flag}: {value!r} is not {wanted}"


def test_a_busy_port_is_refused_before_any_model_loads(local_repo):
    publish(local_repo, MODEL, forest(0))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = serve(local_repo, "--port", port)
    assert refusal(done) == (
        f"tritonflow serve: error: port {port} on 127.0.0.1 is in use: stop the other server or pass --port N"
    )


def test_a_host_that_is_not_this_machine_is_refused(local_repo):
    # NOTE: TEST-NET-1 (RFC 5737) is never an address of a test machine
    assert refusal(serve(local_repo, "--host", "192.0.2.1")).startswith(
        "tritonflow serve: error: 192.0.2.1 is not an address of this machine: pass --host 127.0.0.1"
    )


@pytest.mark.parametrize(
    "given, wanted",
    [
        (
            "model_repository/fraud-classifier",
            "model_repository/fraud-classifier is a model folder (it has config.pbtxt): use its parent, "
            "`tritonflow serve model_repository`",
        ),
        (
            "model_repository/fraud-classifier/1",
            "model_repository/fraud-classifier/1 is a version folder (it has deployment.json): use the "
            "repository two levels up, `tritonflow serve model_repository`",
        ),
        (".", ". has no models, but ./model_repository below has: `tritonflow serve model_repository`"),
    ],
)
def test_a_folder_that_is_not_the_repository_is_named_with_the_one_to_serve(tmp_path, given, wanted):
    publish(tmp_path / "model_repository", MODEL, forest(0))
    done = serve(given, "--port", free_port(), cwd=tmp_path)
    assert refusal(done) == f"tritonflow serve: error: {wanted}"


def test_an_empty_repository_is_served_with_a_warning_on_the_port_it_got(tmp_path, local_repo):
    log = tmp_path / "serve.log"
    command = [sys.executable, "-m", "tritonflow", "serve", str(local_repo), "--port", "0"]
    with log.open("wb") as out:
        node = subprocess.Popen([*command, "--poll-interval", "0.2"], stdout=out, stderr=subprocess.STDOUT)
    try:
        listening = wait_for(lambda: re.search(r"listening on http://127\.0\.0\.1:(\d+)", log.read_text()))
        port = int(listening.group(1))
        assert f"WARNING tritonflow.serving: {local_repo} has no models yet" in log.read_text()
        assert status(f"http://127.0.0.1:{port}/v2/health/live") == 200
        publish(local_repo, MODEL, forest(0))  # the first deploy
        wait_for(lambda: status(f"http://127.0.0.1:{port}/v2/models/{MODEL}/ready") == 200)
    finally:
        code = stop_process(node)
    assert code == 0 and "Traceback" not in log.read_text(), log.read_text()


def test_a_log_pipe_whose_reader_is_gone_does_not_stop_the_node(local_repo):
    publish(local_repo, MODEL, forest(0))
    port = free_port()
    # NOTE: `serve ... 2>&1 | head -1` once head has its line; buffered, as in a user's shell
    reader = subprocess.Popen(["head", "-n", "0"], stdin=subprocess.PIPE)
    reader.wait()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    command = [sys.executable, "-m", "tritonflow", "serve", str(local_repo), "--port", str(port)]
    node = subprocess.Popen(command, stdout=reader.stdin, stderr=subprocess.STDOUT, env=env)
    assert reader.stdin is not None
    reader.stdin.close()
    try:
        # NOTE: the version is probed in a child process, which the dead pipe used to fail
        wait_for(lambda: status(f"http://127.0.0.1:{port}/v2/models/{MODEL}/ready") == 200, timeout=60)
    finally:
        code = stop_process(node)
    assert code == 0
