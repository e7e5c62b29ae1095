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
    """A start that must fail: `tritonflow serve ARGS` run to its end (a node that starts is a hang).
    Free gRPC and metrics ports unless ARGS give them (argparse keeps the last)."""
    ports = ["--grpc-port", str(free_port()), "--metrics-port", str(free_port())]
    command = [sys.executable, "-m", "tritonflow", "serve", *ports, *map(str, args)]
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
        ("--port", "99999", "a port number in 0-65535 (0: no listener)"),
        ("--http-port", "-5", "a port number in 0-65535 (0: no listener)"),
        ("--grpc-port", "http", "a port number in 0-65535 (0: no listener)"),
        ("--metrics-port", "65536", "a port number in 0-65535 (0: no listener)"),
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
    # NOTE: argparse names a flag by all its spellings
    named = "--http-port/--port" if flag in ("--port", "--http-port") else flag
    assert refusal(done) == f"tritonflow serve: error: argument {named}: {value!r} is not {wanted}"


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


@pytest.mark.parametrize("flag", ["--grpc-port", "--metrics-port"])
def test_a_busy_grpc_or_metrics_port_is_refused_before_any_model_loads(local_repo, flag):
    publish(local_repo, MODEL, forest(0))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = serve(local_repo, "--port", free_port(), flag, port)
    assert refusal(done) == (
        f"tritonflow serve: error: port {port} on 127.0.0.1 is in use: stop the other server or pass {flag} N"
    )


def test_a_grpc_port_another_node_serves_is_refused(local_repo, tmp_path):
    publish(local_repo, MODEL, forest(0))
    grpc_port = free_port()
    command = [sys.executable, "-m", "tritonflow", "serve", str(local_repo), "--grpc-port", str(grpc_port)]
    log = tmp_path / "first.log"
    with log.open("wb") as out:
        first = subprocess.Popen(
            [*command, "--port", str(free_port()), "--metrics-port", "0"],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for(lambda: "gRPC listening on" in log.read_text(), timeout=60)
        # NOTE: gRPC's own socket allows SO_REUSEPORT: a second node must still not share its port
        done = serve(local_repo, "--port", free_port(), "--grpc-port", grpc_port)
    finally:
        assert stop_process(first) == 0, log.read_text()
    assert refusal(done).endswith(
        f"port {grpc_port} on 127.0.0.1 is in use: stop the other server or pass --grpc-port N"
    )


def test_a_node_with_no_listener_is_refused(local_repo):
    publish(local_repo, MODEL, forest(0))
    assert refusal(serve(local_repo, "--http-port", "0", "--grpc-port", "0")) == (
        "tritonflow serve: error: --http-port 0 and --grpc-port 0 leave no way to reach the node: "
        "give either a port"
    )


def test_a_node_with_http_off_serves_grpc(local_repo, tmp_path):
    import numpy as np
    import tritonclient.grpc as grpcclient

    publish(local_repo, MODEL, forest(0))
    grpc_port = free_port()
    log = tmp_path / "serve.log"
    command = [sys.executable, "-m", "tritonflow", "serve", str(local_repo), "--http-port", "0"]
    with log.open("wb") as out:
        node = subprocess.Popen(
            [*command, "--grpc-port", str(grpc_port), "--metrics-port", "0"],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
    try:
        wait_for(lambda: "Application startup complete" in log.read_text(), timeout=60)
        assert client.is_model_ready(MODEL)
        x = np.zeros((1, 8), np.float32)
        tensor = grpcclient.InferInput("input__0", [1, 8], "FP32")
        tensor.set_data_from_numpy(x)
        assert client.infer(MODEL, [tensor]).as_numpy("output__0").shape == (1, 2)
    finally:
        client.close()
        code = stop_process(node)
    text = log.read_text()
    assert code == 0 and "Traceback" not in text, text
    assert f"gRPC listening on 127.0.0.1:{grpc_port}" in text and "listening on http" not in text, text


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


def test_an_empty_repository_is_served_with_a_warning_on_the_ports_it_logs(tmp_path, local_repo):
    log = tmp_path / "serve.log"
    port, grpc_port, metrics_port = free_port(), free_port(), free_port()
    ports = ["--port", str(port), "--grpc-port", str(grpc_port), "--metrics-port", str(metrics_port)]
    command = [sys.executable, "-m", "tritonflow", "serve", str(local_repo), *ports]
    with log.open("wb") as out:
        node = subprocess.Popen([*command, "--poll-interval", "0.2"], stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: f"listening on http://127.0.0.1:{port}" in log.read_text())
        assert f"gRPC listening on 127.0.0.1:{grpc_port}" in log.read_text()
        assert f"metrics (GET /metrics only) on http://127.0.0.1:{metrics_port}" in log.read_text()
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
    command += ["--grpc-port", str(free_port()), "--metrics-port", str(free_port())]
    node = subprocess.Popen(command, stdout=reader.stdin, stderr=subprocess.STDOUT, env=env)
    assert reader.stdin is not None
    reader.stdin.close()
    try:
        # NOTE: the version is probed in a child process, which the dead pipe used to fail
        wait_for(lambda: status(f"http://127.0.0.1:{port}/v2/models/{MODEL}/ready") == 200, timeout=60)
    finally:
        code = stop_process(node)
    assert code == 0
